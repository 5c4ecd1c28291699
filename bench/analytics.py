"""Univariate detector speed on a wide plant frame, beside a per-sample Python loop and River's
online detectors run on the same data in the same process; PCA T²/SPE scoring speed.

Each univariate detector is timed on two paths: the wide path the live engine takes when a
batch's tags share timestamps (`analytics.detectors.wide.pivot` of the long batch, timed with
it, then `score_wide`: one NumPy column per tag) and the long path (`score` on the sample schema).
`--univariate-only` runs and writes only that section.

    .venv/bin/python bench/analytics.py              # 1 and 2 Polars threads, updates docs/benchmarks.md
    .venv/bin/python bench/analytics.py --no-write   # print only
    .venv/bin/python bench/analytics.py --rows 50000 --no-write   # quick look

The frame: `--tags` variables (default 50) x `--rows` time steps (default 200,000: 10M values),
Gaussian noise with rare spikes, steps and stuck stretches, turned into the sample schema (one
row per value, time-major so tags are interleaved, as micro-batches arrive) outside the timing,
and streamed through each detector as micro-batches of `--batch-rows` time steps (default
20,000: 1M values). Each figure is the median of `--repeats` passes over the whole frame with
fresh detectors. Polars threads are fixed per process (POLARS_MAX_THREADS), so the script runs
itself once per thread count; the loop and River baselines run in the 1-thread process, on a
slice of the frame (`--slice-rows` time steps, default 2,000: 100k values), and are reported
in values per second extrapolated from that slice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This file's name would shadow the `analytics` package: the repo goes first, bench/ (for
# benchdoc and skab) last.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"] + [str(REPO / "bench")]

import numpy as np

CENTRE, SIGMA = 37.0, 0.3


def make_tags(n: int):
    from tests.analytics.helpers import make_tag
    return [make_tag(f"site.area.line{i % 5}.unit{i:02d}.temperature", alarm_low=35.0, warning_low=36.0,
                     warning_high=38.0, alarm_high=39.0, deadband=0.2, rate_of_change=2.0) for i in range(n)]


def wide_frame(n_rows: int, n_tags: int, seed: int = 0) -> np.ndarray:
    """(n_rows, n_tags) noise around the set point with spikes (0.1%), steps and stuck stretches."""
    rng = np.random.default_rng(seed)
    X = CENTRE + rng.normal(0, SIGMA, (n_rows, n_tags))
    X[rng.random((n_rows, n_tags)) < 0.001] += 3.0
    for j in range(0, n_tags, 7):  # a step on every 7th variable, a stuck stretch on the next one
        a = int(rng.integers(0, n_rows // 2))
        X[a:a + n_rows // 10, j] += 1.0
        if j + 1 < n_tags:
            X[a:a + 200, j + 1] = X[a, j + 1]
    return X


def long_batches(X: np.ndarray, tags, batch_rows: int):
    """Micro-batches in the sample schema, time-major (each time step's values of all tags together)."""
    import polars as pl

    from controltower.samples import samples_frame
    n_rows, n_tags = X.shape
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    ids = np.array([t.tag_id for t in tags])
    out = []
    for a in range(0, n_rows, batch_rows):
        block = X[a:a + batch_rows]
        ts = pl.datetime_range(t0 + timedelta(seconds=a), t0 + timedelta(seconds=a + block.shape[0] - 1), "1s",
                               time_unit="ns", time_zone="UTC", eager=True)
        frame = samples_frame(ts=np.repeat(ts.to_numpy(), n_tags), tag_id=np.tile(ids, block.shape[0]),
                              value=block.reshape(-1), quality=None)
        out.append(frame)
    return out


def detectors(tags):
    """name -> (factory of the Polars detector, factory of the per-sample loop, River's closest
    equivalent as (description, factory of a per-value step function) or None)."""
    from river import drift, stats

    from analytics.detectors import (
        CusumChart,
        EwmaChart,
        FlatlineDetector,
        LimitDetector,
        NelsonRules,
        RateOfChangeDetector,
        RobustZScore,
    )
    from tests.analytics.reference import (
        ReferenceCusum,
        ReferenceEwma,
        ReferenceFlatline,
        ReferenceLimits,
        ReferenceNelson,
        ReferenceRateOfChange,
        ReferenceRobustZScore,
    )
    given = {t.tag_id: (CENTRE, SIGMA) for t in tags}

    def river_ewma():
        m = stats.EWMean(fading_factor=0.2)
        s = SIGMA * (0.2 / 1.8) ** 0.5

        def step(x):
            m.update(x)
            return abs(m.get() - CENTRE) > 3 * s
        return step

    def river_cusum():
        d = drift.PageHinkley(min_instances=30, delta=0.5 * SIGMA, threshold=5 * SIGMA, mode="both")

        def step(x):
            d.update(x)
            return d.drift_detected
        return step

    def river_mad():
        med, mad = stats.RollingQuantile(0.5, window_size=120), stats.RollingQuantile(0.5, window_size=120)

        def step(x):
            m, s = med.get(), mad.get()
            flag = m is not None and s is not None and abs(x - m) > 8 * max(1.4826 * s, 0.04)
            if m is not None:
                mad.update(abs(x - m))
            med.update(x)
            return flag
        return step

    def river_flatline():
        p2p = stats.RollingPeakToPeak(window_size=30)

        def step(x):
            p2p.update(x)
            return p2p.get() == 0
        return step

    return {
        "limits (deadband)": (lambda: LimitDetector(tags), lambda: ReferenceLimits(tags), None),
        "rate of change": (lambda: RateOfChangeDetector(tags), lambda: ReferenceRateOfChange(tags), None),
        "Nelson rules 1-8": (lambda: NelsonRules(tags, given=given), lambda: ReferenceNelson(given), None),
        "EWMA (lam 0.2, L 3)": (lambda: EwmaChart(tags, given=given), lambda: ReferenceEwma(given),
                                ("stats.EWMean", river_ewma)),
        "CUSUM (k 0.5, h 5)": (lambda: CusumChart(tags, given=given), lambda: ReferenceCusum(given),
                               ("drift.PageHinkley", river_cusum)),
        "median/MAD z-score (120)": (lambda: RobustZScore(tags), lambda: ReferenceRobustZScore(tags),
                                     ("2 x stats.RollingQuantile(0.5, 120)", river_mad)),
        "flatline (30)": (lambda: FlatlineDetector(tags), lambda: ReferenceFlatline(tags),
                          ("stats.RollingPeakToPeak(30)", river_flatline)),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_both(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(): on a machine shared with other jobs, the CPU time of a
    1-thread process is what one core spends on the work."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def worker(args) -> dict:
    """Runs in a process whose POLARS_MAX_THREADS is already set; returns the figures as a dict."""
    import polars as pl

    if args.pca_only:
        return {"threads": pl.thread_pool_size(), "pca": pca_speed(args)}
    tags = make_tags(args.tags)
    X = wide_frame(args.rows, args.tags)
    from analytics.detectors.wide import pivot

    batches = long_batches(X, tags, args.batch_rows)
    n_values = X.size
    out = {"threads": pl.thread_pool_size(), "values": n_values, "detectors": {}}
    pivots = [timed_both(lambda: [pivot(b) for b in batches])[1] for _ in range(args.repeats)]
    out["pivot_cpu_values_per_s"] = n_values / statistics.median(pivots)
    wides = [pivot(b) for b in batches]
    assert all(w is not None for w in wides)
    for name, (fast, loop, river) in detectors(tags).items():
        walls, cpus = [], []
        for _ in range(args.repeats):
            det = fast()
            wall, cpu = timed_both(lambda det=det: [det.score(b) for b in batches])
            walls.append(wall)
            cpus.append(cpu)
        det = fast()
        first = det.score(batches[0])
        row = {"values_per_s": n_values / statistics.median(walls), "cpu_values_per_s": n_values / statistics.median(cpus),
               "flagged_first_batch": int((first["level"] > 0).sum())}
        if hasattr(det, "score_wide"):
            # The same answer as the long path (levels of the first batch), or the figure means
            # nothing; this also loads compiled kernels (Numba's disk cache) before the timing.
            same = fast().score_wide(wides[0]).to_long()
            assert same["level"].to_list() == first["level"].to_list(), name
            with_pivot, alone = [], []
            for _ in range(args.repeats):
                det = fast()
                with_pivot.append(timed_both(lambda det=det: [det.score_wide(pivot(b)) for b in batches])[1])
                det = fast()
                alone.append(timed_both(lambda det=det: [det.score_wide(w) for w in wides])[1])
            row["wide_cpu_values_per_s"] = n_values / statistics.median(with_pivot)
            row["wide_alone_cpu_values_per_s"] = n_values / statistics.median(alone)
        if args.baselines:
            piece = long_batches(X[:args.slice_rows], tags, 500)
            ref = loop()
            row["loop_values_per_s"] = X[:args.slice_rows].size / timed_both(
                lambda ref=ref, piece=piece: [ref.score(b) for b in piece])[1]
            if river is not None:
                steps = [river[1]() for _ in tags]
                cols = [X[:args.slice_rows, j].tolist() for j in range(args.tags)]

                def run_river(steps=steps, cols=cols):
                    for j, step in enumerate(steps):  # one online detector per tag, value by value
                        for x in cols[j]:
                            step(x)
                row["river"] = river[0]
                row["river_values_per_s"] = X[:args.slice_rows].size / timed_both(run_river)[1]
        out["detectors"][name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    if not args.univariate_only:
        out["pca"] = pca_speed(args)
    return out


def textbook_pca_scores(det, frame) -> tuple[np.ndarray, np.ndarray]:
    """T² and SPE by the formulas on the whole (n, p) matrix, as `PCADetector` computed them
    before its chunked kernel: the vectorised baseline (also the check of the fast path)."""
    Z = (frame.to_numpy() - det.mean_) / det.scale_
    T = Z @ det.components_.T
    return (T**2 / det.eigenvalues_).sum(axis=1), ((Z - T @ det.components_) ** 2).sum(axis=1)


def pca_speed(args) -> dict:
    """PCA T²/SPE scoring of `--pca-rows` rows x `--tags` variables: `score_samples` (the chunked
    kernel), the whole-matrix NumPy formulas, contributions, and (with --baselines) a per-row loop."""
    import polars as pl

    from analytics.multivariate import PCADetector
    from analytics.multivariate.windows import WindowPCADetector
    rng = np.random.default_rng(0)
    p = args.tags
    mix = rng.normal(size=(p, p)) / np.sqrt(p)
    cols = [f"v{i}" for i in range(p)]
    det = PCADetector().fit(pl.DataFrame(rng.normal(size=(5_000, p)) @ mix, schema=cols, orient="row"))
    big = pl.DataFrame(rng.normal(size=(args.pca_rows, p)) @ mix, schema=cols, orient="row")
    t2, spe = det.statistics(big)
    ref_t2, ref_spe = textbook_pca_scores(det, big)
    assert np.allclose(t2, ref_t2, rtol=1e-9, atol=1e-9) and np.allclose(spe, ref_spe, rtol=1e-9, atol=1e-9)
    del t2, spe, ref_t2, ref_spe
    runs = [timed_both(lambda: det.score_samples(big)) for _ in range(args.repeats)]
    textbook = [timed_both(lambda: textbook_pca_scores(det, big))[1] for _ in range(args.repeats)]
    part = big[:200_000]
    contrib = [timed_both(lambda: det.contributions(part))[1] for _ in range(args.repeats)]
    # wpca (`detect --method auto`): each variable's 10-row mean and spread, then PCA of the 2p features.
    window = WindowPCADetector(window=10).fit(big[:5_000])
    windowed = [timed_both(lambda: window.score_samples(big))[1] for _ in range(args.repeats)]
    row = {"rows": args.pca_rows, "rows_per_s": args.pca_rows / statistics.median(w for w, _ in runs),
           "cpu_rows_per_s": args.pca_rows / statistics.median(c for _, c in runs), "k": det.n_components_,
           "textbook_cpu_rows_per_s": args.pca_rows / statistics.median(textbook),
           "contributions_cpu_rows_per_s": part.height / statistics.median(contrib),
           "wpca_cpu_rows_per_s": args.pca_rows / statistics.median(windowed), "wpca_k": window.n_components_}
    if args.baselines:
        from skab import naive_pca_scores
        sample = big[:20_000].to_numpy()
        row["loop_rows_per_s"] = sample.shape[0] / timed_both(lambda: naive_pca_scores(det, sample))[1]
    return row


def table(runs: list[dict]) -> str:
    one = next(r for r in runs if r["threads"] == 1)
    others = [r for r in runs if r["threads"] != 1]
    head = ("| detector | wide path incl. pivot, 1 thread, CPU, values/s | wide scoring alone, CPU | "
            "long path, 1 thread, CPU | long, 1 thread, wall | "
            + "".join(f"long, {r['threads']} threads, wall | " for r in others)
            + "per-sample loop, CPU | speed-up (faster path) | River (closest) | River, CPU | speed-up |")
    lines = [head, "|---|---:|---:|---:|---:|" + "---:|" * len(others) + "---:|---:|---|---:|---:|"]
    for name, row in one["detectors"].items():
        wide = row.get("wide_cpu_values_per_s")
        v = max(wide or 0.0, row["cpu_values_per_s"])
        extra = "".join(f"{r['detectors'][name]['values_per_s'] / 1e6:.2f} M | " for r in others)
        loop, riv = row["loop_values_per_s"], row.get("river_values_per_s")
        wide_cells = (f"**{wide / 1e6:.1f} M** | {row['wide_alone_cpu_values_per_s'] / 1e6:.1f} M | " if wide
                      else "no wide path | | ")
        lines.append(
            f"| {name} | {wide_cells}{row['cpu_values_per_s'] / 1e6:.2f} M | {row['values_per_s'] / 1e6:.2f} M | {extra}"
            f"{loop / 1e3:,.0f} k | {v / loop:,.0f}x | "
            + (f"`river.{row['river']}` | {riv / 1e3:,.0f} k | {v / riv:,.1f}x |" if riv else "none | | |")
        )
    lines += ["", (f"The pivot alone (long batch -> one column per tag, shared by all detectors in the engine): "
                   f"{one['pivot_cpu_values_per_s'] / 1e6:.0f}M values/s per core.")]
    return "\n".join(lines)


def pca_table(runs: list[dict]) -> str:
    one = next(r for r in runs if r["threads"] == 1)
    others = [r for r in runs if r["threads"] != 1]
    pca = one["pca"]
    v = pca["cpu_rows_per_s"]
    return "\n".join([
        "| PCA T²/SPE scoring | 1 thread, CPU, rows/s | 1 thread, wall | "
        + "".join(f"{r['threads']} threads, wall | " for r in others)
        + "whole-matrix NumPy, CPU | speed-up | per-row loop, CPU | speed-up |",
        "|---|---:|---:|" + "---:|" * len(others) + "---:|---:|---:|---:|",
        f"| `PCADetector.score_samples`, {pca['rows']:,} rows x {one['tags']}, k = {pca['k']} | {v / 1e6:.2f} M | "
        f"{pca['rows_per_s'] / 1e6:.2f} M | " + "".join(f"{r['pca']['rows_per_s'] / 1e6:.2f} M | " for r in others)
        + f"{pca['textbook_cpu_rows_per_s'] / 1e6:.2f} M | {v / pca['textbook_cpu_rows_per_s']:.1f}x | "
        f"{pca['loop_rows_per_s'] / 1e3:,.0f} k | {v / pca['loop_rows_per_s']:,.0f}x |",
        f"| `PCADetector.contributions` (T² decomposition + SPE residuals), 200,000 rows | "
        f"{pca['contributions_cpu_rows_per_s'] / 1e6:.2f} M | | " + "| " * len(others) + "| | | |",
        f"| `WindowPCADetector.score_samples` (wpca, `detect --method auto`: 10-row mean and spread of each "
        f"variable, PCA of {2 * one['tags']} features, k = {pca['wpca_k']}), same rows | "
        f"{pca['wpca_cpu_rows_per_s'] / 1e6:.2f} M | | " + "| " * len(others) + "| | | |",
    ])


def pca_section(runs: list[dict], args) -> str:
    import polars as pl

    from analytics.multivariate.pca import CHUNK_ROWS
    one = next(r for r in runs if r["threads"] == 1)
    v = one["pca"]["cpu_rows_per_s"]
    verdict = (f"Target (> 1M rows/s of 50 variables on one core) {'met' if v > 1e6 else 'NOT met'}: "
               f"{v / 1e6:.2f}M rows/s.")
    return f"""## PCA T²/SPE scoring

`{date.today().isoformat()}`, `.venv/bin/python bench/analytics.py --pca-only` (Python {platform.python_version()}, \
NumPy {np.__version__}, Polars {pl.__version__}, {platform.machine()}, 2 cores shared with other jobs: expect +-30%).

`PCADetector.score_samples` (T², SPE, combined score) on a Polars frame of {args.pca_rows:,} rows x
{args.tags} correlated Float64 variables, fitted on 5,000 rows (90 % variance: k components);
median of {args.repeats} runs. Each thread count is its own process with POLARS_MAX_THREADS,
OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set; "1 thread, CPU" is the CPU time of the 1-thread
process, the figure the target is about. The kernel (`analytics/multivariate/pca.py`,
`_Pca.statistics_of`) reads the frame's column buffers without building the (n, p) matrix and
scores chunks of {CHUNK_ROWS:,} rows that stay in the L2 cache: standardise in place, one BLAS
product for the scores, a second tiny one for T² and |t|² together, SPE = |z|² - |t|² (clipped at
0). Baselines in the same process: "whole-matrix NumPy" is the formulas on the full matrix
(`to_numpy`, standardise, project, reconstruct: how `score_samples` worked before; it also checks
the kernel's T² and SPE to 1e-9 on all rows), "per-row loop" the same statistics one row at a time
in plain Python (20,000 rows). Contributions are computed only when asked (`contributions`), not
by `score_samples`.

{pca_table(runs)}

{verdict}
"""


def section(runs: list[dict], args) -> str:
    import polars as pl
    import river
    one = next(r for r in runs if r["threads"] == 1)
    command = " ".join(["bench/analytics.py", *sys.argv[1:]])
    return f"""## Univariate detectors on a wide frame

`{date.today().isoformat()}`, `.venv/bin/python {command}` (Python {platform.python_version()}, \
Polars {pl.__version__}, River {river.__version__}, {platform.machine()}, 2 cores shared with other jobs: \
expect +-30%).

{args.tags} variables x {args.rows:,} time steps = {one['values'] / 1e6:.0f}M values (scaled down from the
issue's 50 x 1M to keep the run within minutes on a shared 2-core machine; throughput per value
barely depends on the total), in the sample schema (one row per value, tags interleaved),
streamed as micro-batches of {args.batch_rows:,} time steps ({args.batch_rows * args.tags / 1e6:.0f}M values); median of
{args.repeats} passes with fresh detectors. Thread count is Polars' pool (POLARS_MAX_THREADS, and
BLAS threads for PCA). The machine was shared with other jobs (load average well above its 2
cores), so wall times are inflated; the 1-thread CPU time is what one core spends, and the
speed-ups compare CPU times (loop and River run single-threaded in the same process).
Per-sample loop: `tests/analytics/reference.py` (the test oracles: same semantics, dicts and
deques per tag) timed on the first {args.slice_rows:,} time steps ({args.slice_rows * args.tags / 1e3:.0f}k values), extrapolated.
River: its closest online counterparts, one per tag, fed value by value on the same slice in
the same process, each with the decision our detector makes (EWMean against the asymptotic
3-sigma EWMA limit; Page-Hinkley with delta = k sigma, threshold = h sigma as the CUSUM; two
rolling medians for the median/MAD score; rolling peak-to-peak = 0 for flatline). River has no
counterpart of the limit, rate-of-change and run-rule detectors. Target: > 10M values/s on one
core for the univariate rules.

Two paths per detector. The wide path (`analytics/detectors/wide.py`) is what the live engine
(`analytics/engine.py`) runs when a micro-batch's tags share timestamps, as batched MQTT and the
simulator publish them: the long batch is pivoted once into one contiguous NumPy column per tag
(the pivot is included in the first column's time, charged in full to every detector although the
engine shares it), then the same streaming semantics run down the columns (EWMA by
`scipy.signal.lfilter` with the carried EWMA as initial state, CUSUM by cumulative sums and a
running minimum, run rules by rolling counts from cumulative-sum differences, limits and runs by
running maxima of marker positions, the median/MAD z-score by two compiled sort-based moving
medians, `analytics/detectors/moving_median.py`), with the same per-tag state as the long path; the engine then
builds rows only for level changes and peaks. "Wide scoring alone" starts from the pivoted batch.
The long path (`score`, the sample schema) is what other batches take. The bench checks that both
paths give the same levels on the first batch; tests/analytics/test_wide.py checks every cell
against the long path and the per-sample oracle, across batch boundaries, with bad, null and NaN
samples and missing cells.

{table(runs)}

{verdict(one)}
"""


def verdict(one: dict) -> str:
    """Which detectors meet the 10M values/s per core target on the wide path, and why not the others."""
    rows = one["detectors"]
    met = [n for n, r in rows.items() if r.get("wide_cpu_values_per_s", 0) > 10e6]
    missed = [n for n, r in rows.items() if r.get("wide_cpu_values_per_s") and n not in met]
    none = [n for n, r in rows.items() if not r.get("wide_cpu_values_per_s")]
    text = [f"Target (> 10M values/s per core, pivot included) met on the wide path by: {', '.join(met) or 'none'}."]
    if missed:
        text.append("Not met on the wide path: " + ", ".join(
            f"{n} ({rows[n]['wide_cpu_values_per_s'] / 1e6:.1f}M)" for n in missed) + ".")
    if none:
        text.append(
            "Without a wide path (long path only): " + ", ".join(f"{n} ({rows[n]['cpu_values_per_s'] / 1e6:.2f}M)" for n in none)
            + ".")
    return " ".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--slice-rows", type=int, default=2_000)
    parser.add_argument("--pca-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="(internal) run one worker with this many threads")
    parser.add_argument("--baselines", action="store_true", help="(internal) also time the loop and River")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    parser.add_argument("--pca-only", action="store_true", help="run and write only the PCA scoring section")
    parser.add_argument("--univariate-only", action="store_true", help="run and write only the univariate section")
    args = parser.parse_args()
    if args.threads is not None:
        print(json.dumps(worker(args)))
        return
    runs = []
    for threads in (1, 2):
        cmd = [sys.executable, __file__, "--threads", str(threads), *(["--baselines"] if threads == 1 else []),
               *(["--pca-only"] if args.pca_only else []), *(["--univariate-only"] if args.univariate_only else []),
               *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                 ("tags", "rows", "batch_rows", "slice_rows", "pca_rows", "repeats"))]
        env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
               "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for run in runs:
        run["tags"] = args.tags
    sections = {} if args.univariate_only else {"PCA T²/SPE scoring": pca_section(runs, args)}
    if not args.pca_only:
        sections = {"Univariate detectors on a wide frame": section(runs, args), **sections}
    for title, text in sections.items():
        print(text)
        if not args.no_write:
            from benchdoc import DOC, write_section
            write_section(title, text)
            print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
