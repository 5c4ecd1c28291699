"""The simulator service with its real servers: asyncua OPC-UA on a free port and MQTT to a
real Mosquitto. A client reads what a collector would read; an MQTT command injects a fault
that lands in the ground truth."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import time
from pathlib import Path

import aiomqtt
import pytest
from asyncua import Client, ua

from controltower.site import SiteConfig, load_site_config
from simulators.service import SimulatorService
from tests.conftest import REPO, free_port
from tests.integration.conftest import start_mosquitto, stop_process

pytestmark = pytest.mark.integration

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def site() -> SiteConfig:
    return load_site_config(REPO / "config" / "demo-site.yaml")


@pytest.fixture
async def service(site: SiteConfig, mosquitto, tmp_path: Path):
    svc = SimulatorService(
        site,
        data_dir=tmp_path,
        opcua_url=f"opc.tcp://127.0.0.1:{free_port()}/sim",
        mqtt_url=mosquitto.url,
        seed=3,
    )
    await svc.start()
    runner = asyncio.create_task(svc.run(None))
    try:
        yield svc
    finally:
        runner.cancel()
        started = time.monotonic()
        await svc.stop()
        assert time.monotonic() - started < 6.0  # shutdown is bounded


async def test_opcua_client_reads_changing_values_with_engineering_units(service: SimulatorService):
    async with Client(service.opcua_url, timeout=5) as client:
        assert (await client.get_namespace_array())[2] == "urn:pharma-controltower:simulator"
        node = client.get_node("ns=2;s=lyon.usp.bio1.br101.temperature")
        assert await node.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType)
        eu = await (await node.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "degC"
        eu_range = await (await node.get_child("0:EURange")).read_value()
        assert (eu_range.Low, eu_range.High) == (35.0, 39.0)
        assert "TT-101" in (await node.read_description()).Text

        await asyncio.sleep(0.7)
        first = await node.read_data_value()
        await asyncio.sleep(1.2)
        second = await node.read_data_value()
        assert first.StatusCode.is_good() and second.StatusCode.is_good()
        assert 36.0 < first.Value.Value < 38.0
        assert second.Value.Value != first.Value.Value
        assert second.SourceTimestamp > first.SourceTimestamp  # simulated time moves on

        batch = await client.get_node("ns=2;s=lyon.usp.bio1.br101.batch_id").read_value()
        phase = await client.get_node("ns=2;s=lyon.usp.bio1.br101.phase").read_value()
        assert (batch, phase) == service.plant.unit_state("lyon.usp.bio1.br101")


async def test_mqtt_unit_messages_and_runtime_injection(service: SimulatorService, mosquitto):
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.subscribe("plant/lyon/ff/fill1/filler1", qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), timeout=10)
        payload = json.loads(message.payload)
        filler = {t.id for t in service.site.sites[0].areas[2].lines[0].units[0].tags}
        assert {"fill_weight", "speed", "room_dp", "reject_rate", "fill_weight_n8"} <= filler
        assert set(payload) == {"ts", "batch_id", "phase", *filler}
        assert ISO_Z.match(payload["ts"])
        assert payload["batch_id"] == "FILLER1-0001" and payload["phase"] == "start_up"
        assert 1.96 < payload["fill_weight"] < 2.04

        await asyncio.wait_for(service.mqtt.connected.wait(), timeout=10)
        await client.publish("plant/_simulator/inject", b"{not json", qos=1)
        command = {
            "tag_id": "lyon.ff.fill1.filler1.fill_weight",
            "kind": "spike",
            "duration_s": 30,
            "magnitude": 0.5,
        }
        await client.publish("plant/_simulator/inject", json.dumps(command), qos=1)

        deadline = time.monotonic() + 10
        while not service.ground_truth_path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        with service.ground_truth_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["tag_id"], r["kind"], float(r["magnitude"])) for r in rows] == [
            ("lyon.ff.fill1.filler1.fill_weight", "spike", 0.5)
        ]
        assert ISO_Z.match(rows[0]["start"]) and ISO_Z.match(rows[0]["end"])
        assert service.mqtt_stats.commands_rejected == 1

        # The spike shows in the published fill weight.
        async def spiked() -> float:
            async for m in client.messages:
                weight = json.loads(m.payload)["fill_weight"]
                if weight > 2.3:
                    return weight

        assert await asyncio.wait_for(spiked(), timeout=5) > 2.3


async def test_mqtt_publisher_reconnects_when_the_broker_comes_back(
    site: SiteConfig, mosquitto, tmp_path: Path
):
    svc = SimulatorService(site, data_dir=tmp_path, opcua_url=None, mqtt_url=mosquitto.url, seed=3)
    runner = asyncio.create_task(svc.run(None))
    try:
        await asyncio.wait_for(_until(lambda: svc.mqtt is not None), timeout=5)
        await asyncio.wait_for(svc.mqtt.connected.wait(), timeout=10)
        stop_process(mosquitto.proc)
        await asyncio.wait_for(_until(lambda: not svc.mqtt.connected.is_set()), timeout=10)
        mosquitto.proc = start_mosquitto(mosquitto.root).proc  # same directory: same port
        await asyncio.wait_for(svc.mqtt.connected.wait(), timeout=10)
        assert svc.mqtt_stats.connects == 2
        published = svc.mqtt_stats.published
        await asyncio.wait_for(_until(lambda: svc.mqtt_stats.published > published), timeout=5)
    finally:
        runner.cancel()
        await svc.stop()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.05)
