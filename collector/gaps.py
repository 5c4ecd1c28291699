"""The gap log: when a source lost its connection, for how long, and how many tags went stale,
one JSON object per line next to the dead-letter file (`<data_dir>/gaps.jsonl`), so a gap in the
record is explained by a record of its own (GMP: data integrity), whatever the historian.

A source opens a gap when its connection is lost (it has then emitted a bad-quality null sample
for each affected tag, at the moment of loss) and closes it once values can flow again (session
and subscriptions recreated), or when the collector stops while still disconnected."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Gap:
    source: str
    start: datetime
    end: datetime
    tags: int
    reason: str
    # "reconnect" (values flow again) or "stop" (the collector stopped while disconnected).
    closed_by: str

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()

    def as_record(self) -> dict:
        return {
            "source": self.source,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "tags": self.tags,
            "reason": self.reason,
            "closed_by": self.closed_by,
        }


class GapLog:
    """Append-only JSONL file of gaps; thread-safe, created on first write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def add(self, gap: Gap) -> None:
        line = json.dumps(gap.as_record(), ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)

    def read(self, source: str | None = None) -> list[Gap]:
        """Every gap recorded (of one source when given), oldest first."""
        if not self.path.exists():
            return []
        gaps = []
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                if source is not None and r["source"] != source:
                    continue
                gaps.append(Gap(r["source"], datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"]),
                                r["tags"], r["reason"], r["closed_by"]))
        return gaps
