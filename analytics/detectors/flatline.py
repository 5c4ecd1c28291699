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

import numpy as np
import polars as pl

from analytics.detectors.base import TAG_KEY, last_of_tag, on_flagged, per_tag
from analytics.detectors.stream import LevelMemory, keys_of, on_key, split_usable, upsert
from analytics.detectors.wide import (
    Compacted,
    WideBatch,
    WideScores,
    aligned,
    last_index,
    long_reasons,
    memory_scores,
)
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

    def _check(self) -> None:
        if self.min_run < 2 or self.tolerance < 0:
            raise ValueError(f"need min_run >= 2 and tolerance >= 0, got {self.min_run}, {self.tolerance}")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        self._check()
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

    def score_wide(self, wide: WideBatch) -> WideScores:
        """`score` on a wide batch (`wide.pivot`): each run's length is the distance to the last
        move down the tag's column of usable samples (`maximum.accumulate` of move positions)."""
        self._check()
        ids = wide.tag_ids
        known = np.isin(np.array(ids, dtype=object), [t.tag_id for t in self.tags])
        ok = wide.usable & known
        packed = Compacted(wide.values, ok)
        x = packed.x
        value_was = aligned(self._state, ids, "value_was")
        run_was = aligned(self._state, ids, "run_was", 0).astype(np.int64)
        previous = np.vstack([value_was[None, :], x[:-1]])
        moved = ~(np.abs(x - previous) <= self.tolerance)
        position = np.arange(x.shape[0])[:, None]
        since = last_index(moved)
        run = np.where(since >= 0, position - since + 1, position + 1 + run_was)
        ends = np.flatnonzero(known & (packed.n > 0))
        if ends.size:
            self._state = upsert(self._state, pl.DataFrame(
                {"tag_id": np.array(ids)[ends], "value_was": packed.last(x, value_was)[ends],
                 "run_was": packed.last(run, run_was)[ends]}, schema=_STATE_SCHEMA))

        def reasons(rows: np.ndarray, cols: np.ndarray) -> list:
            runs = pl.DataFrame({"run": run[packed.row_of(rows, cols), cols]}, schema={"run": pl.UInt32()})
            return long_reasons(runs, pl.format("same value for {} samples", pl.col("run")))

        return memory_scores(self._levels, wide, ok, packed.unpack(run / self.min_run),
                             packed.unpack(run >= self.min_run, False),
                             lambda rows, cols: x[packed.row_of(rows, cols), cols], reasons)
