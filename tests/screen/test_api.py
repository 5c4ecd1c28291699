"""The JSON API and /metrics over real HTTP: WebServer on a free port, urllib as the client."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from controltower.api import BadParameter, parse_time, register_api
from controltower.webserver import WebServer
from tests.screen.conftest import NOW
from tests.screen.demo_context import BIO, FILL, TAB, plant_history


def get(url: str) -> tuple[int, str, object]:
    """(status, content type, parsed JSON or text) for GET url, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            status, ctype, body = resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        status, ctype, body = err.code, err.headers["Content-Type"], err.read()
    text = body.decode()
    return status, ctype, json.loads(text) if ctype.startswith("application/json") else text


@pytest.fixture
def api(ctx):
    ctx.feed(plant_history(ctx, NOW, seconds=900))
    ctx.event(NOW - timedelta(seconds=30), f"{FILL}.filler1.fill_weight", 2, 2.08, 2.06, reason="above alarm high")
    ctx.event(NOW - timedelta(seconds=300), f"{TAB}.press1.speed", 1, 71.0, 70.0)
    ctx.event(NOW - timedelta(seconds=200), f"{TAB}.press1.speed", 0, 50.0)
    ctx.metrics.samples_in.labels(source="plant-opcua").inc(9900)
    server = Flask("test-api")
    register_api(server, ctx, now=lambda: NOW)
    web = WebServer(server, port=0).start()
    try:
        yield ctx, web.url
    finally:
        web.stop()


def test_health_is_200_when_ok_and_503_when_degraded(api) -> None:
    ctx, url = api
    status, ctype, body = get(url + "/api/health")
    assert (status, ctype, body["status"]) == (200, "application/json", "ok")
    assert body["historian"]["name"] == "duckdb"
    ctx.status = "degraded"
    status, _, body = get(url + "/api/health")
    assert (status, body["status"]) == (503, "degraded")


def test_lines(api) -> None:
    _, url = api
    status, _, body = get(url + "/api/lines")
    assert status == 200 and body["generated_at"] == "2024-05-01T10:00:00.000Z"
    lines = {ln["id"]: ln for ln in body["lines"]}
    assert list(lines) == [BIO, TAB, FILL]
    assert lines[FILL] == {
        "id": FILL, "site": "lyon", "area": "ff", "line": "fill1", "name": "Aseptic filling line 1",
        "area_name": "Fill-finish", "site_name": "Lyon plant", "state": "alarm", "state_text": "alarm",
        "stale": False, "last_sample_time": "2024-05-01T10:00:00.000Z", "age_s": 0.0,
        "alerts": {"warning": 0, "alarm": 1}, "batch_ids": [],
    }
    assert lines[TAB]["state"] == "normal" and lines[BIO]["batch_ids"] == ["B-BR101-2405-017"]


def test_alerts_active_and_recent_with_line_filter(api) -> None:
    _, url = api
    status, _, body = get(url + "/api/alerts")
    assert status == 200
    assert [a["tag_id"] for a in body["active"]] == [f"{FILL}.filler1.fill_weight"]
    alarm = body["active"][0]
    assert alarm["severity"] == "alarm" and alarm["active"] is True and alarm["cleared_at"] is None
    assert alarm["raised_at"].startswith("2024-05-01T09:59:30") and alarm["eng_unit"] == "g"
    assert [a["tag_id"] for a in body["recent"]] == [f"{FILL}.filler1.fill_weight", f"{TAB}.press1.speed"]
    assert body["recent"][1]["active"] is False

    _, _, only_tab = get(url + "/api/alerts?line=" + TAB)
    assert only_tab["active"] == [] and [a["tag_id"] for a in only_tab["recent"]] == [f"{TAB}.press1.speed"]
    _, _, limited = get(url + "/api/alerts?limit=1")
    assert len(limited["recent"]) == 1

    status, _, body = get(url + "/api/alerts?line=lyon.ff.nope")
    assert status == 404 and "lyon.ff.nope" in body["error"]
    status, _, body = get(url + "/api/alerts?limit=many")
    assert status == 400 and body["error"].startswith("limit:")


def test_tag_history_default_window_and_explicit_times(api) -> None:
    _, url = api
    tag = f"{BIO}.br101.temperature"
    status, _, rows = get(f"{url}/api/tags/{tag}/history")
    assert status == 200 and len(rows) == 600  # the last 10 minutes at 1 Hz (until = now, exclusive)
    assert set(rows[0]) == {"ts", "value", "quality", "batch_id"}
    assert rows[0]["ts"] == "2024-05-01T09:50:00.000000Z" and rows[-1]["ts"] == "2024-05-01T09:59:59.000000Z"
    assert rows[0]["quality"] == "good" and rows[0]["batch_id"] == "B-BR101-2405-017"
    assert isinstance(rows[0]["value"], float)

    q = urllib.parse.urlencode({"since": "2024-05-01T09:58:00Z", "until": "2024-05-01T09:58:10+00:00"})
    _, _, rows = get(f"{url}/api/tags/{tag}/history?{q}")
    assert [r["ts"][11:19] for r in rows] == [f"09:58:0{i}" for i in range(10)]
    _, _, rows = get(f"{url}/api/tags/{tag}/history?since=-30s&until=-20s")
    assert len(rows) == 10 and rows[0]["ts"] == "2024-05-01T09:59:30.000000Z"
    _, _, rows = get(f"{url}/api/tags/{tag}/history?since=2024-05-01T09:59:58")  # naive = UTC
    assert len(rows) == 2


def test_tag_history_errors_name_what_was_wrong(api) -> None:
    _, url = api
    status, ctype, body = get(f"{url}/api/tags/{BIO}.br101.nope/history")
    assert (status, ctype) == (404, "application/json")
    assert body == {"error": f"unknown tag '{BIO}.br101.nope'"}
    tag = f"{BIO}.br101.temperature"
    status, _, body = get(f"{url}/api/tags/{tag}/history?since=yesterday")
    assert status == 400 and body["error"].startswith("since: 'yesterday' is not a time")
    status, _, body = get(f"{url}/api/tags/{tag}/history?until=soon")
    assert status == 400 and body["error"].startswith("until:")
    status, _, body = get(f"{url}/api/tags/{tag}/history?since=-1m&until=-2m")
    assert status == 400 and "since" in body["error"] and "before until" in body["error"]
    status, _, body = get(f"{url}/api/nothing/here")
    assert status == 404 and body["error"] == "no API route GET /api/nothing/here"


def test_metrics_is_prometheus_text(api) -> None:
    ctx, url = api
    status, ctype, text = get(url + "/metrics")
    assert status == 200 and ctype == ctx.metrics.content_type
    assert 'controltower_samples_in_total{source="plant-opcua"} 9900.0' in text
    assert "# TYPE controltower_alerts_active gauge" in text


def test_api_and_screen_share_one_server(ctx) -> None:
    """On the Dash app's server the API keeps its JSON 404s (Dash answers every other path)."""
    from controltower.screen import create_app

    with WebServer(create_app(ctx, clock=lambda: NOW), port=0) as web:
        status, ctype, body = get(web.url + "/api/nope")
        assert (status, body) == (404, {"error": "no API route GET /api/nope"})
        status, ctype, page = get(web.url + "/")
        assert status == 200 and ctype.startswith("text/html") and "Demo Pharma" in page
        status, _, body = get(web.url + "/api/lines")
        assert status == 200 and len(body["lines"]) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-10m", NOW - timedelta(minutes=10)),
        ("-30s", NOW - timedelta(seconds=30)),
        ("-1.5h", NOW - timedelta(minutes=90)),
        ("-2d", NOW - timedelta(days=2)),
        ("-250ms", NOW - timedelta(milliseconds=250)),
        ("2024-05-01T08:00:00Z", datetime(2024, 5, 1, 8, tzinfo=UTC)),
        ("2024-05-01T10:00:00+02:00", datetime(2024, 5, 1, 8, tzinfo=UTC)),
        ("2024-05-01 08:00:00", datetime(2024, 5, 1, 8, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


def test_parse_time_names_the_parameter() -> None:
    with pytest.raises(BadParameter, match="^since: '10 minutes' is not a time"):
        parse_time("10 minutes", NOW, name="since")
