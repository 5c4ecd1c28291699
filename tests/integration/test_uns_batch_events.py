"""Batch events reach the analytics worker that owns their unit, with real parts in this process:
Mosquitto, the collector's `UnsPublisher` (as `collect` relays its pipeline's batch events) and an
`AnalyticsWorker` with a golden-batch model fitted by ISA-88 phase (the project's simulator's
bioreactor). A pH bias in the growth phase of a batch is caught by the worker's golden monitor only
because it places each sample in its phase from the relayed events; a worker given the same
samples without the events scores nothing (it cannot tell the phase)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from collector.sinks.duckdb import DuckDbHistorian
from controltower.cli import main as cli_main
from controltower.services import AnalyticsWorker
from controltower.site import parse_site_config
from controltower.uns import UnsPublisher
from tests.analytics.simulated_unit import START, UNIT, batch_seconds, bioreactor_site, simulate
from tests.analytics.test_golden_phases import GOOD, PHASES, SEED, SITE, announced_events, site_file
from tests.conftest import REPO
from tests.integration.conftest import wait_until

OFF = {"enabled": False}
PARTITIONS = 4


def worker_site(data_dir: Path, mqtt_url: str, warmup_s: int = 0):
    base = bioreactor_site().model_dump(mode="json", exclude_defaults=True)
    base.update(data_dir=str(data_dir),
                detectors={"limits": OFF, "zscore": OFF, "flatline": OFF, "quality": OFF, "rate_of_change": OFF,
                           "stale": OFF, "models": {"on_delay_rows": 3}},
                uns={"enabled": True, "url": mqtt_url, "partitions": PARTITIONS, "keepalive_s": 2, "warmup_s": warmup_s})
    return parse_site_config(base)


def fit_golden_by_phase(root: Path, samples: pl.DataFrame, events: pl.DataFrame, capsys) -> Path:
    """`controltower model fit --kind golden` from a historian holding the events: a model by phase
    under `root`/data/models; the site's data directory."""
    path = site_file(root, samples, events)
    assert cli_main(["model", "fit", "--config", str(path), "--unit", UNIT, "--kind", "golden", "--batches", GOOD]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["phases"] == PHASES
    return root / "data"


async def run_worker(site, data_dir: Path, run: pl.DataFrame, events: pl.DataFrame | None) -> AnalyticsWorker:
    """A worker owning every partition; the batch's samples published a minute at a time, each
    minute's batch events (when given) before its samples, as a collector's pipeline hands them on."""
    worker = AnalyticsWorker(site, data_dir=data_dir, name=data_dir.name)
    publisher = UnsPublisher(site.uns, client_id=f"test-collect-{data_dir.name}")
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(publisher.run())]
    try:
        await wait_until(lambda: worker.owned == set(range(PARTITIONS)) and publisher.stats.connected, 30,
                         "worker and publisher ready")
        assert any(e.monitors for e in worker.engines.values()), "the worker loaded no stored model"
        for start in run["ts"].dt.truncate("1m").unique().sort().to_list():
            window = (pl.col("ts") >= start) & (pl.col("ts") < start + timedelta(minutes=1))
            if events is not None:
                publisher.publish_batch_events(events.filter(window))
            publisher.publish_batch(run.filter(window))
            await asyncio.sleep(0)
        await wait_until(lambda: worker.counts["samples"] == run.height and not worker._pending, 60,
                         "every sample scored")
        await asyncio.sleep(0.5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        worker.close()
    return worker


def faulty_batch(tmp_path: Path, capsys) -> tuple[Path, pl.DataFrame, pl.DataFrame, datetime]:
    """A golden model by phase fitted on good batches (the site's data directory), and batch 5 with
    a pH bias in its growth phase: its samples, its announced events, the fault's time."""
    seconds = 5.5 * batch_seconds(SITE)
    samples, events = simulate(SITE, seed=SEED, seconds=seconds, dt_s=5.0), announced_events(seconds)
    data_dir = fit_golden_by_phase(tmp_path / "fit", samples, events, capsys)
    fault_at = 4 * batch_seconds(SITE) + 1500.0  # batch 5, in its growth phase
    faulty = simulate(SITE, seed=SEED, seconds=seconds, dt_s=5.0, faults=[(fault_at, "ph", "bias", 900.0, 0.05)])
    run = faulty.filter(pl.col("batch_id") == "BR101-0005").sort("ts")
    announced = events.filter(pl.col("batch_id") == "BR101-0005")
    assert announced.height >= 4
    return data_dir, run, announced, START + timedelta(seconds=fault_at)


def golden_alerts(worker: AnalyticsWorker, fault: datetime) -> list:
    golden = [a for a in worker.book.recent() if a.tag_id == UNIT]
    assert golden, f"the golden monitor raised nothing: {worker.counts}"
    assert all(a.raised_at >= fault for a in golden), [(a.raised_at, a.message) for a in golden]
    assert "ph" in golden[0].message, golden[0].message
    return golden


async def test_the_worker_owning_the_unit_follows_its_phases_from_the_relayed_batch_events(
        mosquitto, tmp_path: Path, capsys) -> None:
    data_dir, run, announced, fault = faulty_batch(tmp_path, capsys)
    site = worker_site(data_dir, mosquitto.url)

    blind = await run_worker(site, tmp_path / "blind", run, None)
    assert blind.counts["samples_detected"] == run.height
    assert not [a for a in blind.book.recent() if a.tag_id == UNIT], "without phases nothing can be scored"

    worker = await run_worker(site, tmp_path / "phased", run, announced)
    assert worker.counts.get("batch_events") == announced.height, worker.counts
    golden_alerts(worker, fault)


async def test_a_partition_taken_over_in_mid_phase_learns_the_running_phase_from_the_historian(
        mosquitto, tmp_path: Path, capsys) -> None:
    """A worker starting while the batch is in its growth phase gets no event for that phase from
    the UNS (it was published before); the warm-up reads the last one from the historian."""
    data_dir, run, announced, fault = faulty_batch(tmp_path, capsys)
    site = worker_site(data_dir, mosquitto.url, warmup_s=300)
    changes = announced.filter(pl.col("transition") == "phase_change")
    growth, production = (changes.filter(pl.col("phase") == p)["ts"][0] for p in ("growth", "production"))
    worker_dir = tmp_path / "taker"
    historian = DuckDbHistorian(worker_dir / "historian.duckdb")  # the one the worker reads (site.historian)
    historian.write_batch_events_sync(announced.filter(pl.col("ts") <= growth))
    historian.close()
    in_growth = run.filter((pl.col("ts") >= growth) & (pl.col("ts") < production))
    worker = await run_worker(site, worker_dir, in_growth, None)
    assert worker.counts.get("warmup_failures") is None, worker.counts
    golden_alerts(worker, fault)


async def test_collect_relays_its_sources_batch_events_on_the_units_partition(mosquitto, tmp_path: Path) -> None:
    """`collect` (in this process): an MQTT `_batch` message from the plant reaches the UNS on the
    unit's batch-events topic, decoded to the same event, and is stored in the historian."""
    import aiomqtt
    import yaml

    from controltower.services import Collector
    from controltower.uns import Topics, decode_batch_events
    from tests.integration.test_batch_events_durable import TOPIC, events, publish

    doc = yaml.safe_load((REPO / "config" / "mqtt-site.yaml").read_text())
    doc["sources"][0].update(url=mosquitto.url, batch_event_topic="acme/{site}/{area}/{line}/{unit}/_batch")
    doc.pop("simulation", None)
    doc.update(data_dir=str(tmp_path / "cork"), uns={"enabled": True, "url": mosquitto.url, "partitions": PARTITIONS})
    site = parse_site_config(doc)
    topics = Topics.of(site.uns)
    collector = Collector(site, data_dir=tmp_path / "collect", instance="1")
    received: list[tuple[str, bytes]] = []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-uns-reader") as reader:
        await reader.subscribe(f"{topics.base}/batch-events/#", qos=1)

        async def read() -> None:
            async for message in reader.messages:
                received.append((message.topic.value, message.payload))

        tasks = [asyncio.create_task(read()), asyncio.create_task(collector.run())]
        try:
            await wait_until(lambda: collector.publisher.stats.connected and all(
                s.health.connected for s in collector.sources), 30, "collector connected")
            sent = events(3)
            await asyncio.to_thread(publish, mosquitto.port, sent)
            await wait_until(lambda: sum(len(json.loads(p)) for _, p in received) == 3, 30, "3 events on the UNS")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stored = collector.historian.read_batch_events("cork", START)
            collector.close()
    unit = TOPIC.split("/", 1)[1].rsplit("/", 1)[0].replace("/", ".")
    assert {t for t, _ in received} == {topics.batch_events(*unit.split("."))}
    relayed = pl.concat([decode_batch_events(p, unit) for _, p in received])
    assert relayed["phase"].to_list() == [e["phase"] for e in sent]
    assert relayed["transition"].to_list() == [e["transition"] for e in sent]
    assert stored.select("ts", "phase").equals(relayed.select("ts", "phase")), stored
