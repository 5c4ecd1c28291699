"""Golden batch: the normal trajectory of a unit's batches, learned from good batches, and a
running batch scored against it.

Input: samples of one unit in the sample schema (`ts`, `tag_id`, `value`, `batch_id`), plus an
optional `phase` column (String). Without it the whole batch is one phase, "batch". The phase
comes from the historian's batch events (`controltower.batch_events.with_phases`: `model fit`,
batch review and the live monitor join each sample to its unit's phase span).

Alignment (phase-relative time): samples become wide rows, one per batch and `row_s` time slot
(mean of a tag's samples in the slot; columns = the tag ids). A row's *point* is
floor((ts - start of its phase in its batch) / `resolution_s`): the same point of two batches is
the same maturity into the same phase, whatever the batches' start times and the lengths of
their earlier phases. Time is not stretched to a fixed length per phase, because a running
batch does not know how long its phase will last; a running phase that outlasts the longest
good one is scored against the envelope's last point (`beyond` in the rows says so).

Envelope, per phase, point and variable, from the good batches' rows:
    mean   the mean of all rows at that point (every batch weighs by its rows there)
    σ      the pooled within-point standard deviation over points point-`smooth`..point+`smooth`
           (few batches give noisy per-point σ; pooling neighbours steadies it), floored at
           `std_floor` x the variable's overall σ
    z      (x - mean) / σ; a row is outside the envelope when max_v |z| > `k_`.
`k_` is `k` when given, else calibrated by leave-one-batch-out: every good batch's rows are
z-scored against the envelope of the *other* batches (closed form from per-batch sums), and
`k_` is the (1 - alpha) quantile of their max |z|: on a new good batch about `alpha` of the
rows leave the envelope. Points where fewer than `min_batches` batches have rows are dropped.

Batch-level multivariate limits (per-phase PCA on the aligned trajectories): the
leave-one-batch-out z rows of a phase (deviations from the trajectory, so the phase's time
trend is gone) train a PCA (`analytics.multivariate.pca`); T² and SPE limits are the (1 - alpha)
quantiles of held-out batches' statistics (each batch scored by a PCA fitted without it).
Contributions are the PCA ones (T² by Alcala & Qin's decomposition, SPE by squared residuals)
of whichever statistic is larger relative to its limit. A batch's "so far" statistics are the
running means of T²/limit and SPE/limit over its rows; their limits (`batch_t2_limit_`,
`batch_spe_limit_`) are the (1 - alpha) quantiles of the held-out batches' running means.

Everything is vectorised (Polars group-bys and NumPy arrays of shape (batches, points,
variables)); Python loops run over phases and batches only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import polars as pl

from analytics.multivariate.base import frame_of
from analytics.multivariate.pca import _Pca

WHOLE_BATCH = "batch"
TOP = 3
_KEYS = ["batch_id", "phase", "ts"]


def aligned_rows(samples: pl.DataFrame, variables: tuple[str, ...], *, row_s: float, resolution_s: float,
                 starts: pl.DataFrame | None = None) -> pl.DataFrame:
    """Wide rows (batch_id, phase, ts, point, <variables>) of `samples`, sorted by batch and time.

    `ts` is truncated to `row_s` slots; `point` = floor(seconds into the phase / resolution_s).
    `starts` (batch_id, phase, start) gives phase starts seen earlier (a live stream); phases
    not in it start at their first row. Samples without batch_id, value or of other tags are
    left out; a variable with no sample in a slot is null there."""
    if samples.is_empty():
        return pl.DataFrame(schema={"batch_id": pl.String, "phase": pl.String, "ts": pl.Datetime("ns", "UTC"),
                                    "point": pl.Int64, **{v: pl.Float64 for v in variables}})
    phase = pl.col("phase").cast(pl.String) if "phase" in samples.columns else pl.lit(WHOLE_BATCH)
    slot_ns = max(round(row_s * 1e9), 1)
    long = (
        samples.lazy()
        .filter(pl.col("tag_id").is_in(list(variables)) & pl.col("batch_id").is_not_null()
                & pl.col("value").is_not_null() & pl.col("value").is_finite())
        .select(
            pl.col("batch_id"), phase.fill_null(WHOLE_BATCH).alias("phase"),
            ((pl.col("ts").dt.epoch("ns") // slot_ns) * slot_ns).cast(pl.Datetime("ns", "UTC")).alias("ts"),
            pl.col("tag_id"), pl.col("value"),
        )
        .group_by([*_KEYS, "tag_id"]).agg(pl.col("value").mean())
        .collect()
    )
    wide = long.pivot(on="tag_id", index=_KEYS, values="value") if long.height else long.select(_KEYS)
    wide = wide.with_columns(pl.lit(None, pl.Float64).alias(v) for v in variables if v not in wide.columns)
    first = wide.group_by("batch_id", "phase").agg(pl.col("ts").min().alias("_first"))
    if starts is not None and starts.height:
        first = first.join(starts.select("batch_id", "phase", "start"), on=["batch_id", "phase"], how="left")
        first = first.select("batch_id", "phase", pl.coalesce("start", "_first").alias("_first"))
    res_ns = max(round(resolution_s * 1e9), 1)
    return (
        wide.join(first, on=["batch_id", "phase"], how="left")
        .with_columns(((pl.col("ts") - pl.col("_first")).dt.total_nanoseconds() // res_ns).clip(0).alias("point"))
        .select(*_KEYS, pl.col("point").cast(pl.Int64), *[pl.col(v).cast(pl.Float64) for v in variables])
        .sort("batch_id", "ts", "phase")
    )


def rolling_sum(A: np.ndarray, half: int, axis: int) -> np.ndarray:
    """Sum over the window [i - half, i + half] along `axis` (truncated at the ends); same shape."""
    if half <= 0:
        return A
    A = np.moveaxis(A, axis, 0)
    n = A.shape[0]
    c = np.concatenate([np.zeros((1, *A.shape[1:])), np.cumsum(A, axis=0)])
    i = np.arange(n)
    out = c[np.minimum(i + half + 1, n)] - c[np.maximum(i - half, 0)]
    return np.moveaxis(out, 0, axis)


def top_names(values: np.ndarray, names: tuple[str, ...], top: int = TOP,
              above: float | None = None, signed: np.ndarray | None = None) -> pl.Series:
    """Per row of `values` (n, p): the `top` names by value, largest first, `;`-separated; with
    `above`, only those whose value exceeds it (null when none); with `signed`, each name is
    followed by `:` and its signed value there (e.g. `ph:+4.2`)."""
    n, p = values.shape
    if n == 0:
        return pl.Series("names", [], pl.String)
    k = min(top, p)
    V = np.where(np.isfinite(values), values, -np.inf)
    idx = np.argsort(-V, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(V, idx, axis=1)
    cols = []
    for i in range(k):
        name = pl.Series(np.asarray(names, dtype=object)[idx[:, i]], dtype=pl.String)
        if signed is not None:
            val = np.take_along_axis(signed, idx[:, i: i + 1], axis=1)[:, 0]
            name = name + pl.Series(np.char.mod(":%+.1f", val))
        keep = picked[:, i] > (above if above is not None else -np.inf)
        cols.append(pl.Series(f"_{i}", name).zip_with(pl.Series(keep), pl.Series([None] * n, dtype=pl.String)))
    frame = pl.DataFrame(cols)
    out = frame.select(pl.concat_str(pl.all(), separator=";", ignore_nulls=True).alias("names")).to_series()
    return out.replace("", None)


@dataclass(frozen=True)
class GoldenScore:
    """What `GoldenBatch.score` returns.

    rows: one per aligned row: batch_id, phase, ts, point, beyond (past the learnt phase
        length), envelope_z (max |z|), envelope_alarm, violations (`tag:+z;...` outside the
        envelope, worst first), t2, spe (null where a variable is missing), score
        (max(T²/limit, SPE/limit)), mv_alarm (score > 1), contributors (top tags by contribution).
    z, contributions: (rows, variables) frames, in the rows' order.
    batches: per batch, in first-row order: rows, envelope_alarms, t2_so_far, spe_so_far (running
        means of T²/limit and SPE/limit), batch_alarm (either above its batch limit) and
        contributors (top tags by mean contribution).
    """

    rows: pl.DataFrame
    z: pl.DataFrame
    contributions: pl.DataFrame
    batches: pl.DataFrame


class GoldenBatch:
    """Envelope and per-phase PCA of good batches; see the module doc.

    Parameters: `resolution_s` (grid step), `row_s` (time slot of a wide row), `alpha` (nominal
    per-row false-alarm rate of every limit), `k` (fixed envelope width in σ; None = calibrate),
    `smooth` (σ pooling half-width in points), `std_floor` (fraction of a variable's overall σ),
    `min_batches` (per point), `variance` (PCA).

    Learned: `variables_`, `phases_`, `points_` (per phase), `mean_`, `std_` (sum(points_), p),
    `k_`, `pca_` (per phase: dict of arrays or None), `t2_limit_`, `spe_limit_` (per phase),
    `batch_t2_limit_`, `batch_spe_limit_`, `batches_` (training batch ids), `partial_` (batch ids
    left out as cut short: fewer than half the median batch's rows), `n_rows_`.
    """

    def __init__(self, *, resolution_s: float = 30.0, row_s: float = 1.0, alpha: float = 0.01,
                 k: float | None = None, smooth: int = 2, std_floor: float = 0.05, min_batches: int = 3,
                 variance: float = 0.9):
        self.resolution_s = resolution_s
        self.row_s = row_s
        self.alpha = alpha
        self.k = k
        self.smooth = smooth
        self.std_floor = std_floor
        self.min_batches = min_batches
        self.variance = variance

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("resolution_s", "row_s", "alpha", "k", "smooth", "std_floor",
                                              "min_batches", "variance")}

    # --- fit -----------------------------------------------------------------------------------

    def fit(self, samples: pl.DataFrame, variables: tuple[str, ...] | None = None) -> Self:
        """Learn from good batches' samples (see the module doc). Raises ValueError (naming the
        reason) on too few batches, bad parameters or no usable rows."""
        if not (self.resolution_s > 0 and self.row_s > 0 and 0 < self.alpha < 1 and self.min_batches >= 3):
            raise ValueError("resolution_s and row_s must be > 0, alpha in (0, 1), min_batches >= 3; "
                             f"got {self.get_params()}")
        if variables is None:
            variables = tuple(sorted(samples.get_column("tag_id").unique().drop_nulls().to_list()))
        if not variables:
            raise ValueError("no variables (no tag in the samples)")
        rows = aligned_rows(samples, variables, row_s=self.row_s, resolution_s=self.resolution_s)
        # A batch cut by the training range (or still running) is not a good batch: leave out
        # batches with fewer than half the median batch's rows.
        sizes = rows.group_by("batch_id", maintain_order=True).len()
        whole = sizes.filter(pl.col("len") >= 0.5 * sizes.get_column("len").median()) if sizes.height else sizes
        self.partial_ = tuple(sizes.join(whole, on="batch_id", how="anti").get_column("batch_id").to_list())
        rows = rows.filter(pl.col("batch_id").is_in(whole.get_column("batch_id").implode()))
        batch_ids = rows.get_column("batch_id").unique(maintain_order=True).to_list()
        if len(batch_ids) < self.min_batches:
            raise ValueError(f"too few batches to learn a golden batch: {len(batch_ids)} "
                             f"({', '.join(batch_ids) or 'none'}), need at least {self.min_batches}")
        self.variables_ = tuple(variables)
        self.batches_ = tuple(batch_ids)
        self.n_rows_ = rows.height
        X_all = rows.select(self.variables_).to_numpy().astype(np.float64)
        centre = np.nanmean(X_all, axis=0)
        spread = np.nanstd(X_all, axis=0)
        if not np.isfinite(centre).all():
            raise ValueError(f"no value at all for {[v for v, c in zip(variables, centre) if not np.isfinite(c)]}")
        floor = np.maximum(self.std_floor * spread, 1e-9 * np.maximum(np.abs(centre), 1.0))
        # Phases in the order they come in a batch (mean position of their first row).
        order = (rows.with_row_index("_i").group_by("batch_id", "phase").agg(pl.col("ts").min())
                 .join(rows.group_by("batch_id").agg(pl.col("ts").min().alias("_b")), on="batch_id")
                 .group_by("phase").agg((pl.col("ts") - pl.col("_b")).dt.total_seconds().mean().alias("_at"))
                 .sort("_at", "phase"))
        self.phases_ = tuple(order.get_column("phase").to_list())
        means, stds, points, pcas, t2_lims, spe_lims = [], [], [], [], [], []
        held_out = []  # (batch index, ts ns, t2/limit, spe/limit) of held-out rows, for the batch limits
        zmax_all = []
        for phase in self.phases_:
            part = rows.filter(pl.col("phase") == phase)
            env = self._phase_envelope(part, batch_ids, centre, floor)
            if env is None:
                means.append(np.empty((0, len(variables))))
                stds.append(np.empty((0, len(variables))))
                points.append(0)
                pcas.append(None)
                t2_lims.append(np.nan)
                spe_lims.append(np.nan)
                continue
            mean, std, Z, b_idx, ts_ns = env
            means.append(mean)
            stds.append(std)
            points.append(mean.shape[0])
            zmax_all.append(np.nanmax(np.abs(np.where(np.isnan(Z), 0.0, Z)), axis=1)[~np.isnan(Z).all(axis=1)])
            pca, t2_lim, spe_lim, stats = self._phase_pca(Z, b_idx)
            pcas.append(pca)
            t2_lims.append(t2_lim)
            spe_lims.append(spe_lim)
            if stats is not None:
                rows_ok, t2, spe = stats
                held_out.append(np.column_stack([b_idx[rows_ok], ts_ns[rows_ok], t2 / t2_lim, spe / spe_lim]))
        if not any(points):
            raise ValueError(f"no point of any phase has rows from {self.min_batches} batches or more "
                             f"(resolution_s {self.resolution_s})")
        self.points_ = tuple(int(p) for p in points)
        self.mean_ = np.concatenate(means)
        self.std_ = np.concatenate(stds)
        zmax = np.concatenate(zmax_all) if zmax_all else np.empty(0)
        self.k_ = float(self.k) if self.k is not None else float(np.quantile(zmax, 1 - self.alpha, method="higher"))
        self.pca_ = pcas
        self.t2_limit_ = np.asarray(t2_lims, dtype=np.float64)
        self.spe_limit_ = np.asarray(spe_lims, dtype=np.float64)
        self.batch_t2_limit_ = self.batch_spe_limit_ = float("nan")
        if held_out:
            H = np.concatenate(held_out)
            H = H[np.lexsort((H[:, 1], H[:, 0]))]
            running = _running_means(H[:, 0], H[:, 2:])
            q = 1 - self.alpha
            self.batch_t2_limit_ = float(np.quantile(running[:, 0], q, method="higher"))
            self.batch_spe_limit_ = float(np.quantile(running[:, 1], q, method="higher"))
        return self

    def _phase_envelope(self, part: pl.DataFrame, batch_ids: list[str], centre: np.ndarray, floor: np.ndarray):
        """(mean (K, p), std (K, p), leave-one-batch-out z of the rows (n, p), batch index (n,),
        ts ns (n,)) of one phase; None when no point has enough batches."""
        p = len(self.variables_)
        index = {b: i for i, b in enumerate(batch_ids)}
        b_idx = np.array([index[b] for b in part.get_column("batch_id").to_list()], dtype=np.int64) \
            if part.height else np.empty(0, np.int64)
        point = part.get_column("point").to_numpy()
        X = part.select(self.variables_).to_numpy().astype(np.float64) - centre  # centred: stable sums
        present = ~np.isnan(X)
        Xz = np.where(present, X, 0.0)
        B = len(batch_ids)
        K = int(point.max()) + 1
        S = np.zeros((B, K, p))
        SS = np.zeros((B, K, p))
        N = np.zeros((B, K, p))
        np.add.at(S, (b_idx, point), Xz)
        np.add.at(SS, (b_idx, point), Xz * Xz)
        np.add.at(N, (b_idx, point), present.astype(np.float64))
        batches_at = (N.sum(axis=2) > 0).sum(axis=0)  # (K,)
        valid = batches_at >= self.min_batches
        if not valid.any():
            return None
        K_eff = int(np.flatnonzero(valid)[-1]) + 1
        S, SS, N, valid = S[:, :K_eff], SS[:, :K_eff], N[:, :K_eff], valid[:K_eff]

        def envelope(s, ss, n, axis):
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = s / n
                m2 = np.maximum(ss - s * s / np.where(n > 0, n, 1), 0.0)
                dof = np.maximum(n - 1, 0)
                var = rolling_sum(m2, self.smooth, axis) / rolling_sum(dof, self.smooth, axis)
            std = np.maximum(np.sqrt(var), floor)
            return mean, np.where(np.isfinite(std), std, np.nan)

        mean, std = envelope(S.sum(0), SS.sum(0), N.sum(0), axis=0)
        # Leave-one-batch-out: the envelope of the other batches, for every batch at once (B, K, p).
        m_lobo, s_lobo = envelope(S.sum(0) - S, SS.sum(0) - SS, N.sum(0) - N, axis=1)
        lobo_ok = ((N.sum(axis=2) > 0).sum(axis=0)[None, :] - (N.sum(axis=2) > 0)) >= self.min_batches - 1
        keep = point < K_eff
        bi, pi = b_idx[keep], point[keep]
        with np.errstate(invalid="ignore", divide="ignore"):
            Z = (X[keep] - m_lobo[bi, pi]) / s_lobo[bi, pi]
        Z[~lobo_ok[bi, pi]] = np.nan
        # Points with too few batches in the middle of a phase: carry the nearest earlier valid one.
        fill = np.maximum.accumulate(np.where(valid, np.arange(K_eff), 0))
        mean, std = mean[fill] + centre, std[fill]
        ts_ns = part.get_column("ts").dt.epoch("ns").to_numpy()[keep]
        return mean, std, Z, bi, ts_ns

    def _phase_pca(self, Z: np.ndarray, b_idx: np.ndarray):
        """(PCA state or None, T² limit, SPE limit, (rows used, held-out T², held-out SPE) or None)."""
        p = Z.shape[1]
        ok = ~np.isnan(Z).any(axis=1)
        batches = np.unique(b_idx[ok])
        if p < 2 or ok.sum() < max(2 * p, 10) or batches.size < self.min_batches:
            return None, np.nan, np.nan, None
        rows_ok = np.flatnonzero(ok)
        Zok, bok = Z[ok], b_idx[ok]
        t2 = np.empty(Zok.shape[0])
        spe = np.empty(Zok.shape[0])
        for b in batches:
            held = bok == b
            t2[held], spe[held] = _Pca(Zok[~held], self.variance).statistics(Zok[held])
        q = 1 - self.alpha
        t2_lim = max(float(np.quantile(t2, q, method="higher")), 1e-12)
        spe_lim = max(float(np.quantile(spe, q, method="higher")), 1e-12)
        model = _Pca(Zok, self.variance)
        state = {"mean": model.mean, "scale": model.scale, "components": model.components,
                 "eigenvalues": model.eigenvalues}
        return state, t2_lim, spe_lim, (rows_ok, t2, spe)

    # --- score ---------------------------------------------------------------------------------

    def score(self, samples: pl.DataFrame, starts: pl.DataFrame | None = None) -> GoldenScore:
        """Score the samples of one or more (running or finished) batches of the unit; `starts`
        as in `aligned_rows`. Rows of a phase the model does not know have null envelope and
        statistics. Never learns."""
        rows = aligned_rows(samples, self.variables_, row_s=self.row_s, resolution_s=self.resolution_s,
                            starts=starts)
        n, p = rows.height, len(self.variables_)
        X = rows.select(self.variables_).to_numpy().astype(np.float64) if n else np.empty((0, p))
        phase_of = {ph: i for i, ph in enumerate(self.phases_)}
        ph = rows.get_column("phase").replace_strict(phase_of, default=-1, return_dtype=pl.Int64).to_numpy() \
            if n else np.empty(0, np.int64)
        points = np.asarray(self.points_, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(points)])
        known = (ph >= 0) & (points[np.maximum(ph, 0)] > 0)
        raw_point = rows.get_column("point").to_numpy() if n else np.empty(0, np.int64)
        last = points[np.maximum(ph, 0)] - 1
        at = np.where(known, offsets[np.maximum(ph, 0)] + np.minimum(raw_point, np.maximum(last, 0)), 0)
        mean = np.where(known[:, None], self.mean_[at] if self.mean_.size else np.nan, np.nan)
        std = np.where(known[:, None], self.std_[at] if self.std_.size else np.nan, np.nan)
        with np.errstate(invalid="ignore"):
            Z = (X - mean) / std
        absz = np.abs(Z)
        has_z = ~np.isnan(Z).all(axis=1) if n else np.zeros(0, bool)
        zmax = np.where(has_z, np.nanmax(np.where(np.isnan(absz), -np.inf, absz), axis=1) if n else 0.0, np.nan)
        t2 = np.full(n, np.nan)
        spe = np.full(n, np.nan)
        contrib = np.full((n, p), np.nan)
        for i, state in enumerate(self.pca_):
            if state is None:
                continue
            sel = np.flatnonzero((ph == i) & ~np.isnan(Z).any(axis=1))
            if not sel.size:
                continue
            model = _pca_from(state)
            t2[sel], spe[sel] = model.statistics(Z[sel])
            ct2, cspe = model.contributions(Z[sel])
            ct2, cspe = ct2 / self.t2_limit_[i], cspe / self.spe_limit_[i]
            contrib[sel] = np.where((ct2.sum(1) >= cspe.sum(1))[:, None], ct2, cspe)
        t2_lim = np.where(ph >= 0, self.t2_limit_[np.maximum(ph, 0)] if self.t2_limit_.size else np.nan, np.nan)
        spe_lim = np.where(ph >= 0, self.spe_limit_[np.maximum(ph, 0)] if self.spe_limit_.size else np.nan, np.nan)
        with np.errstate(invalid="ignore"):
            ratio = np.column_stack([t2 / t2_lim, spe / spe_lim]) if n else np.empty((0, 2))
        score = np.where(np.isnan(ratio).all(axis=1), np.nan, np.nanmax(np.where(np.isnan(ratio), -np.inf, ratio),
                                                                          axis=1)) if n else np.empty(0)
        out = rows.select(*_KEYS, "point").with_columns(
            pl.Series("beyond", known & (raw_point > last)),
            pl.Series("envelope_z", zmax, pl.Float64).fill_nan(None),
            pl.Series("envelope_alarm", np.nan_to_num(zmax, nan=0.0) > self.k_),
            top_names(absz, self.variables_, top=p, above=self.k_, signed=Z).alias("violations"),
            pl.Series("t2", t2, pl.Float64).fill_nan(None),
            pl.Series("spe", spe, pl.Float64).fill_nan(None),
            pl.Series("score", score, pl.Float64).fill_nan(None),
            pl.Series("mv_alarm", np.nan_to_num(score, nan=0.0) > 1.0),
            top_names(contrib, self.variables_).alias("contributors"),
        )
        b = out.get_column("batch_id").to_numpy()
        change = np.concatenate([[True], b[1:] != b[:-1]]) if n else np.zeros(0, bool)
        running = _running_means(np.cumsum(change), ratio) if n else np.empty((0, 2))
        summary = (
            out.with_columns(pl.Series("_rt2", running[:, 0]).fill_nan(None),
                             pl.Series("_rspe", running[:, 1]).fill_nan(None))
            .group_by("batch_id", maintain_order=True)
            .agg(pl.len().alias("rows"), pl.col("envelope_alarm").sum().alias("envelope_alarms"),
                 pl.col("_rt2").drop_nulls().last().alias("t2_so_far"),
                 pl.col("_rspe").drop_nulls().last().alias("spe_so_far"))
            .with_columns(((pl.col("t2_so_far") > self.batch_t2_limit_)
                           | (pl.col("spe_so_far") > self.batch_spe_limit_)).fill_null(False).alias("batch_alarm"))
        )
        mean_contrib = (pl.DataFrame({"batch_id": b}).hstack(frame_of(np.nan_to_num(contrib), self.variables_))
                        .group_by("batch_id", maintain_order=True).mean()) if n else None
        names = top_names(mean_contrib.drop("batch_id").to_numpy(), self.variables_, above=0.0) if n \
            else pl.Series("names", [], pl.String)
        summary = summary.with_columns(names.alias("contributors"))
        return GoldenScore(out, frame_of(Z, self.variables_).fill_nan(None),
                           frame_of(contrib, self.variables_).fill_nan(None), summary)


def _pca_from(state: dict) -> _Pca:
    model = _Pca.__new__(_Pca)
    model.mean, model.scale = state["mean"], state["scale"]
    model.components, model.eigenvalues = state["components"], state["eigenvalues"]
    return model


def _running_means(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running mean of `values` (n, m) within consecutive runs of equal `group` (n,), NaN skipped
    (a NaN row repeats the previous mean, or NaN before any value)."""
    n = values.shape[0]
    if n == 0:
        return values
    start = np.concatenate([[True], group[1:] != group[:-1]])
    ok = ~np.isnan(values)
    s = np.cumsum(np.where(ok, values, 0.0), axis=0)
    c = np.cumsum(ok, axis=0).astype(np.float64)
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    base_s = np.where(first[:, None] > 0, s[first - 1], 0.0)
    base_c = np.where(first[:, None] > 0, c[first - 1], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s - base_s) / np.where(c - base_c > 0, c - base_c, np.nan)
