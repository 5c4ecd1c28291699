"""Unit models on simulator data: the false-alarm rate of calibrated and textbook PCA limits on
fresh normal data, and the cost of scoring a micro-batch with a stored model in the live engine.

    .venv/bin/python bench/unit_models.py            # prints the tables, updates docs/benchmarks.md
    .venv/bin/python bench/unit_models.py --no-write

False alarms: vial fillers of the project's simulator (`tests/analytics/test_multivariate_live.py`
has the same set-up and asserts the calibrated rates): PCA fitted on 4 fillers x 6 h (plant
seed 100), rates on 4 other fillers x 6 h per fresh seed. Speed: one bioreactor, a 60 s
micro-batch (12 rows of 5 tags) scored by each stored kind's live monitor (pca, dpca, iforest,
wpca, knn and wknn with their memory full at `KNN_MEMORY` rows, golden), median of repeats of the wall time and
of the process CPU time (rows/s per core = rows / CPU s: the machine is shared), and the same
on a 1 h backlog (720 rows, e.g. a worker's warm-up) where the per-call cost is spread; the
baseline is the engine's limit detector on the same batches, in the same run.
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
from analytics.models import KNN_MEMORY, fit_unit_model
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


REPEATS = 30
BACKLOG_REPEATS = 10


def median_seconds(call, repeats: int = REPEATS) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) of `call()` over `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def speed() -> tuple[list[tuple[str, float, float, float]], int, int]:
    """(scorer, median wall s and CPU s of one micro-batch, median CPU s of the backlog) per
    scorer; the micro-batch's and the backlog's rows."""
    site = bioreactor_site()
    length = batch_seconds(site)
    run = simulate(site, seed=31, seconds=6.2 * length)
    good = batches(run, 2, 6)
    tags = tuple(t.tag_id for t in site.tag_table())
    first = batches(run, 6, 6)
    chunk = first.filter(pl.col("ts") < first["ts"].min() + pl.duration(seconds=60))
    backlog = first.filter(pl.col("ts") < first["ts"].min() + pl.duration(hours=1))
    scorers = [("limits detector (baseline)", LimitDetector(site.tag_table()).score)]
    for kind in ("pca", "dpca", "iforest", "wpca"):
        scorers.append((f"{kind} monitor", RowMonitor(fit_unit_model(kind, good, unit=UNIT, variables=tags)).score))
    # knn as stored: its memory full (KNN_MEMORY rows), from batches 1-6 of another run (the 5
    # good batches above make fewer rows than that at 5 s).
    more = batches(simulate(site, seed=32, seconds=6.2 * length), 1, 6)
    knn = RowMonitor(fit_unit_model("knn", more, unit=UNIT, variables=tags))
    assert knn.fitted.model.memory_.shape[0] == KNN_MEMORY, knn.fitted.model.memory_.shape
    scorers.append((f"knn monitor ({KNN_MEMORY:,}-row memory)", knn.score))
    wknn = RowMonitor(fit_unit_model("wknn", more, unit=UNIT, variables=tags))
    assert wknn.fitted.model.memory_.shape[0] == KNN_MEMORY, wknn.fitted.model.memory_.shape
    scorers.append((f"wknn monitor ({KNN_MEMORY:,}-row memory)", wknn.score))
    golden = GoldenMonitor(fit_unit_model("golden", good, unit=UNIT, variables=tags))
    golden.score(batches(run, 5, 5).tail(50))  # sees batch 6 start
    scorers.append(("golden monitor", golden.score))
    out = [(name, *median_seconds(lambda s=score: s(chunk)),
            median_seconds(lambda s=score: s(backlog), BACKLOG_REPEATS)[1]) for name, score in scorers]
    return out, chunk["ts"].n_unique(), backlog["ts"].n_unique()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    fa = false_alarms()
    sp, rows, backlog_rows = speed()
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
        f"Scoring one 60 s micro-batch of a bioreactor ({rows} rows x 5 tags) in the live engine, median of {REPEATS}",
        "calls: wall ms, and rows per CPU-second of the process (per core); then a 1 h backlog",
        f"({backlog_rows} rows, e.g. a worker's warm-up), median of {BACKLOG_REPEATS}. The knn monitor compares each row",
        f"with its whole memory, {KNN_MEMORY:,} rows as `model fit --kind knn` stores it (fitted on 6 batches); so does wknn.",
        "",
        "| scorer | ms | x baseline | rows/s per core | rows/s per core, 1 h backlog |",
        "|---|---:|---:|---:|---:|",
        *[f"| {name} | {1000 * s:.2f} | {s / base:.1f} | {rows / c:,.0f} | {backlog_rows / h:,.0f} |"
          for name, s, c, h in sp],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("Unit models", text)


if __name__ == "__main__":
    main()
