"""The batch review API over real HTTP, with authentication on: the whole app (create_app with
WebSecurity) on a free port, a DuckDB historian of simulated bioreactor batches, a golden-batch
model in the tower's model store, a real users file and audit trail."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from urllib.parse import quote

import pytest

from analytics.alerts import AlertBook
from analytics.journal import AlarmJournal
from analytics.models import ModelStore, fit_unit_model
from collector.sinks.duckdb import DuckDbHistorian
from controltower.audit import AuditTrail, verify_trail
from controltower.auth import LoginThrottle, UserStore
from controltower.live import LiveState
from controltower.metrics import Metrics
from controltower.site import AuthConfig
from controltower.websecurity import WebSecurity
from controltower.webserver import WebServer
from tests.analytics.simulated_unit import START, UNIT, batch_seconds, bioreactor_site, simulate
from tests.screen.demo_context import DemoContext
from tests.screen.test_auth_http import PASSWORDS, Client

BATCH_S = batch_seconds(bioreactor_site())
NOW = START + timedelta(seconds=6.2 * BATCH_S)
PH = f"{UNIT}.ph"
BATCH = "BR101-0006"


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    from controltower.screen import create_app

    root = tmp_path_factory.mktemp("batch-api")
    site = bioreactor_site(str(root))
    config = AuthConfig(enabled=True, max_failed_logins=5, lockout_s=60)
    site = site.model_copy(update={"screen": site.screen.model_copy(update={"auth": config})})
    tags = site.tag_table()
    historian = DuckDbHistorian(root / "historian.duckdb")
    historian.write_sync(simulate(site, seed=31, seconds=6.2 * BATCH_S, faults=[(5 * BATCH_S + 1500, "ph", "bias", 900.0, 0.05)]))
    good = historian.read([t.tag_id for t in tags], START, NOW)
    good = good.filter(good["batch_id"].is_in([f"BR101-{n:04d}" for n in range(2, 5)]))
    ModelStore(site.resolve_path(site.detectors.models.dir, root)).save(
        fit_unit_model("golden", good, unit=UNIT, variables=tuple(sorted(good["tag_id"].unique())),
                       training={"batches": [f"BR101-{n:04d}" for n in range(2, 5)]}))
    ctx = DemoContext(site=site, tags=tags, live=LiveState(tags),
                      alerts=AlertBook(tags, journal=AlarmJournal(root / "alarm_journal.jsonl")),
                      historian=historian, metrics=Metrics(), started_at=NOW)
    ctx.data_dir = root  # where the tower keeps its model store and deviation log
    users = UserStore(root / "users.yaml")
    for name, role in (("olga", "operator"), ("quinn", "quality_engineer"), ("adam", "administrator")):
        users.add(name, role, PASSWORDS[name])
    trail = AuditTrail(root / "audit.jsonl")
    security = WebSecurity(config, users=users, audit=trail, throttle=LoginThrottle(5, 60, 60))
    app = create_app(ctx, clock=lambda: NOW, security=security)
    with WebServer(app, port=0) as web:
        yield web.url, trail, root
    historian.close()


def path(*parts: str) -> str:
    return "/api/batches/" + "/".join(quote(p, safe="") for p in parts)


def test_batches_need_a_session_and_the_batch_review_permission(tower) -> None:
    url, _, _ = tower
    status, _, body = Client(url).call("GET", f"/api/batches?unit={UNIT}&since=2024-05-01T00:00:00Z")
    assert status == 401
    operator = Client(url)
    operator.login("olga")
    status, _, body = operator.call("GET", f"/api/batches?unit={UNIT}&since=2024-05-01T00:00:00Z")
    assert status == 403 and "batch.review" in body["error"]


def test_a_quality_engineer_lists_and_reviews_a_batch(tower) -> None:
    url, _, _ = tower
    qe = Client(url)
    qe.login("quinn")
    status, _, body = qe.call("GET", f"/api/batches?unit={UNIT}&since=2024-05-01T00:00:00Z")
    assert status == 200, body
    assert [b["batch_id"] for b in body["batches"]][:3] == ["BR101-0007", BATCH, "BR101-0005"]
    status, _, review = qe.call("GET", path(UNIT, BATCH) + "?since=2024-05-01T00:00:00Z")
    assert status == 200, review
    assert review["model"]["version"] == 1 and review["verdict"]["envelope_alarms"] > 20
    assert {e["tag_id"] for e in review["excursions"]} == {PH}
    for bad, code in [(path(UNIT, "BR101-9999") + "?since=2024-05-01T00:00:00Z", 404),
                      (path("lyon.usp.bio1.nope", BATCH), 404),
                      (f"/api/batches?unit={UNIT}&since=yesterday-ish", 400),
                      ("/api/batches", 400)]:
        status, _, body = qe.call("GET", bad)
        assert status == code and body["error"], (bad, body)


def test_a_deviation_record_is_signed_with_the_password_and_audited(tower) -> None:
    url, trail, _ = tower
    qe = Client(url)
    qe.login("quinn")
    record = {"classification": "major", "meaning": "reviewed", "comment": "pH probe bias; recalibrated",
              "tags": [PH], "at": "2024-05-01T05:55:00Z"}
    status, _, body = qe.post(path(UNIT, BATCH, "deviations") + "?since=2024-05-01T00:00:00Z", record)
    assert status == 400 and "password" in body["error"]
    status, _, body = qe.post(path(UNIT, BATCH, "deviations") + "?since=2024-05-01T00:00:00Z",
                              record | {"password": "not-my-password"})
    assert status == 403 and "signature" in body["error"]
    status, _, body = qe.post(path(UNIT, BATCH, "deviations") + "?since=2024-05-01T00:00:00Z",
                              record | {"password": PASSWORDS["quinn"]})
    assert status == 201, body
    signed = body["deviation"]
    assert signed["signed_by"] == "quinn" and signed["signed_name"] == "quinn (quality engineer)"
    assert signed["at"] == "2024-05-01T05:55:00.000Z" and signed["tags"] == [PH]
    # Someone else cannot sign in quinn's name, and an operator cannot sign at all.
    status, _, body = qe.post(path(UNIT, BATCH, "deviations") + "?since=2024-05-01T00:00:00Z",
                              record | {"password": PASSWORDS["quinn"], "user": "adam"})
    assert status == 403
    operator = Client(url)
    operator.login("olga")
    status, _, body = operator.post(path(UNIT, BATCH, "deviations") + "?since=2024-05-01T00:00:00Z",
                                    record | {"password": PASSWORDS["olga"]})
    assert status == 403
    # A record without the CSRF token is refused before anything is written.
    status, _, _ = qe.call("POST", path(UNIT, BATCH, "deviations"), record | {"password": PASSWORDS["quinn"]})
    assert status == 403

    status, _, review = qe.call("GET", path(UNIT, BATCH) + "?since=2024-05-01T00:00:00Z")
    assert [d["id"] for d in review["deviations"]] == [signed["id"]]
    actions = [(r["actor"], r["action"]) for r in map(json.loads, trail.path.read_text().splitlines())]
    assert ("quinn", "deviation.record") in actions and ("quinn", "signature.failed") in actions
    assert verify_trail(trail.path).ok


def test_the_report_and_the_data_download(tower) -> None:
    url, trail, _ = tower
    qe = Client(url)
    qe.login("quinn")
    status, headers, page = qe.call("GET", path(UNIT, BATCH, "report.html") + "?since=2024-05-01T00:00:00Z")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert f'filename="{BATCH}-report.html"' in headers["Content-Disposition"]
    assert f"Batch deviation report: {BATCH}" in page and "by quinn" in page
    status, headers, text = qe.call("GET", path(UNIT, BATCH, "data.csv") + "?since=2024-05-01T00:00:00Z&what=envelope")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and {"ts", "tag_id", "value", "mean", "low", "high", "z", "outside"} <= set(rows[0])
    status, _, body = qe.call("GET", path(UNIT, BATCH, "data.csv") + "?since=2024-05-01T00:00:00Z&what=all")
    assert status == 400 and "what" in body["error"]
    assert "batch.report" in trail.path.read_text()
