"""The embedded historian: one DuckDB file under the data directory.

Table `samples` holds the sample schema with timestamps as BIGINT nanoseconds since the epoch
(DuckDB's TIMESTAMPTZ stops at microseconds; samples keep their nanoseconds exactly) and quality
as an ENUM. Each batch is inserted sorted by time from its Arrow table in one statement; as the
collector writes in time order, the per-row-group min/max of `ts` (DuckDB's zonemaps) lets a
`tag_id + time range` read skip every row group outside the range, with no index to maintain.
There is no table of each tag's newest sample: the tower keeps that in memory
(`controltower.live.LiveState`), and upserting one with each batch made DuckDB hold about 9 KB
of memory per commit for as long as the database stayed open (its bookkeeping of the updated
rows: 2,000 upserts of 1,000 rows left 19 MB in use, whether as ON CONFLICT, UPDATE or DELETE +
INSERT; a checkpoint did not give it back, closing the database did). `latest()` and `tags()` scan `samples`, for tools and tests. A `latest` table left by an
earlier version is dropped at open.

Table `batch_events` holds the batch-event stream (`controltower.batch_events`), `ts` as BIGINT ns
like the samples; (site, area, line, unit, ts, transition) is its key, so a replayed event is
stored once.

Writes run in a worker thread, one at a time; reads may come from any thread, each on its own
cursor.

Memory: DuckDB keeps the blocks it has written in its buffer pool, which by default may grow to
80% of the machine's RAM: a collector storing 10,000 values/s grew by about 200 MiB an hour
(bench/ingest.py --soak). `memory_limit` (default MEMORY_LIMIT) bounds the pool; a query that
needs more spills to DuckDB's temporary directory next to the file. 64MB, not more: the pool holds
about 10 bytes per stored value, so at 10,000 values/s a 256MB pool fills for most of an hour
(RSS still rising 6 million values in), while with 64MB the written blocks it keeps level off at
about 33 MB after some 3 million values (minutes) and the process's RSS with them. The reads the
tower makes (a tag's time range) need little of it; evicted blocks are read
back from the file, usually from the OS page cache.

Beyond the pool, an open DuckDB database keeps some bookkeeping for every row group appended
since it was opened (about 0.2 MB per million rows, outside `memory_limit` and not given back by a
checkpoint): at 10,000 values/s some 8 MB an hour, for as long as the collector runs. So the
historian closes and reopens its database after every `reopen_every_rows` rows written (default
REOPEN_EVERY_ROWS, about 20 minutes at 10,000 values/s): the write that crosses the mark waits
for the reads in flight, closes the database (DuckDB checkpoints it), opens it again, and the
reads that arrive meanwhile wait for it (tens of milliseconds). Nothing written is lost: the
close happens between transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from collector.sinks import HistorianError
from controltower.batch_events import BATCH_EVENT_SCHEMA, conform_events, empty_batch_events
from controltower.samples import SAMPLE_SCHEMA, conform, empty_samples

COLUMNS = tuple(SAMPLE_SCHEMA)
MEMORY_LIMIT = "64MB"
REOPEN_EVERY_ROWS = 10_000_000
_COLUMN_TYPES = {
    "ts": "BIGINT NOT NULL",
    "server_ts": "BIGINT",
    "tag_id": "VARCHAR NOT NULL",
    "value": "DOUBLE",
    "quality": "quality NOT NULL",
    "batch_id": "VARCHAR",
    "site": "VARCHAR",
    "area": "VARCHAR",
    "line": "VARCHAR",
    "unit": "VARCHAR",
}
_COLUMN_LIST = ", ".join(COLUMNS)
_SCHEMA_SQL = [
    "CREATE TYPE IF NOT EXISTS quality AS ENUM ('good', 'uncertain', 'bad')",
    "CREATE TABLE IF NOT EXISTS samples ({})".format(", ".join(f"{c} {t}" for c, t in _COLUMN_TYPES.items())),
    "DROP TABLE IF EXISTS latest",  # written with each batch by earlier versions; see the docstring
    (
        "CREATE TABLE IF NOT EXISTS batch_events (ts BIGINT NOT NULL, site VARCHAR NOT NULL, area VARCHAR NOT NULL, "
        "line VARCHAR NOT NULL, unit VARCHAR NOT NULL, batch_id VARCHAR, phase VARCHAR, transition VARCHAR NOT NULL, "
        "product VARCHAR, recipe VARCHAR, PRIMARY KEY (site, area, line, unit, ts, transition))"
    ),
]
_EVENT_COLUMNS = ", ".join(BATCH_EVENT_SCHEMA)
_INSERT_EVENTS = f"INSERT INTO batch_events ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} FROM events ON CONFLICT DO NOTHING"
_PATH_KEYS = ("site", "area", "line", "unit")
# The events of a unit or line in a time range, the last one of each unit before it (the phase
# already running when the range starts) and the first one after it (which ends the last span);
# at those two instants every event is taken (ties), which the phase spans do not mind. `{where}`
# compares the path columns (equality, no string building per row).
_READ_EVENTS = f"""
    WITH mine AS MATERIALIZED (SELECT {_EVENT_COLUMNS} FROM batch_events WHERE {{where}}),
    before AS (SELECT site, area, line, unit, max(ts) AS ts FROM mine WHERE ts < $start GROUP BY ALL),
    after AS (SELECT site, area, line, unit, min(ts) AS ts FROM mine WHERE ts >= $end GROUP BY ALL)
    SELECT {_EVENT_COLUMNS} FROM mine WHERE ts >= $start AND ts < $end
    UNION ALL SELECT {_EVENT_COLUMNS} FROM mine JOIN before USING (site, area, line, unit, ts)
    UNION ALL SELECT {_EVENT_COLUMNS} FROM mine JOIN after USING (site, area, line, unit, ts)
"""
# Sorted by time, so each row group covers a narrow time span (see the module docstring).
_INSERT_SAMPLES = f"INSERT INTO samples ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM batch ORDER BY ts, tag_id"
_NEWEST_PER_TAG = f"""
    SELECT {_COLUMN_LIST} FROM samples {{where}}
    QUALIFY row_number() OVER (PARTITION BY tag_id ORDER BY ts DESC) = 1 ORDER BY tag_id
"""


def _ns(moment: datetime) -> int:
    """Datetime (naive = UTC) -> integer ns since the epoch, exactly."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _arrow_batch(batch: pl.DataFrame):
    """The batch as the Arrow table DuckDB reads: timestamps as int64 ns, quality as text."""
    frame = conform(batch).with_columns(
        pl.col("ts").dt.epoch("ns"),
        pl.col("server_ts").dt.epoch("ns"),
        pl.col("quality").cast(pl.String),
    )
    return frame.to_arrow()


class DuckDbHistorian:
    """Historian in a DuckDB file. `path` is created (with its folders) when missing."""

    name = "duckdb"

    def __init__(self, path: str | Path, *, memory_limit: str | None = MEMORY_LIMIT,
                 reopen_every_rows: int = REOPEN_EVERY_ROWS):
        self.path = Path(path)
        self.memory_limit = memory_limit
        self.reopen_every_rows = reopen_every_rows
        self.reopens = 0
        self._write_lock = threading.Lock()
        # Readers in flight, and whether a reopen is waiting for them (see the module docstring).
        self._gate = threading.Condition()
        self._readers = 0
        self._reopening = False
        self._rows_since_open = 0
        self._closed = False
        self._con = self._open()

    def _open(self) -> duckdb.DuckDBPyConnection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(self.path))
            if self.memory_limit:  # for the whole database: every cursor shares the pool
                con.execute(f"SET memory_limit = '{self.memory_limit}'")
            for statement in _SCHEMA_SQL:
                con.execute(statement)
            return con
        except (duckdb.Error, OSError) as exc:
            hint = " (is another process using it?)" if "lock" in str(exc).lower() else ""
            raise HistorianError(f"cannot open the DuckDB historian {self.path}{hint}: {exc}") from exc

    def __repr__(self) -> str:
        return f"DuckDbHistorian({str(self.path)!r})"

    # --- writing -------------------------------------------------------------------------------

    async def write(self, batch: pl.DataFrame) -> None:
        """Insert a batch (sample schema) off the event loop."""
        if batch.height:
            await asyncio.to_thread(self.write_sync, batch)

    def write_sync(self, batch: pl.DataFrame) -> None:
        """Insert a batch from the calling thread (one transaction: all rows or none)."""
        if not batch.height:
            return
        table = _arrow_batch(batch)
        if table.column("ts").null_count:
            raise HistorianError(f"{self.path}: {table.column('ts').null_count} sample(s) without ts")
        with self._write_lock:
            with self._cursor() as cur:
                try:
                    cur.register("batch", table)
                    cur.execute("BEGIN TRANSACTION")
                    cur.execute(_INSERT_SAMPLES)
                    cur.execute("COMMIT")
                except duckdb.Error as exc:
                    try:
                        cur.execute("ROLLBACK")
                    except duckdb.Error:
                        pass
                    raise HistorianError(f"cannot write to the DuckDB historian {self.path}: {exc}") from exc
            self._rows_since_open += table.num_rows
            if self._rows_since_open >= self.reopen_every_rows:
                self._reopen()

    def _reopen(self) -> None:
        """Close and open the database again, between transactions (the caller holds the write
        lock), once the reads in flight are done; reads arriving meanwhile wait."""
        with self._gate:
            self._reopening = True
            try:
                self._gate.wait_for(lambda: self._readers == 0)
                self._con.close()
                self._con = None  # if opening fails, the next use tries again (and says why)
                self._con = self._open()
                self._rows_since_open = 0
                self.reopens += 1
            finally:
                self._reopening = False
                self._gate.notify_all()

    async def write_batch_events(self, events: pl.DataFrame) -> None:
        """Store batch events (`controltower.batch_events` schema) off the event loop; an event
        already stored (same unit, time and transition) is not stored again."""
        if events.height:
            await asyncio.to_thread(self.write_batch_events_sync, events)

    def write_batch_events_sync(self, events: pl.DataFrame) -> None:
        table = conform_events(events).drop_nulls(["ts", "site", "area", "line", "unit", "transition"]).with_columns(
            pl.col("ts").dt.epoch("ns")).unique(["site", "area", "line", "unit", "ts", "transition"],
                                                keep="last", maintain_order=True).to_arrow()
        if not table.num_rows:
            return
        with self._write_lock, self._cursor() as cur:
            try:
                cur.register("events", table)
                cur.execute(_INSERT_EVENTS)
            except duckdb.Error as exc:
                raise HistorianError(f"cannot write batch events to the DuckDB historian {self.path}: {exc}") from exc

    def read_batch_events(self, path: str, start: datetime, end: datetime | None = None) -> pl.DataFrame:
        """Batch events of the unit or line (any ISA-95 prefix) at `path` with start <= ts < end,
        plus each unit's last event before `start` and first at or after `end`; sorted by unit,
        time, transition."""
        parts = path.split(".")[: len(_PATH_KEYS)]
        params: dict[str, object] = {"start": _ns(start), "end": _ns(end) if end is not None else 2**63 - 1}
        params |= {key: part for key, part in zip(_PATH_KEYS, parts)}
        where = " AND ".join(f"{key} = ${key}" for key in _PATH_KEYS[: len(parts)])
        with self._cursor() as cur:
            try:
                frame = pl.from_arrow(cur.sql(_READ_EVENTS.format(where=where), params=params).to_arrow_table())
            except duckdb.Error as exc:
                raise HistorianError(f"cannot read batch events from the DuckDB historian {self.path}: {exc}") from exc
        return conform_events(frame) if frame.height else empty_batch_events()

    # --- reading -------------------------------------------------------------------------------

    def read(self, tag_ids: Sequence[str], start: datetime, end: datetime | None = None) -> pl.DataFrame:
        """Samples of these tags with start <= ts < end (end None: no upper bound), sorted by
        tag then time, in the sample schema."""
        if not tag_ids:
            return empty_samples()
        sql = f"SELECT {_COLUMN_LIST} FROM samples WHERE tag_id IN (SELECT unnest($tags)) AND ts >= $start"
        params: dict[str, object] = {"tags": list(tag_ids), "start": _ns(start)}
        if end is not None:
            sql += " AND ts < $end"
            params["end"] = _ns(end)
        return self._query(sql + " ORDER BY tag_id, ts", params)

    def latest(self, tag_ids: Sequence[str] | None = None) -> pl.DataFrame:
        """The newest sample (by time) of each tag (all tags when None), sorted by tag. Scans
        the history: for tools and tests; the screen keeps its own (`controltower.live`)."""
        if tag_ids is None:
            return self._query(_NEWEST_PER_TAG.format(where=""), {})
        return self._query(_NEWEST_PER_TAG.format(where="WHERE tag_id IN (SELECT unnest($tags))"),
                           {"tags": list(tag_ids)})

    def tags(self) -> list[str]:
        """Every tag id with at least one sample, sorted. Scans the history's tag column."""
        return self._query("SELECT DISTINCT tag_id FROM samples ORDER BY tag_id", {}, raw=True)["tag_id"].to_list()

    def count(self) -> int:
        with self._cursor() as cur:
            return cur.execute("SELECT count(*) FROM samples").fetchone()[0]

    def _query(self, sql: str, params: dict[str, object], raw: bool = False) -> pl.DataFrame:
        with self._cursor() as cur:
            try:
                frame = pl.from_arrow(cur.sql(sql, params=params).to_arrow_table())
            except duckdb.Error as exc:
                raise HistorianError(f"cannot read the DuckDB historian {self.path}: {exc}") from exc
        return frame if raw else conform(frame)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for the calling thread, closed after use; counted, so that a reopen waits for it."""
        with self._gate:
            self._gate.wait_for(lambda: not self._reopening)
            if self._closed:
                raise HistorianError(f"the DuckDB historian {self.path} is closed")
            if self._con is None:
                self._con = self._open()
            # A cursor is a connection of its own to the same database: safe to use in this thread.
            cur = self._con.cursor()
            self._readers += 1
        try:
            yield cur
        finally:
            cur.close()
            with self._gate:
                self._readers -= 1
                self._gate.notify_all()

    def close(self) -> None:
        with self._write_lock:
            if not self._closed:
                self._closed = True
                if self._con is not None:
                    self._con.close()
