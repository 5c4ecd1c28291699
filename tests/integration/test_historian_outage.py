"""The historian goes away while the plant keeps producing: the control tower keeps detecting,
reports itself degraded, holds the batches, and stores every one of them once InfluxDB is back.
Real parts: the project's simulator over OPC-UA and Mosquitto, and InfluxDB 1.6.7."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controltower.demo import point_sources_at
from controltower.runtime import ControlTower
from controltower.site import InfluxDbHistorianConfig, load_site_config
from tests.conftest import REPO, free_port
from tests.integration.conftest import start_influxdb_v1, stop_process, wait_until


async def test_no_sample_lost_while_influxdb_is_down(mosquitto, tmp_path: Path) -> None:
    from simulators.service import SimulatorService

    influx = start_influxdb_v1(tmp_path / "influx")
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    site = point_sources_at(site, opcua_url=opcua_url, mqtt_url=mosquitto.url)
    site = site.model_copy(update={
        "historian": InfluxDbHistorianConfig(kind="influxdb", url=influx.url, api="v1", bucket="controltower", token_env=None),
        "simulation": site.simulation.model_copy(update={"faults": []}),
    })
    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=opcua_url, mqtt_url=mosquitto.url)
    await simulator.start()
    tower = ControlTower(site, data_dir=tmp_path / "tower")
    started = datetime.now(UTC) - timedelta(seconds=5)
    sim_task = asyncio.create_task(simulator.run(None))
    tower_task = asyncio.create_task(tower.run(None))
    restarted = None
    try:
        await wait_until(lambda: tower.pipeline.samples_stored > 50, 20, "first samples stored")

        stop_process(influx.proc)
        await wait_until(lambda: not tower.health()["historian"]["ok"], 20, "the outage to be noticed")
        assert tower.health()["status"] == "degraded"
        stored_at_outage = tower.pipeline.samples_stored
        await asyncio.sleep(3)
        # Collection and detection go on; storage waits.
        samples_in = sum(s.health.samples_in for s in tower.sources)
        assert samples_in > stored_at_outage + 30
        assert tower.live.latest().height == len(tower.tags)

        restarted = start_influxdb_v1(tmp_path / "influx")
        assert restarted.port == influx.port
        await wait_until(lambda: tower.health()["historian"]["ok"], 40, "the historian to come back")
    finally:
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)
        tower_task.cancel()  # stops the sources, then drains what they collected into InfluxDB
        await asyncio.gather(tower_task, return_exceptions=True)
        await simulator.stop()

    try:
        collected = sum(s.health.samples_in for s in tower.sources)
        assert tower.pipeline.samples_stored == collected
        stored = tower.historian.read([t.tag_id for t in tower.tags], started, datetime.now(UTC) + timedelta(minutes=1))
        assert stored.height == collected, f"{collected} samples collected, {stored.height} in InfluxDB"
        assert stored.select("tag_id", "ts").n_unique() == stored.height
    finally:
        tower.close()
        if restarted is not None:
            stop_process(restarted.proc)
