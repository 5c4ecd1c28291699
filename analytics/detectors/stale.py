"""Stale data: a tag whose samples stopped arriving.

Catches: a dead link, a source that silently stopped publishing, a PLC tag removed from the
subscription: failures that produce no sample at all, so no per-sample detector can see them.
Staleness needs a clock: the engine calls `check(now)` each cycle (with the wall clock live, or
the batch clock, i.e. the newest sample time seen, offline) and it answers one row per known tag:

    age   = now - ts of the tag's last sample (any quality), or now - the first clock seen
            for a tag that never sent one
    score = age / stale_after_s       level 1 (warning) while age > stale_after_s

`stale_after_s` is the tag's `Limits.stale_after_s`, else the detector's `after_s` (about 3-5x
the tag's expected period). Rows from `check` carry ts = now, the last value, `limit` =
stale_after_s (seconds) and `reason` "no sample for 75 s (stale after 60 s)".

`score(batch)` records each tag's newest sample and answers one row per sample at level 0
(a sample arriving is the opposite of stale; it clears the condition), with score = the gap
since the tag's previous sample over stale_after_s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Self

import polars as pl

from analytics.detectors.base import TAG_KEY, as_scores, per_tag, sorted_by_tag
from analytics.detectors.stream import upsert
from controltower.samples import TIMESTAMP_DTYPE
from controltower.site import TagInfo

_SEEN_SCHEMA = {"tag_id": pl.String(), "seen": TIMESTAMP_DTYPE, "last_value": pl.Float64()}


class StaleDataDetector:
    """Level 1 from `check(now)` for every known tag with no sample for its stale_after_s."""

    name = "stale"

    def __init__(self, tags: list[TagInfo], after_s: float = 60.0):
        self.tags = tags
        self.after_s = after_s
        self.reset()

    def fit(self, history: pl.DataFrame) -> Self:
        """Nothing to learn. Returns self."""
        return self

    def reset(self) -> None:
        self._seen = pl.DataFrame(schema=_SEEN_SCHEMA)
        self._clock_start: datetime | None = None

    def params(self) -> pl.DataFrame:
        """tag_id and stale_after_s of every known tag."""
        rows = [(t.tag_id, float(t.tag.limits.stale_after_s or self.after_s)) for t in self.tags]
        return pl.DataFrame(rows, schema={"tag_id": pl.String(), "after_s": pl.Float64()}, orient="row")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Record the batch's newest sample per known tag -> one row per sample at level 0."""
        if self.after_s <= 0:
            raise ValueError(f"need after_s > 0, got {self.after_s}")
        params = self.params()
        frame = sorted_by_tag(batch.select("ts", "tag_id", "value"), params, self._seen)
        gap = (pl.col("ts") - pl.coalesce(per_tag(pl.col("ts").shift(1)), pl.col("seen"))).dt.total_nanoseconds() / 1e9
        frame = frame.with_columns(
            pl.when(pl.col("after_s").is_not_null()).then(gap.clip(lower_bound=0) / pl.col("after_s")).alias("score"),
            pl.lit(0, pl.UInt8).alias("level"), pl.lit(None, pl.Float64).alias("limit"), pl.lit(None, pl.String).alias("reason"),
        )
        newest = (
            frame.filter(pl.col("after_s").is_not_null())
            .group_by(TAG_KEY, "tag_id").agg(pl.col("ts").max().alias("ts_max"), pl.col("value").last(), pl.col("seen").first())
            .select("tag_id", pl.max_horizontal("ts_max", "seen").alias("seen"), pl.col("value").alias("last_value"))
        )
        self._seen = upsert(self._seen, newest)
        if self._clock_start is None and batch.height:
            self._clock_start = batch.get_column("ts").min()
        return as_scores(frame)

    def check(self, now: datetime) -> pl.DataFrame:
        """One row per known tag at ts = now (SCORE_SCHEMA, by tag_id): level 1 if stale."""
        if self._clock_start is None:
            self._clock_start = now
        age_s = (pl.lit(now, TIMESTAMP_DTYPE) - pl.coalesce("seen", pl.lit(self._clock_start, TIMESTAMP_DTYPE))
                 ).dt.total_nanoseconds() / 1e9
        stale = pl.col("age") > pl.col("after_s")
        frame = (
            self.params().join(self._seen, on="tag_id", how="left").sort("tag_id")
            .with_columns(age_s.alias("age"))
            .select(
                pl.lit(now, TIMESTAMP_DTYPE).alias("ts"), "tag_id", pl.col("last_value").alias("value"),
                (pl.col("age").clip(lower_bound=0) / pl.col("after_s")).alias("score"),
                stale.cast(pl.UInt8).alias("level"),
                pl.when(stale).then(pl.col("after_s")).alias("limit"),
                pl.when(stale).then(pl.format("no sample for {} s (stale after {} s)", pl.col("age").round(0).cast(pl.Int64),
                                              pl.col("after_s").round_sig_figs(3))).alias("reason"),
            )
        )
        return as_scores(frame)
