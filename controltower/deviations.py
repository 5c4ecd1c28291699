"""Deviation records: what a quality engineer concludes about a batch deviation, signed.

    log = DeviationLog(data_dir / "deviations.jsonl")
    record = log.add(batch_id="BR101-0007", unit="lyon.usp.bio1.br101", classification="major",
                     comment="DO excursion in growth, probe replaced", signed_by="ana",
                     meaning="reviewed", at=datetime(...), tags=["lyon.usp.bio1.br101.dissolved_oxygen"])
    log.for_batch("lyon.usp.bio1.br101", "BR101-0007")   # newest last

A record: `id` (DEV-<yyyymmdd>-<n>, n counting up over the file), `batch_id`, `unit` (its
ISA-95 path), `at` (the moment of the batch it is about, optional), `tags` (the variables
concerned), `classification` (`CLASSIFICATIONS`), `comment`, and the signature: `signed_by`
(the user), `signed_name` (as shown: the user and their role), `meaning` (`MEANINGS`: what
the signature stands for, 21 CFR 11.50) and `signed_at` (UTC). The caller authenticates the
signer first (the API re-checks the password: a signature is a deliberate act, not a session
side effect) and writes the audit record (`deviation.record`).

Append-only, like the alarm journal: one JSON object a line, written with flush and fsync; a
correction is a new record that names the one it supersedes (`supersedes`), never an edit.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

CLASSIFICATIONS = ("minor", "major", "critical", "no_impact")
MEANINGS = ("reviewed", "approved", "rejected")
FILE_NAME = "deviations.jsonl"
MAX_COMMENT = 4000


class DeviationError(ValueError):
    """A deviation record that cannot be taken; the message names the field and the reason."""


@dataclass(frozen=True)
class DeviationRecord:
    id: str
    batch_id: str
    unit: str
    classification: str
    comment: str
    signed_by: str
    signed_name: str
    meaning: str
    signed_at: str
    at: str | None = None
    tags: list[str] = field(default_factory=list)
    supersedes: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeviationLog:
    """The deviation records of a control tower, in one JSON-lines file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DeviationLog({str(self.path)!r})"

    def read(self) -> list[DeviationRecord]:
        """Every record, oldest first. A line torn by a crash is skipped."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(DeviationRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return records

    def for_batch(self, unit: str, batch_id: str) -> list[DeviationRecord]:
        return [r for r in self.read() if r.unit == unit and r.batch_id == batch_id]

    def add(self, *, batch_id: str, unit: str, classification: str, comment: str, signed_by: str,
            meaning: str, signed_name: str | None = None, at: datetime | None = None,
            tags: list[str] | None = None, supersedes: str | None = None,
            now: datetime | None = None) -> DeviationRecord:
        """Validate, append (fsynced) and return the record. DeviationError names a bad field."""
        if not batch_id or not batch_id.strip():
            raise DeviationError("batch_id: required")
        if classification not in CLASSIFICATIONS:
            raise DeviationError(f"classification: {classification!r} is not one of {', '.join(CLASSIFICATIONS)}")
        if meaning not in MEANINGS:
            raise DeviationError(f"meaning: {meaning!r} is not one of {', '.join(MEANINGS)}")
        comment = (comment or "").strip()
        if not comment:
            raise DeviationError("comment: required (what happened, the impact, what is done about it)")
        if len(comment) > MAX_COMMENT:
            raise DeviationError(f"comment: at most {MAX_COMMENT} characters, got {len(comment)}")
        if not signed_by:
            raise DeviationError("signed_by: a deviation record is signed by a named user")
        signed_at = now or datetime.now(UTC)
        with self._lock:
            existing = self.read()
            if supersedes is not None and supersedes not in {r.id for r in existing}:
                raise DeviationError(f"supersedes: no deviation record {supersedes!r}")
            record = DeviationRecord(
                id=f"DEV-{signed_at.astimezone(UTC):%Y%m%d}-{len(existing) + 1:04d}",
                batch_id=batch_id.strip(), unit=unit, classification=classification, comment=comment,
                signed_by=signed_by, signed_name=signed_name or signed_by, meaning=meaning,
                signed_at=_iso(signed_at), at=_iso(at) if at is not None else None,
                tags=list(tags or []), supersedes=supersedes,
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return record
