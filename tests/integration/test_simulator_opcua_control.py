"""An asyncua client controls the simulator over OPC-UA: it writes a setpoint and the process
follows it in simulated time, an out-of-range write is refused and changes nothing, batch
events arrive on a subscription, and the AcknowledgeBatchEvent method acknowledges them."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import Client, ua

from controltower.site import SiteConfig, load_site_config
from simulators.service import SimulatorService
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

START = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
BIO = "lyon.usp.bio1.br101"
FILLER = "lyon.ff.fill1.filler1"


@pytest.fixture
def site() -> SiteConfig:
    demo = load_site_config(REPO / "config" / "demo-site.yaml")
    # No scheduled faults; 50 simulated seconds per tick (ticks are driven by the test).
    simulation = demo.simulation.model_copy(update={"faults": [], "speed": 100.0, "tick_ms": 500})
    return demo.model_copy(update={"simulation": simulation})


@pytest.fixture
async def service(site: SiteConfig, tmp_path: Path):
    svc = SimulatorService(
        site, data_dir=tmp_path, opcua_url=f"opc.tcp://127.0.0.1:{free_port()}/sim", mqtt_url=None, start=START
    )
    await svc.start()
    try:
        await svc.tick()
        yield svc
    finally:
        await svc.stop()


async def test_setpoint_write_is_followed_and_out_of_range_refused(service: SimulatorService) -> None:
    async with Client(service.opcua_url, timeout=5) as client:
        folder = client.get_node(f"ns=2;s={BIO}.sp")
        assert (await folder.read_browse_name()).Name == "Setpoints"
        names = {(await n.read_browse_name()).Name for n in await folder.get_children()}
        assert names == {"temperature", "ph", "dissolved_oxygen", "pressure"}
        sp = client.get_node(f"ns=2;s={BIO}.sp.temperature")
        assert await sp.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType)
        assert ua.AccessLevel.CurrentWrite in await sp.get_access_level()
        eu_range = await (await sp.get_child("0:EURange")).read_value()
        assert (eu_range.Low, eu_range.High) == service.plant.setpoint_ranges(BIO)["temperature"]
        assert (await (await sp.get_child("0:EngineeringUnits")).read_value()).DisplayName.Text == "degC"
        assert await sp.read_value() == 37.0  # the recipe's

        with pytest.raises(ua.UaStatusCodeError) as refused:
            await sp.write_value(ua.DataValue(ua.Variant(45.0, ua.VariantType.Double)))
        assert refused.value.code == ua.StatusCodes.BadOutOfRange
        assert service.plant.setpoints(BIO)["temperature"] == 37.0 and await sp.read_value() == 37.0

        temperature = client.get_node(f"ns=2;s={BIO}.temperature")
        before = await temperature.read_value()
        await sp.write_value(ua.DataValue(ua.Variant(38.5, ua.VariantType.Double)))
        assert service.plant.setpoints(BIO)["temperature"] == 38.5
        assert await sp.read_value() == 38.5
        # Ramp 0.002 degC/s, then the loop: 1.5 degC needs ~750 simulated s; give it 1500 (30 ticks).
        for _ in range(30):
            await service.tick()
        after = await temperature.read_value()
        assert before < 37.4 and after > 38.2, (before, after)
        assert await sp.read_value() == 38.5  # still the operator's: the batch has not ended

        # NaN gives the recipe its setpoint back.
        await sp.write_value(ua.DataValue(ua.Variant(math.nan, ua.VariantType.Double)))
        recipe = service.plant.setpoints(BIO)["temperature"]
        assert service.plant.setpoint_overrides(BIO) == {} and await sp.read_value() == recipe


async def test_batch_events_subscription_and_acknowledgement(service: SimulatorService) -> None:
    async with Client(service.opcua_url, timeout=5) as client:
        received: list = []

        class Handler:
            def event_notification(self, event) -> None:
                received.append(event)

        event_type = await client.nodes.base_event_type.get_child("2:BatchEventType")
        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_events(client.get_node(f"ns=2;s={FILLER}"), event_type)
        # The filler's start-up phase lasts 120 simulated s: 3 ticks of 50 s cross it.
        for _ in range(3):
            await service.tick()
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.05)
        assert received, "no batch event"
        event = received[0]
        assert (event.Unit, event.Transition) == (FILLER, "phase_change")
        assert (event.PreviousPhase, event.Phase) == ("start_up", "filling")
        assert event.BatchId == service.plant.unit_state(FILLER)[0]
        assert event.SourceName == FILLER and "phase change" in event.Message.Text
        assert event.Time == service.batch_events[0].at  # simulated time
        # What the batch makes, by which recipe: in the event and on the unit's node.
        assert (event.Product, event.Recipe) == ("mAb-101 solution, 2 mL vials", "Aseptic fill AF-2 v5")
        assert await client.get_node(f"ns=2;s={FILLER}.product").read_value() == event.Product
        assert await client.get_node(f"ns=2;s={FILLER}.recipe").read_value() == event.Recipe

        last = await client.get_node(f"ns=2;s={FILLER}.last_batch_transition").read_data_value()
        assert last.Value.Value == "phase_change" and last.SourceTimestamp == event.Time
        unacked = client.get_node(f"ns=2;s={FILLER}.unacknowledged_batch_events")
        assert await unacked.read_value() == 1
        unit = client.get_node(f"ns=2;s={FILLER}")
        await unit.call_method("2:AcknowledgeBatchEvent", ua.Variant(event.Sequence, ua.VariantType.UInt32), "seen, QA")
        assert await unacked.read_value() == 0
        assert service.opcua.acknowledgements == [(event.Sequence, "seen, QA")]
        with pytest.raises(ua.UaStatusCodeError) as again:
            await unit.call_method("2:AcknowledgeBatchEvent", ua.Variant(event.Sequence, ua.VariantType.UInt32), "twice")
        assert again.value.code == ua.StatusCodes.BadEventIdUnknown
        # Another unit cannot acknowledge the filler's events.
        await service.tick()
        for _ in range(30):
            await service.tick()
        other = [e for e in service.batch_events if e.unit == FILLER and e.sequence in service.opcua.unacknowledged]
        assert other
        with pytest.raises(ua.UaStatusCodeError):
            await client.get_node(f"ns=2;s={BIO}").call_method(
                "2:AcknowledgeBatchEvent", ua.Variant(other[0].sequence, ua.VariantType.UInt32), "wrong unit"
            )


async def test_server_object_receives_every_units_batch_events(service: SimulatorService, monkeypatch) -> None:
    import simulators.opcua_server

    monkeypatch.setattr(simulators.opcua_server, "MAX_UNACKNOWLEDGED", 3)  # nobody acknowledges here
    async with Client(service.opcua_url, timeout=5) as client:
        received: list = []

        class Handler:
            def event_notification(self, event) -> None:
                received.append(event)

        event_type = await client.nodes.base_event_type.get_child("2:BatchEventType")
        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_events(client.nodes.server, event_type)
        for _ in range(30):  # 1500 simulated s: phase changes on several units
            await service.tick()
        expected = len(service.batch_events)
        for _ in range(100):
            if len(received) >= expected:
                break
            await asyncio.sleep(0.05)
        assert expected >= 3
        assert sorted(e.Sequence for e in received) == [e.sequence for e in service.batch_events]
        assert {e.Unit for e in received} >= {FILLER, "lyon.osd.tab1.press1"}
        # Only the newest unacknowledged events are kept, and the counts say so.
        kept = list(service.batch_events)[-3:]
        assert list(service.opcua.unacknowledged.values()) == kept
        assert service.opcua.unacknowledged_dropped == expected - 3
        for unit in {e.unit for e in service.batch_events}:
            count = await client.get_node(f"ns=2;s={unit}.unacknowledged_batch_events").read_value()
            assert count == sum(e.unit == unit for e in kept), unit


async def test_node_opcua_client_reads_and_writes_a_setpoint(service: SimulatorService) -> None:
    """An independent OPC-UA stack (node-opcua) reads a Setpoints variable and writes it."""
    import subprocess

    from tests.integration.test_opcua_interop import INTEROP, require_node_opcua

    node = require_node_opcua()

    def run(*args: str) -> dict[str, str]:
        result = subprocess.run(
            [node, str(INTEROP / "opcua_read.js"), service.opcua_url, f"ns=2;s={FILLER}.sp.speed", *args],
            cwd=INTEROP, capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return dict(line.split("=", 1) for line in result.stdout.strip().splitlines() if "=" in line)

    assert service.plant.setpoints(FILLER)["speed"] == 300.0  # the recipe's
    written = await asyncio.to_thread(run, "280")
    assert written["write"] == "Good" and written["status"] == "Good" and float(written["value"]) == 280.0
    assert written["unit"] == "vials/min" and written["range"] == "100,400"
    assert int(written["access"]) & 0b11 == 0b11  # CurrentRead | CurrentWrite
    assert service.plant.setpoints(FILLER)["speed"] == 280.0
    refused = await asyncio.to_thread(run, "999")
    assert refused["write"] == "BadOutOfRange" and float(refused["value"]) == 280.0
