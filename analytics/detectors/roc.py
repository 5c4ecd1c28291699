"""Rate of change: a value moving faster than the process physically can.

Catches: a step or a spike that stays inside the limits (a sensor jump, a valve slamming, a
wrong scaling applied mid-run), and a ramp steeper than the tag's `Limits.rate_of_change`.

    rate  = (x_t - x_prev) / (t - t_prev)      per second, between consecutive usable samples
    score = |rate| / rate_of_change            (> 1 over the limit)

Level 1 (warning) while score > 1; `limit` is the rate limit (unit per second), `reason`
"rising 2.5/s, limit 1.0/s". Only tags whose limits set `rate_of_change` are scored. Two
samples with the same timestamp give no rate (null score).

Streaming: each tag's last usable (ts, value) is carried into the next batch, so the first
sample of a batch is compared with the last one of the previous batch.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl

from analytics.detectors.base import per_tag
from analytics.detectors.stream import LevelMemory, keys_of, new_tails, on_key, split_usable, with_tail
from analytics.detectors.wide import (
    NO_TIME,
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
from controltower.site import TagInfo

_TAIL_SCHEMA = {"tag_id": pl.String(), "ts": pl.Datetime("ns", "UTC"), "value": pl.Float64()}


def rate_per_second() -> pl.Expr:
    """(x - previous x) / seconds since the previous sample, within the tag; null when dt <= 0."""
    dt = per_tag(pl.col("ts").diff()).dt.total_nanoseconds() / 1e9
    return pl.when(dt > 0).then(per_tag(pl.col("value").diff()) / dt)


def rate_reason() -> pl.Expr:
    """"rising 2.5/s, limit 1.0/s" from the `rate` and `rate_limit` columns."""
    return pl.format("{} {}/s, limit {}/s", pl.when(pl.col("rate") > 0).then(pl.lit("rising")).otherwise(pl.lit("falling")),
                     pl.col("rate").abs().round_sig_figs(3), pl.col("rate_limit"))


class RateOfChangeDetector:
    """Level 1 while |dv/dt| of a tag exceeds its `Limits.rate_of_change` (per second)."""

    name = "rate_of_change"

    def __init__(self, tags: list[TagInfo]):
        self.tags = tags
        self.reset()

    def fit(self, history: pl.DataFrame) -> Self:
        """Nothing to learn: the limits come from the site config. Returns self."""
        return self

    def reset(self) -> None:
        self._tail = pl.DataFrame(schema=_TAIL_SCHEMA)
        self._levels = LevelMemory()

    def params(self) -> pl.DataFrame:
        """tag_id and rate_limit of each tag with a rate-of-change limit."""
        rows = [(t.tag_id, t.tag.limits.rate_of_change) for t in self.tags if t.tag.limits.rate_of_change is not None]
        return pl.DataFrame(rows, schema={"tag_id": pl.String(), "rate_limit": pl.Float64()}, orient="row")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        params = self.params()
        rows, fresh = split_usable(batch, params, self._tail.get_column("tag_id"))
        keys = keys_of(rows)
        stats = (
            with_tail(fresh.select("_row", "tag_id", "ts", "value", "_tag"), self._tail, keys)
            .pipe(on_key, params, keys)
            .with_columns(rate_per_second().alias("rate"))
        )
        self._tail = new_tails(self._tail, stats, 1)
        over = (pl.col("rate").abs() > pl.col("rate_limit")).fill_null(False)
        scored = stats.filter(pl.col("_row").is_not_null()).select(
            "_row",
            (pl.col("rate").abs() / pl.col("rate_limit")).alias("score"),
            over.cast(pl.UInt8).alias("level_now"),
            pl.when(over).then(pl.col("rate_limit")).alias("limit_now"),
            pl.when(over).then(rate_reason()).alias("reason_now"),
        )
        return self._levels.merge(rows, scored)

    def score_wide(self, wide: WideBatch) -> WideScores:
        """`score` on a wide batch (`wide.pivot`): differences down each tag's column of usable
        samples, the carried last sample on top."""
        ids = wide.tag_ids
        rate_limit = aligned(self.params(), ids, "rate_limit")
        known = ~np.isnan(rate_limit)
        ok = wide.usable & known
        packed = Compacted(wide.values, ok)
        times = packed.pack(np.broadcast_to(wide.ts[:, None], ok.shape), NO_TIME)
        stacked, n_tail = stack_tail(self._tail, ids, 1, {"ts": times, "value": packed.x})
        ts, x = stacked["ts"], stacked["value"]
        dt = np.diff(ts, axis=0).astype(float) / 1e9
        dt[(ts[1:] == NO_TIME) | (ts[:-1] == NO_TIME) | ~(dt > 0)] = np.nan
        rate = np.diff(x, axis=0) / dt
        self._tail = replace_tails(self._tail, ids, tail_frame(stacked, _TAIL_SCHEMA, ids, 1, n_tail,
                                                               np.where(known, packed.n, 0), 1))
        fast = np.abs(rate)
        over = fast > rate_limit

        def reasons(rows: np.ndarray, cols: np.ndarray) -> list:
            r = packed.row_of(rows, cols)
            return long_reasons(pl.DataFrame({"rate": rate[r, cols], "rate_limit": rate_limit[cols]}), rate_reason())

        return memory_scores(self._levels, wide, ok, packed.unpack(fast / rate_limit), packed.unpack(over, False),
                             lambda rows, cols: rate_limit[cols], reasons)
