"""The setpoint API and the setpoints page's write callback over real HTTP, with authentication
on: the whole app (create_app with WebSecurity, a users file, an audit trail) on a free port, its
OPC-UA source pointed at the project's simulator ticking on its own event loop in a thread (as in
`controltower demo`). Writes land in the simulated plant; every attempted write is audited."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
import yaml

from analytics.alerts import AlertBook
from collector.sinks.duckdb import DuckDbHistorian
from controltower.audit import AuditTrail, verify_trail
from controltower.auth import LoginThrottle, UserStore
from controltower.live import LiveState
from controltower.metrics import Metrics
from controltower.site import AuthConfig, parse_site_config
from controltower.websecurity import WebSecurity
from controltower.webserver import WebServer
from simulators.service import SimulatorService
from tests.conftest import free_port
from tests.screen.demo_context import DEMO_SITE, DemoContext
from tests.screen.running_simulator import ticking_in_a_thread
from tests.screen.test_auth import FAST
from tests.screen.test_auth_http import PASSWORDS, Client

BIO = "lyon.usp.bio1.br101"
PRESS = "lyon.osd.tab1.press1"
START = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    from controltower.screen import create_app

    root = tmp_path_factory.mktemp("setpoint-api")
    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    data = yaml.safe_load(DEMO_SITE.read_text())
    for source in data["sources"]:
        if source["kind"] == "opcua":
            source["url"] = opcua_url
    # One setpoint configured wider than the plant allows: the server's own check must answer.
    press = data["sites"][0]["areas"][1]["lines"][0]["units"][0]
    next(s for s in press["setpoints"] if s["id"] == "target_weight")["high"] = 400.0
    data["screen"] = {"auth": {"enabled": True, "max_failed_logins": 5, "lockout_s": 60}}
    # Simulated time crawls, so the recipe's setpoints (per phase) stay those of the first phase.
    data["simulation"].update(faults=[], speed=0.01)
    site = parse_site_config(data, "demo-site (test)")

    simulator = SimulatorService(site, data_dir=root, opcua_url=opcua_url, mqtt_url=None, start=START)
    with ticking_in_a_thread(simulator) as loop:
        tags = site.tag_table()
        historian = DuckDbHistorian(root / "historian.duckdb")
        ctx = DemoContext(site=site, tags=tags, live=LiveState(tags), alerts=AlertBook(tags), historian=historian,
                          metrics=Metrics(), started_at=START)
        ctx.data_dir = root
        users = UserStore(root / "users.yaml", hasher=FAST)
        for name, role in (("olga", "operator"), ("quinn", "quality_engineer"), ("adam", "administrator")):
            users.add(name, role, PASSWORDS[name])
        trail = AuditTrail(root / "audit.jsonl")
        security = WebSecurity(site.screen.auth, users=users, audit=trail, throttle=LoginThrottle(5, 60, 60))
        app = create_app(ctx, security=security)
        with WebServer(app, port=0) as web:
            yield web.url, simulator, loop, trail
        historian.close()


@pytest.fixture
def plant(tower):
    """The simulator's plant, back on the recipe's setpoints (on its own loop, between ticks)."""
    _, simulator, loop, _ = tower

    async def reset() -> None:
        simulator.plant.clear_setpoint(BIO)
        simulator.plant.clear_setpoint(PRESS)
        await simulator.tick()

    asyncio.run_coroutine_threadsafe(reset(), loop).result(10)
    return simulator.plant


def writes(trail: AuditTrail) -> list[dict]:
    return [r for r in trail.records() if r["action"] == "setpoint.write"]


def test_reading_needs_a_session_and_gives_values_ranges_and_units(tower, plant) -> None:
    url, _, _, _ = tower
    status, _, _ = Client(url).call("GET", f"/api/setpoints?unit={BIO}")
    assert status == 401
    quality = Client(url)
    quality.login("quinn")  # reading needs `view` only
    status, _, body = quality.call("GET", f"/api/setpoints?unit={BIO}")
    assert status == 200, body
    rows = {r["id"]: r for r in body["setpoints"]}
    assert set(rows) == {"temperature", "ph", "dissolved_oxygen", "pressure"}
    assert rows["temperature"]["value"] == plant.setpoints(BIO)["temperature"] == 37.0
    assert (rows["temperature"]["low"], rows["temperature"]["high"], rows["temperature"]["unit"]) == (30.0, 40.0, "degC")
    assert rows["temperature"]["writable"] and rows["temperature"]["status"] == "Good"
    status, _, body = quality.call("GET", "/api/setpoints?unit=lyon.ff.fill1.filler1")
    assert status == 404 and BIO in body["error"]


def test_an_operator_writes_with_a_reason_and_it_is_audited(tower, plant) -> None:
    url, _, _, trail = tower
    before = len(writes(trail))
    operator = Client(url)
    operator.login("olga")
    status, _, body = operator.post(f"/api/setpoints/{BIO}/temperature",
                                    {"value": 38.5, "reason": "raise for production phase", "expected_old": 37.0})
    assert status == 200, body
    assert (body["old"], body["new"], body["status"], body["unit_of_measure"]) == (37.0, 38.5, "Good", "degC")
    assert plant.setpoints(BIO)["temperature"] == 38.5
    record = writes(trail)[before]
    assert (record["actor"], record["target"], record["old"], record["new"], record["reason"]) == (
        "olga", f"{BIO}.temperature", 37.0, 38.5, "raise for production phase")
    assert record["details"]["result"] == "written" and record["details"]["node_id"].endswith("sp.temperature")
    assert verify_trail(trail.path).ok


def test_refusals_quality_403_no_reason_400_stale_409_out_of_range_400_server_502(tower, plant) -> None:
    url, _, _, trail = tower
    before = len(writes(trail))
    quality, operator = Client(url), Client(url)
    quality.login("quinn")
    operator.login("olga")
    path = f"/api/setpoints/{BIO}/temperature"

    status, _, body = quality.post(path, {"value": 38.0, "reason": "try", "expected_old": 37.0})
    assert status == 403 and "setpoint.write" in body["error"]
    status, _, body = operator.post(path, {"value": 38.0, "reason": "  ", "expected_old": 37.0})
    assert status == 400 and body["error"].startswith("reason: required")
    status, _, body = operator.post(path, {"value": 38.0, "reason": "no confirmation"})
    assert status == 400 and body["error"].startswith("expected_old: required")
    status, _, body = operator.call("POST", path, {"value": 38.0, "reason": "no CSRF token", "expected_old": 37.0})
    assert status == 403
    assert plant.setpoints(BIO)["temperature"] == 37.0
    assert len(writes(trail)) == before  # none of these got as far as a write attempt

    status, _, body = operator.post(path, {"value": 38.0, "reason": "stale screen", "expected_old": 36.5})
    assert status == 409 and body["status"] == "Stale" and "37" in body["error"]
    status, _, body = operator.post(path, {"value": 45.0, "reason": "too hot", "expected_old": 37.0})
    assert status == 400 and body["status"] == "OutOfRange" and "[30, 40] degC" in body["error"]
    # Configured up to 400 mg, the plant allows 300: the server refuses and says so.
    status, _, body = operator.post(f"/api/setpoints/{PRESS}/target_weight",
                                    {"value": 350.0, "reason": "heavier tablets", "expected_old": 250.0})
    assert status == 502 and body["status"] == "BadOutOfRange", body
    assert plant.setpoints(BIO)["temperature"] == 37.0 and plant.setpoint_overrides(PRESS) == {}

    failed = writes(trail)[before:]
    assert [(r["actor"], r["details"]["result"], r["details"]["status"], r["reason"]) for r in failed] == [
        ("olga", "failed", "Stale", "stale screen"),
        ("olga", "failed", "OutOfRange", "too hot"),
        ("olga", "failed", "BadOutOfRange", "heavier tablets"),
    ]
    assert failed[0]["old"] == 37.0 and failed[0]["new"] == 38.0 and "36.5" in failed[0]["details"]["error"]
    assert verify_trail(trail.path).ok


def _page_callback(client: Client, trigger: str, pending: dict | None) -> dict:
    """The setpoints page's review/write callback, posted as dash-renderer posts it."""
    outputs = [("sp-pending", "data"), ("sp-confirm-box", "style"), ("sp-confirm-text", "children"),
               ("sp-result", "children")]
    payload = {
        "output": ".." + "...".join(f"{i}.{p}" for i, p in outputs) + "..",
        "outputs": [{"id": i, "property": p} for i, p in outputs],
        "inputs": [{"id": b, "property": "n_clicks", "value": 1 if b == trigger else 0}
                   for b in ("sp-review", "sp-confirm", "sp-cancel")],
        "changedPropIds": [f"{trigger}.n_clicks"],
        "state": [
            {"id": "sp-edit", "property": "data", "value": {"unit": BIO, "setpoint": "ph"}},
            {"id": "sp-new", "property": "value", "value": 7.1},
            {"id": "sp-reason", "property": "value", "value": "pH drift correction"},
            {"id": "sp-pending", "property": "data", "value": pending},
        ],
    }
    status, _, body = client.call("POST", "/setpoints/_dash-update-component", payload,
                                  headers={"X-CSRFToken": client.csrf})
    assert status == 200, body
    return body["response"]


def test_the_page_reviews_then_writes_and_checks_the_role_on_the_server(tower, plant) -> None:
    url, _, _, trail = tower
    operator, quality = Client(url), Client(url)
    operator.login("olga")
    quality.login("quinn")
    review = _page_callback(operator, "sp-review", None)
    pending = review["sp-pending"]["data"]
    assert pending == {"unit": BIO, "setpoint": "ph", "old": 7.05, "value": 7.1, "reason": "pH drift correction"}
    shown = json.dumps(review["sp-confirm-text"]["children"])
    assert "7.05 pH" in shown and "7.1 pH" in shown and "pH drift correction" in shown
    assert plant.setpoints(BIO)["ph"] == 7.05  # reviewing writes nothing

    refused = _page_callback(quality, "sp-confirm", pending)
    assert "Not allowed" in refused["sp-result"]["children"] and plant.setpoints(BIO)["ph"] == 7.05
    done = _page_callback(operator, "sp-confirm", pending)
    assert done["sp-result"]["children"].startswith("Written: ph of lyon.usp.bio1.br101 from 7.05 pH to 7.1 pH")
    assert plant.setpoints(BIO)["ph"] == 7.1
    assert writes(trail)[-1]["actor"] == "olga" and writes(trail)[-1]["new"] == 7.1
    # Confirming the same change again: the old value it was confirmed against is gone.
    again = _page_callback(operator, "sp-confirm", pending)
    assert "Not written (Stale)" in again["sp-result"]["children"]


def test_with_authentication_off_a_write_is_recorded_as_anonymous(tower, plant, tmp_path) -> None:
    """The demo (auth off): anyone on the loopback may write, still with a reason and a confirmed
    old value, and the record says nobody was authenticated."""
    from controltower.screen import create_app

    url, _, _, _ = tower
    status, _, body = Client(url).call("GET", f"/api/setpoints?unit={BIO}")  # the tower with auth on
    assert status == 401
    ctx_site = plant.site.model_copy(update={"screen": plant.site.screen.model_copy(
        update={"auth": AuthConfig(enabled=False)})})
    tags = ctx_site.tag_table()
    historian = DuckDbHistorian(tmp_path / "historian.duckdb")
    ctx = DemoContext(site=ctx_site, tags=tags, live=LiveState(tags), alerts=AlertBook(tags), historian=historian,
                      metrics=Metrics(), started_at=START)
    ctx.data_dir = tmp_path
    trail = AuditTrail(tmp_path / "audit.jsonl")
    app = create_app(ctx, security=WebSecurity(ctx_site.screen.auth, audit=trail))
    try:
        with WebServer(app, port=0) as web:
            status, _, body = Client(web.url).call("GET", f"/api/setpoints?unit={PRESS}")
            assert status == 200, body
            speed = next(r["value"] for r in body["setpoints"] if r["id"] == "speed")
            status, _, body = Client(web.url).call("POST", f"/api/setpoints/{PRESS}/speed",
                                                   {"value": 55.0, "reason": "demo", "expected_old": speed})
    finally:
        historian.close()
    assert status == 200, body
    assert plant.setpoints(PRESS)["speed"] == 55.0
    assert [(r["actor"], r["new"]) for r in writes(trail)] == [("anonymous (authentication off)", 55.0)]
