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

from analytics.detectors.base import TAG_KEY, last_of_tag, on_flagged, per_tag
from analytics.detectors.stream import LevelMemory, keys_of, on_key, split_usable, upsert
from controltower.site import TagInfo

_STATE_SCHEMA = {"tag_id": pl.String(), "value_was": pl.Float64(), "run_was": pl.UInt32()}


def moved(tolerance: float) -> pl.Expr:
    """True where the value differs from the tag's previous usable value (or there is none)."""
    previous = pl.coalesce(per_tag(pl.col("value").shift(1)), pl.col("value_was"))
    return ((pl.col("value") - previous).abs() > tolerance).fill_null(True)


def run_length() -> pl.Expr:
    """Samples in the current run of equal values, from the `_moved` markers: the distance to the
    tag's last move; before any move in this batch, the run open at the end of the previous batch
    continues from `run_was`. (Positions, not a window over (tag, segment) groups: cheaper.)"""
    position = pl.col("_pos")  # row number in the frame (not per tag)
    since = per_tag(pl.when(pl.col("_moved")).then(position).forward_fill())
    first = per_tag(position.first())
    carried = position - first + 1 + pl.col("run_was").fill_null(0).cast(pl.Int64)
    return pl.when(since.is_null()).then(carried).otherwise(position - since + 1).cast(pl.UInt32)


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
        self._levels = LevelMemory()

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        if self.min_run < 2 or self.tolerance < 0:
            raise ValueError(f"need min_run >= 2 and tolerance >= 0, got {self.min_run}, {self.tolerance}")
        known = pl.DataFrame({"tag_id": [t.tag_id for t in self.tags]}, schema={"tag_id": pl.String()})
        rows, fresh = split_usable(batch, known)
        keys = keys_of(rows)
        runs = (
            fresh.select("_row", "tag_id", "value", TAG_KEY)
            .pipe(on_key, self._state, keys)
            .with_columns(moved(self.tolerance).alias("_moved"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos"))
            .with_columns(run_length().alias("run"))
        )
        stuck = pl.col("run") >= self.min_run
        scored = runs.select(
            "_row",
            (pl.col("run") / self.min_run).alias("score"),
            stuck.cast(pl.UInt8).alias("level_now"),
            pl.when(stuck).then(pl.col("value")).alias("limit_now"),
            "run",
        )
        scored = on_flagged(scored, pl.col("level_now") > 0, "reason_now",
                            lambda hit: hit.select(pl.format("same value for {} samples", pl.col("run"))).to_series())
        ends = runs.filter(last_of_tag()).select("tag_id", pl.col("value").alias("value_was"),
                                                 pl.col("run").alias("run_was"))
        self._state = upsert(self._state, ends)
        return self._levels.merge(rows, scored.drop("run"))
