"""Historian throughput: line-protocol encoding and DuckDB writes/reads.

    .venv/bin/python bench/historian.py            # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/historian.py --no-write

Encoding: 100k samples (200 tags x 500 times, full ISA-95 path, a batch id on half of them) to
line-protocol bytes, vectorised with Polars (`collector.sinks.lineprotocol.encode`) against the
usual per-sample way: one influxdb-client `Point` per sample, `to_line_protocol()`, joined.
DuckDB: batches of 1k and 10k samples written through `DuckDbHistorian.write` (asyncio, worker
thread, Arrow insert) into a fresh file, then one tag over a 10-minute window read back from the
1M-sample file. Each figure is the median of several repeats.
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
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402
from influxdb_client import Point, WritePrecision  # noqa: E402

from collector.sinks.duckdb import DuckDbHistorian  # noqa: E402
from collector.sinks.lineprotocol import encode  # noqa: E402
from controltower.samples import samples_frame  # noqa: E402
from benchdoc import DOC, write_section  # noqa: E402

T0 = datetime(2024, 6, 10, tzinfo=UTC)
T0_NS = 1_717_977_600_000_000_000


def make_batch(
    n_tags: int, per_tag: int, start_ns: int = T0_NS, step_ns: int = 1_000_000_000
) -> pl.DataFrame:
    """n_tags x per_tag samples, time-major (as a collector emits them)."""
    tags = [f"basel.gran.l{t % 4}.u{t % 16}.tag{t}" for t in range(n_tags)]
    paths = pl.DataFrame(
        {
            "tag_id": tags,
            "site": ["basel"] * n_tags,
            "area": ["gran"] * n_tags,
            "line": [f"l{t % 4}" for t in range(n_tags)],
            "unit": [f"u{t % 16}" for t in range(n_tags)],
        }
    )
    n = n_tags * per_tag
    ts = pl.int_range(0, n, eager=True) // n_tags * step_ns + start_ns
    return samples_frame(
        ts=ts,
        tag_id=pl.Series(tags * per_tag),
        value=pl.Series(range(n), dtype=pl.Float64) * 0.37 + 20.0,
        server_ts=ts + 1_500_000,
        batch_id=pl.Series(["B-2024-17" if i % 2 else None for i in range(n)], dtype=pl.String),
        tag_paths=paths,
    )


def median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def encode_with_points(batch: pl.DataFrame) -> bytes:
    """The per-sample baseline: one influxdb-client Point per row."""
    lines = []
    rows = batch.with_columns(pl.col("ts", "server_ts").dt.epoch("ns"), pl.col("quality").cast(pl.String))
    for row in rows.iter_rows(named=True):
        point = (
            Point("process_values")
            .tag("area", row["area"])
            .tag("line", row["line"])
            .tag("quality", row["quality"])
            .tag("site", row["site"])
            .tag("tag_id", row["tag_id"])
            .tag("unit", row["unit"])
            .field("value", row["value"])
            .time(row["ts"], WritePrecision.NS)
        )
        if row["batch_id"] is not None:
            point.field("batch_id", row["batch_id"])
        if row["server_ts"] is not None:
            point.field("server_ts", row["server_ts"])
        lines.append(point.to_line_protocol())
    return "\n".join(lines).encode()


def bench_encoding(repeats: int) -> dict[str, float]:
    batch = make_batch(200, 500)
    vectorised = median_s(lambda: encode(batch), repeats)
    points = median_s(lambda: encode_with_points(batch), max(1, repeats // 2))
    return {
        "samples": batch.height,
        "vectorised_s": vectorised,
        "points_s": points,
        "bytes": len(encode(batch)),
    }


def bench_duckdb(batch_size: int, n_batches: int, repeats: int) -> dict[str, float]:
    n_tags = 100
    batches = [
        make_batch(n_tags, batch_size // n_tags, T0_NS + i * (batch_size // n_tags) * 10**9)
        for i in range(n_batches)
    ]

    async def write_all(h: DuckDbHistorian) -> None:
        for b in batches:
            await h.write(b)

    times = []
    read_times: list[float] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            h = DuckDbHistorian(Path(tmp) / "bench.duckdb")
            started = time.perf_counter()
            asyncio.run(write_all(h))
            times.append(time.perf_counter() - started)
            start = T0 + timedelta(seconds=n_batches * (batch_size // n_tags) // 2)
            tag = "basel.gran.l1.u1.tag1"
            read_times.append(median_s(lambda: h.read([tag], start, start + timedelta(minutes=10)), 5))
            h.close()
    total = batch_size * n_batches
    return {
        "batch": batch_size,
        "batches": n_batches,
        "rate": total / statistics.median(times),
        "stored": total,
        "read_ms": statistics.median(read_times) * 1000,
    }


def section(enc: dict[str, float], duck: list[dict[str, float]]) -> str:
    ratio = enc["points_s"] / enc["vectorised_s"]
    rows = "\n".join(
        f"| {d['batch']:,} | {d['batches']} | {d['rate']:,.0f} | {d['stored']:,} | {d['read_ms']:.1f} |"
        for d in duck
    )
    return f"""## Historian

`.venv/bin/python bench/historian.py` on {date.today().isoformat()}, Python {platform.python_version()},
Polars {pl.__version__}, {platform.machine()}, {os.cpu_count()} cores (shared with other jobs:
expect +-30%). Medians of several repeats.

Line-protocol encoding of {enc["samples"]:,} samples (200 tags x 500 times, full path, batch id on half;
{enc["bytes"] / 1e6:.1f} MB):

| encoder | time | samples/s |
|---|---:|---:|
| vectorised Polars expressions (`lineprotocol.encode`) | {enc["vectorised_s"] * 1000:.0f} ms | {enc["samples"] / enc["vectorised_s"]:,.0f} |
| one influxdb-client `Point` per sample | {enc["points_s"] * 1000:.0f} ms | {enc["samples"] / enc["points_s"]:,.0f} |
| ratio | {ratio:.1f}x faster | |

DuckDB historian writes (`await DuckDbHistorian.write`, Arrow insert in a worker thread, into a
fresh file), then reads of one tag over 10 minutes from the stored samples:

| batch size | batches | samples/s written | samples stored | read 1 tag x 10 min (ms) |
|---:|---:|---:|---:|---:|
{rows}
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not update docs/benchmarks.md"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    enc = bench_encoding(args.repeats)
    print(
        f"encode {enc['samples']:,}: vectorised {enc['vectorised_s'] * 1000:.0f} ms, Point {enc['points_s'] * 1000:.0f} ms",
        flush=True,
    )
    duck = []
    for batch_size, n_batches in ((1_000, 200), (10_000, 100)):
        duck.append(bench_duckdb(batch_size, n_batches, max(1, args.repeats // 2)))
        print(f"duckdb batch {batch_size:,}: {duck[-1]['rate']:,.0f} samples/s", flush=True)
    text = section(enc, duck)
    print(text)
    if not args.no_write:
        write_section("Historian", text)
        print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
