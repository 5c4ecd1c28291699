"""The `Historian` protocol: where sample batches are stored and read back.

`write` takes a batch in the sample schema (`controltower.samples.SAMPLE_SCHEMA`); `read`
returns one in the same schema, sorted by tag then time. Two implementations: the embedded
DuckDB historian (`collector.sinks.duckdb`, the default) and InfluxDB (`collector.sinks.influxdb`).

Both also store the batch-event stream (`controltower.batch_events`): `write_batch_events(events)`
and `read_batch_events(path, start, end)`, from which `read_phase_spans` builds phase spans; a
historian without them simply has no phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

import polars as pl


class HistorianError(Exception):
    """A write or read the historian could not do; the message names the server and the reason (never a secret)."""


class Historian(Protocol):
    name: str

    async def write(self, batch: pl.DataFrame) -> None:
        """Store a batch; raise HistorianError when it could not be stored."""
        ...

    def read(self, tag_ids: Sequence[str], start: datetime, end: datetime | None = None) -> pl.DataFrame:
        """Samples of these tags with start <= ts < end (end None: up to now), in the sample schema.
        Safe to call from any thread."""
        ...

    def close(self) -> None: ...


def open_historian(config, data_dir: str | Path) -> Historian:
    """The historian a site file's `historian:` section describes (a DuckDbHistorianConfig or an
    InfluxDbHistorianConfig); a relative DuckDB path is under `data_dir`."""
    if config.kind == "duckdb":
        from collector.sinks.duckdb import DuckDbHistorian

        path = Path(config.path).expanduser()
        return DuckDbHistorian(path if path.is_absolute() else Path(data_dir) / path)
    if config.kind == "influxdb":
        from collector.sinks.influxdb import InfluxDbHistorian

        return InfluxDbHistorian.from_config(config)
    raise HistorianError(f"unknown historian kind {config.kind!r}")
