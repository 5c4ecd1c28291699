"""Flatline: a sensor that stopped moving.

Catches: a stuck transmitter, a frozen PLC value, a gateway repeating the last value it had
before its link died. Real measurements carry noise, so a value repeated exactly (within
`tolerance`) for `min_run` consecutive usable samples is suspect.

    run   = how many consecutive usable samples of the tag hold the same value (this one included)
    score = run / min_run      (>= 1 from the sample where the condition starts)

Level 1 (warning) while run >= min_run; the first sample that moves clears it. `limit` is the
stuck value, `reason` "same value for 31 samples". Bad-quality and null samples neither extend
nor break a run and carry the previous level.

Streaming: per tag, the last usable value and its run length are carried between micro-batches,
so a run spans batch boundaries. Vectorised: a run is a segment between "moved" markers,
numbered with a cumulative sum per tag.
"""

from __future__ import annotations

from typing import Self

import polars as pl

from analytics.detectors.base import (
    TAG_KEY,
    as_scores,
    carry_forward,
    last_of_tag,
    per_tag,
    sorted_by_tag,
    tag_keys,
    usable,
)
from controltower.site import TagInfo

_STATE_SCHEMA = {"tag_id": pl.String(), "value_was": pl.Float64(), "run_was": pl.UInt32()}
_LEVEL_SCHEMA = {"tag_id": pl.String(), "level_was": pl.UInt8(), "limit_was": pl.Float64(), "reason_was": pl.String()}


def moved(tolerance: float) -> pl.Expr:
    """True where the value differs from the tag's previous usable value (or there is none)."""
    previous = pl.coalesce(per_tag(pl.col("value").shift(1)), pl.col("value_was"))
    return ((pl.col("value") - previous).abs() > tolerance).fill_null(True)


def run_length() -> pl.Expr:
    """Samples in the current run of equal values; the run open at the end of the previous batch
    (segment 0: no move yet in this batch) continues from `run_was`."""
    position = pl.int_range(pl.len()).over(TAG_KEY, "_segment").cast(pl.UInt32) + 1
    carried = pl.when(pl.col("_segment") == 0).then(pl.col("run_was").fill_null(0)).otherwise(0)
    return position + carried


class FlatlineDetector:
    """Level 1 when a known tag repeats the same value for `min_run` consecutive samples."""

    name = "flatline"

    def __init__(self, tags: list[TagInfo], min_run: int = 30, tolerance: float = 0.0):
        self.tags = tags
        self.min_run = min_run
        self.tolerance = tolerance
        self.reset()

    def fit(self, history: pl.DataFrame) -> Self:
        """Nothing to learn (a run is streaming state). Returns self."""
        return self

    def reset(self) -> None:
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)
        self._levels = pl.DataFrame(schema=_LEVEL_SCHEMA)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        if self.min_run < 2 or self.tolerance < 0:
            raise ValueError(f"need min_run >= 2 and tolerance >= 0, got {self.min_run}, {self.tolerance}")
        known = pl.DataFrame({"tag_id": [t.tag_id for t in self.tags], "_known": [True] * len(self.tags)},
                             schema={"tag_id": pl.String(), "_known": pl.Boolean()})
        keys = tag_keys(batch.get_column("tag_id"))
        rows = sorted_by_tag(batch.select("ts", "tag_id", "value", "quality"), known, self._levels, keys=keys)
        rows = rows.with_row_index("_row")
        runs = (
            rows.filter(usable() & pl.col("_known").fill_null(False))
            .select("_row", "tag_id", "value", TAG_KEY)
            .join(self._state, on="tag_id", how="left", maintain_order="left")
            .with_columns(per_tag(moved(self.tolerance).cum_sum()).alias("_segment"))
            .with_columns(run_length().alias("run"))
        )
        stuck = pl.col("run") >= self.min_run
        scored = runs.select(
            "_row",
            (pl.col("run") / self.min_run).alias("score"),
            stuck.cast(pl.UInt8).alias("level_now"),
            pl.when(stuck).then(pl.col("value")).alias("limit_now"),
            pl.when(stuck).then(pl.format("same value for {} samples", pl.col("run"))).alias("reason_now"),
        )
        ends = runs.filter(last_of_tag()).select("tag_id", pl.col("value").alias("value_was"),
                                                 pl.col("run").alias("run_was"))
        self._state = pl.concat([self._state.join(ends, on="tag_id", how="anti"), ends])

        # A skipped sample carries the tag's previous level, and its stuck value and reason with it.
        scored_row = pl.col("level_now").is_not_null()
        frame = (
            rows.join(scored, on="_row", how="left", maintain_order="left")
            .with_columns(
                carry_forward(pl.col("level_now"), pl.col("level_was")).fill_null(0).alias("level"),
                carry_forward(pl.when(scored_row).then(pl.col("limit_now").fill_null(float("nan"))), pl.col("limit_was"))
                .fill_nan(None).alias("limit"),
                carry_forward(pl.when(scored_row).then(pl.col("reason_now").fill_null("")), pl.col("reason_was"))
                .replace("", None).alias("reason"),
            )
            .with_columns(pl.when(pl.col("level") > 0).then(pl.col(c)).alias(c) for c in ("limit", "reason"))
        )
        last = frame.filter(last_of_tag()).select(
            "tag_id", pl.col("level").alias("level_was"), pl.col("limit").alias("limit_was"), pl.col("reason").alias("reason_was")
        )
        self._levels = pl.concat([self._levels.join(last, on="tag_id", how="anti"), last])
        return as_scores(frame)
