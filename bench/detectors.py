"""Detector throughput: LimitDetector + RollingZScore on streaming micro-batches, against a
per-sample Python loop with the same logic (tests/analytics/reference.py).

    .venv/bin/python bench/detectors.py            # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/detectors.py --no-write

Each case streams `BATCHES` consecutive micro-batches (tags x samples per tag, interleaved and
shuffled, ~5% bad quality) through fresh detectors; the first batch fills the z-score windows
and is not timed, the median of the others is reported. The engine row adds level tracking,
event extraction and the AlertBook.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from analytics.detectors import LimitDetector, RollingZScore  # noqa: E402
from analytics.engine import DetectionEngine  # noqa: E402
from controltower.site import DetectorsConfig  # noqa: E402
from tests.analytics.helpers import TEMPERATURE, make_tag, mixed_batches  # noqa: E402
from tests.analytics.reference import ReferenceLimits, ReferenceZScore  # noqa: E402
from benchdoc import DOC, write_section  # noqa: E402

BATCHES = 8
# Share of samples pushed 4 units off (13 sigma; past the alarm limits of the temperature-like tags).
EXCURSION_RATE = 0.002
CASES = ((50, 200), (500, 200))


def make_tags(n: int):
    return [make_tag(f"site.area.line{i % 10}.unit{i}.temperature", **TEMPERATURE) for i in range(n)]


def median_ms(step, batches: list[pl.DataFrame]) -> float:
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        step(b)
        if i > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_case(n_tags: int, per_tag: int) -> dict[str, float]:
    tags = make_tags(n_tags)
    batches = mixed_batches(tags, n_batches=BATCHES, per_tag=per_tag, seed=1, excursion_rate=EXCURSION_RATE)
    lim, z = LimitDetector(tags), RollingZScore(tags)
    vectorised = median_ms(lambda b: (lim.score(b), z.score(b)), batches)
    rlim, rz = ReferenceLimits(tags), ReferenceZScore(tags)
    loop = median_ms(lambda b: (rlim.score(b), rz.score(b)), batches)
    engine = DetectionEngine(tags, DetectorsConfig())
    events: list[int] = []
    eng = median_ms(lambda b: (engine.process(b), events.append(engine.last_events.height)), batches)
    n = n_tags * per_tag
    return {"samples": n, "vectorised_ms": vectorised, "loop_ms": loop, "engine_ms": eng,
            "ratio": loop / vectorised, "samples_per_s": n / vectorised * 1e3,
            "engine_samples_per_s": n / eng * 1e3, "events": statistics.median(events[1:])}


def table(results: list[tuple[int, int, dict[str, float]]]) -> str:
    lines = [
        "| batch (tags x samples) | Polars detectors, ms | per-sample loop, ms | speed-up | samples/s (detectors) | engine, ms | samples/s (engine) | events/batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n_tags, per_tag, r in results:
        lines.append(
            f"| {n_tags} x {per_tag} = {r['samples']:,} | {r['vectorised_ms']:.1f} | {r['loop_ms']:.1f} | "
            f"{r['ratio']:.0f}x | {r['samples_per_s']:,.0f} | {r['engine_ms']:.1f} | {r['engine_samples_per_s']:,.0f} | {r['events']:,.0f} |"
        )
    return "\n".join(lines)


def section(results) -> str:
    return f"""## Detectors

`{date.today().isoformat()}`, `.venv/bin/python bench/detectors.py` (Python {platform.python_version()}, \
Polars {pl.__version__}, {platform.machine()}, 2 cores shared with other jobs: expect +-30%).

`LimitDetector` + `RollingZScore` (window 120, warm-up 30) scoring streaming micro-batches,
median of {BATCHES - 1} batches after a first one that fills the windows, against a per-sample
Python loop with the same logic (`tests/analytics/reference.py`: dicts, a deque and running sums
per tag). Samples: Gaussian noise around the tags' set points, interleaved and shuffled, 5% bad
quality, 2% null, {EXCURSION_RATE:.1%} pushed 4 units off. "Engine" is `DetectionEngine.process`:
both detectors plus per-tag level tracking, event extraction and the `AlertBook`; only the
events (level changes and per-condition peaks) reach Python, so its cost grows with them.

{table(results)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args()
    results = []
    for n_tags, per_tag in CASES:
        results.append((n_tags, per_tag, run_case(n_tags, per_tag)))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    text = section(results)
    print(text)
    if not args.no_write:
        write_section("Detectors", text)
        print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
