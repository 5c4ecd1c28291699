"""Choosing `auto` for `controltower detect` without SKAB's test rows: candidates declared here,
scored only on replays of `anomaly-free/anomaly-free.csv` with synthetic faults.

    .venv/bin/python bench/skab_select.py

Candidates (declared before any of them was run on SKAB test rows):
    A  dpca lags 2, no smoothing, combine max      (the current `auto`)
    B  dpca lags 2, EWMA half-life 3 rows
    C  dpca lags 5, no smoothing
    D  pca, combine sum (Yue & Qin's combined index)
    E  dpca lags 2, combine sum

Replays: windows of the anomaly-free file, 400 train rows then 800 rows after them (SKAB's test
files have 345-927); in the second half of those 800 rows one variable (in turn) gets a step of
2.5, a ramp to 3, or added noise of 2 train standard deviations. The threshold is calibrated at
alpha = 0.01 on the 400 train rows (blocked held-out scores, smoothed the same way), as
`analytics.offline.run` does. Score: SKAB's F1 on confusion matrices summed over all replays.
Rule: the best candidate replaces A only if its F1 is higher by more than 0.01.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import polars as pl

from analytics.multivariate import DynamicPCADetector, PCADetector, QuantileThreshold, ewma, held_out_scores
from analytics.offline import read_table

SKAB = REPO / ".." / "shared" / "datasets" / "skab"
N_TRAIN, HORIZON, ALPHA = 400, 800, 0.01
CANDIDATES = {
    "A": (lambda: DynamicPCADetector(lags=2, alpha=ALPHA), 0.0),
    "B": (lambda: DynamicPCADetector(lags=2, alpha=ALPHA), 3.0),
    "C": (lambda: DynamicPCADetector(lags=5, alpha=ALPHA), 0.0),
    "D": (lambda: PCADetector(alpha=ALPHA, combine="sum"), 0.0),
    "E": (lambda: DynamicPCADetector(lags=2, alpha=ALPHA, combine="sum"), 0.0),
}


def replays(normal: pl.DataFrame):
    """(train, test, labels) per window and fault kind."""
    columns = normal.columns
    i = 0
    for start in range(0, normal.height - N_TRAIN - HORIZON + 1, N_TRAIN):
        train = normal[start: start + N_TRAIN]
        clean = normal[start + N_TRAIN: start + N_TRAIN + HORIZON]
        std = train.std().row(0)
        for kind in ("step", "ramp", "noise"):
            j = i % len(columns)
            i += 1
            col, s = columns[j], std[j] or 1.0
            half = HORIZON // 2
            offset = np.zeros(HORIZON)
            if kind == "step":
                offset[half:] = 2.5 * s
            elif kind == "ramp":
                offset[half:] = np.linspace(0, 3 * s, HORIZON - half)
            else:
                offset[half:] = np.random.default_rng(i).normal(0, 2 * s, HORIZON - half)
            test = clean.with_columns(pl.col(col) + pl.Series(offset))
            labels = np.zeros(HORIZON, bool)
            labels[half:] = True
            yield train, test, labels


def f1_of(make, halflife: float, normal: pl.DataFrame) -> float:
    tp = fp = fn = 0
    for train, test, y in replays(normal):
        smooth = (lambda s: ewma(s, halflife))
        threshold = QuantileThreshold(ALPHA).fit(held_out_scores(make(), train, 5, post=smooth))
        p = threshold.predict(smooth(make().fit(train).score_samples(test))) > 0
        tp += int((y & p).sum())
        fp += int((~y & p).sum())
        fn += int((y & ~p).sum())
    return tp / (tp + (fp + fn) / 2)


def main() -> None:
    frame = read_table(SKAB / "anomaly-free" / "anomaly-free.csv")
    normal = frame.select(c for c, dt in frame.schema.items() if dt.is_numeric()).cast(pl.Float64)
    scores = {name: f1_of(make, hl, normal) for name, (make, hl) in CANDIDATES.items()}
    for name, f1 in scores.items():
        print(f"{name}: F1 {f1:.3f} on the anomaly-free replays")
    best = max(scores, key=scores.get)
    chosen = best if scores[best] > scores["A"] + 0.01 else "A"
    print(f"chosen: {chosen}")


if __name__ == "__main__":
    main()
