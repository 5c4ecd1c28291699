"""Bad quality: a tag that keeps reporting no usable value.

Catches: a sensor dropout (the transmitter or its link is down and the source says so with a
bad status, or sends null), which the value-based detectors cannot see since they skip such
samples by design.

    run   = consecutive bad-quality or null samples of the tag, this one included
    score = run / min_run for a bad sample, 0 for a usable one

Level 1 (warning) while run >= min_run; the first usable sample clears it. `reason`
"bad quality for 12 samples". Unlike the other detectors, this one scores every sample.

Streaming: the run length open at the end of a batch is carried into the next one.
"""

from __future__ import annotations

from typing import Self

import polars as pl

from analytics.detectors.base import TAG_KEY, as_scores, last_of_tag, per_tag, sorted_by_tag, tag_keys, usable
from controltower.site import TagInfo

_STATE_SCHEMA = {"tag_id": pl.String(), "run_was": pl.UInt32()}


def bad_run_length() -> pl.Expr:
    """Consecutive unusable samples up to this one (0 for a usable sample). Segments start at each
    usable sample; the leading segment continues the run carried from the previous batch."""
    position = pl.int_range(pl.len()).over(TAG_KEY, "_segment").cast(pl.UInt32)
    carried = pl.when(pl.col("_segment") == 0).then(pl.col("run_was").fill_null(0) + 1).otherwise(0)
    return pl.when(pl.col("_bad")).then(position + carried).otherwise(0)


class BadQualityDetector:
    """Level 1 when a known tag reports `min_run` bad-quality or null samples in a row."""

    name = "quality"

    def __init__(self, tags: list[TagInfo], min_run: int = 10):
        self.tags = tags
        self.min_run = min_run
        self.reset()

    def fit(self, history: pl.DataFrame) -> Self:
        """Nothing to learn (a run is streaming state). Returns self."""
        return self

    def reset(self) -> None:
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        if self.min_run < 1:
            raise ValueError(f"need min_run >= 1, got {self.min_run}")
        known = pl.DataFrame({"tag_id": [t.tag_id for t in self.tags], "_known": [True] * len(self.tags)},
                             schema={"tag_id": pl.String(), "_known": pl.Boolean()})
        rows = sorted_by_tag(batch.select("ts", "tag_id", "value", "quality"), known, self._state,
                             keys=tag_keys(batch.get_column("tag_id")))
        frame = (
            rows.with_columns((~usable()).alias("_bad"))
            .with_columns(per_tag((~pl.col("_bad")).cum_sum()).alias("_segment"))
            .with_columns(pl.when(pl.col("_known")).then(bad_run_length()).alias("run"))
        )
        bad_enough = (pl.col("run") >= self.min_run).fill_null(False)
        ends = frame.filter(last_of_tag() & pl.col("_known").fill_null(False)).select("tag_id", pl.col("run").alias("run_was"))
        self._state = pl.concat([self._state.join(ends, on="tag_id", how="anti"), ends])
        return as_scores(frame.with_columns(
            (pl.col("run") / self.min_run).alias("score"),
            bad_enough.cast(pl.UInt8).alias("level"),
            pl.lit(None, pl.Float64).alias("limit"),
            pl.when(bad_enough).then(pl.format("bad quality for {} samples", pl.col("run"))).alias("reason"),
        ))
