"""End to end, with real parts only: the project's simulator serves the demo plant over OPC-UA
and publishes it to a real Mosquitto; the control tower collects both, stores in DuckDB, runs
the detectors and serves the API. A spike is injected on an OPC-UA tag and one on an MQTT tag,
and a stuck sensor on another OPC-UA tag: each must come back from /api/alerts within a bounded
time of its injection, and nothing may be alerted before the first fault."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from controltower.demo import point_sources_at
from controltower.runtime import ControlTower
from controltower.site import FaultConfig, load_site_config
from tests.conftest import REPO, free_port

OPCUA_TAG = "lyon.usp.bio1.br101.temperature"
MQTT_TAG = "lyon.ff.fill1.filler1.fill_weight"
STUCK_TAG = "lyon.osd.tab1.press1.compression_force"  # OPC-UA: a stuck sensor must still send samples
FAULTY = (OPCUA_TAG, MQTT_TAG, STUCK_TAG)
FAULT_AT_S = 12.0
DETECTION_BUDGET_S = 8.0


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def test_faults_flow_from_simulator_to_api_alerts(mosquitto, tmp_path: Path) -> None:
    from simulators.service import SimulatorService

    site = load_site_config(REPO / "config" / "demo-site.yaml")
    faults = [
        FaultConfig(tag=OPCUA_TAG, kind="spike", start_s=FAULT_AT_S, duration_s=30, magnitude=4.0),
        FaultConfig(tag=MQTT_TAG, kind="spike", start_s=FAULT_AT_S, duration_s=30, magnitude=0.12),
        FaultConfig(tag=STUCK_TAG, kind="stuck", start_s=FAULT_AT_S, duration_s=30),
    ]
    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    site = point_sources_at(site, opcua_url=opcua_url, mqtt_url=mosquitto.url)
    site = site.model_copy(update={
        "simulation": site.simulation.model_copy(update={"faults": faults}),
        # 10 equal samples at the 0.5 s tick: a stuck sensor is called within 5 s.
        "detectors": site.detectors.model_copy(update={"flatline": site.detectors.flatline.model_copy(update={"min_run": 10})}),
    })

    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=opcua_url, mqtt_url=mosquitto.url, seed=3)
    await simulator.start()
    tower = ControlTower(site, data_dir=tmp_path / "tower")
    base = tower.start_screen(port=0)
    sim_task = asyncio.create_task(simulator.run(None))
    tower_task = asyncio.create_task(tower.run(None))
    try:
        seen_at: dict[str, datetime] = {}
        polls_before_fault = 0
        deadline = datetime.now(UTC) + timedelta(seconds=FAULT_AT_S + DETECTION_BUDGET_S + 10)
        while datetime.now(UTC) < deadline and len(seen_at) < len(FAULTY):
            await asyncio.sleep(0.25)
            body = await asyncio.to_thread(get_json, base + "/api/alerts")
            now = datetime.now(UTC)
            if not simulator.ground_truth_path.exists():
                polls_before_fault += 1
                assert body == {"active": [], "recent": []}, f"alert before any fault: {body}"
            for alert in body["active"]:
                if alert["tag_id"] in FAULTY:
                    seen_at.setdefault(alert["tag_id"], now)
        assert polls_before_fault > 10, "the API was hardly read before the first fault"
        assert set(seen_at) == set(FAULTY), f"alerts seen: {seen_at}; health: {tower.health()}"

        # Measured from the injection times the simulator logged as ground truth.
        truth = pl.read_csv(simulator.ground_truth_path, try_parse_dates=True)
        assert set(truth["tag_id"].to_list()) == set(FAULTY)
        injected = dict(zip(truth["tag_id"].to_list(), truth["start"].to_list()))
        for tag, when in seen_at.items():
            delay = (when - injected[tag]).total_seconds()
            assert 0 <= delay <= DETECTION_BUDGET_S, f"{tag} alerted {delay:.1f}s after its fault"
        # No alert anywhere dated before the first injection.
        body = await asyncio.to_thread(get_json, base + "/api/alerts")
        first_fault = min(injected.values())
        for alert in body["active"] + body["recent"]:
            raised = datetime.fromisoformat(alert["raised_at"])
            assert raised >= first_fault, f"{alert['tag_id']} raised at {raised}, before the first fault"

        # Both paths reached the historian, read back through the API.
        for tag in (OPCUA_TAG, MQTT_TAG):
            history = await asyncio.to_thread(get_json, base + f"/api/tags/{tag}/history?since=-5m")
            assert len(history) >= 10, f"{tag}: only {len(history)} samples stored"
        lines = {ln["line"]: ln for ln in (await asyncio.to_thread(get_json, base + "/api/lines"))["lines"]}
        assert lines["bio1"]["state"] == "alarm" and lines["fill1"]["state"] == "alarm"
        assert lines["tab1"]["state"] == "warning"  # the stuck sensor
        health = await asyncio.to_thread(get_json, base + "/api/health")
        assert all(s["connected"] for s in health["sources"]), health
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/metrics", timeout=5).read().decode())
        assert 'controltower_samples_in_total{source="plant-opcua"}' in metrics
        assert 'controltower_samples_in_total{source="plant-mqtt"}' in metrics
    finally:
        for task in (tower_task, sim_task):
            task.cancel()
        await asyncio.gather(tower_task, sim_task, return_exceptions=True)
        tower.close()
        await simulator.stop()
