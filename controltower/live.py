"""What the control tower knows right now: the latest sample of every tag, updated from each
batch with one vectorised merge, and read by the screen and API threads as a snapshot.

"Latest" is by arrival, not by timestamp: when a plant clock steps, the newest timestamp is not
the newest news. Kept by timestamp, a tile would hold its pre-step value (and the line read
stale while data flows) after a step back, and after a step ahead that is later corrected it
would show the future-dated value as fresh for as long as the step. By arrival, the screen shows
what the plant says now, with its time: a step back reads as old data (stale), a clock ahead as
future-dated (`future_dated`, `line_freshness`), and a corrected clock as fresh at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import polars as pl

from controltower.samples import SAMPLE_SCHEMA
from controltower.site import TagInfo

# Seconds a sample may be dated ahead of the tower's clock before it is flagged future-dated
# (clocks synchronised by NTP agree within far less; messages in flight are dated in the past).
FUTURE_TOLERANCE_S = 2.0


class LiveState:
    """Latest sample per tag. `update` runs on the event loop; readers on web threads get an
    immutable frame (Polars frames are never mutated in place), so one lock around the swap is enough."""

    def __init__(self, tags: list[TagInfo]):
        self._lock = threading.Lock()
        self._latest = pl.DataFrame(schema=SAMPLE_SCHEMA)
        self.tags = tags
        self.by_id = {t.tag_id: t for t in tags}

    def update(self, batch: pl.DataFrame) -> None:
        """Keep each tag's last sample in `batch` (rows are in arrival order), whatever its time."""
        if batch.is_empty():
            return
        newest = batch.group_by("tag_id", maintain_order=True).last().select(self._latest.columns)
        with self._lock:
            kept = self._latest.join(newest.select("tag_id"), on="tag_id", how="anti")
            self._latest = pl.concat([kept, newest], how="vertical")

    def latest(self) -> pl.DataFrame:
        """One row per tag that has reported (its last sample to arrive), in the sample schema."""
        with self._lock:
            return self._latest

    def future_dated(self, now: datetime, tolerance_s: float = FUTURE_TOLERANCE_S) -> pl.DataFrame:
        """The tags whose latest sample is dated more than `tolerance_s` after `now` (a plant clock
        ahead of the tower's): tag_id, ts and `ahead_s`."""
        return (
            self.latest()
            .select("tag_id", "ts", ahead_s=(pl.col("ts") - pl.lit(now)).dt.total_nanoseconds() / 1e9)
            .filter(pl.col("ahead_s") > tolerance_s)
        )

    def line_freshness(self, now: datetime | None = None, tolerance_s: float = FUTURE_TOLERANCE_S) -> pl.DataFrame:
        """Per line (site, area, line): the last sample time over its tags, as `last_ts`, and
        `future`: a tag's latest sample is dated more than `tolerance_s` after `now` (default: the
        wall clock), so `last_ts` is not a measure of freshness."""
        now = now or utcnow()
        return (
            self.latest()
            .group_by("site", "area", "line")
            .agg(pl.col("ts").max().alias("last_ts"))
            .with_columns(future=((pl.col("last_ts") - pl.lit(now)).dt.total_nanoseconds() / 1e9) > tolerance_s)
        )


def utcnow() -> datetime:
    return datetime.now(UTC)
