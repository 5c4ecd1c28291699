"""The simulator's MQTT payload formats through a real Mosquitto, each read by the project's own
MQTT collector source configured with the matching payload kind: what the collector stores is
what the plant published. Sparkplug B: births before data, aliases in DDATA, seq wrapping,
rebirth on NCMD, NDEATH as the Last Will. JSON: the retained status topic and its Will."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import aiomqtt
import polars as pl
import pytest

from collector.deadletter import DeadLetterFile
from collector.sources.mqtt import MqttSource
from collector.sources.sparkplug import rebirth_request
from collector.sources.sparkplug_b_proto import Payload
from controltower.site import SiteConfig, SiteConfigError, parse_site_config
from simulators.service import SimulatorService

pytestmark = pytest.mark.integration

START = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
UNIT = "lyon.ff.fill1.filler1"
# The collector source that reads each simulator format (see simulators/mqtt_publisher.py).
COLLECTOR_FOR = {
    "json_unit": {"payload": "json", "topic_template": "{prefix}/{site}/{area}/{line}/{unit}", "topic_prefix": "plant"},
    "json_tag": {
        "payload": "json",
        "topic_template": "{prefix}/{site}/{area}/{line}/{unit}/{tag}",
        "topic_prefix": "plant",
        "value_field": "value",
    },
    "batched_json": {
        "payload": "batched_json",
        "topic_template": "{prefix}/{site}/{area}/{line}/{unit}",
        "topic_prefix": "plant",
    },
    "sparkplug_b": {"payload": "sparkplug_b"},
}


def make_site(broker_url: str, payload: str, **simulation) -> SiteConfig:
    tags = [
        {"id": "fill_weight", "unit": "g", "limits": {"warning_low": 1.95, "warning_high": 2.05}, "mqtt": {}},
        {"id": "speed", "unit": "vials/min", "limits": {"warning_low": 250, "warning_high": 350}, "mqtt": {}},
        {"id": "room_dp", "unit": "Pa", "limits": {"warning_low": 12.5, "warning_high": 25}, "mqtt": {}},
    ]
    return parse_site_config({
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "kind": "filling_line", "tags": tags},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "broker", "url": broker_url, "flush_interval_ms": 50,
                     **COLLECTOR_FOR[payload]}],
        "simulation": {"mqtt_url": broker_url, "opcua_url": None, "mqtt_payload": payload, "seed": 5,
                       "tick_ms": 100, "speed": 10.0, **simulation},
    })


async def until(check, timeout: float = 10.0, what=lambda: "") -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out: {what()}")


class Collector:
    """The project's MQTT source, its batches kept."""

    def __init__(self, site: SiteConfig, tmp: Path):
        self.source = MqttSource(site.sources[0], site.tag_table(), dead_letter=DeadLetterFile(tmp / "dead.jsonl"))
        self.batches: list[pl.DataFrame] = []
        self.task: asyncio.Task | None = None

    async def emit(self, batch: pl.DataFrame) -> None:
        self.batches.append(batch)

    def rows(self) -> pl.DataFrame:
        return pl.concat(self.batches) if self.batches else pl.DataFrame()

    async def __aenter__(self) -> Self:
        self.task = asyncio.create_task(self.source.run(self.emit))
        await until(lambda: self.source.health.connected, what=lambda: str(self.source.health.last_error))
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def kill_connection(service: SimulatorService, index: int = 0) -> None:
    """Drop the simulator's MQTT connection without a DISCONNECT, as a crashed plant would."""
    client = service.mqtt.connections[index].client
    assert client is not None
    client._client.socket().shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("payload", ["json_unit", "json_tag", "batched_json", "sparkplug_b"])
async def test_collector_stores_what_the_simulator_published(payload: str, mosquitto, tmp_path: Path) -> None:
    site = make_site(mosquitto.url, payload)
    published: list[tuple[datetime, dict[str, float], str]] = []
    async with Collector(site, tmp_path) as collector:
        service = SimulatorService(site, data_dir=tmp_path, start=START)
        await service.start()
        try:
            await asyncio.wait_for(service.mqtt.connected.wait(), timeout=10)
            for _ in range(5):
                await service.tick()
                plant = service.plant
                published.append((plant.now, plant.last_values, plant.unit_state(UNIT)[0]))
            expected = 5 * 3
            await until(lambda: collector.rows().height >= expected, what=lambda: f"{collector.rows().height} samples")
        finally:
            await service.stop()
    rows = collector.rows()
    # A clean stop sends NDEATH: the collector marks the node's tags bad (null), once each.
    stopped = rows.filter(pl.col("quality") == "bad")
    assert stopped.height == (3 if payload == "sparkplug_b" else 0) and stopped["value"].null_count() == stopped.height
    rows = rows.filter(pl.col("quality") == "good")
    assert rows.height == expected
    assert collector.source.health.rejected == {}
    stored = {
        (ts, tag_id): (value, quality, batch)
        for ts, tag_id, value, quality, batch in rows.select("ts", "tag_id", "value", "quality", "batch_id").iter_rows()
    }
    for at, values, batch_id in published:
        for tag_id, value in values.items():
            assert stored[(at, tag_id)] == (value, "good", None if payload == "sparkplug_b" else batch_id), tag_id


async def test_sparkplug_births_aliases_sequence_rebirth_and_death(mosquitto, tmp_path: Path) -> None:
    site = make_site(mosquitto.url, "sparkplug_b", speed=1.0)
    messages: list[tuple[str, Payload]] = []
    async with Collector(site, tmp_path) as collector, aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
        await watcher.subscribe("spBv1.0/lyon/#", qos=1)

        async def watch() -> None:
            async for m in watcher.messages:
                if "/NCMD/" not in m.topic.value:  # not the test's own command
                    messages.append((m.topic.value, Payload.FromString(m.payload)))

        watching = asyncio.create_task(watch())
        service = SimulatorService(site, data_dir=tmp_path, start=START)
        await service.start()
        try:
            await asyncio.wait_for(service.mqtt.connected.wait(), timeout=10)
            for _ in range(3):
                await service.tick()
            await until(lambda: len(messages) >= 4, what=lambda: f"{[t for t, _ in messages]}")
            kinds = [t.split("/")[2] for t, _ in messages]
            assert kinds[:4] == ["NBIRTH", "DBIRTH", "DDATA", "DDATA"]
            nbirth, dbirth, ddata = messages[0][1], messages[1][1], messages[2][1]
            assert messages[0][0] == "spBv1.0/lyon/NBIRTH/ff-fill1"
            assert messages[1][0] == "spBv1.0/lyon/DBIRTH/ff-fill1/filler1"
            assert nbirth.seq == 0 and [m.seq for _, m in messages[1:4]] == [1, 2, 3]
            node_metrics = {m.name: m for m in nbirth.metrics}
            assert node_metrics["bdSeq"].long_value == 0
            assert node_metrics["Node Control/Rebirth"].boolean_value is False
            births = {m.name: m for m in dbirth.metrics}
            assert set(births) == {"fill_weight", "speed", "room_dp", "batch_id", "phase"}
            assert births["batch_id"].string_value == service.plant.unit_state(UNIT)[0]
            props = births["fill_weight"].properties
            assert dict(zip(props.keys, [v.string_value for v in props.values])) == {"engUnit": "g"}
            aliases = {m.alias for m in dbirth.metrics}
            assert len(aliases) == 5
            assert all(not m.name and m.alias in aliases for m in ddata.metrics)  # by alias only
            assert collector.source.decoder.metric_info("lyon", "ff-fill1", "filler1")["speed"].unit == "vials/min"

            # seq wraps 255 -> 0 and the collector sees no gap.
            for _ in range(256):
                await service.tick()
            await until(lambda: len(messages) >= 4 + 256, what=lambda: f"{len(messages)} messages")
            seqs = [m.seq for t, m in messages if "/DDATA/" in t]
            assert 255 in seqs and seqs[seqs.index(255) + 1] == 0
            assert all(b == (a + 1) % 256 for a, b in itertools.pairwise(seqs))
            await until(lambda: collector.rows().height >= 3 * 259, what=lambda: f"{collector.rows().height} samples")
            assert collector.source.decoder.stats["sequence_gaps"] == 0

            # A host's rebirth request: NBIRTH (seq 0, same bdSeq) and DBIRTH again.
            before = len(messages)
            await watcher.publish("spBv1.0/lyon/NCMD/ff-fill1", rebirth_request(), qos=1)
            await until(lambda: any("/NBIRTH/" in t for t, _ in messages[before:]), what=lambda: "a rebirth")
            await service.tick()
            await until(lambda: len(messages) >= before + 3)
            reborn = messages[before:]
            assert [t.split("/")[2] for t, _ in reborn[:3]] == ["NBIRTH", "DBIRTH", "DDATA"]
            assert reborn[0][1].seq == 0 and reborn[1][1].seq == 1 and reborn[2][1].seq == 2
            assert {m.name: m for m in reborn[0][1].metrics}["bdSeq"].long_value == 0

            # The connection drops without DISCONNECT: the broker delivers the NDEATH Will (bdSeq 0);
            # the simulator reconnects with the next bdSeq and is born again.
            deaths_before = collector.source.decoder.stats["deaths"]
            kill_connection(service)
            await until(lambda: any("/NDEATH/" in t for t, _ in messages), what=lambda: "the NDEATH Will")
            death = next(m for t, m in messages if "/NDEATH/" in t)
            assert {m.name: m for m in death.metrics}["bdSeq"].long_value == 0
            await until(lambda: collector.source.decoder.stats["deaths"] > deaths_before)
            await asyncio.wait_for(service.mqtt.connected.wait(), timeout=10)
            await service.tick()
            await until(lambda: sum("/NBIRTH/" in t for t, _ in messages) >= 3, what=lambda: "a birth after reconnecting")
            last_birth = [m for t, m in messages if "/NBIRTH/" in t][-1]
            assert {m.name: m for m in last_birth.metrics}["bdSeq"].long_value == 1
            stale = collector.rows().filter(pl.col("quality") == "bad")
            assert stale.height == 3  # every tag of the dead node, once
        finally:
            await service.stop()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)


async def test_json_status_will_and_batch_events(mosquitto, tmp_path: Path) -> None:
    # 10 simulated seconds a tick: the filler's 120 s start-up phase ends within 13 ticks.
    site = make_site(mosquitto.url, "json_unit", speed=100.0)
    status: list[tuple[bytes, bool]] = []
    events: list[dict] = []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
        await watcher.subscribe("plant/lyon/_status", qos=1)
        await watcher.subscribe("plant/+/+/+/+/_batch", qos=1)

        async def watch() -> None:
            async for m in watcher.messages:
                if m.topic.value.endswith("/_batch"):
                    events.append(json.loads(m.payload))
                else:
                    status.append((m.payload, m.retain))

        watching = asyncio.create_task(watch())
        service = SimulatorService(site, data_dir=tmp_path, start=START)
        await service.start()
        try:
            await until(lambda: (b"online", False) in status or (b"online", True) in status, what=lambda: str(status))
            for _ in range(15):
                await service.tick()
            await until(lambda: len(events) >= 1, what=lambda: "a batch event")
            first = events[0]
            assert (first["unit"], first["transition"]) == (UNIT, "phase_change")
            assert (first["previous_phase"], first["phase"]) == ("start_up", "filling")
            assert first["batch_id"] == service.plant.unit_state(UNIT)[0]
            assert first == service.batch_events[0].as_json()
            assert first["product"] and first["recipe"]  # ISA-88: what the batch makes, by which recipe

            kill_connection(service)
            await until(lambda: status and status[-1][0] == b"offline", what=lambda: str(status))
            await until(lambda: status[-1][0] == b"online", what=lambda: "online again after reconnecting")
        finally:
            await service.stop()
        await until(lambda: status[-1][0] == b"offline", what=lambda: "offline after a clean stop")
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    # Retained: a client connecting later still learns the plant is offline.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as late:
        await late.subscribe("plant/lyon/_status", qos=1)
        message = await asyncio.wait_for(anext(aiter(late.messages)), timeout=5)
        assert (message.payload, message.retain) == (b"offline", True)


def test_per_line_payload_must_name_a_line() -> None:
    with pytest.raises(SiteConfigError, match=r"mqtt_payloads: 'lyon.ff.nope' is not a line of this site"):
        make_site("mqtt://127.0.0.1:1883", "json_unit", mqtt_payloads={"lyon.ff.nope": "sparkplug_b"})


async def test_payload_per_line(mosquitto, tmp_path: Path) -> None:
    """The demo site with its filling line on Sparkplug B and the rest on the default JSON."""
    from controltower.site import load_site_config
    from tests.conftest import REPO

    demo = load_site_config(REPO / "config" / "demo-site.yaml")
    simulation = demo.simulation.model_copy(update={"mqtt_payloads": {"lyon.ff.fill1": "sparkplug_b"}, "faults": []})
    site = demo.model_copy(update={"simulation": simulation})
    topics: list[str] = []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
        await watcher.subscribe("plant/#", qos=1)
        await watcher.subscribe("spBv1.0/#", qos=1)

        async def watch() -> None:
            async for m in watcher.messages:
                topics.append(m.topic.value)

        watching = asyncio.create_task(watch())
        service = SimulatorService(site, data_dir=tmp_path, start=START, mqtt_url=mosquitto.url, opcua_url=None)
        await service.start()
        try:
            await asyncio.wait_for(service.mqtt.connected.wait(), timeout=10)
            assert len(service.mqtt.connections) == 2  # the site's JSON lines, the Sparkplug edge node
            for _ in range(3):
                await service.tick()
            await until(lambda: topics.count("spBv1.0/lyon/DDATA/ff-fill1/filler1") >= 2, what=lambda: str(topics))
            await until(lambda: topics.count("plant/lyon/usp/bio1/br101") >= 3, what=lambda: str(topics))
        finally:
            await service.stop()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    assert "plant/lyon/osd/tab1/press1" in topics and "plant/lyon/_status" in topics
    assert "plant/lyon/ff/fill1/filler1" not in topics
    assert "spBv1.0/lyon/NBIRTH/ff-fill1" in topics
