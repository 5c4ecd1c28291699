"""A backlog in the spool is forwarded in runs: the oldest pending batches up to a sample bound,
in order, each stored in one historian write and acknowledged as a whole; a run that may have
been stored before a crash is not stored twice in DuckDB."""

from __future__ import annotations

from pathlib import Path

from collector.pipeline import Pipeline
from collector.sinks.duckdb import DuckDbHistorian
from collector.spool import Spool
from tests.collector.test_spool import batch


def test_a_run_is_the_oldest_pending_batches_within_the_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.pending_run(1000) == []
    for i in range(5):
        spool.append(batch(i, rows=50))
    assert [r.seq for r in spool.pending_run(120)] == [1, 2]
    assert [r.seq for r in spool.pending_run(10)] == [1]  # one batch even when it alone exceeds the bound
    spool.ack(2)
    assert [r.seq for r in spool.pending_run(1000)] == [3, 4, 5]
    spool.close()
    again = Spool(tmp_path / "spool")  # read back from the segments, not from the cache
    run = again.pending_run(1000)
    assert [r.seq for r in run] == [3, 4, 5] and [r.batch.height for r in run] == [50, 50, 50]
    assert run[0].batch.equals(batch(2, rows=50))
    again.close()


class CountingHistorian(DuckDbHistorian):
    def __init__(self, path: Path):
        super().__init__(path)
        self.writes: list[int] = []

    async def write(self, b) -> None:
        self.writes.append(b.height)
        await super().write(b)


async def test_a_backlog_is_stored_in_few_writes_and_a_run_in_doubt_not_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(10):
        spool.append(batch(i, rows=50))
    historian = CountingHistorian(tmp_path / "historian.duckdb")
    # Batches 1-3 were stored as one run just before a crash, not acknowledged.
    historian.write_sync(batch(0, rows=50).vstack(batch(1, rows=50)).vstack(batch(2, rows=50)))
    spool.close()

    spool = Spool(tmp_path / "spool")
    assert spool.in_doubt_seq == 1
    pipeline = Pipeline([], historian, spool=spool, drain_timeout_s=10, max_write_samples=200)
    await pipeline.run()
    pipeline.close()
    # 10 batches of 50 in 3 writes; the first run (batches 1-4) less the 150 samples already stored.
    assert historian.writes == [50, 200, 100]
    stored = historian.read([f"s.a.l.u.t{i}" for i in range(5)], start=batch(0)["ts"].min())
    historian.close()
    assert stored.height == 500 == stored.select("tag_id", "ts").n_unique()
    assert pipeline.samples_stored == 500 - 150
