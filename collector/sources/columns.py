"""Sample columns as a decoder fills them, and the one place they become a sample batch.

The MQTT JSON decoders (`collector.sources.mqtt`) and the Sparkplug B decoder
(`collector.sources.sparkplug`) append what they decode message by message here; the JSON
decoders' whole-flush fast path (`collector.sources.json_flush`) hands over ready vectors. Both
end in `sample_batch`, so the batch schema and the ISA-95 path join are written once.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from controltower.samples import samples_frame, timestamp_series


class SampleColumns:
    """Per message row: time, receive time, batch id. Per sample: its row, tag, value, quality.
    A message's fields are stored once, not once per sample."""

    __slots__ = ("batch_id", "message", "quality", "received", "tag_id", "ts", "value")

    def __init__(self) -> None:
        self.ts: list[datetime] = []
        self.received: list[datetime] = []
        self.batch_id: list[str | None] = []
        self.message: list[int] = []
        self.tag_id: list[str] = []
        self.value: list[float | None] = []
        self.quality: list[str] = []

    def __len__(self) -> int:
        return len(self.tag_id)

    def add_row(self, ts: datetime, received: datetime, batch_id: str | None = None) -> int:
        """A message row (shared by the samples that have no time of their own); its index."""
        self.ts.append(ts)
        self.received.append(received)
        self.batch_id.append(batch_id)
        return len(self.ts) - 1

    def add_sample(self, row: int, tag_id: str, value: float | None, quality: str) -> None:
        self.message.append(row)
        self.tag_id.append(tag_id)
        self.value.append(value)
        self.quality.append(quality)

    def frame(self, tag_paths: pl.DataFrame) -> pl.DataFrame | None:
        """One sample batch from the columns (None when there are none)."""
        if not self:
            return None
        row = pl.Series(self.message, dtype=pl.UInt32)  # each sample's message row
        return sample_batch(
            ts=timestamp_series("ts", self.ts).gather(row),
            server_ts=timestamp_series("server_ts", self.received).gather(row),
            tag_id=pl.Series(self.tag_id, dtype=pl.String),
            value=pl.Series(self.value, dtype=pl.Float64),
            quality=pl.Series(self.quality, dtype=pl.String),
            batch_id=pl.Series(self.batch_id, dtype=pl.String).gather(row),
            tag_paths=tag_paths,
        )


def sample_batch(*, ts: pl.Series, server_ts: pl.Series, tag_id: pl.Series, value: pl.Series, quality: pl.Series,
                 batch_id: pl.Series, tag_paths: pl.DataFrame) -> pl.DataFrame:
    """A sample-schema batch from one series per column (quality as text: good, uncertain, bad)."""
    return samples_frame(ts=ts, server_ts=server_ts, tag_id=tag_id, value=value,
                         quality=quality, batch_id=batch_id, tag_paths=tag_paths)


def concat_batches(batches: list[pl.DataFrame | None]) -> pl.DataFrame | None:
    """The batches as one (None when all are None)."""
    present = [b for b in batches if b is not None and b.height]
    if not present:
        return None
    return present[0] if len(present) == 1 else pl.concat(present, how="vertical")
