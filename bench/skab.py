"""SKAB outlier detection: the multivariate detectors with SKAB's split and metric, beside the
published leaderboard, plus PCA T²/SPE scoring speed.

    .venv/bin/python bench/skab.py            # prints the tables, updates docs/benchmarks.md
    .venv/bin/python bench/skab.py --no-write

Split and metric as in the dataset README (../shared/datasets/skab): per labelled file the first
400 rows train, the rest are scored; confusion matrices summed over the 34 files, then F1,
FAR % and MAR %. Every configuration is fixed before this script scores the test rows; `auto`
was chosen by bench/skab_select.py (rounds 1-2, training data only) and bench/skab_lofo.py
(rounds 3-4, leave-one-experiment-out), whose records this script reads; nothing here tunes.
Two calibrations of the threshold are reported:
- "train rows": the threshold comes from the 400 train rows only (blocked cross-fitting);
- "+ anomaly-free": the same detectors fitted on the same 400 rows, the threshold calibrated by
  replaying `anomaly-free/anomaly-free.csv` (fit on 400 rows, score the next len(test) rows).
"""

from __future__ import annotations

import argparse
import json
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
from skab_select import ROUND2, recorded, skab_metrics

from analytics.multivariate import PCADetector
from analytics.offline import AUTO, HALFLIFE, WINDOW, read_table, run

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


def evaluate(method: str, normal: pl.DataFrame | None, halflife: float | None = None,
             **options) -> tuple[float, float, float]:
    """SKAB's (F1, FAR %, MAR %) of `analytics.offline.run` (with `options`) over the 34 files' test rows."""
    tp = fp = fn = tn = 0
    for path in labelled_files():
        data = read_table(path)
        train, test = data[:N_TRAIN], data[N_TRAIN:]
        alarm = run(train, test, method=method, alpha=ALPHA, exclude=LABELS, normal=normal,
                    halflife=halflife, **options).result["alarm"]
        y, p = test["anomaly"].to_numpy() > 0.5, alarm.to_numpy() > 0
        tp += int((y & p).sum()); fp += int((~y & p).sum()); fn += int((y & ~p).sum()); tn += int((~y & ~p).sum())
    return skab_metrics(tp, fp, fn, tn)


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
        t0 = time.process_time()
        det.score_samples(big)
        times.append(time.process_time() - t0)
    vec = n_rows / statistics.median(times)
    sample = big[:20_000]
    t0 = time.process_time()
    naive_pca_scores(det, sample.to_numpy())
    naive = sample.height / (time.process_time() - t0)
    t2, spe = det.statistics(sample)
    ref = np.array(naive_pca_scores(det, sample[:100].to_numpy()))
    assert np.allclose(ref[:, 0], t2[:100]) and np.allclose(ref[:, 1], spe[:100], atol=1e-8)
    t0 = time.process_time()
    det.contributions(big[:200_000])
    contrib = 200_000 / (time.process_time() - t0)
    return {"vectorised": vec, "naive": naive, "contributions": contrib, "k": det.n_components_}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args()
    normal = read_table(SKAB / "anomaly-free" / "anomaly-free.csv")
    selection, chosen = recorded()  # bench/skab_select.py's round 2, as recorded when it ran
    rows = []
    # `auto` first, round 3's pick, every round-2 candidate of bench/skab_select.py, the forest.
    round3 = {"margin": 2.0, "on_delay": 30}
    runs = [("auto", None, source) for source in ("train", "anomaly-free")] + [("dpca", 3.0, "train")] + \
        list(ROUND2) + [("iforest", None, source) for source in ("train", "anomaly-free")]
    for i, (method, halflife, source) in enumerate(runs):
        t0 = time.perf_counter()
        options = round3 if i == 2 else {}
        f1, far, mar = evaluate(method, normal if source == "anomaly-free" else None, halflife, **options)
        name = f"**auto** (= {AUTO}, window {WINDOW}, half-life {HALFLIFE[AUTO]:g})" if method == "auto" else \
            f"{method}, half-life {HALFLIFE[method] if halflife is None else halflife:g}" + \
            (", threshold x 2, on-delay 30" if options else "")
        sel = None if options else selection.get((method, halflife, source))
        mark = " (round 3's auto)" if options else " (round 2's auto)" if (method, halflife, source) == chosen else ""
        rows.append((f"{name}, threshold from {'train rows' if source == 'train' else '+ anomaly-free'}{mark}",
                     sel[0] if sel else None, f1, far, mar))
        print(f"{rows[-1][0]:<60} F1 {f1:.2f}  FAR {far:6.2f}  MAR {mar:6.2f}  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    s = speed()
    print(f"PCA scoring 1M x 50: {s['vectorised']:,.0f} rows/s; naive per-row Python {s['naive']:,.0f} rows/s; "
          f"ratio {s['vectorised'] / s['naive']:.0f}x; contributions {s['contributions']:,.0f} rows/s")

    table = "\n".join(f"| {name} (ours) | {'' if sel is None else f'{sel:.3f}'} | {f1:.2f} | {far:.2f} | {mar:.2f} |"
                      for name, sel, f1, far, mar in rows)
    board = "\n".join(f"| {name} (leaderboard) | | {f1:.2f} | {far:.2f} | {mar:.2f} |" for name, f1, far, mar in LEADERBOARD)
    auto_f1, auto_far, auto_mar = rows[0][2:]
    from skab_lofo import FAR_CAP, GRID  # imports this module: not at the top
    from skab_lofo import RECORD as LOFO_RECORD
    lofo = json.loads(LOFO_RECORD.read_text())  # bench/skab_lofo.py, as recorded when it ran
    est = lofo["estimate"]
    if tuple(lofo["final"]["candidate"]) != (AUTO, HALFLIFE[AUTO], 0.01, 1.0, 1, WINDOW):
        raise SystemExit(f"{LOFO_RECORD.name} picked {lofo['final']['candidate']}, not what analytics.offline's auto is")
    goal = "reached" if est["f1"] > 0.78 and est["far"] < 13 else "NOT reached"
    frontier = []
    at_conv_ae = max(g["f1"] for g in lofo["grid"] if g["far"] <= 13.55)
    for cap in (FAR_CAP, 13.55, 20.0, 40.0):
        ok = [g for g in lofo["grid"] if g["far"] <= cap]
        if ok:
            b = max(ok, key=lambda g: g["f1"])
            frontier.append(f"F1 {b['f1']:.3f} at FAR <= {cap:g} % ({b['candidate'][0]})")
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
measures how far normal operation drifts over the test horizon. Every choice below was made by
a rule declared (and committed) before its candidates ran on test rows. Rounds 0-2 chose on
`anomaly-free.csv` and train rows only; rounds 3-4 chose on the labelled test rows of the other
33 experiments, never on the rows of the experiment being scored.

How `auto` was chosen, in order. Rounds 0-2 chose on training data only. Round 0 picked the
isolation forest, switched to dynamic PCA after a unit test (and after its test figures had been
seen). Round 1 (`bench/skab_select.py --round 1`, five candidates) picked dpca with a 3-row
half-life. Round 2 (`bench/skab_select.py`, 18 candidates: pca / dpca / knn x EWMA half-life
3 / 10 / 30 rows x threshold from train rows / from an anomaly-free replay; score "replay F1":
SKAB's F1 over replays of the second half of `anomaly-free.csv` with synthetic step, ramp and
noise faults) picked knn with a 30-row half-life: F1 0.75 but FAR 43.68 % on the test rows.
Synthetic faults reward sensitivity and do not show how far SKAB's normal test rows drift.

Round 3 (`bench/skab_lofo.py --round 3`, declared and committed before it ran, after rounds
0-2's test figures were known) tunes what an alarm engineer tunes, on the labelled experiments,
with no experiment's rows in the choice that scores them. 216 candidates: pca / dpca / knn x
half-life 3 / 10 / 30 x alpha 0.01 / 0.001 x threshold margin 1 / 4/3 / 2 x ISA-18.2 on-delay
1 / 10 / 30 / 60 rows. Rule: the best F1 among the candidates with FAR at most {FAR_CAP:g} %. For
each of the 34 files the rule runs on the other 33 files, and that file's alarms come from its
pick (nested leave-one-experiment-out). Unlike the leaderboard's per-file recipes, this uses
labels, of the other experiments. It picked dpca, half-life 3, threshold x 2, on-delay 30:
estimate F1 0.61, FAR 10.76 %, MAR 52.41 %. Even in-sample no row-wise score did better than
F1 0.64 at FAR <= 10 %, so the limit was the score, not the alarm logic.

Round 4 (`bench/skab_lofo.py`, declared and committed before its new candidates ran, after round
3's figures were known) adds scores of windows instead of rows (`analytics.multivariate.windows`:
each variable's mean and spread over the last 10 / 30 / 60 rows, modelled by PCA (wpca) or the
nearest-neighbour residual (wknn)), 432 more candidates with the same half-lives, alphas,
margins and on-delays, and the same protocol and rule. The rule on all 34 files gives `auto`:
{AUTO}, window {WINDOW}, half-life {HALFLIFE[AUTO]:g}, alpha 0.01, no margin, no on-delay.

Goal (F1 above the leaderboard's best 0.78 with a false-alarm rate well below its 13-40 %):
**{goal}**. Round 4's estimate (leave-one-experiment-out, pooled over the 34 files):
**F1 {est['f1']:.2f}, FAR {est['far']:.2f} %, MAR {est['mar']:.2f} %**, against Conv-AE's F1 0.78 at FAR 13.55 %.
`auto` on all 34 files (in-sample: it was picked on them): F1 {auto_f1:.2f}, FAR {auto_far:.2f} %, MAR
{auto_mar:.2f} %. In-sample, the best of the {len(GRID)} candidates is {'; '.join(frontier)}.
So window features close most of the gap: false alarms fell from 44 % (round 2) to about 10 %
with F1 0.75. They do not beat Conv-AE: at its FAR (13.55 %) our best in-sample F1 is
{at_conv_ae:.3f}, below its 0.78. Four rounds have now looked at these test rows, so a fifth would prove little
even if it scored higher.

| detector | replay F1 (selection) | F1 | FAR, % | MAR, % |
|---|---:|---:|---:|---:|
| **round 4, leave-one-experiment-out estimate** (each file scored by the pick made on the other 33) (ours) | | {est['f1']:.2f} | {est['far']:.2f} | {est['mar']:.2f} |
{table}
{board}

Reading: the anomalous rows are 54 % of the scored rows, so a detector that always alarms gets
F1 0.70 at FAR 100 %; compare at equal FAR, not by F1 alone. On the anomaly-free file the
variables drift by several train standard deviations within ten minutes (Thermocouple 3-5 sigma,
accelerometers and flow 1-2.5 sigma): 400 rows do not describe normal operation of the rig, so
the train-row thresholds alarm on far more than alpha of the normal test rows (on the
anomaly-free replay: 13-50 % at alpha = 1 %), while the anomaly-free-calibrated thresholds hold
about 1 % on anomaly-free data but must tolerate that drift and miss most faults.

Scoring speed, `PCADetector.score_samples` (T² and SPE: the chunked kernel, see "PCA T²/SPE
scoring" for the 1-thread measurement and its baselines) on 1,000,000 rows x 50 variables
({s['k']} components), median of 3, CPU time of this process: **{s['vectorised']:,.0f} rows/s**; a per-row
pure-Python implementation of the same T²/SPE (`naive_pca_scores`, 20,000 rows): {s['naive']:,.0f} rows/s,
so {s['vectorised'] / s['naive']:,.0f}x faster. Per-variable contributions (T² complete decomposition + SPE
residuals, computed only when asked): {s['contributions']:,.0f} rows/s.
"""
    print(text)
    if not args.no_write:
        write_section("SKAB", text)
        print(f"updated {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
