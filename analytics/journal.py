"""The alarm journal: every alarm transition, appended to a JSON-lines file, one object a line.

    journal = AlarmJournal(data_dir / "alarm_journal.jsonl")
    AlertBook(tags, journal=journal)            # the book writes every transition to it
    journal.search(tag="lyon.ff.fill1", text="ack", since=..., until=..., user="ana", limit=100)

Each entry (`JOURNAL_SCHEMA`): `ts` (when the transition happened: the condition event's time,
or the operator action's), `recorded_at` (when it was written), `event` (one of `EVENTS`),
`alert_id`, `tag_id`, `detector`, `line_id`, `priority`, `severity`, `from_state`, `to_state`,
`user` ("system" for the book's own transitions), `comment`, `message`. Times are ISO-8601 UTC
strings with a `Z`.

Append-only and durable: the file is opened for appending only, and each `append_many` is one
write followed by flush and fsync, so an entry the book reported is on disk. A line torn by a
crash is skipped when reading (and the next append starts on a new line). Search reads the file
with Polars and filters with expressions.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import polars as pl

EVENTS = (
    "raised", "escalated", "de-escalated", "cleared", "acknowledged", "shelved", "unshelved",
    "suppressed", "unsuppressed", "grouped",
)

JOURNAL_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.String(),
    "recorded_at": pl.String(),
    "event": pl.String(),
    "alert_id": pl.String(),
    "tag_id": pl.String(),
    "detector": pl.String(),
    "line_id": pl.String(),
    "priority": pl.String(),
    "severity": pl.String(),
    "from_state": pl.String(),
    "to_state": pl.String(),
    "user": pl.String(),
    "comment": pl.String(),
    "message": pl.String(),
}
# Columns the free-text search looks in.
TEXT_COLUMNS = ("event", "alert_id", "tag_id", "detector", "from_state", "to_state", "user", "comment", "message")
DEFAULT_LIMIT = 200


class AlarmJournal:
    """An append-only JSON-lines alarm journal; thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        created = not self.path.exists()
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the journal's life
        if created:
            _fsync_dir(self.path.parent)  # the new file's name is durable too
        elif self._file.tell() > 0 and not _ends_with_newline(self.path):
            self._write(b"\n")  # a torn last line stays on its own line

    def append(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry; returns it as written."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append entries in one write and one fsync; returns them as written. Raises ValueError
        for an entry without a known `event` (nothing is written then)."""
        now = _iso(datetime.now(UTC))
        rows = []
        for entry in entries:
            if entry.get("event") not in EVENTS:
                raise ValueError(f"event: {entry.get('event')!r} is not one of {', '.join(EVENTS)}")
            row = {k: _jsonable(entry.get(k)) for k in JOURNAL_SCHEMA}
            row["recorded_at"] = now
            rows.append(row)
        if rows:
            data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)
            self._write(data.encode())
        return rows

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._file.closed:
                raise ValueError(f"the alarm journal {self.path} is closed")
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())

    def read(self) -> pl.DataFrame:
        """Every complete entry, oldest first (`JOURNAL_SCHEMA` plus `ts_dt`, the parsed `ts`)."""
        with self._lock:
            data = self.path.read_bytes() if self.path.exists() else b""
        end = data.rfind(b"\n")
        data = data[: end + 1]  # a last line without its newline is still being (or was never) written
        frame = _parse(data)
        return frame.with_columns(ts_dt=pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC", time_unit="us", strict=False))

    def search(self, *, tag: str | None = None, text: str | None = None, since: datetime | None = None,
               until: datetime | None = None, user: str | None = None, event: str | None = None,
               limit: int = DEFAULT_LIMIT) -> pl.DataFrame:
        """Entries matching every given filter, newest first, at most `limit`:

        tag    a tag id, or a prefix of ISA-95 path (site, site.area, line id, unit id)
        text   case-insensitive substring of any of `TEXT_COLUMNS`
        since, until   since <= ts < until (aware datetimes)
        user   the user, exactly (case-insensitive)
        event  one of `EVENTS`
        """
        frame = self.read()
        filters: list[pl.Expr] = []
        if tag:
            filters.append((pl.col("tag_id") == tag) | pl.col("tag_id").str.starts_with(tag + "."))
        if text:
            haystack = pl.concat_str([pl.col(c).fill_null("") for c in TEXT_COLUMNS], separator="\u241f")
            filters.append(haystack.str.to_lowercase().str.contains(text.lower(), literal=True))
        if since is not None:
            filters.append(pl.col("ts_dt") >= since)
        if until is not None:
            filters.append(pl.col("ts_dt") < until)
        if user:
            filters.append(pl.col("user").str.to_lowercase() == user.strip().lower())
        if event:
            filters.append(pl.col("event") == event)
        if filters:
            frame = frame.filter(pl.all_horizontal(filters))
        # Newest first; entries written together keep their order reversed as a whole.
        return frame.with_row_index("_n").sort(["ts_dt", "_n"], descending=True).drop("_n").head(limit)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def entries_json(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Search results as JSON-ready dicts (the `JOURNAL_SCHEMA` columns)."""
    return frame.select(list(JOURNAL_SCHEMA)).to_dicts()


def _parse(data: bytes) -> pl.DataFrame:
    if not data.strip():
        return pl.DataFrame(schema=JOURNAL_SCHEMA)
    try:
        frame = pl.read_ndjson(io.BytesIO(data), schema=JOURNAL_SCHEMA)
    except Exception:  # noqa: BLE001 - a torn or foreign line: parse line by line, skipping what is not an entry
        rows = []
        for line in data.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append({k: None if row.get(k) is None else str(row[k]) for k in JOURNAL_SCHEMA})
        frame = pl.DataFrame(rows, schema=JOURNAL_SCHEMA)
    return frame


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    return value


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
