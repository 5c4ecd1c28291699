"""Robust rolling z-score: a sample far from the recent median of its tag, in MADs.

Catches: the same spikes and steps as `zscore.RollingZScore`, but the centre and the spread come
from medians, so a burst of outliers (or a short earlier spike) does not widen the window's
spread and hide the next one (breakdown point 50% instead of 0%).

    m_t   = median of the tag's previous `window` usable values (the current one excluded)
    d_t   = |x_t - m_t|                                  deviation from the moving median
    MAD_t = median of the previous `window` deviations d
    z     = |x_t - m_t| / max(1.4826 * MAD_t, min_std_fraction * span, 1e-9)

1.4826 makes the MAD a consistent estimate of sigma for Gaussian noise. MAD_t is the median
deviation about the moving median (each deviation measured against the median of its own
window), not about the single median of the current window: the exact windowed MAD needs a
second sort per sample and runs ~20x slower, while for stationary noise the two agree (the
moving median's own error is ~1.25 sigma/sqrt(window)). No score until `warmup` previous
deviations exist (2 x warmup samples after a start). Level 1 (warning) when z > threshold; `limit` m +- threshold * scale on the
sample's side; `reason` "robust z=9.3 over 120 samples".

Streaming: the last `window` usable values of each tag and their deviations are carried into the
next batch. Vectorised: two `rolling_median` per tag on the long path; on the wide path
(`score_wide`) two `moving_median.moving_median` down the (time x tags) matrix of usable values
with the carried tails on top (NaN-skipping like Polars' null-skipping windows).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from analytics.detectors.base import per_tag
from analytics.detectors.stream import LevelMemory, keys_of, new_tails, on_key, split_usable, with_tail
from analytics.detectors.wide import (
    Compacted,
    WideBatch,
    WideScores,
    aligned,
    long_reasons,
    memory_scores,
    replace_tails,
    stack_tail,
    tail_frame,
)
from analytics.detectors.zscore import WindowedScore
from controltower.site import TagInfo

MAD_TO_SIGMA = 1.4826
_TAIL_SCHEMA = {"tag_id": pl.String(), "value": pl.Float64(), "dev": pl.Float64(), "n_prev": pl.Int64()}


def robust_reason(z: pl.Expr) -> pl.Expr:
    """"robust z=9.3 over 120 samples" from the z-score and the `n_prev` column."""
    return pl.format("robust z={} over {} samples", z.round(1), pl.col("n_prev"))


class RobustZScore(WindowedScore):
    """Per-sample median/MAD z-score against the tag's previous `window` samples; level 1 above
    `threshold`. Tags not in `tags` score null at level 0."""

    name = "robust_zscore"

    def __init__(self, tags: list[TagInfo], window: int = 120, threshold: float = 8.0,
                 min_std_fraction: float = 0.01, warmup: int = 30):
        super().__init__(tags, window, threshold, min_std_fraction, warmup)
        self.reset()

    def reset(self) -> None:
        self._tail = pl.DataFrame(schema=_TAIL_SCHEMA)
        self._levels = LevelMemory()

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        self._check()
        floors = self.floors()
        rows, fresh = split_usable(batch, floors, self._tail.get_column("tag_id"))
        keys = keys_of(rows)
        w, warm = self.window, self.warmup
        fresh = fresh.select("_row", "tag_id", "value", "_tag", pl.lit(None, pl.Float64).alias("dev"),
                             pl.lit(None, pl.Int64).alias("n_prev"))
        stats = (
            with_tail(fresh, self._tail, keys)
            .with_columns(per_tag(pl.col("value").shift(1).rolling_median(w, min_samples=warm)).alias("median"))
            .with_columns(pl.coalesce(pl.col("dev"), (pl.col("value") - pl.col("median")).abs()).alias("dev"))
            .with_columns(
                per_tag(pl.col("dev").shift(1).rolling_median(w, min_samples=warm)).alias("mad"),
                pl.min_horizontal(per_tag(pl.col("n_prev").first().fill_null(0) + pl.int_range(pl.len())),
                                  pl.lit(w)).alias("n_prev"),
            )
            .pipe(on_key, floors, keys)
        )
        self._tail = new_tails(self._tail, stats, w)
        scale = pl.max_horizontal(MAD_TO_SIGMA * pl.col("mad"), pl.col("floor"), pl.lit(1e-9))
        z = pl.when(pl.col("mad").is_not_null()).then((pl.col("value") - pl.col("median")).abs() / scale)
        over = (z > self.threshold).fill_null(False)
        side = pl.when(pl.col("value") >= pl.col("median")).then(1.0).otherwise(-1.0)
        scored = stats.filter(pl.col("_row").is_not_null()).select(
            "_row",
            z.alias("score"),
            over.cast(pl.UInt8).alias("level_now"),
            pl.when(over).then(pl.col("median") + side * self.threshold * scale).alias("limit_now"),
            pl.when(over).then(robust_reason(z)).alias("reason_now"),
        )
        return self._levels.merge(rows, scored)

    def score_wide(self, wide: WideBatch) -> WideScores:
        """`score` on a wide batch (`wide.pivot`): each tag's usable values compacted to the top of
        its column under its carried tail (`window` rows, bottom-aligned, NaN above), then the
        moving median of the values and the moving median of the deviations down the columns."""
        # Imported here, not with the module: the kernel is compiled by Numba, whose import alone
        # adds ~115 MiB to a process's RSS (LLVM), paid only by a site that runs this detector.
        from analytics.detectors.moving_median import moving_median

        self._check()
        ids, w = wide.tag_ids, self.window
        floor = aligned(self.floors(), ids, "floor")
        known = ~np.isnan(floor)
        ok = wide.usable & known
        packed = Compacted(wide.values, ok)
        x = packed.x
        stacked, n_tail = stack_tail(self._tail, ids, w, {"value": x, "dev": x})
        value, dev = stacked["value"], stacked["dev"]
        # The median of the `window` rows above a fresh row: a moving median over the rows
        # before it (row w - 1 + j of the moving median ends just above fresh row j).
        median = moving_median(value[:-1], w, self.warmup)[w - 1:]
        gap = dev[w:]  # the fresh deviations, written under the carried ones
        np.subtract(x, median, out=gap)
        np.abs(gap, out=gap)
        mad = moving_median(dev[:-1], w, self.warmup)[w - 1:]
        # NaN where the MAD is (warm-up); the median then exists too (it needs fewer samples).
        scale = np.maximum(np.multiply(mad, MAD_TO_SIGMA, out=mad), np.maximum(floor, 1e-9), out=mad)
        z = gap / scale
        over = z > self.threshold
        n_fresh = np.where(known, packed.n, 0)
        n_first = self._first_n_prev(ids)
        self._tail = replace_tails(self._tail, ids, self._new_tails(stacked, ids, n_tail, n_fresh, n_first))

        def n_prev(r: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return np.minimum(n_first[cols] + n_tail[cols] + r, w)

        def reasons(rows: np.ndarray, cols: np.ndarray) -> list:
            r = packed.row_of(rows, cols)
            return long_reasons(pl.DataFrame({"z": z[r, cols], "n_prev": n_prev(r, cols)}), robust_reason(pl.col("z")))

        def limits(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            r = packed.row_of(rows, cols)
            m = median[r, cols]
            side = np.where(x[r, cols] >= m, 1.0, -1.0)
            return m + side * self.threshold * scale[r, cols]

        return memory_scores(self._levels, wide, ok, packed.unpack(z), packed.unpack(over, False), limits, reasons)

    def _first_n_prev(self, tag_ids: list[str]) -> np.ndarray:
        """Per column, `n_prev` of the tag's first carried row (0 without a tail): the long path
        counts a tag's previous samples from there."""
        first = self._tail.unique(subset="tag_id", keep="first", maintain_order=True)
        return aligned(first, tag_ids, "n_prev", 0).astype(np.int64)

    def _new_tails(self, stacked: dict[str, np.ndarray], tag_ids: list[str], n_tail: np.ndarray,
                   n_fresh: np.ndarray, n_first: np.ndarray) -> pl.DataFrame:
        """The last `window` rows of each column's tail + fresh rows, with `n_prev` counted on from
        the old tail's first row as the long path does."""
        w = self.window
        new = tail_frame(stacked, {c: _TAIL_SCHEMA[c] for c in ("tag_id", "value", "dev")}, tag_ids, w, n_tail,
                         n_fresh, w)
        counts = np.minimum(n_tail + n_fresh, w)
        start = n_first + np.maximum(n_tail + n_fresh - w, 0)  # n_prev of each tag's first kept row
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return new.with_columns(pl.Series("n_prev", np.minimum(np.repeat(start, counts) + within, w), pl.Int64))
