"""Unit models on simulator data: the false-alarm rate of calibrated and textbook PCA limits on
fresh normal data, and the cost of scoring a micro-batch with a stored model in the live engine.

    .venv/bin/python bench/unit_models.py            # prints the tables, updates docs/benchmarks.md
    .venv/bin/python bench/unit_models.py --no-write

False alarms: vial fillers of the project's simulator (`tests/analytics/test_multivariate_live.py`
has the same set-up and asserts the calibrated rates): PCA fitted on 4 fillers x 6 h (plant
seed 100), rates on 4 other fillers x 6 h per fresh seed. Speed: one bioreactor, a 60 s
micro-batch (12 rows of 5 tags), median of repeats; the baseline is the engine's limit detector
on the same batch, in the same run.
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

import numpy as np
import polars as pl
from benchdoc import write_section

from analytics.detectors.limits import LimitDetector
from analytics.models import fit_unit_model
from analytics.monitors import GoldenMonitor, RowMonitor
from analytics.multivariate import PCADetector
from tests.analytics.simulated_unit import UNIT, batch_seconds, batches, bioreactor_site, simulate
from tests.analytics.test_multivariate_live import filler_rows

ALPHA = 0.01
FRESH_SEEDS = (200, 201, 202)


def false_alarms() -> list[tuple[str, str, float, float]]:
    """(limits, statistic, mean rate over the fresh seeds, min..max spread)."""
    train = pl.concat(filler_rows(100, 6, 4))
    fresh = {seed: filler_rows(seed, 6, 4) for seed in FRESH_SEEDS}
    out = []
    for limits in ("calibrated", "textbook"):
        det = PCADetector(alpha=ALPHA, limits=limits).fit(train)
        rates = {"T²": [], "SPE": []}
        for units in fresh.values():
            stats = [det.statistics(u) for u in units]
            rates["T²"].append(float(np.concatenate([t2 > det.t2_limit_ for t2, _ in stats]).mean()))
            rates["SPE"].append(float(np.concatenate([spe > det.spe_limit_ for _, spe in stats]).mean()))
        for name, r in rates.items():
            out.append((limits, name, float(np.mean(r)), max(r) - min(r)))
    return out


def median_seconds(call, repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speed() -> list[tuple[str, float]]:
    site = bioreactor_site()
    length = batch_seconds(site)
    run = simulate(site, seed=31, seconds=6.2 * length)
    good = batches(run, 2, 6)
    tags = tuple(t.tag_id for t in site.tag_table())
    first = batches(run, 6, 6)
    chunk = first.filter(pl.col("ts") < first["ts"].min() + pl.duration(seconds=60))
    limit = LimitDetector(site.tag_table())
    out = [("limits detector (baseline)", median_seconds(lambda: limit.score(chunk)))]
    for kind in ("pca", "dpca", "iforest"):
        monitor = RowMonitor(fit_unit_model(kind, good, unit=UNIT, variables=tags))
        out.append((f"{kind} monitor", median_seconds(lambda m=monitor: m.score(chunk))))
    golden = GoldenMonitor(fit_unit_model("golden", good, unit=UNIT, variables=tags))
    golden.score(batches(run, 5, 5).tail(50))  # sees batch 6 start
    out.append(("golden monitor", median_seconds(lambda: golden.score(chunk))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    fa = false_alarms()
    sp = speed()
    base = sp[0][1]
    lines = [
        "## Unit models",
        "",
        f"`{date.today().isoformat()}`, `.venv/bin/python bench/unit_models.py` (Python {platform.python_version()}, "
        f"{platform.machine()}, 2 cores shared with other jobs: expect +-30% on speed).",
        "",
        f"False alarms of PCA limits at alpha = {ALPHA} per row on fresh normal simulator data: PCA fitted on 4",
        "vial fillers x 6 h (plant seed 100), rates over 4 other fillers x 6 h (17,280 rows) for each fresh",
        f"plant seed {', '.join(map(str, FRESH_SEEDS))}; mean and spread (max - min) over the seeds.",
        "`calibrated`: (1 - alpha) quantiles of held-out blocks; `textbook`: F distribution (T²),",
        "Jackson-Mudholkar (SPE).",
        "",
        "| limits | statistic | false alarms, % | spread over seeds, % |",
        "|---|---|---:|---:|",
        *[f"| {lim} | {stat} | {100 * rate:.2f} | {100 * spread:.2f} |" for lim, stat, rate, spread in fa],
        "",
        "Scoring one 60 s micro-batch of a bioreactor (12 rows x 5 tags) in the live engine, median of 30:",
        "",
        "| scorer | ms | x baseline |",
        "|---|---:|---:|",
        *[f"| {name} | {1000 * s:.2f} | {s / base:.1f} |" for name, s in sp],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("Unit models", text)


if __name__ == "__main__":
    main()
