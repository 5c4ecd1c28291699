"""collector.setpoints against the project's OPC-UA simulator: a write moves the plant's setpoint
and is read back; a value outside the configured range is refused before any connection, one
inside the configured range but outside the server's is refused by the server (BadOutOfRange);
a stale confirmation, a wrong node id and an unreachable server are errors naming the node and
the status. Also through a Basic256Sha256/SignAndEncrypt channel with a user, as the source has it."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from collector.setpoints import SetpointError, SetpointOutOfRange, SetpointWriter, StaleSetpoint
from collector.sources.opcua_security import ensure_application_certificate
from controltower.site import Setpoint, SiteConfig, load_site_config
from simulators.opcua_server import PlantOpcUaServer
from simulators.plant import Plant
from simulators.service import SimulatorService
from tests.conftest import REPO, free_port

# One simulator for the module (an OPC-UA server takes seconds to start); each test starts from
# the recipe's setpoints.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
BIO = "lyon.usp.bio1.br101"


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    demo = load_site_config(REPO / "config" / "demo-site.yaml")
    return demo.model_copy(update={"simulation": demo.simulation.model_copy(update={"faults": []})})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def simulator(site: SiteConfig, tmp_path_factory):
    svc = SimulatorService(site, data_dir=tmp_path_factory.mktemp("sim"),
                           opcua_url=f"opc.tcp://127.0.0.1:{free_port()}/sim", mqtt_url=None, start=START)
    await svc.start()
    try:
        await svc.tick()
        yield svc
    finally:
        await svc.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def service(simulator: SimulatorService):
    simulator.plant.clear_setpoint(BIO)
    await simulator.tick()
    yield simulator


def setpoint(site: SiteConfig, name: str) -> Setpoint:
    return next(s for s in site.unit_setpoints()[BIO] if s.id == name)


def writer_for(site: SiteConfig, url: str, data_dir: Path, **changes) -> SetpointWriter:
    source = site.setpoint_source(setpoint(site, "temperature")).model_copy(update={"url": url, **changes})
    return SetpointWriter(source, data_dir, timeout_s=5)


async def test_a_write_moves_the_plant_setpoint_and_is_read_back(site, service, tmp_path) -> None:
    writer = writer_for(site, service.opcua_url, tmp_path)
    temperature = setpoint(site, "temperature")
    values = await writer.read([s.node_id for s in site.unit_setpoints()[BIO]])
    assert values[temperature.node_id].value == 37.0 == service.plant.setpoints(BIO)["temperature"]
    assert all(v.writable and v.status == "Good" for v in values.values())

    result = await writer.write(temperature, 38.5, expected_old=37.0)
    assert (result.old, result.new, result.requested, result.status) == (37.0, 38.5, 38.5, "Good")
    assert service.plant.setpoints(BIO)["temperature"] == 38.5
    assert service.plant.setpoint_overrides(BIO) == {"temperature": 38.5}


async def test_out_of_range_is_refused_locally_and_by_the_server(site, service, tmp_path) -> None:
    writer = writer_for(site, service.opcua_url, tmp_path)
    temperature = setpoint(site, "temperature")
    with pytest.raises(SetpointOutOfRange, match=r"outside its range \[30, 40\] degC"):
        await writer.write(temperature, 41.0)
    with pytest.raises(SetpointOutOfRange, match="not a number"):
        await writer.write(temperature, "warm")
    # A site file wider than the plant: the server's own range check answers.
    wider = temperature.model_copy(update={"high": 60.0})
    with pytest.raises(SetpointError) as refused:
        await writer.write(wider, 45.0)
    assert refused.value.status == "BadOutOfRange"
    assert "BadOutOfRange" in str(refused.value) and temperature.node_id in str(refused.value)
    assert service.plant.setpoints(BIO)["temperature"] == 37.0 and service.plant.setpoint_overrides(BIO) == {}


async def test_a_stale_confirmation_writes_nothing(site, service, tmp_path) -> None:
    writer = writer_for(site, service.opcua_url, tmp_path)
    ph = setpoint(site, "ph")
    service.plant.write_setpoint(BIO, "ph", 7.2)  # someone else changed it after the operator looked
    await service.tick()
    with pytest.raises(StaleSetpoint) as stale:
        await writer.write(ph, 6.9, expected_old=7.05)
    assert stale.value.current == 7.2 and "7.05" in str(stale.value)
    assert service.plant.setpoints(BIO)["ph"] == 7.2


async def test_a_wrong_node_id_and_an_unreachable_server_are_clear_errors(site, service, tmp_path) -> None:
    writer = writer_for(site, service.opcua_url, tmp_path)
    wrong = setpoint(site, "temperature").model_copy(update={"node_id": "ns=2;s=lyon.usp.bio1.br101.sp.tempreature"})
    with pytest.raises(SetpointError) as unknown:
        await writer.write(wrong, 38.0)
    assert unknown.value.status == "BadNodeIdUnknown"
    assert "sp.tempreature" in str(unknown.value) and "node id" in str(unknown.value)
    read = (await writer.read([wrong.node_id]))[wrong.node_id]
    assert read.value is None and read.status == "BadNodeIdUnknown"

    nobody = writer_for(site, f"opc.tcp://127.0.0.1:{free_port()}/sim", tmp_path)
    began = time.monotonic()
    with pytest.raises(SetpointError) as refused:
        await nobody.write(setpoint(site, "temperature"), 38.0)
    assert refused.value.status == "ConnectionFailed" and "cannot connect" in str(refused.value)
    assert time.monotonic() - began < 5.5


async def test_a_write_over_a_secure_channel_with_a_user(site, tmp_path, monkeypatch) -> None:
    """The writer uses the source's policy, mode, trust list and user (the settings the collector
    reads with): the simulator serving Basic256Sha256/SignAndEncrypt and wanting a user."""
    cert, key = tmp_path / "server.der", tmp_path / "server.pem"
    ensure_application_certificate(cert, key, application_uri="urn:pharma-controltower:simulator:server",
                                   common_name="simulator", hostnames=["127.0.0.1"], server=True)
    data = tmp_path / "data"
    (data / "pki" / "trusted").mkdir(parents=True)
    shutil.copy(cert, data / "pki" / "trusted" / cert.name)
    plant = Plant(site, seed=7, start=START)
    server = PlantOpcUaServer(site, url=f"opc.tcp://127.0.0.1:{free_port()}/sim",
                              security=["Basic256Sha256_SignAndEncrypt"], certificate=cert, private_key=key,
                              users={"operator": "s3cret-Pa55word!"}, plant=plant)
    await server.start()
    try:
        monkeypatch.setenv("CT_TEST_SP_PASSWORD", "s3cret-Pa55word!")
        secure = {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt", "username": "operator",
                  "password_env": "CT_TEST_SP_PASSWORD"}
        writer = writer_for(site, server.url, data, **secure)
        result = await writer.write(setpoint(site, "pressure"), 0.3, expected_old=0.2)
        assert (result.old, result.new) == (0.2, 0.3) and plant.setpoints(BIO)["pressure"] == 0.3

        monkeypatch.setenv("CT_TEST_SP_PASSWORD", "wrong-password")
        with pytest.raises(SetpointError) as refused:
            await writer.write(setpoint(site, "pressure"), 0.4)
        assert refused.value.status == "SecurityFailed" and "refused user 'operator'" in str(refused.value)
        assert "wrong-password" not in str(refused.value)
        assert plant.setpoints(BIO)["pressure"] == 0.3
    finally:
        await server.stop()


async def test_the_value_is_written_in_the_type_the_node_holds(tmp_path) -> None:
    """A PLC's REAL is a Float and a count an Int32: the writer sends that type (a Double would be
    BadTypeMismatch), and refuses a fraction for a whole-number node before writing."""
    from asyncua import Server, ua

    from controltower.site import OpcUaSourceConfig

    server = Server()
    await server.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}/plc"
    server.set_endpoint(url)
    ns = await server.register_namespace("urn:test:plc")
    plc = await server.nodes.objects.add_object(ua.NodeId("plc", ns), "PLC")
    real = await plc.add_variable(ua.NodeId("sp_real", ns), "sp_real", ua.Variant(20.0, ua.VariantType.Float))
    count = await plc.add_variable(ua.NodeId("sp_count", ns), "sp_count", ua.Variant(4, ua.VariantType.Int32))
    for node in (real, count):
        await node.set_writable()
    await server.start()
    try:
        writer = SetpointWriter(OpcUaSourceConfig(kind="opcua", name="plc", url=url), tmp_path, timeout_s=5)
        as_real = Setpoint(id="sp_real", node_id=f"ns={ns};s=sp_real", low=0.0, high=100.0, unit="degC")
        as_count = Setpoint(id="sp_count", node_id=f"ns={ns};s=sp_count", low=0.0, high=10.0)
        result = await writer.write(as_real, 21.5, expected_old=20.0)
        assert (result.old, result.new) == (20.0, 21.5)
        assert (await real.read_data_value()).Value.VariantType == ua.VariantType.Float
        result = await writer.write(as_count, 6, expected_old=4)
        assert (result.old, result.new) == (4.0, 6.0)
        assert (await count.read_data_value()).Value == ua.Variant(6, ua.VariantType.Int32)
        with pytest.raises(SetpointError) as fraction:
            await writer.write(as_count, 6.5)
        assert fraction.value.status == "TypeMismatch" and "whole numbers (Int32)" in str(fraction.value)
        assert await count.read_value() == 6
    finally:
        await server.stop()
