"""What /metrics says about sources and the pipeline: every figure the issue lists is there,
with the source's own numbers (health is the one copy; metrics read it at each scrape)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from collector.pipeline import Pipeline
from collector.sources import SourceHealth
from controltower.metrics import Metrics
from controltower.samples import samples_frame


def scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_source_health_becomes_metrics() -> None:
    metrics = Metrics()
    health = SourceHealth(
        name="plc1", kind="opcua", connected=False, samples_in=120, batches_out=7, reconnects=3,
        rejected={"invalid_json": 2}, events={"sequence_gaps": 1, "rebirths_requested": 1},
        stale_since=datetime.now(UTC), stale_tags=12, gaps=2, gap_seconds=4.5,
        last_sample_at=datetime.now(UTC) - timedelta(seconds=30),
    )
    metrics.watch_sources(lambda: [health])
    values = scrape(metrics)
    src = (("source", "plc1"),)
    assert values[("controltower_source_samples_total", src)] == 120
    assert values[("controltower_source_batches_total", src)] == 7
    assert values[("controltower_source_reconnects_total", src)] == 3
    assert values[("controltower_payloads_rejected_total", (("reason", "invalid_json"), ("source", "plc1")))] == 2
    assert values[("controltower_source_events_total", (("event", "sequence_gaps"), ("source", "plc1")))] == 1
    assert values[("controltower_source_events_total", (("event", "rebirths_requested"), ("source", "plc1")))] == 1
    assert values[("controltower_source_stale", src)] == 1
    assert values[("controltower_source_stale_tags", src)] == 12
    assert values[("controltower_source_gaps_total", src)] == 2
    assert values[("controltower_source_gap_seconds_total", src)] == 4.5
    assert 29 < values[("controltower_source_last_sample_age_seconds", src)] < 60
    health.stale_since = None  # read at each scrape, not copied
    assert scrape(metrics)[("controltower_source_stale", src)] == 0


class _MemoryHistorian:
    name = "memory"

    def __init__(self) -> None:
        self.stored = 0

    async def write(self, batch: pl.DataFrame) -> None:
        self.stored += batch.height


async def test_pipeline_reports_queue_depth_samples_stored_and_write_latency() -> None:
    historian = _MemoryHistorian()
    pipeline = Pipeline([], historian, metrics=Metrics())
    batch = samples_frame(ts=[datetime.now(UTC)] * 3, tag_id=["a", "b", "c"], value=[1.0, 2.0, 3.0])
    await pipeline._batches.put(batch)  # a batch waiting for the consumers: the queue is 1 deep
    assert scrape(pipeline.metrics)[("controltower_queue_batches", (("queue", "consumers"),))] == 1
    assert scrape(pipeline.metrics)[("controltower_queue_batches", (("queue", "historian"),))] == 0
    tasks = [asyncio.create_task(pipeline._consume()), asyncio.create_task(pipeline._write())]
    try:
        for _ in range(100):
            if historian.stored == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    values = scrape(pipeline.metrics)
    assert values[("controltower_queue_batches", (("queue", "consumers"),))] == 0
    assert values[("controltower_samples_stored_total", ())] == 3
    assert values[("controltower_historian_write_seconds_count", ())] == 1
