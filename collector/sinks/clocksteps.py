"""Plant clock steps, for stores that keep one point per series and timestamp (InfluxDB).

When a plant's clock steps back (NTP correcting an edge device, a PLC set by hand), the samples
that follow carry timestamps a tag already has. InfluxDB keeps one point per series + timestamp,
the later write winning, so without care the earlier values are silently overwritten.

`ClockSteps` follows each tag's timeline in arrival order (the order of the rows in the batches
it is given) and marks the samples that could collide:

    a step back     a sample more than `tolerance` older than the tag's previous one; it starts
                    the tag's next clock epoch (1, 2, ...), whose ceiling is the newest
                    timestamp the tag had reached before the step;
    marked          a sample of epoch >= 1 dated at or before its epoch's ceiling: its
                    `clock_epoch` column holds the epoch number (a string, an InfluxDB tag), so
                    it lands in a series of its own and overwrites nothing;
    not marked      everything else (`clock_epoch` null): the normal schema, unchanged.

Once the tag's clock is past the ceiling again, its samples are unmarked: they cannot collide.
Backward moves within `tolerance` are not steps: a message delivered again after a broker
restart (at-least-once) has the same timestamp and value, and folding it into the same point is
what is wanted. A real step back smaller than `tolerance` still overwrites (the trade-off).

The state is in memory: a collector restarted while a tag's clock is still below its ceiling
starts afresh (the spool's pending batches are replayed first, in order) and can overwrite.

Marking is two steps so that a failed write changes nothing: `mark(batch)` returns the marked
batch and the state after it; `commit(state)` once the batch is stored. A batch retried after an
error is marked the same way again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

CLOCK_EPOCH = "clock_epoch"
DEFAULT_TOLERANCE = timedelta(seconds=1)

_STATE_SCHEMA = {"tag_id": pl.String, "newest": pl.Int64, "previous": pl.Int64, "epoch": pl.Int64,
                 "ceiling": pl.Int64}


@dataclass(frozen=True)
class Marked:
    batch: pl.DataFrame  # the batch with a `clock_epoch` column
    state: pl.DataFrame  # per tag, after the batch
    steps_back: int  # steps back found in the batch
    example: str | None  # one of them, for the log: "<tag_id> by <seconds> s"


class ClockSteps:
    """Per tag: the newest timestamp seen, the previous sample's, the epoch and its ceiling."""

    def __init__(self, tolerance: timedelta = DEFAULT_TOLERANCE):
        self.tolerance_ns = int(tolerance.total_seconds() * 1e9)
        self.state = pl.DataFrame(schema=_STATE_SCHEMA)
        self.steps_back = 0  # since start, over all tags

    def mark(self, batch: pl.DataFrame) -> Marked:
        """The batch with its `clock_epoch` column (see the module doc); nothing is committed."""
        by_tag = "tag_id"
        ts = pl.col("_ts")
        frame = batch.with_columns(pl.col("ts").dt.epoch("ns").alias("_ts")).join(
            self.state, on=by_tag, how="left", maintain_order="left")
        previous = ts.shift(1).over(by_tag).fill_null(pl.col("previous"))
        newest_before = pl.max_horizontal(pl.col("newest"), ts.cum_max().shift(1).over(by_tag))
        frame = frame.with_columns(
            _step=(ts < previous - self.tolerance_ns).fill_null(False),
            _newest_before=newest_before,
        ).with_columns(
            _epoch=pl.col("epoch").fill_null(0) + pl.col("_step").cast(pl.Int64).cum_sum().over(by_tag),
            _ceiling=pl.when(pl.col("_step")).then(pl.col("_newest_before")).forward_fill().over(by_tag)
            .fill_null(pl.col("ceiling")),
        )
        marked = (pl.col("_epoch") > 0) & (ts <= pl.col("_ceiling")).fill_null(False)
        frame = frame.with_columns(pl.when(marked).then(pl.col("_epoch").cast(pl.String)).alias(CLOCK_EPOCH))
        steps = frame.filter(pl.col("_step"))
        example = None
        if steps.height:
            row = steps.with_columns(back_s=(pl.col("_newest_before") - ts) / 1e9).row(0, named=True)
            example = f"{row['tag_id']} by {row['back_s']:.1f} s"
        state = frame.group_by(by_tag, maintain_order=True).agg(
            pl.max_horizontal(pl.col("newest").first(), ts.max()).alias("newest"),
            ts.last().alias("previous"), pl.col("_epoch").last().alias("epoch"),
            pl.col("_ceiling").last().alias("ceiling"))
        state = pl.concat([self.state.join(state, on=by_tag, how="anti"), state.select(list(_STATE_SCHEMA))])
        return Marked(frame.drop("_ts", "newest", "previous", "epoch", "ceiling", "_step", "_newest_before",
                                 "_epoch", "_ceiling"), state, steps.height, example)

    def commit(self, marked: Marked) -> None:
        """The batch `marked` came from is stored: its state becomes the current one."""
        self.state = marked.state
        self.steps_back += marked.steps_back
