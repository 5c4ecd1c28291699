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

from typing import Self

import polars as pl

from analytics.detectors.base import per_tag
from analytics.detectors.spc import fit_centres
from analytics.detectors.stream import LevelMemory, keys_of, on_key, split_usable, tail_of, upsert, with_tail
from controltower.site import TagInfo

_STATE_SCHEMA = {"tag_id": pl.String(), "value": pl.Float64(), "n": pl.Int64()}


class EwmaChart:
    """Level 1 while a tag's EWMA leaves centre +- L sigma_EWMA. Unfitted tags score null."""

    name = "ewma"

    def __init__(self, tags: list[TagInfo], lam: float = 0.2, L: float = 3.0, exact_limits: bool = True,
                 given: dict[str, tuple[float, float]] | None = None):
        self.tags = tags
        self.lam = lam
        self.L = L
        self.exact_limits = exact_limits
        self.given = given
        self.centres_ = fit_centres(pl.DataFrame(schema={"tag_id": pl.String(), "value": pl.Float64(),
                                                         "quality": pl.String()}), tags, given)
        self.reset()

    def fit(self, history: pl.DataFrame) -> Self:
        """Learn each tag's centre line and sigma from normal history (sample schema)."""
        self.centres_ = fit_centres(history, self.tags, self.given)
        return self

    def reset(self) -> None:
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)
        self._levels = LevelMemory()

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        if not 0 < self.lam <= 1 or self.L <= 0:
            raise ValueError(f"need 0 < lam <= 1 and L > 0, got lam={self.lam}, L={self.L}")
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
            pl.when(over).then(pl.format(f"EWMA {{}} {{}} {{}} (lam {self.lam:g}, L {self.L:g})",
                                         pl.col("ewma").round_sig_figs(5),
                                         pl.when(side > 0).then(pl.lit("above")).otherwise(pl.lit("below")),
                                         bound.round_sig_figs(5))).alias("reason_now"),
        )
        return self._levels.merge(rows, scored)
