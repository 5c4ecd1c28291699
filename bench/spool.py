"""Store and forward: what the on-disk spool costs.

    .venv/bin/python bench/spool.py            # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/spool.py --no-write

Append: batches of 1k and 10k samples (100 tags, full ISA-95 path, a batch id on half) appended
to a fresh spool, each written and fsynced before the next (`Spool.append`, as `emit` does).
Replay: the same spool reopened (so read from disk, CRC checked, not from the memory cache) and
forwarded without a historian: `first_pending` + `ack` (an fsynced cursor) per batch.
Write-ahead overhead: the same batches through the `Pipeline` into a fresh DuckDB historian,
with the spool (every batch appended, then forwarded and acknowledged) and without it (in-memory
queue), from a source that emits as fast as the pipeline takes them; the ratio is the cost of
durability at full speed. Each figure is the median of several repeats, on the disk that holds
the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl
from benchdoc import DOC, write_section
from historian import T0_NS, make_batch

from collector.pipeline import Pipeline
from collector.sinks.duckdb import DuckDbHistorian
from collector.sources import SourceHealth
from collector.spool import Spool

N_TAGS = 100


def batches_of(size: int, count: int) -> list[pl.DataFrame]:
    per_tag = size // N_TAGS
    return [make_batch(N_TAGS, per_tag, T0_NS + i * per_tag * 10**9) for i in range(count)]


def bench_spool(batches: list[pl.DataFrame], repeats: int) -> dict[str, float]:
    append_s, replay_s, disk = [], [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            spool = Spool(Path(tmp) / "spool", max_bytes=4 << 30, segment_bytes=16 << 20)
            started = time.perf_counter()
            for b in batches:
                spool.append(b)
            append_s.append(time.perf_counter() - started)
            disk = spool.disk_bytes
            spool.close()

            spool = Spool(Path(tmp) / "spool", max_bytes=4 << 30, segment_bytes=16 << 20)
            started = time.perf_counter()
            while (record := spool.first_pending()) is not None:
                spool.ack(record.seq)
            replay_s.append(time.perf_counter() - started)
            spool.close()
    n, samples = len(batches), sum(b.height for b in batches)
    return {
        "batch": batches[0].height,
        "batches": n,
        "append_bps": n / statistics.median(append_s),
        "append_sps": samples / statistics.median(append_s),
        "replay_bps": n / statistics.median(replay_s),
        "replay_sps": samples / statistics.median(replay_s),
        "bytes_per_sample": disk / samples,
    }


class _ListSource:
    def __init__(self, batches: list[pl.DataFrame]):
        self.name = "bench"
        self.health = SourceHealth(name="bench", kind="bench", connected=True)
        self.batches = batches

    async def run(self, emit) -> None:
        for b in self.batches:
            await emit(b)


def _through_pipeline(batches: list[pl.DataFrame], with_spool: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        historian = DuckDbHistorian(Path(tmp) / "bench.duckdb")
        spool = Spool(Path(tmp) / "spool", max_bytes=4 << 30) if with_spool else None
        pipeline = Pipeline([_ListSource(batches)], historian, spool=spool, drain_timeout_s=600)
        started = time.perf_counter()
        asyncio.run(pipeline.run())
        elapsed = time.perf_counter() - started
        pipeline.close()
        assert historian.count() == sum(b.height for b in batches), "not everything was stored"
        historian.close()
        return elapsed


def bench_overhead(batches: list[pl.DataFrame], repeats: int) -> dict[str, float]:
    direct = statistics.median(_through_pipeline(batches, False) for _ in range(repeats))
    ahead = statistics.median(_through_pipeline(batches, True) for _ in range(repeats))
    samples = sum(b.height for b in batches)
    return {
        "batch": batches[0].height,
        "batches": len(batches),
        "direct_sps": samples / direct,
        "ahead_sps": samples / ahead,
        "ratio": ahead / direct,
    }


def section(spools: list[dict[str, float]], overheads: list[dict[str, float]]) -> str:
    spool_rows = "\n".join(
        f"| {s['batch']:,} | {s['batches']} | {s['append_bps']:,.0f} | {s['append_sps']:,.0f} | "
        f"{s['replay_bps']:,.0f} | {s['replay_sps']:,.0f} | {s['bytes_per_sample']:.1f} |"
        for s in spools
    )
    overhead_rows = "\n".join(
        f"| {o['batch']:,} | {o['batches']} | {o['direct_sps']:,.0f} | {o['ahead_sps']:,.0f} | {o['ratio']:.2f}x |"
        for o in overheads
    )
    return f"""## Store and forward

`.venv/bin/python bench/spool.py` on {date.today().isoformat()}, Python {platform.python_version()},
Polars {pl.__version__}, {platform.machine()}, {os.cpu_count()} cores (shared with other jobs:
expect +-30%; fsync cost depends on the disk). Medians of several repeats.

Spool append (Arrow IPC + LZ4, CRC, write, fsync per batch: what `emit` waits for) and replay
after reopening (read from disk, CRC checked, decoded, cursor fsynced per batch), 100 tags:

| batch size | batches | append batches/s | append samples/s | replay batches/s | replay samples/s | bytes/sample on disk |
|---:|---:|---:|---:|---:|---:|---:|
{spool_rows}

Write-ahead overhead: the same batches through the `Pipeline` into a fresh DuckDB historian, without
the spool (in-memory queue) and with it (appended + fsynced, forwarded, acknowledged):

| batch size | batches | direct samples/s | write-ahead samples/s | time ratio |
|---:|---:|---:|---:|---:|
{overhead_rows}

A collector flushes each source every 500 ms by default, i.e. a few batches per second: far below
what the spool sustains, so durability costs latency rather than throughput: one append of a
1,000-sample batch takes {1000 / spools[0]['append_bps']:.1f} ms here (a virtual disk; a disk
without a write cache takes longer per fsync).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spools, overheads = [], []
    for size, count in ((1_000, 300), (10_000, 60)):
        batches = batches_of(size, count)
        spools.append(bench_spool(batches, args.repeats))
        print(f"spool batch {size:,}: append {spools[-1]['append_sps']:,.0f} samples/s, "
              f"replay {spools[-1]['replay_sps']:,.0f} samples/s", flush=True)
        overheads.append(bench_overhead(batches, args.repeats))
        print(f"pipeline batch {size:,}: write-ahead/direct time {overheads[-1]['ratio']:.2f}x", flush=True)
    text = section(spools, overheads)
    print(text)
    if not args.no_write:
        write_section("Store and forward", text)
        print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
