"""EWMA control chart (Roberts 1959; Montgomery, Introduction to SQC, 9.2) per tag.

Catches: a small sustained shift of the mean (0.5 - 2 sigma) that a Shewhart limit or the
z-score misses, by averaging the recent samples with exponentially decreasing weights:

    e_t   = lam * x_t + (1 - lam) * e_{t-1},     e_0 = centre
    s_t   = sigma * sqrt(lam / (2 - lam) * (1 - (1 - lam)^(2t)))     exact (time-varying) limits
    s_inf = sigma * sqrt(lam / (2 - lam))                            asymptotic limits
    score = |e_t - centre| / s_t     level 1 (warning) while score > L

`centre` and `sigma` come from `fit` (`spc.fit_centres`). The exact limits are narrow for the
first samples after start-up (t counts the tag's usable samples since the chart started, across
batches), which catches a process that starts off target; `exact_limits=False` uses s_inf from
the first sample. `limit` is centre +- L * s_t on the sample's side; `reason`
"EWMA 37.62 above 37.51 (lam 0.2, L 3)".

Vectorised: the recursion is Polars' `ewm_mean(alpha=lam, adjust=False)` per tag over the batch
with the tag's carried e_{t-1} (or the centre) put in front as the first value, whose own output
is dropped; t is the carried count plus the position in the batch.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.signal import lfilter

from analytics.detectors.base import per_tag
from analytics.detectors.spc import CentreLineChart
from analytics.detectors.stream import LevelMemory, keys_of, on_key, split_usable, tail_of, upsert, with_tail
from analytics.detectors.wide import WideBatch, WideScores, aligned, long_reasons, memory_scores
from controltower.site import TagInfo

_STATE_SCHEMA = {"tag_id": pl.String(), "value": pl.Float64(), "n": pl.Int64()}


def ewma_reason(lam: float, L: float) -> pl.Expr:
    """"EWMA 37.62 above 37.51 (lam 0.2, L 3)" from the `ewma`, `centre` and `s` columns."""
    side = pl.when(pl.col("ewma") >= pl.col("centre")).then(1.0).otherwise(-1.0)
    bound = pl.col("centre") + side * L * pl.col("s")
    return pl.format(f"EWMA {{}} {{}} {{}} (lam {lam:g}, L {L:g})", pl.col("ewma").round_sig_figs(5),
                     pl.when(side > 0).then(pl.lit("above")).otherwise(pl.lit("below")), bound.round_sig_figs(5))


class EwmaChart(CentreLineChart):
    """Level 1 while a tag's EWMA leaves centre +- L sigma_EWMA. Unfitted tags score null."""

    name = "ewma"

    def __init__(self, tags: list[TagInfo], lam: float = 0.2, L: float = 3.0, exact_limits: bool = True,
                 given: dict[str, tuple[float, float]] | None = None):
        super().__init__(tags, given)
        self.lam = lam
        self.L = L
        self.exact_limits = exact_limits
        self.reset()

    def reset(self) -> None:
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)
        self._levels = LevelMemory()

    def forget(self, tag_ids: list[str]) -> None:
        """Drop the carried EWMA and its sample count (the exact limits start narrow again) of `tag_ids` (`CentreLineChart.move_centres`)."""
        self._state = self._state.filter(~pl.col("tag_id").is_in(tag_ids))

    def _check(self) -> None:
        if not 0 < self.lam <= 1 or self.L <= 0:
            raise ValueError(f"need 0 < lam <= 1 and L > 0, got lam={self.lam}, L={self.L}")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        self._check()
        rows, fresh = split_usable(batch, self.centres_)
        keys = keys_of(rows)
        # Seed row per tag: the carried EWMA (or the centre) and the count of samples so far.
        seeds = (
            self.centres_.join(self._state, on="tag_id", how="left")
            .select("tag_id", pl.coalesce("value", "centre").alias("value"), pl.col("n").fill_null(0))
        )
        q = 1.0 - self.lam
        stats = (
            with_tail(fresh.select("_row", "tag_id", "value", "_tag", pl.lit(None, pl.Int64).alias("n")), seeds, keys)
            .pipe(on_key, self.centres_, keys)
            .with_columns(
                per_tag(pl.col("value").ewm_mean(alpha=self.lam, adjust=False)).alias("ewma"),
                per_tag(pl.col("n").first() + pl.int_range(pl.len())).alias("n"),
            )
        )
        width = self.lam / (2.0 - self.lam)
        factor = width * (1.0 - q ** (2 * pl.col("n"))) if self.exact_limits else pl.lit(width)
        stats = stats.with_columns((pl.col("sigma") * factor.sqrt()).alias("s"))
        self._state = upsert(self._state, tail_of(stats, 1, ["tag_id", "ewma", "n"]).rename({"ewma": "value"}))

        over = ((pl.col("ewma") - pl.col("centre")).abs() > self.L * pl.col("s")).fill_null(False)
        side = pl.when(pl.col("ewma") >= pl.col("centre")).then(1.0).otherwise(-1.0)
        bound = pl.col("centre") + side * self.L * pl.col("s")
        scored = stats.filter(pl.col("_row").is_not_null()).select(
            "_row",
            ((pl.col("ewma") - pl.col("centre")).abs() / pl.col("s")).alias("score"),
            over.cast(pl.UInt8).alias("level_now"),
            pl.when(over).then(bound).alias("limit_now"),
            pl.when(over).then(ewma_reason(self.lam, self.L)).alias("reason_now"),
        )
        return self._levels.merge(rows, scored)

    def score_wide(self, wide: WideBatch) -> WideScores:
        """`score` on a wide batch (`wide.pivot`): the recursion is `scipy.signal.lfilter` down
        each tag's column of usable samples, started from the carried EWMA."""
        self._check()
        ids = wide.tag_ids
        centre, sigma, ok, packed = self.centred_columns(wide)
        before = aligned(self._state, ids, "value")
        before = np.where(np.isnan(before), centre, before)
        n0 = aligned(self._state, ids, "n", 0).astype(np.int64)
        q = 1.0 - self.lam
        ewma, _ = lfilter([self.lam], [1.0, -q], packed.x, axis=0, zi=(q * before)[None, :])
        width = self.lam / (2.0 - self.lam)
        if self.exact_limits:
            # q^(2n) with n = n0 + row + 1, as a product of a per-row and a per-tag power (a power
            # per cell costs more than the rest of the chart); the limit widens to s_inf as it vanishes.
            decay = np.outer(q ** (2.0 * np.arange(1, ewma.shape[0] + 1)), q ** (2.0 * n0))
            s = sigma * np.sqrt(width * (1.0 - decay))
        else:
            s = np.broadcast_to(sigma * np.sqrt(width), ewma.shape)
        gap = np.abs(ewma - centre)
        over = gap > self.L * s
        known = ~np.isnan(centre)
        self._state = upsert(self._state, pl.DataFrame(
            {"tag_id": ids, "value": packed.last(ewma, before), "n": n0 + packed.n}, schema=_STATE_SCHEMA).filter(
            pl.Series(known)))

        def reasons(rows: np.ndarray, cols: np.ndarray) -> list:
            r = packed.row_of(rows, cols)
            return long_reasons(pl.DataFrame({"ewma": ewma[r, cols], "centre": centre[cols], "s": s[r, cols]}),
                                ewma_reason(self.lam, self.L))

        def limits(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            r = packed.row_of(rows, cols)
            side = np.where(ewma[r, cols] >= centre[cols], 1.0, -1.0)
            return centre[cols] + side * self.L * s[r, cols]

        return memory_scores(self._levels, wide, ok, packed.unpack(gap / s), packed.unpack(over, False), limits, reasons)
