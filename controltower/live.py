"""What the control tower knows right now: the latest sample of every tag, updated from each
batch with one vectorised merge, and read by the screen and API threads as a snapshot."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import polars as pl

from controltower.samples import SAMPLE_SCHEMA
from controltower.site import TagInfo


class LiveState:
    """Latest sample per tag. `update` runs on the event loop; readers on web threads get an
    immutable frame (Polars frames are never mutated in place), so one lock around the swap is enough."""

    def __init__(self, tags: list[TagInfo]):
        self._lock = threading.Lock()
        self._latest = pl.DataFrame(schema=SAMPLE_SCHEMA)
        self.tags = tags
        self.by_id = {t.tag_id: t for t in tags}

    def update(self, batch: pl.DataFrame) -> None:
        if batch.is_empty():
            return
        newest = batch.sort("ts").group_by("tag_id", maintain_order=True).last()
        with self._lock:
            merged = pl.concat([self._latest, newest.select(self._latest.columns)], how="vertical")
            self._latest = merged.sort("ts").group_by("tag_id", maintain_order=True).last()

    def latest(self) -> pl.DataFrame:
        """One row per tag that has reported, in the sample schema."""
        with self._lock:
            return self._latest

    def line_freshness(self) -> pl.DataFrame:
        """Per line (site, area, line): the last sample time over its tags, as `last_ts`."""
        return (
            self.latest()
            .group_by("site", "area", "line")
            .agg(pl.col("ts").max().alias("last_ts"))
        )


def utcnow() -> datetime:
    return datetime.now(UTC)
