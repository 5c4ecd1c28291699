"""The DuckDB historian: exact round trip, time bounds, latest/tags, concurrency, locking."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from collector.sinks import HistorianError, open_historian
from collector.sinks.duckdb import DuckDbHistorian
from controltower.samples import SAMPLE_SCHEMA, samples_frame
from controltower.site import DuckDbHistorianConfig

T0 = datetime(2024, 6, 10, 8, 0, tzinfo=UTC)
T0_NS = 1_718_006_400_000_000_000
PATHS = pl.DataFrame(
    {
        "tag_id": ["basel.gran.l1.gr1.temp", "basel.gran.l1.gr1.speed", "basel.coat.l2.c1.temp"],
        "site": ["basel", "basel", "basel"],
        "area": ["gran", "gran", "coat"],
        "line": ["l1", "l1", "l2"],
        "unit": ["gr1", "gr1", "c1"],
    }
)
TAGS = PATHS["tag_id"].to_list()


def _batch(start_ns: int, n: int, step_ns: int = 1_000_000_007) -> pl.DataFrame:
    """n samples per tag from start_ns; odd ns offsets so truncation to µs would show."""
    rows = [(start_ns + i * step_ns, tag, float(i) + k / 10) for i in range(n) for k, tag in enumerate(TAGS)]
    ts, tags, values = zip(*rows)
    qualities = ["good", "uncertain", "bad"]
    return samples_frame(
        ts=list(ts),
        tag_id=list(tags),
        value=list(values),
        quality=[qualities[i % 3] for i in range(len(rows))],
        server_ts=[t + 123 if i % 2 else None for i, t in enumerate(ts)],
        batch_id=["B-7" if i % 4 == 0 else None for i in range(len(rows))],
        tag_paths=PATHS,
    )


@pytest.fixture
def historian(tmp_path):
    h = DuckDbHistorian(tmp_path / "deep" / "dir" / "historian.duckdb")
    yield h
    h.close()


async def test_round_trip_is_exact_schema_values_and_ns(historian):
    batch = _batch(T0_NS, 50)
    await historian.write(batch)
    back = historian.read(TAGS, T0)
    assert back.schema == pl.Schema(SAMPLE_SCHEMA)
    assert back.equals(batch.sort("tag_id", "ts"))
    assert (
        back.select("tag_id", "site", "area", "line", "unit")
        .unique()
        .sort("tag_id")
        .equals(PATHS.sort("tag_id"))
    )


async def test_read_bounds_are_start_inclusive_end_exclusive(historian):
    await historian.write(_batch(T0_NS, 10, step_ns=1_000_000_000))
    back = historian.read(["basel.gran.l1.gr1.temp"], T0 + timedelta(seconds=2), T0 + timedelta(seconds=5))
    assert back["ts"].to_list() == [T0 + timedelta(seconds=s) for s in (2, 3, 4)]
    assert historian.read(["basel.gran.l1.gr1.temp"], T0 + timedelta(seconds=20)).height == 0
    assert historian.read([], T0).height == 0


async def test_naive_datetimes_are_utc(historian):
    await historian.write(_batch(T0_NS, 3, step_ns=1_000_000_000))
    naive = T0.replace(tzinfo=None)
    assert historian.read(TAGS[:1], naive + timedelta(seconds=1)).height == 2


async def test_read_is_sorted_by_tag_then_time_across_batches(historian):
    await historian.write(_batch(T0_NS + 10 * 1_000_000_007, 5))
    await historian.write(_batch(T0_NS, 5))
    back = historian.read(TAGS, T0)
    assert back.height == 30
    assert back.equals(back.sort("tag_id", "ts"))


async def test_latest_and_tags(historian):
    await historian.write(_batch(T0_NS, 5))
    await historian.write(_batch(T0_NS - 10**12, 3))  # older data arriving late must not win
    latest = historian.latest(TAGS[:2])
    assert latest["tag_id"].to_list() == sorted(TAGS[:2])
    expected_ts = T0 + timedelta(microseconds=4 * 1_000_000_007 / 1000)
    assert all(abs(t - expected_ts) < timedelta(microseconds=1) for t in latest["ts"].to_list())
    assert historian.latest().height == 3
    assert historian.tags() == sorted(TAGS)


@contextlib.contextmanager
def readers_in_threads(historian, n: int = 3):
    """`n` threads reading the whole range in a loop while the body runs; yields the row counts
    they saw; on exit, every read must have succeeded and seen whole batches only (each write
    is one transaction of 3 tags x N samples)."""
    errors: list[BaseException] = []
    counts: list[int] = []
    done = threading.Event()

    def reader():
        try:
            while not done.is_set():
                frame = historian.read(TAGS, T0, T0 + timedelta(days=1))
                assert frame.height % 3 == 0
                counts.append(frame.height)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        yield counts
    finally:
        done.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors, errors


def test_readers_in_threads_while_writing(historian):
    batches = [_batch(T0_NS + i * 100 * 1_000_000_007, 100) for i in range(10)]

    async def write_all():
        await asyncio.gather(*(historian.write(b) for b in batches))

    with readers_in_threads(historian) as counts:
        asyncio.run(write_all())
    assert counts and max(counts) <= 3000
    assert historian.read(TAGS, T0).height == 3000
    assert historian.count() == 3000


def test_a_file_locked_by_another_process_is_a_clear_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('ok', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(HistorianError, match="locked.duckdb") as info:
            DuckDbHistorian(path)
        assert "another process" in str(info.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_open_historian_puts_a_relative_path_under_the_data_dir(tmp_path):
    h = open_historian(DuckDbHistorianConfig(path="hist/site.duckdb"), tmp_path)
    try:
        assert isinstance(h, DuckDbHistorian)
        assert (tmp_path / "hist" / "site.duckdb").exists()
    finally:
        h.close()


def test_a_closed_historian_refuses_reads(historian):
    historian.close()
    with pytest.raises(HistorianError, match="closed"):
        historian.read(TAGS, T0)


def test_reopens_between_writes_while_readers_read(tmp_path):
    """Every `reopen_every_rows` rows the historian closes and opens its database again (to give
    back DuckDB's per-row-group bookkeeping); readers in other threads never see an error or a
    partial batch, and every row written is there after the reopens."""
    historian = DuckDbHistorian(tmp_path / "h.duckdb", reopen_every_rows=270)  # a write is 30 samples x 3 tags
    with readers_in_threads(historian) as counts:
        for i in range(12):
            historian.write_sync(_batch(T0_NS + i * 30 * 1_000_000_007, 30))
    assert counts
    assert historian.reopens == 4  # after writes 3, 6, 9 and 12
    assert historian.count() == 12 * 30 * 3
    assert historian.read(TAGS, T0).height == 12 * 30 * 3
    historian.close()
    with pytest.raises(HistorianError, match="closed"):
        historian.count()
