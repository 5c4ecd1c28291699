"""Stopping the pipeline while sources are flushing: every batch a source counted as emitted is
stored, with and without the spool. (A flush cancelled in the middle of its emit used to be
counted but not stored: the periodic flusher is now let finish before the last flush.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.pipeline import Pipeline
from collector.sinks.duckdb import DuckDbHistorian
from collector.sources import SourceHealth
from collector.sources.supervisor import supervise
from collector.spool import Spool
from controltower.samples import samples_frame
from controltower.site import StoreAndForwardConfig

T0 = datetime(2026, 11, 29, tzinfo=UTC)
TAG = "a.b.c.d.x"


class BusySource:
    """A source built like the OPC-UA and MQTT ones (one `supervise` loop), flushing a one-sample
    batch every few milliseconds, so a stop nearly always lands in the middle of an emit."""

    name = "busy"

    def __init__(self) -> None:
        self.health = SourceHealth(name=self.name, kind="test")
        self.next = 0

    async def _session(self) -> None:
        self.health.connected = True
        await asyncio.Event().wait()

    async def _flush(self, emit) -> None:
        i, self.next = self.next, self.next + 1
        self.health.samples_in += 1
        await emit(samples_frame(ts=[T0 + timedelta(milliseconds=i)], tag_id=[TAG], value=[float(i)]))

    async def run(self, emit) -> None:
        await supervise(self.health, self._session, flush_interval_s=0.002, wake=asyncio.Event(),
                        flush=lambda: self._flush(emit))


@pytest.mark.parametrize("with_spool", [False, True])
async def test_every_counted_batch_is_stored_when_stopping_mid_flush(tmp_path: Path, with_spool: bool) -> None:
    for attempt in range(5):
        historian = DuckDbHistorian(tmp_path / f"h{attempt}.duckdb")
        spool = Spool.from_config(StoreAndForwardConfig(), tmp_path / f"s{attempt}") if with_spool else None
        source = BusySource()
        pipeline = Pipeline([source], historian, spool=spool)
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0.2 + 0.013 * attempt)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            stored = historian.read([TAG], T0, T0 + timedelta(hours=1))
            assert source.health.samples_in > 5
            assert stored.height == source.health.samples_in == pipeline.samples_stored
            assert stored["value"].to_list() == [float(i) for i in range(stored.height)]
        finally:
            pipeline.close()
            historian.close()
