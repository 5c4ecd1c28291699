"""SKAB outlier detection: the multivariate detectors with SKAB's split and metric, beside the
published leaderboard, plus PCA T²/SPE scoring speed.

    .venv/bin/python bench/skab.py            # prints the tables, updates docs/benchmarks.md
    .venv/bin/python bench/skab.py --no-write

Split and metric as in the dataset README (../shared/datasets/skab): per labelled file the first
400 rows train, the rest are scored; confusion matrices summed over the 34 files, then F1,
FAR % and MAR %. Every configuration is fixed before the test rows are scored (`analytics.offline`
documents how `auto` and the smoothing were chosen from training data only); nothing here
tunes on test rows. Two calibrations of the threshold are reported:
- "train rows": the threshold comes from the 400 train rows only (blocked cross-fitting);
- "+ anomaly-free": the same detectors fitted on the same 400 rows, the threshold calibrated by
  replaying `anomaly-free/anomaly-free.csv` (fit on 400 rows, score the next len(test) rows).
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
from benchdoc import DOC, write_section

from analytics.multivariate import PCADetector
from analytics.offline import AUTO, HALFLIFE, read_table, run

SKAB = REPO / ".." / "shared" / "datasets" / "skab"
LABELS = ("anomaly", "changepoint")
N_TRAIN = 400
ALPHA = 0.01
LEADERBOARD = [  # SKAB README, outlier detection, test rows
    ("Conv-AE", 0.78, 13.55, 28.02), ("MSET", 0.78, 39.73, 14.13),
    ("T-squared+Q (PCA-based)", 0.76, 26.62, 24.92), ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T-squared", 0.66, 19.21, 42.6), ("LSTM-VAE", 0.56, 9.13, 55.03), ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("MSCRED", 0.36, 49.94, 69.88), ("Vanilla AE", 0.39, 2.59, 75.15), ("Isolation forest", 0.29, 2.56, 82.89),
    ("Null detector", 0.0, 0.0, 100.0),
]


def labelled_files() -> list[Path]:
    files = sorted(p for p in SKAB.resolve().glob("*/*.csv") if p.parent.name != "anomaly-free")
    if len(files) != 34:
        raise SystemExit(f"expected 34 labelled SKAB files under {SKAB.resolve()}, found {len(files)}")
    return files


def metrics(tp: int, fp: int, fn: int, tn: int) -> tuple[float, float, float]:
    """SKAB's F1, FAR %, MAR %."""
    return tp / (tp + (fp + fn) / 2), 100 * fp / (fp + tn), 100 * fn / (fn + tp)


def evaluate(method: str, normal: pl.DataFrame | None) -> tuple[float, float, float]:
    tp = fp = fn = tn = 0
    for path in labelled_files():
        data = read_table(path)
        train, test = data[:N_TRAIN], data[N_TRAIN:]
        alarm = run(train, test, method=method, alpha=ALPHA, exclude=LABELS, normal=normal).result["alarm"]
        y, p = test["anomaly"].to_numpy() > 0.5, alarm.to_numpy() > 0
        tp += int((y & p).sum()); fp += int((~y & p).sum()); fn += int((y & ~p).sum()); tn += int((~y & ~p).sum())
    return metrics(tp, fp, fn, tn)


def naive_pca_scores(det: PCADetector, A: np.ndarray) -> list[tuple[float, float]]:
    """T² and SPE one row at a time in plain Python (lists, no NumPy): the per-sample baseline."""
    mean, scale = det.mean_.tolist(), det.scale_.tolist()
    P, lam = det.components_.tolist(), det.eigenvalues_.tolist()
    out = []
    for row in A.tolist():
        z = [(x - m) / s for x, m, s in zip(row, mean, scale)]
        t = [sum(pi * zi for pi, zi in zip(p, z)) for p in P]
        t2 = sum(ti * ti / li for ti, li in zip(t, lam))
        spe = sum(zi * zi for zi in z) - sum(ti * ti for ti in t)
        out.append((t2, spe))
    return out


def speed(n_rows: int = 1_000_000, p: int = 50, repeats: int = 3) -> dict[str, float]:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(p, p)) / np.sqrt(p)
    train = pl.DataFrame(rng.normal(size=(5_000, p)) @ mix, schema=[f"v{i}" for i in range(p)], orient="row")
    det = PCADetector().fit(train)
    big = pl.DataFrame(rng.normal(size=(n_rows, p)) @ mix, schema=train.columns, orient="row")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        det.score_samples(big)
        times.append(time.perf_counter() - t0)
    vec = n_rows / statistics.median(times)
    sample = big[:20_000]
    t0 = time.perf_counter()
    naive_pca_scores(det, sample.to_numpy())
    naive = sample.height / (time.perf_counter() - t0)
    t2, spe = det.statistics(sample)
    ref = np.array(naive_pca_scores(det, sample[:100].to_numpy()))
    assert np.allclose(ref[:, 0], t2[:100]) and np.allclose(ref[:, 1], spe[:100], atol=1e-8)
    t0 = time.perf_counter()
    det.contributions(big[:200_000])
    contrib = 200_000 / (time.perf_counter() - t0)
    return {"vectorised": vec, "naive": naive, "contributions": contrib, "k": det.n_components_}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args()
    normal = read_table(SKAB / "anomaly-free" / "anomaly-free.csv")
    rows = []
    for method in ("pca", "dpca", "iforest", "auto"):
        for label, cal in (("train rows", None), ("+ anomaly-free", normal)):
            t0 = time.perf_counter()
            f1, far, mar = evaluate(method, cal)
            name = f"auto (= {AUTO})" if method == "auto" else method
            rows.append((f"{name}, threshold from {label}", f1, far, mar))
            print(f"{rows[-1][0]:<45} F1 {f1:.2f}  FAR {far:6.2f}  MAR {mar:6.2f}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    s = speed()
    print(f"PCA scoring 1M x 50: {s['vectorised']:,.0f} rows/s; naive per-row Python {s['naive']:,.0f} rows/s; "
          f"ratio {s['vectorised'] / s['naive']:.0f}x; contributions {s['contributions']:,.0f} rows/s")

    table = "\n".join(f"| {name} (ours) | {f1:.2f} | {far:.2f} | {mar:.2f} |" for name, f1, far, mar in rows)
    board = "\n".join(f"| {name} (leaderboard) | {f1:.2f} | {far:.2f} | {mar:.2f} |" for name, f1, far, mar in LEADERBOARD)
    text = f"""## SKAB

`{date.today().isoformat()}`, `.venv/bin/python bench/skab.py` (Python {platform.python_version()}, \
Polars {pl.__version__}, {platform.machine()}, 2 cores shared with other jobs: expect +-30% on speed).

Outlier detection on SKAB v0.9 (`../shared/datasets/skab`), the official split (first 400 rows of
each of the 34 labelled files train, the other 23,801 rows are scored) and metric (confusion
matrices summed over the files; F1 = TP / (TP + (FP + FN) / 2), FAR and MAR in %). `analytics.offline.run`
with alpha = {ALPHA}, one detector per file fitted on its 400 train rows; smoothing (EWMA half-life in
rows) {', '.join(f'{m} {h:g}' for m, h in HALFLIFE.items())}. "threshold from train rows": the
threshold is calibrated on blocked cross-fitted scores of the 400 train rows only; "+ anomaly-free":
on a replay of `anomaly-free.csv` (fit on each 400-row window, score the next len(test) rows), which
measures how far normal operation drifts over the test horizon. No parameter was tuned on test
rows: the smoothing and the detector parameters were fixed beforehand on the anomaly-free file
(replays with synthetic step, ramp and noise faults of 2-3 train standard deviations on each
variable). Disclosure: that training-only rule first picked the isolation forest for `auto`
(ahead of dynamic PCA by a margin within noise); `auto` was switched to dynamic PCA, the best
PCA configuration under the same rule, after a unit test showed the forest missing 3-5 sigma
single-variable shifts, but also after these test figures had been seen, so the `auto` rows are
not a clean out-of-sample selection. Then the smoothing of dpca: `bench/skab_select.py` declares five
candidates (dpca lags 2 or 5, EWMA half-life 0 or 3 rows, pca and dpca with the combined index) and
a rule before any of them ran on test rows, scores them on anomaly-free replays with synthetic
faults only, and picked dpca with a half-life of 3 (F1 0.72 there against 0.69 unsmoothed); on the
test rows that moved dpca from F1 0.74 (FAR 28.81 %, MAR 26.69 %) to the figures below: more
faults caught for more false alarms.

| detector | F1 | FAR, % | MAR, % |
|---|---:|---:|---:|
{table}
{board}

Reading: the anomalous rows are 54 % of the scored rows, so a detector that always alarms gets
F1 0.70 at FAR 100 %; compare at equal FAR, not by F1 alone. On the anomaly-free file the
variables drift by several train standard deviations within ten minutes (Thermocouple 3-5 sigma,
accelerometers and flow 1-2.5 sigma): 400 rows do not describe normal operation of the rig, so
the train-row thresholds alarm on far more than alpha of the normal test rows (on the
anomaly-free replay: 13-50 % at alpha = 1 %), while the anomaly-free-calibrated thresholds hold
about 1 % on anomaly-free data but must tolerate that drift and miss most faults.

Scoring speed, `PCADetector.score_samples` (T² and SPE, NumPy) on 1,000,000 rows x 50 variables
({s['k']} components), median of 3, one process: **{s['vectorised']:,.0f} rows/s**; a per-row pure-Python
implementation of the same T²/SPE (`naive_pca_scores`, 20,000 rows): {s['naive']:,.0f} rows/s, so
{s['vectorised'] / s['naive']:.0f}x faster. Per-variable contributions (T² complete decomposition + SPE residuals):
{s['contributions']:,.0f} rows/s.
"""
    print(text)
    if not args.no_write:
        write_section("SKAB", text)
        print(f"updated {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
