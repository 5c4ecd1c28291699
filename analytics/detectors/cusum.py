"""Tabular CUSUM chart (Page 1954; Montgomery, Introduction to SQC, 9.1) per tag, upper and lower.

Catches: a small sustained shift of the mean (about 2k sigma), accumulated sample after sample:

    y_t  = (x_t - centre) / sigma
    H_t  = max(0, H_{t-1} + y_t - k)        upper CUSUM, H_0 = 0
    L_t  = max(0, L_{t-1} - y_t - k)        lower CUSUM
    score = max(H_t, L_t) / h               level 1 (warning) while score > 1

k and h in sigma units (k = 0.5, h = 5 detect a 1-sigma shift with an in-control ARL of ~465).
The sums are not reset after a signal: the condition lasts until the sum falls back under h.
`limit` is centre +- h * sigma on the side that signals; `reason` "CUSUM upper 6.2 > h 5".

Vectorised: the recursion S_t = max(0, S_{t-1} + u_t) is not linear, but with the cumulative
sum C_t = S_0 + u_1 + ... + u_t (C_0 = S_0 >= 0) it is

    S_t = C_t - min(0, min_{0 <= s <= t} C_s)

(by induction: S_{t+1} = max(0, C_t - M_t + u_{t+1}) = C_{t+1} - min(C_{t+1}, M_t) = C_{t+1} - M_{t+1}).
So per tag: a seed row carrying S_0 (the sum at the end of the previous batch), a `cum_sum`, a
`cum_min`; the carried sum restarts C each batch, so rounding does not build up.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from analytics.detectors.base import per_tag
from analytics.detectors.spc import CentreLineChart, standardised
from analytics.detectors.stream import LevelMemory, keys_of, on_key, split_usable, tail_of, upsert, with_tail
from analytics.detectors.wide import WideBatch, WideScores, aligned, long_reasons, memory_scores
from controltower.site import TagInfo

_STATE_SCHEMA = {"tag_id": pl.String(), "up": pl.Float64(), "down": pl.Float64()}


def cusum(increment: str) -> pl.Expr:
    """max(0, S + u) run over the tag's rows of column `increment` (the first row being S_0 >= 0)."""
    c = per_tag(pl.col(increment).cum_sum())
    return c - pl.min_horizontal(per_tag(pl.col(increment).cum_sum().cum_min()), pl.lit(0.0))


def cusum_columns(y: np.ndarray, sign: float, k: float, start: np.ndarray) -> np.ndarray:
    """max(0, S + u) with u = sign * y - k down each column of `y`, from the column's `start`
    S_0 >= 0 (the same cumulative sum and minimum as `cusum`, the seed as the first term).
    In place in one buffer: fresh large arrays cost page faults, as much as the arithmetic."""
    c = np.empty((y.shape[0] + 1, y.shape[1]), order="F")
    c[0] = start
    np.multiply(y, sign, out=c[1:])
    c[1:] -= k
    np.cumsum(c, axis=0, out=c)
    low = np.minimum.accumulate(c, axis=0)
    np.minimum(low, 0.0, out=low)
    np.subtract(c, low, out=c)
    return c[1:]


def cusum_reason(h: float) -> pl.Expr:
    """"CUSUM upper 6.2 > h 5" from the `up` and `down` columns."""
    upper = pl.col("up") >= pl.col("down")
    return pl.format(f"CUSUM {{}} {{}} > h {h:g}", pl.when(upper).then(pl.lit("upper")).otherwise(pl.lit("lower")),
                     pl.max_horizontal("up", "down").round(2))


class CusumChart(CentreLineChart):
    """Level 1 while a tag's upper or lower CUSUM exceeds h. Unfitted tags score null."""

    name = "cusum"

    def __init__(self, tags: list[TagInfo], k: float = 0.5, h: float = 5.0,
                 given: dict[str, tuple[float, float]] | None = None):
        super().__init__(tags, given)
        self.k = k
        self.h = h
        self.reset()

    def reset(self) -> None:
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)
        self._levels = LevelMemory()

    def forget(self, tag_ids: list[str]) -> None:
        """Drop the carried sums (they restart at 0) of `tag_ids` (`CentreLineChart.move_centres`)."""
        self._state = self._state.filter(~pl.col("tag_id").is_in(tag_ids))

    def _check(self) -> None:
        if self.k < 0 or self.h <= 0:
            raise ValueError(f"need k >= 0 and h > 0, got k={self.k}, h={self.h}")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        self._check()
        rows, fresh = split_usable(batch, self.centres_)
        keys = keys_of(rows)
        seeds = self.centres_.join(self._state, on="tag_id", how="left").select(
            "tag_id", pl.col("up").fill_null(0.0), pl.col("down").fill_null(0.0))
        y = standardised()
        stats = (
            fresh.select("_row", "tag_id", "value", "_tag")
            .pipe(on_key, self.centres_, keys)
            .select("_row", "tag_id", "_tag", (y - self.k).alias("up"), (-y - self.k).alias("down"))
        )
        stats = (
            with_tail(stats, seeds, keys)
            .with_columns(cusum("up").alias("up"), cusum("down").alias("down"))
            .pipe(on_key, self.centres_, keys)
        )
        self._state = upsert(self._state, tail_of(stats, 1, list(_STATE_SCHEMA)))

        high = pl.max_horizontal("up", "down")
        over = high > self.h
        upper = pl.col("up") >= pl.col("down")
        side = pl.when(upper).then(1.0).otherwise(-1.0)
        scored = stats.filter(pl.col("_row").is_not_null()).select(
            "_row",
            (high / self.h).alias("score"),
            over.cast(pl.UInt8).alias("level_now"),
            pl.when(over).then(pl.col("centre") + side * self.h * pl.col("sigma")).alias("limit_now"),
            pl.when(over).then(cusum_reason(self.h)).alias("reason_now"),
        )
        return self._levels.merge(rows, scored)

    def score_wide(self, wide: WideBatch) -> WideScores:
        """`score` on a wide batch (`wide.pivot`): `cumsum` and `minimum.accumulate` down each
        tag's column of usable samples, from the carried sums."""
        self._check()
        ids = wide.tag_ids
        centre, sigma, ok, packed = self.centred_columns(wide)
        known = ~np.isnan(centre)
        y = (packed.x - centre) / sigma
        up0, down0 = aligned(self._state, ids, "up", 0.0), aligned(self._state, ids, "down", 0.0)
        up, down = cusum_columns(y, 1.0, self.k, up0), cusum_columns(y, -1.0, self.k, down0)
        self._state = upsert(self._state, pl.DataFrame(
            {"tag_id": ids, "up": packed.last(up, up0), "down": packed.last(down, down0)},
            schema=_STATE_SCHEMA).filter(pl.Series(known)))
        high = np.maximum(up, down)

        def reasons(rows: np.ndarray, cols: np.ndarray) -> list:
            r = packed.row_of(rows, cols)
            return long_reasons(pl.DataFrame({"up": up[r, cols], "down": down[r, cols]}), cusum_reason(self.h))

        def limits(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            r = packed.row_of(rows, cols)
            return centre[cols] + np.where(up[r, cols] >= down[r, cols], 1.0, -1.0) * self.h * sigma[cols]

        return memory_scores(self._levels, wide, ok, packed.unpack(high / self.h), packed.unpack(high > self.h, False),
                             limits, reasons)
