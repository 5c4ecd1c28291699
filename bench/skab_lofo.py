"""SKAB rounds 3-4: alarm logic, then window features, chosen leave-one-experiment-out.

    .venv/bin/python bench/skab_lofo.py            # round 4: prints the tables, records bench/skab_lofo_round4.json
    .venv/bin/python bench/skab_lofo.py --round 3  # round 3, as it was run (bench/skab_lofo.json)
    .venv/bin/python bench/skab_lofo.py --no-write # print only

Why a new protocol. Rounds 1-2 (bench/skab_select.py) chose `auto` on replays of the
anomaly-free file with synthetic faults, never on labelled rows; the choice did not carry over
to SKAB's real faults (docs/benchmarks.md, "SKAB"), and every test-row figure seen since makes a
further "training-only" round less clean, not more. Round 3 uses the labelled experiments
themselves, the way a site would tune alarms on the faults it has recorded, and keeps every
file's rows out of the choice that scores them: for each of the 34 files, the candidate is
picked on the other 33 files' scored rows, and that file's alarms come from it (nested,
leave-one-experiment-out). The pooled figure over the 34 files so obtained is the estimate we
report. Unlike the leaderboard's per-file recipes it uses labels (of other experiments); that is
said wherever the figure is quoted.

Declared grid (fixed in this file and committed before any of it ran on SKAB test rows; the
figures of rounds 0-2 were known, see docs/benchmarks.md):
    method     knn | dpca | pca                      (`analytics.offline.make_detector`)
    half-life  3 | 10 | 30 rows                      (EWMA of the score, as `run --halflife`)
    alpha      0.01 | 0.001                          (QuantileThreshold on held-out train-row scores)
    margin     1 | 4/3 | 2                           (threshold x margin; 4/3 is SKAB's Conv-AE recipe)
    on-delay   1 | 10 | 30 | 60 rows                 (ISA-18.2 on-delay: an alarm from the k-th
                                                      consecutive row over the threshold; 60 rows
                                                      is the Conv-AE recipe's window)
  = 216 candidates, each exactly what `analytics.offline.run(method=, halflife=, alpha=,
  margin=, on_delay=)` computes (checked below for the chosen ones).
Rule (the issue's goal is F1 with a false-alarm rate well below 13 %): on the files used for the
choice, the highest F1 among the candidates whose FAR is at most `FAR_CAP` %; if none is, the
lowest FAR. Ties: the earlier candidate in the grid order above.
The candidate the same rule picks on all 34 files becomes `auto`'s configuration; its all-34
figure is in-sample and reported as such, never as the estimate.
One fix after the first run: the PCA scores had been computed at alpha 0.01 for both alphas
(they are statistics over their limits at alpha); `check_with_run` caught the difference from
`run`. The grid and the rule did not change.
Round 3 picked dpca, half-life 3, margin 2, on-delay 30 (estimate F1 0.61, FAR 10.76 %); even
in-sample no candidate had F1 above 0.64 at FAR <= 10 %: the scores, not the alarm logic, limit.

Round 4 (declared here and committed before any of its new candidates ran on SKAB test rows,
after round 3's figures were known): round 3's 216 candidates plus new scores, window features
(`analytics.multivariate.windows`: each variable's mean and spread over the last `window` rows):
    method     wpca | wknn
    window     10 | 30 | 60 rows
    half-life, alpha, margin, on-delay: as round 3
  = 432 new, 648 in all; the same protocol and rule. Its pick on all 34 files becomes `auto`.
Round 4 picked wpca, window 10, half-life 3, alpha 0.01, margin 1, on-delay 1 (estimate F1 0.75,
FAR 10.55 %; Conv-AE on the leaderboard: 0.78 at 13.55 %).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import polars as pl
from skab import LABELS, N_TRAIN, labelled_files
from skab_select import skab_metrics

from analytics.multivariate import ewma, held_out_scores, persist
from analytics.offline import N_FOLDS, make_detector, read_table, run

METHODS = ("knn", "dpca", "pca")
HALFLIVES = (3.0, 10.0, 30.0)
ALPHAS = (0.01, 0.001)
MARGINS = (1.0, 4 / 3, 2.0)
ON_DELAYS = (1, 10, 30, 60)
WINDOWS = (10, 30, 60)
# A candidate: (method, half-life, alpha, margin, on-delay, window); window is None for row methods.
GRID3 = [(*c, None) for c in itertools.product(METHODS, HALFLIVES, ALPHAS, MARGINS, ON_DELAYS)]
GRID4 = GRID3 + [(m, h, a, g, k, w) for m, w, h, a, g, k in
                 itertools.product(("wpca", "wknn"), WINDOWS, HALFLIVES, ALPHAS, MARGINS, ON_DELAYS)]
GRID = GRID4
FAR_CAP = 10.0
RECORDS = {3: Path(__file__).with_name("skab_lofo.json"), 4: Path(__file__).with_name("skab_lofo_round4.json")}
RECORD = RECORDS[4]


def scores_of(path: Path, method: str, halflife: float, alpha: float,
              window: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(smoothed test scores, smoothed held-out train scores, truth) of one file, as `run` makes them
    (alpha matters to the PCA scores, which are statistics over their limits at alpha)."""
    data = read_table(path)
    X = data.drop("datetime", *LABELS).cast(pl.Float64)
    train, test = X[:N_TRAIN], X[N_TRAIN:]
    def smooth(s: np.ndarray) -> np.ndarray:
        return ewma(s, halflife)
    def make():
        return make_detector(method, alpha) if window is None else make_detector(method, alpha, window)
    calibration = held_out_scores(make(), train, N_FOLDS, post=smooth)
    score = smooth(make().fit(train).score_samples(test))
    return score, calibration, data["anomaly"][N_TRAIN:].to_numpy() > 0.5


def confusion_table(files: list[Path], grid: list[tuple]) -> np.ndarray:
    """(files, candidates, 4) counts tp, fp, fn, tn of every grid candidate on every file."""
    out = np.zeros((len(files), len(grid), 4), np.int64)
    index = {c: i for i, c in enumerate(grid)}
    scores = dict.fromkeys((c[0], c[1], c[2], c[5]) for c in grid)  # one scoring per (method, half-life, alpha, window)
    for f, path in enumerate(files):
        for method, halflife, alpha, window in scores:
            score, calibration, y = scores_of(path, method, halflife, alpha, window)
            for margin, k in itertools.product(MARGINS, ON_DELAYS):
                threshold = float(np.quantile(calibration[np.isfinite(calibration)], 1 - alpha, method="higher")) * margin
                p = persist(score > threshold, k) > 0
                out[f, index[(method, halflife, alpha, margin, k, window)]] = (
                    (y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y & ~p).sum())
        print(f"  {path.parent.name}/{path.name} scored", file=sys.stderr, flush=True)
    return out


def metrics(counts: np.ndarray) -> np.ndarray:
    """(candidates, 3) F1, FAR %, MAR % of summed (candidates, 4) counts."""
    return np.array([skab_metrics(*map(int, c)) for c in counts])


def choose(counts: np.ndarray) -> int:
    """The rule of the module doc on (candidates, 4) counts summed over the files of the choice."""
    m = metrics(counts)
    ok = np.flatnonzero(m[:, 1] <= FAR_CAP)
    if ok.size:
        return int(ok[np.argmax(m[ok, 0])])  # argmax keeps the first of equals: grid order
    return int(np.argmin(m[:, 1]))


def label(c: tuple) -> str:
    method, halflife, alpha, margin, k, window = c
    return (f"{method}{'' if window is None else f' window {window}'}, half-life {halflife:g}, alpha {alpha:g}, "
            f"margin {margin:.3g}, on-delay {k}")


def check_with_run(files: list[Path], candidate: tuple, counts: np.ndarray) -> None:
    """The fast path above must equal `analytics.offline.run` with the same options."""
    method, halflife, alpha, margin, k, window = candidate
    for f, path in enumerate(files):
        data = read_table(path)
        alarm = run(data[:N_TRAIN], data[N_TRAIN:], method=method, alpha=alpha, exclude=LABELS, halflife=halflife,
                    margin=margin, on_delay=k, **({} if window is None else {"window": window})).result["alarm"].to_numpy() > 0
        y = data["anomaly"][N_TRAIN:].to_numpy() > 0.5
        got = ((y & alarm).sum(), (~y & alarm).sum(), (y & ~alarm).sum(), (~y & ~alarm).sum())
        if tuple(map(int, got)) != tuple(map(int, counts[f])):
            raise SystemExit(f"{path}: run() gives {got}, the bench {tuple(counts[f])} for {label(candidate)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, choices=(3, 4), default=4)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write the record")
    args = parser.parse_args()
    grid, record = (GRID3 if args.round == 3 else GRID4), RECORDS[args.round]
    files = labelled_files()
    t0 = time.perf_counter()
    table = confusion_table(files, grid)
    print(f"{len(grid)} candidates x {len(files)} files scored in {time.perf_counter() - t0:.0f} s")

    total = table.sum(axis=0)
    picks, held_out = [], np.zeros(4, np.int64)
    for f in range(len(files)):
        c = choose(total - table[f])
        picks.append(c)
        held_out += table[f, c]
    f1, far, mar = skab_metrics(*map(int, held_out))
    print(f"leave-one-experiment-out estimate: F1 {f1:.3f}  FAR {far:.2f} %  MAR {mar:.2f} %")
    chosen_counts = {grid[c]: picks.count(c) for c in sorted(set(picks))}
    for c, n in sorted(chosen_counts.items(), key=lambda kv: -kv[1]):
        print(f"  picked for {n:2d} of 34 files: {label(c)}")

    final = choose(total)
    ff1, ffar, fmar = skab_metrics(*map(int, total[final]))
    print(f"rule on all 34 files: {label(grid[final])}: F1 {ff1:.3f} FAR {ffar:.2f} % MAR {fmar:.2f} % (in-sample)")
    for c in {grid[final], *chosen_counts}:
        check_with_run(files, c, table[:, grid.index(c)])
    print("run() agrees with the bench on every picked candidate")

    m = metrics(total)
    best_far = [i for i in np.argsort(-m[:, 0]) if m[i, 1] <= FAR_CAP][:5]
    for i in best_far:
        print(f"  all files, FAR <= {FAR_CAP:g} %: {label(grid[i]):<72} F1 {m[i, 0]:.3f} FAR {m[i, 1]:5.2f} MAR {m[i, 2]:5.2f}")
    if not args.no_write:
        record.write_text(json.dumps({
            "far_cap": FAR_CAP,
            "estimate": {"f1": round(f1, 4), "far": round(far, 2), "mar": round(mar, 2), "counts": held_out.tolist()},
            "picks": {f"{p.parent.name}/{p.name}": list(grid[c]) for p, c in zip(files, picks)},
            "final": {"candidate": list(grid[final]), "f1": round(ff1, 4), "far": round(ffar, 2), "mar": round(fmar, 2)},
            "grid": [{"candidate": list(c), "f1": round(float(r[0]), 4), "far": round(float(r[1]), 2),
                      "mar": round(float(r[2]), 2)} for c, r in zip(grid, m)],
        }, indent=1) + "\n")
        print(f"wrote {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
