"""The issue's browser test, with real parts only and authentication on: the project's simulator
serves the demo plant over OPC-UA and publishes it to a real Mosquitto; the control tower
(`ControlTower`, as `controltower run` builds it, users file and audit trail in its data
directory) collects, detects and serves the screen; a headless Chromium logs in as an operator,
a fault is injected in the running simulator through its MQTT command topic (as `controltower
inject` does), the alarm appears in the console, the operator acknowledges it with a comment and
finds it in the journal; the audit trail has the login and the acknowledgement and verifies."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from pathlib import Path

import pytest

from controltower.audit import verify_trail
from controltower.auth import UserStore
from controltower.demo import point_sources_at
from controltower.runtime import ControlTower
from controltower.site import AuthConfig, load_site_config
from tests.conftest import REPO, free_port
from tests.integration.test_screen_chromium import _grid_cell, _log_in, _row_texts, _wait, browser  # noqa: F401
from tests.screen.test_auth import FAST

pytestmark = pytest.mark.integration

TAG = "lyon.ff.fill1.filler1.fill_weight"  # an MQTT tag


async def _inject(mqtt_url: str, prefix: str) -> None:
    from urllib.parse import urlsplit

    import aiomqtt

    from simulators.mqtt_publisher import INJECT_TOPIC

    url = urlsplit(mqtt_url)
    command = {"tag_id": TAG, "kind": "spike", "duration_s": 120.0, "magnitude": 0.12, "period_s": 60.0}
    async with aiomqtt.Client(url.hostname, url.port, timeout=10) as client:
        await client.publish(f"{prefix}/{INJECT_TOPIC}", json.dumps(command).encode(), qos=1)


def test_log_in_see_an_injected_fault_as_an_alarm_acknowledge_it_and_find_it_in_the_journal(
        mosquitto, browser, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    from simulators.service import SimulatorService

    site = load_site_config(REPO / "config" / "demo-site.yaml")
    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    site = point_sources_at(site, opcua_url=opcua_url, mqtt_url=mosquitto.url)
    site = site.model_copy(update={
        "simulation": site.simulation.model_copy(update={"faults": []}),  # only the injected one
        "screen": site.screen.model_copy(update={"auth": AuthConfig(enabled=True)}),
    })
    data = tmp_path / "tower"
    UserStore(data / "users.yaml", hasher=FAST).add("olga", "operator", "operator-pass-1")

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="plant-and-tower", daemon=True)
    thread.start()

    def run(coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=opcua_url, mqtt_url=mosquitto.url, seed=3)
    run(simulator.start())
    tower = ControlTower(site, data_dir=data)
    running: list[concurrent.futures.Future] = []
    try:
        url = tower.start_screen(port=0)
        running = [asyncio.run_coroutine_threadsafe(simulator.run(None), loop),
                   asyncio.run_coroutine_threadsafe(tower.run(None), loop)]
        driver = browser
        started = time.monotonic()
        _log_in(driver, url, "olga", "operator-pass-1")
        _wait(driver, lambda d: d.current_url.endswith("/alarms/") and d.find_elements(By.ID, "nav-user-name"),
              what="the alarm console, logged in")
        assert not [a for a in tower.alerts.alarm_list() if a.tag_id == TAG]

        run(_inject(mosquitto.url, site.simulation.mqtt_topic_prefix))
        deadline = time.monotonic() + 30
        alarm = None
        while alarm is None and time.monotonic() < deadline:
            alarm = next((a for a in tower.alerts.alarm_list() if a.tag_id == TAG and a.severity == "alarm"), None)
            time.sleep(0.25)
        assert alarm is not None, f"no alarm on {TAG} within 30 s of the injection; health: {tower.health()}"
        _wait(driver, lambda d: _grid_cell(d, alarm.id, "state_label") == "● ACTIVE · UNACK", timeout=10,
              what="the injected fault's alarm in the console")

        driver.find_element(By.CSS_SELECTOR, f'#console-grid .ag-row[row-id="{alarm.id}"] [col-id="tag_id"]').click()
        _wait(driver, lambda d: "Fill weight" in d.find_element(By.ID, "console-selected").text,
              what="the selected alarm")
        driver.find_element(By.ID, "console-ack-comment").send_keys("Filler stopped, weights checked")
        driver.find_element(By.ID, "console-ack").click()
        _wait(driver, lambda d: _grid_cell(d, alarm.id, "state_label") == "◉ ACTIVE · ACK",
              what="the alarm acknowledged")
        entry = _wait(driver, lambda d: next((r for r in _row_texts(d, "#console-journal tr.journal-row")
                                              if "acknowledged" in r and "fill_weight" in r), None),
                      what="the acknowledgement in the journal")
        assert "olga" in entry and "Filler stopped, weights checked" in entry
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, f"browser console errors: {severe}"
        assert time.monotonic() - started < 90
    finally:
        for future in running:
            future.cancel()
        concurrent.futures.wait(running, timeout=15)
        tower.close()
        run(simulator.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    records = tower.audit.records()
    assert [(r["actor"], r["action"]) for r in records if r["action"] in ("login", "alarm.ack")] == [
        ("olga", "login"), ("olga", "alarm.ack")]
    assert verify_trail(data / "audit.jsonl").ok
