"""Choosing `auto` for `controltower detect` without SKAB's test rows: candidates declared here,
scored only on replays of `anomaly-free/anomaly-free.csv` with synthetic faults.

    .venv/bin/python bench/skab_select.py            # round 2 (below)
    .venv/bin/python bench/skab_select.py --round 1  # the first round, as it was run

Round 1 (declared before any candidate was run on SKAB test rows; picked B):
    A  dpca lags 2, no smoothing, combine max      (the `auto` of the time)
    B  dpca lags 2, EWMA half-life 3 rows
    C  dpca lags 5, no smoothing
    D  pca, combine sum (Yue & Qin's combined index)
    E  dpca lags 2, combine sum
  Replays: windows of the whole anomaly-free file, 400 train rows then 800 rows after them; in
  the second half of those 800 rows one variable (in turn) gets a step of 2.5, a ramp to 3, or
  added noise of 2 train standard deviations. Threshold at alpha = 0.01 from the 400 train rows
  (blocked held-out scores, smoothed the same way). Score: SKAB's F1 on confusion matrices
  summed over all replays. Rule: the best replaces A only if its F1 is higher by more than 0.01.

Round 2 (declared in this file, committed before any of its new candidates was run on SKAB test
rows; the figures of round 1's candidates on test rows had been seen, see docs/benchmarks.md):
    every combination of
      method      pca | dpca (lags 2) | knn (NearestNeighbourDetector, 5 neighbours, MSET-like)
      smoothing   EWMA half-life 3 | 10 | 30 rows (30 rows ~ a windowed mean shift of half a minute)
      threshold   "train": from the 400 train rows (blocked held-out scores)
                  "anomaly-free": from a replay of normal operation (`analytics.offline.replay_scores`)
    18 candidates, each run through `analytics.offline.run` exactly as `controltower detect` runs.
  Replays: the anomaly-free file is cut in two halves. Faults are injected only into the SECOND
  half (windows of 400 train + 800 rows starting every 200 rows; the same step / ramp / noise
  faults as round 1); the "anomaly-free" threshold is calibrated on the FIRST half only, so no
  replay is scored by a threshold that saw its rows. Score: SKAB's F1 summed over the replays.
  Rule: the candidate with the highest F1 wins; the current `auto` (dpca, half-life 3, "train")
  stays unless beaten by more than 0.01. The winner's method and half-life become `AUTO` and
  `HALFLIFE[AUTO]` in `analytics.offline`; its threshold source is reported, since `auto` cannot
  bring an anomaly-free recording with it (`--normal` does).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import polars as pl

from analytics.multivariate import DynamicPCADetector, PCADetector, QuantileThreshold, ewma, held_out_scores
from analytics.offline import read_table, run

SKAB = REPO / ".." / "shared" / "datasets" / "skab"
N_TRAIN, HORIZON, ALPHA = 400, 800, 0.01
ROUND1 = {
    "A": (lambda: DynamicPCADetector(lags=2, alpha=ALPHA), 0.0),
    "B": (lambda: DynamicPCADetector(lags=2, alpha=ALPHA), 3.0),
    "C": (lambda: DynamicPCADetector(lags=5, alpha=ALPHA), 0.0),
    "D": (lambda: PCADetector(alpha=ALPHA, combine="sum"), 0.0),
    "E": (lambda: DynamicPCADetector(lags=2, alpha=ALPHA, combine="sum"), 0.0),
}
# Round 2: (method, EWMA half-life in rows, threshold source).
ROUND2 = list(itertools.product(("pca", "dpca", "knn"), (3.0, 10.0, 30.0), ("train", "anomaly-free")))
CURRENT = ("dpca", 3.0, "train")
# Round 2's scores as last run (bench/skab.py reads them instead of recomputing the replays).
RECORD = Path(__file__).with_name("skab_select_round2.json")


def anomaly_free() -> pl.DataFrame:
    frame = read_table(SKAB / "anomaly-free" / "anomaly-free.csv")
    return frame.select(c for c, dt in frame.schema.items() if dt.is_numeric()).cast(pl.Float64)


def replays(normal: pl.DataFrame, step: int = N_TRAIN):
    """(train, test, labels) per window and fault kind."""
    columns = normal.columns
    i = 0
    for start in range(0, normal.height - N_TRAIN - HORIZON + 1, step):
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


def skab_metrics(tp: int, fp: int, fn: int, tn: int) -> tuple[float, float, float]:
    """SKAB's F1, FAR %, MAR %."""
    return tp / (tp + (fp + fn) / 2), 100 * fp / max(fp + tn, 1), 100 * fn / max(fn + tp, 1)


def round1_f1(make, halflife: float, normal: pl.DataFrame) -> float:
    tp = fp = fn = 0
    for train, test, y in replays(normal):
        smooth = (lambda s: ewma(s, halflife))
        threshold = QuantileThreshold(ALPHA).fit(held_out_scores(make(), train, 5, post=smooth))
        p = threshold.predict(smooth(make().fit(train).score_samples(test))) > 0
        tp += int((y & p).sum())
        fp += int((~y & p).sum())
        fn += int((y & ~p).sum())
    return tp / (tp + (fp + fn) / 2)


def round2_score(method: str, halflife: float, source: str, normal: pl.DataFrame) -> tuple[float, float, float]:
    """(F1, FAR %, MAR %) of one round-2 candidate on the second-half replays."""
    half = normal.height // 2
    calibration, faulted = normal[:half], normal[half:]
    tp = fp = fn = tn = 0
    for train, test, y in replays(faulted, step=N_TRAIN // 2):
        p = run(train, test, method=method, alpha=ALPHA, halflife=halflife,
                normal=calibration if source == "anomaly-free" else None).result["alarm"].to_numpy() > 0
        tp += int((y & p).sum()); fp += int((~y & p).sum()); fn += int((y & ~p).sum()); tn += int((~y & ~p).sum())
    return skab_metrics(tp, fp, fn, tn)


def choose(scores: dict[tuple, tuple[float, float, float]]) -> tuple:
    """Round 2's rule: the best F1, unless within 0.01 of the current `auto`."""
    best = max(scores, key=lambda c: scores[c][0])
    return best if scores[best][0] > scores[CURRENT][0] + 0.01 else CURRENT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, choices=(1, 2), default=2)
    args = parser.parse_args()
    normal = anomaly_free()
    if args.round == 1:
        scores1 = {name: round1_f1(make, hl, normal) for name, (make, hl) in ROUND1.items()}
        for name, f1 in scores1.items():
            print(f"{name}: F1 {f1:.3f} on the anomaly-free replays")
        best = max(scores1, key=scores1.get)
        print(f"chosen: {best if scores1[best] > scores1['A'] + 0.01 else 'A'}")
        return
    scores = {}
    for candidate in ROUND2:
        scores[candidate] = round2_score(*candidate, normal)
        f1, far, mar = scores[candidate]
        print(f"{candidate[0]:<5} half-life {candidate[1]:>4g}  threshold {candidate[2]:<13} "
              f"F1 {f1:.3f}  FAR {far:6.2f}  MAR {mar:6.2f}", flush=True)
    chosen = choose(scores)
    print(f"chosen: {chosen}")
    RECORD.write_text(json.dumps({"chosen": list(chosen), "candidates": [
        {"method": c[0], "halflife": c[1], "threshold": c[2], "f1": round(f1, 3), "far": round(far, 2), "mar": round(mar, 2)}
        for c, (f1, far, mar) in scores.items()]}, indent=1) + "\n")
    print(f"wrote {RECORD}")


def recorded() -> tuple[dict[tuple, tuple[float, float, float]], tuple]:
    """Round 2's (scores by candidate, choice) from `RECORD`."""
    data = json.loads(RECORD.read_text())
    scores = {(c["method"], float(c["halflife"]), c["threshold"]): (c["f1"], c["far"], c["mar"]) for c in data["candidates"]}
    return scores, (data["chosen"][0], float(data["chosen"][1]), data["chosen"][2])


if __name__ == "__main__":
    main()
