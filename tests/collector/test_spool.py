"""The on-disk spool: appends survive close, crash and `kill -9`; replay is in order after the
last acknowledged batch; segments rotate and are freed; the byte bound holds under both overflow
policies; a torn or corrupt tail is cut off and counted. And the pipeline over it: a batch the
historian may have stored just before a crash is not stored twice in DuckDB; a full spool under
`block` holds the sources back until the historian takes batches again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from collector.pipeline import Pipeline
from collector.sinks.duckdb import DuckDbHistorian
from collector.sinks.influxdb import InfluxDbHistorian
from collector.sources import SourceHealth
from collector.spool import HEADER, Spool, SpoolError, SpoolFull, encode_batch, read_spool
from controltower.samples import SAMPLE_SCHEMA, samples_frame
from tests.conftest import REPO, free_port

T0_NS = 1_780_000_000_000_000_000


def batch(index: int, rows: int = 50) -> pl.DataFrame:
    """`rows` samples of 5 tags, one second apart, starting at second `index * rows`."""
    n = rows
    return samples_frame(
        ts=[T0_NS + (index * n + i) * 1_000_000_000 for i in range(n)],
        tag_id=[f"s.a.l.u.t{i % 5}" for i in range(n)],
        value=[float(index * n + i) for i in range(n)],
        batch_id=["B-1" if i % 2 else None for i in range(n)],
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_append_ack_replay_in_order_after_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    seqs = [spool.append(batch(i)) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert spool.pending_batches == 5 and spool.pending_samples == 250
    first = spool.first_pending()
    assert first.seq == 1 and first.batch.equals(batch(0))
    spool.ack(2)
    assert spool.first_pending().seq == 3
    spool.close()

    again = Spool(tmp_path / "spool")
    assert again.acked_seq == 2 and again.in_doubt_seq == 3
    replayed = []
    while (record := again.first_pending()) is not None:
        replayed.append(record)
        again.ack(record.seq)
    assert [r.seq for r in replayed] == [3, 4, 5]
    for r, i in zip(replayed, [2, 3, 4]):  # read back from disk: the same batch, same schema
        assert r.batch.schema == pl.Schema(SAMPLE_SCHEMA) and r.batch.equals(batch(i))
    assert again.append(batch(9)) == 6  # sequence numbers only grow, across restarts
    assert again.oldest_pending_age_s() is not None
    again.close()


def test_segments_rotate_and_are_freed_once_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64 << 10, max_bytes=1 << 20)
    record_bytes = HEADER.size + len(encode_batch(batch(0, 2000)))
    for i in range(12):
        spool.append(batch(i, 2000))
    per_segment = -(-(64 << 10) // record_bytes)
    assert len(segments(tmp_path)) == -(-12 // per_segment) > 1
    assert spool.disk_bytes == sum(p.stat().st_size for p in segments(tmp_path))
    spool.ack(11)
    # Everything but the segment being written, which still holds seq 12, is gone.
    assert len(segments(tmp_path)) == 1
    assert spool.pending_batches == 1 and spool.first_pending().seq == 12
    spool.close()


def test_drop_oldest_keeps_the_newest_within_max_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64 << 10, max_bytes=256 << 10, overflow="drop_oldest")
    for i in range(60):
        spool.append(batch(i, 2000))
        assert spool.disk_bytes <= spool.max_bytes
    dropped = spool.dropped_batches
    assert dropped > 0 and spool.dropped_samples == dropped * 2000
    # What is left is the newest run, contiguous up to the last append; nothing dropped is replayed.
    assert spool.pending_batches == 60 - dropped
    assert spool.first_pending().seq == dropped + 1
    spool.close()
    acked, left = read_spool(tmp_path)
    assert acked == dropped and left.height == (60 - dropped) * 2000
    assert left["value"].max() == batch(59, 2000)["value"].max()


def test_block_refuses_until_the_historian_takes_some(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64 << 10, max_bytes=256 << 10, overflow="block")
    appended = 0
    with pytest.raises(SpoolFull):
        for i in range(100):
            spool.append(batch(i, 2000))
            appended += 1
    assert 0 < appended < 100 and spool.dropped_batches == 0
    assert spool.disk_bytes <= spool.max_bytes
    assert not spool.wait_for_room(40_000, timeout_s=0.05)
    spool.ack(appended // 2)
    assert spool.wait_for_room(40_000, timeout_s=0.05)
    assert spool.append(batch(appended, 2000)) == appended + 1
    spool.close()


def test_torn_tail_is_truncated_counted_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(batch(i))
    spool.close()
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    with open(segment, "r+b") as f:  # the last record half written, as after a crash mid-append
        f.truncate(size - 100)

    again = Spool(tmp_path)
    assert again.corrupt_records == 1 and again.pending_batches == 2
    assert [again.first_pending().seq] == [1]
    assert again.append(batch(7)) == 3
    again.close()
    _, left = read_spool(tmp_path)
    assert left.height == 150 and left["value"].max() == batch(7)["value"].max()


def test_corrupt_record_fails_its_crc_and_is_cut_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(batch(i))
    spool.close()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the last payload
    segment.write_bytes(bytes(data))
    garbage = tmp_path / "00000000000000000009.seg"
    garbage.write_bytes(b"\x00" * 20)  # a segment created but never written whole

    again = Spool(tmp_path)
    assert again.corrupt_records == 2 and again.pending_batches == 2
    assert not garbage.exists()
    again.close()


def test_one_process_per_spool_and_a_bad_cursor_is_named(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path)
    spool.close()
    (tmp_path / "ack.json").write_text("{oops")
    with pytest.raises(SpoolError, match=r"ack\.json"):
        Spool(tmp_path)


APPENDER = textwrap.dedent(
    """
    import sys
    from tests.collector.test_spool import batch
    from collector.spool import Spool
    spool = Spool(sys.argv[1], segment_bytes=64 << 10, max_bytes=1 << 30)
    i = 0
    while True:
        seq = spool.append(batch(i, 500))
        print(seq, flush=True)  # only after append returned, i.e. after the fsync
        i += 1
    """
)


def test_every_appended_batch_survives_kill_9(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(tmp_path / "spool")], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    confirmed = []
    try:
        for line in proc.stdout:
            confirmed.append(int(line))
            if len(confirmed) >= 150:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    confirmed += [int(line) for line in proc.stdout.read().split()]
    spool = Spool(tmp_path / "spool")
    seqs = []
    while (record := spool.first_pending()) is not None:
        assert record.batch.height == 500
        seqs.append(record.seq)
        spool.ack(record.seq)
    spool.close()
    assert seqs[: len(confirmed)] == confirmed == list(range(1, len(confirmed) + 1))
    assert len(seqs) - len(confirmed) <= 1  # at most the one written but not yet confirmed


# --- the pipeline over the spool --------------------------------------------------------------


class BatchListSource:
    """A source that emits the given batches, then stays connected until cancelled."""

    def __init__(self, batches: list[pl.DataFrame]):
        self.name = "listed"
        self.health = SourceHealth(name=self.name, kind="test", connected=True)
        self.batches = batches

    async def run(self, emit) -> None:
        for b in self.batches:
            await emit(b)
            self.health.batches_out += 1
            self.health.samples_in += b.height
        await asyncio.Event().wait()


async def test_a_batch_in_doubt_is_not_stored_twice_in_duckdb(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(4):
        spool.append(batch(i))
    historian = DuckDbHistorian(tmp_path / "historian.duckdb")
    # The forwarder stored seq 1 and half of seq 2 (say, two writes), then the process died unacknowledged.
    historian.write_sync(batch(0))
    spool.ack(1)
    historian.write_sync(batch(1).head(20))
    spool.close()

    spool = Spool(tmp_path / "spool")
    assert spool.in_doubt_seq == 2
    pipeline = Pipeline([], historian, spool=spool, drain_timeout_s=10)
    await pipeline.run()  # no sources: forwards what is pending, then stops
    pipeline.close()
    stored = historian.read([f"s.a.l.u.t{i}" for i in range(5)], start=batch(0)["ts"].min())
    historian.close()
    assert stored.height == 200 == stored.select("tag_id", "ts").n_unique()
    assert pipeline.samples_stored == 200 - 50 - 20
    assert read_spool(tmp_path / "spool")[1].height == 0


async def test_block_holds_the_sources_while_the_historian_is_down(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=64 << 10, max_bytes=256 << 10, overflow="block")
    batches = [batch(i, 2000) for i in range(40)]
    source = BatchListSource(batches)
    down = InfluxDbHistorian(url=f"http://127.0.0.1:{free_port()}", api="v1", max_attempts=1)  # nothing listens
    pipeline = Pipeline([source], down, spool=spool, retry_max_s=0.2)
    task = asyncio.create_task(pipeline.run())
    try:
        for _ in range(100):
            if not pipeline.historian_ok and source.health.batches_out:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        held = source.health.batches_out
        await asyncio.sleep(0.5)
        assert 0 < held == source.health.batches_out < 40, "the full spool must hold the source back"
        assert spool.disk_bytes <= spool.max_bytes and pipeline.spool_dropped_batches == 0
        assert pipeline.spool_health()["pending_batches"] == spool.pending_batches

        # The historian answers again (here: the embedded one takes over), and the source goes on.
        pipeline.historian = DuckDbHistorian(tmp_path / "historian.duckdb")
        for _ in range(200):
            if source.health.batches_out == 40 and spool.pending_batches == 0:
                break
            await asyncio.sleep(0.05)
        assert source.health.batches_out == 40 and pipeline.emit_blocked_s > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pipeline.close()
    stored = pipeline.historian.read([f"s.a.l.u.t{i}" for i in range(5)], start=batches[0]["ts"].min())
    pipeline.historian.close()
    assert stored.height == 80_000 == stored.select("tag_id", "ts").n_unique()
