"""The dead-letter file: payloads a source could not decode, kept with their topic and the
error, one JSON object per line, so nothing received is silently lost and an engineer can
replay or inspect them. Bounded in size: past `max_bytes` the file is rotated once (`.1`)."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime
from pathlib import Path


class DeadLetterFile:
    def __init__(self, path: Path, *, max_bytes: int = 50 * 1024 * 1024, max_payload_bytes: int = 64 * 1024):
        self.path = path
        self.max_bytes = max_bytes
        self.max_payload_bytes = max_payload_bytes
        self.count = 0
        self._lock = threading.Lock()

    def add(self, *, source: str, topic: str, reason: str, error: str, payload: bytes) -> None:
        kept = payload[: self.max_payload_bytes]
        try:
            text, encoding = kept.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
        record = {
            "received_at": datetime.now(UTC).isoformat(),
            "source": source,
            "topic": topic,
            "reason": reason,
            "error": error,
            "payload": text,
            "payload_encoding": encoding,
            "payload_bytes": len(payload),
            "truncated": len(payload) > len(kept),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
            self.count += 1

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
