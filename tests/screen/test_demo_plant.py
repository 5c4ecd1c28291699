"""The demo plant API and panel against a real simulator ticking on its own event loop (in a
thread, as in `controltower demo`), served over real HTTP: faults injected through the API land
in the plant and its ground truth, and in the audit trail; bad requests are 400s naming the field."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flask import Flask

from controltower.audit import AuditTrail
from controltower.demo_plant import DemoPlant, register_demo_plant_api
from controltower.site import AuthConfig, load_site_config
from controltower.websecurity import WebSecurity
from controltower.webserver import WebServer
from simulators.service import SimulatorService
from tests.screen.demo_context import DEMO_SITE
from tests.screen.running_simulator import ticking_in_a_thread

FILL_WEIGHT = "lyon.ff.fill1.filler1.fill_weight"
BIOREACTOR = "lyon.usp.bio1.br101"


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@pytest.fixture
def plant_server(tmp_path: Path):
    site = load_site_config(DEMO_SITE)
    site = site.model_copy(update={"simulation": site.simulation.model_copy(update={"tick_ms": 100, "faults": []})})
    simulator = SimulatorService(site, data_dir=tmp_path, opcua_url=None, mqtt_url=None)
    with ticking_in_a_thread(simulator, timeout_s=30) as loop:
        trail = AuditTrail(tmp_path / "audit.jsonl")
        server = Flask("test-demo-plant")
        WebSecurity(AuthConfig(enabled=False), audit=trail).install(server)
        register_demo_plant_api(server, DemoPlant(simulator, loop))
        with WebServer(server, port=0) as web:
            yield web.url, simulator, trail


def test_the_catalog_lists_kinds_tags_and_units_with_their_process_faults(plant_server) -> None:
    url, simulator, _ = plant_server
    status, body = call(url + "/api/simulation")
    assert status == 200
    assert "spike" in body["sensor_kinds"] and "cooling_failure" in body["process_kinds"]
    assert FILL_WEIGHT in body["tags"] and len(body["tags"]) == len(simulator.plant.tag_ids)
    units = {u["path"]: u for u in body["units"]}
    assert units[BIOREACTOR]["kind"] == "bioreactor"
    assert set(units[BIOREACTOR]["process_kinds"]) == {"cooling_failure", "feed_pump_failure", "contamination"}
    assert units["lyon.ff.fill1.filler1"]["process_kinds"] == []
    assert body["faults"] == []


def test_a_sensor_and_a_process_fault_are_injected_logged_and_audited(plant_server) -> None:
    url, simulator, trail = plant_server
    status, body = call(url + "/api/simulation/faults",
                        {"target": FILL_WEIGHT, "kind": "stuck", "duration_s": 60, "user": "newcomer"})
    assert status == 201, body
    assert body["fault"]["kind"] == "stuck" and body["fault"]["tags"] == [FILL_WEIGHT]
    # The plant holds the reading: the tag stops moving while the others go on.
    time.sleep(0.5)
    held = simulator.plant.last_values[FILL_WEIGHT]
    time.sleep(0.5)
    assert simulator.plant.last_values[FILL_WEIGHT] == held

    status, body = call(url + "/api/simulation/faults",
                        {"target": BIOREACTOR, "kind": "cooling_failure", "duration_s": 900, "magnitude": 1.0})
    assert status == 201, body
    assert f"{BIOREACTOR}.temperature" in body["fault"]["tags"]

    status, body = call(url + "/api/simulation")
    assert [(f["kind"], f["target"]) for f in body["faults"]] == [("cooling_failure", BIOREACTOR), ("stuck", FILL_WEIGHT)]
    records = [json.loads(line) for line in trail.path.read_text().splitlines()]
    assert [(r["actor"], r["action"], r["target"]) for r in records] == [
        ("newcomer", "simulation.inject", FILL_WEIGHT), ("demo", "simulation.inject", BIOREACTOR)]


@pytest.mark.parametrize("body, field", [
    ({"kind": "spike", "duration_s": 10}, "target"),
    ({"target": "lyon.nope.tag", "kind": "spike", "duration_s": 10}, "lyon.nope.tag"),
    ({"target": FILL_WEIGHT, "kind": "meltdown", "duration_s": 10}, "meltdown"),
    ({"target": "lyon.ff.fill1.filler1", "kind": "cooling_failure", "duration_s": 10}, "cooling_failure"),
    ({"target": FILL_WEIGHT, "kind": "spike"}, "duration_s"),
    ({"target": FILL_WEIGHT, "kind": "spike", "duration_s": -5}, "duration_s"),
    ({"target": FILL_WEIGHT, "kind": "spike", "duration_s": 10, "magnitude": "big"}, "magnitude"),
])
def test_a_bad_request_is_a_400_naming_what_is_wrong(plant_server, body: dict, field: str) -> None:
    url, simulator, _ = plant_server
    status, answer = call(url + "/api/simulation/faults", body)
    assert status == 400 and field in answer["error"], answer
    assert simulator.plant.faults.injected == 0


def test_the_panel_is_served_with_the_demo_link_only_in_the_demo(tmp_path: Path) -> None:
    from controltower.screen import create_app
    from tests.screen.demo_context import build_context

    ctx = build_context(tmp_path)
    site = ctx.site
    ctx.site = site.model_copy(update={"screen": site.screen.model_copy(update={"auth": AuthConfig(enabled=False)})})
    plain = create_app(ctx).server.test_client()
    assert plain.get("/api/simulation").status_code == 404
    assert "Demo plant" not in plain.get("/_dash-layout").get_data(as_text=True)

    simulator = SimulatorService(site, data_dir=tmp_path, opcua_url=None, mqtt_url=None)
    asyncio.run(simulator.start())
    ctx.demo_plant = DemoPlant(simulator, asyncio.new_event_loop())
    demo = create_app(ctx).server.test_client()
    layout = demo.get("/simulator/_dash-layout")
    assert layout.status_code == 200
    text = layout.get_data(as_text=True)
    assert "Inject a fault into the simulated plant" in text and "Demo plant" in text
    assert "Demo plant" in demo.get("/_dash-layout").get_data(as_text=True)
    ctx.historian.close()
