"""The alarm actions and the journal through the JSON API, over real HTTP (WebServer on a free
port, urllib as the client), on a context of real parts with a journalled AlertBook."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest
from flask import Flask

from analytics.alerts import AlertBook, PriorityMap
from analytics.journal import AlarmJournal
from controltower.api import register_api
from controltower.webserver import WebServer
from tests.screen.conftest import NOW
from tests.screen.demo_context import BIO, FILL, TAB

FW = f"{FILL}.filler1.fill_weight"
TW = f"{TAB}.press1.tablet_weight"


def call(url: str, body: object = None, *, method: str | None = None, raw: bytes | None = None) -> tuple[int, object]:
    """(status, parsed JSON) of a request; a body is sent as JSON (POST)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def journalled(ctx, tmp_path) -> AlarmJournal:
    """Give the context a book with a journal (and the fill weight critical), as the runtime does."""
    journal = AlarmJournal(tmp_path / "alarm_journal.jsonl")
    ctx.alerts = AlertBook(ctx.tags, journal=journal, clock=lambda: NOW,
                           priority=PriorityMap({FW: {"alarm": "critical"}}))
    return journal


@pytest.fixture
def api(ctx, tmp_path):
    journal = journalled(ctx, tmp_path)
    ctx.event(NOW - timedelta(seconds=30), FW, 2, 2.08, 2.06, reason="above alarm high")
    ctx.event(NOW - timedelta(seconds=300), TW, 1, 259.0, 257.5)
    ctx.event(NOW - timedelta(seconds=200), TW, 0, 250.0)
    server = Flask("test-console-api")
    register_api(server, ctx, now=lambda: NOW)
    web = WebServer(server, port=0).start()
    try:
        ids = {a.tag_id: a.id for a in ctx.alerts.alarm_list()}
        yield ctx, web.url, ids
    finally:
        web.stop()
        journal.close()


def alarm_list(url: str, view: str = "alarms") -> list[dict]:
    status, body = call(f"{url}/api/alarms?view={view}")
    assert status == 200 and body["view"] == view
    return body["alarms"]


def test_alerts_carry_state_priority_and_the_alarm_list(api) -> None:
    _, url, ids = api
    status, body = call(url + "/api/alerts")
    assert status == 200 and set(body) == {"active", "recent"}
    assert [a["tag_id"] for a in body["active"]] == [FW]
    listed = alarm_list(url)
    assert [(a["tag_id"], a["state"], a["priority"]) for a in listed] == [
        (FW, "active-unacknowledged", "critical"), (TW, "cleared-unacknowledged", "medium")]
    for key in ("acknowledged_by", "acknowledged_at", "shelved_until", "shelve_reason", "grouped_under"):
        assert listed[0][key] is None
    assert alarm_list(url, "shelved") == [] and len(alarm_list(url, "recent")) == 2
    assert [a["tag_id"] for a in call(f"{url}/api/alarms?line={TAB}")[1]["alarms"]] == [TW]
    assert call(f"{url}/api/alarms?view=all") == (
        400, {"error": "view: 'all' is not one of alarms, shelved, suppressed, recent"})
    assert call(f"{url}/api/alarms?line=x.y.z")[0] == 404
    status, one = call(f"{url}/api/alerts/{ids[FW]}")
    assert status == 200 and one["alert"]["id"] == ids[FW]
    assert call(f"{url}/api/alerts/nope") == (404, {"error": "unknown alert 'nope'"})


def test_acknowledge_then_again_is_a_conflict(api) -> None:
    _, url, ids = api
    status, body = call(f"{url}/api/alerts/{ids[TW]}/ack", {"user": "ana", "comment": "press reset"})
    assert status == 200
    assert body["alert"]["state"] == "normal" and body["alert"]["acknowledged_by"] == "ana"
    assert body["alert"]["acknowledged_at"] == "2024-05-01T10:00:00Z" and body["alert"]["ack_comment"] == "press reset"
    status, body = call(f"{url}/api/alerts/{ids[TW]}/ack", {"user": "bob"})
    assert status == 409 and body["error"].startswith(f"alert {ids[TW]} is already acknowledged (by ana")
    assert [a["tag_id"] for a in alarm_list(url)] == [FW]


@pytest.mark.parametrize(
    ("path", "body", "raw", "expected"),
    [
        ("ack", {}, None, "user: required"),
        ("ack", {"user": 7}, None, "user: required"),
        ("ack", {"user": "ana", "comment": ["x"]}, None, "comment: expected a string, got list"),
        ("ack", None, b"{not json", "body: not valid JSON"),
        ("ack", None, b"[1, 2]", "body: expected a JSON object, got list"),
        ("shelve", {"user": "ana", "reason": "x"}, None, "minutes: required"),
        ("shelve", {"user": "ana", "minutes": 0, "reason": "x"}, None, "minutes: must be a number above 0 and at most 720"),
        ("shelve", {"user": "ana", "minutes": 721, "reason": "x"}, None, "minutes: must be a number above 0"),
        ("shelve", {"user": "ana", "minutes": "30", "reason": "x"}, None, "minutes: must be a number"),
        ("shelve", {"user": "ana", "minutes": 30}, None, "reason: required"),
        ("shelve", {"minutes": 30, "reason": "x"}, None, "user: required"),
        ("unshelve", {}, None, "user: required"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(api, path, body, raw, expected) -> None:
    _, url, ids = api
    status, reply = call(f"{url}/api/alerts/{ids[FW]}/{path}", body if raw is None else None, raw=raw,
                         method="POST")
    assert status == 400 and reply["error"].startswith(expected), reply


def test_shelve_unshelve_and_their_conflicts(api) -> None:
    _, url, ids = api
    status, body = call(f"{url}/api/alerts/{ids[FW]}/unshelve", {"user": "ana"})
    assert status == 409 and body["error"] == f"alert {ids[FW]} is not shelved"
    status, body = call(f"{url}/api/alerts/{ids[FW]}/shelve", {"user": "ana", "minutes": 45, "reason": "scale swap"})
    assert status == 200
    assert body["alert"]["shelved_until"] == "2024-05-01T10:45:00Z" and body["alert"]["shelve_reason"] == "scale swap"
    assert body["alert"]["shelved"] is True and body["alert"]["state"] == "active-unacknowledged"
    assert [a["tag_id"] for a in alarm_list(url, "shelved")] == [FW] and call(url + "/api/alerts")[1]["active"] == []
    assert FW not in [a["tag_id"] for a in alarm_list(url)]
    status, body = call(f"{url}/api/alerts/{ids[FW]}/shelve", {"user": "bob", "minutes": 5, "reason": "again"})
    assert status == 409 and "already shelved until 2024-05-01T10:45:00Z" in body["error"]
    status, body = call(f"{url}/api/alerts/{ids[FW]}/unshelve", {"user": "bob", "comment": "swap done"})
    assert status == 200 and body["alert"]["shelved_until"] is None
    for action in ("ack", "shelve", "unshelve"):
        status, body = call(f"{url}/api/alerts/0000/{action}", {"user": "ana", "minutes": 5, "reason": "r"})
        assert (status, body) == (404, {"error": "unknown alert '0000'"})
    status, body = call(f"{url}/api/alerts/{ids[FW]}/ack", method="GET")
    assert (status, body) == (404, {"error": f"no API route GET /api/alerts/{ids[FW]}/ack"})


def test_suppress_and_unsuppress_a_tag(api) -> None:
    _, url, _ = api
    status, body = call(f"{url}/api/tags/{FW}/suppress", {"user": "eng", "reason": "load cell replaced"})
    assert (status, body) == (200, {"tag_id": FW, "suppressed": True, "reason": "load cell replaced"})
    assert call(url + "/api/alerts")[1]["active"] == [] and [a["tag_id"] for a in alarm_list(url)] == [TW]
    assert [a["tag_id"] for a in alarm_list(url, "suppressed")] == [FW]
    status, body = call(f"{url}/api/tags/{FW}/suppress", {"user": "eng", "reason": "again"})
    assert status == 409 and "already out of service" in body["error"]
    status, body = call(f"{url}/api/tags/{BIO}.br101.nope/suppress", {"user": "eng", "reason": "x"})
    assert (status, body) == (404, {"error": f"unknown tag '{BIO}.br101.nope'"})
    status, body = call(f"{url}/api/tags/{FW}/unsuppress", {"user": "eng"})
    assert (status, body) == (200, {"tag_id": FW, "suppressed": False})


def test_journal_search_over_http(api) -> None:
    _, url, ids = api
    call(f"{url}/api/alerts/{ids[FW]}/ack", {"user": "ana", "comment": "Scale drift, calling QA"})
    status, body = call(url + "/api/journal")
    assert status == 200
    events = [(e["event"], e["tag_id"]) for e in body["entries"]]
    assert events[0] == ("acknowledged", FW) and ("raised", TW) in events and ("cleared", TW) in events
    entry = body["entries"][0]
    assert entry["user"] == "ana" and entry["from_state"] == "active-unacknowledged"
    assert entry["to_state"] == "active-acknowledged" and entry["ts"] == "2024-05-01T10:00:00.000Z"

    def search(**params):
        return call(url + "/api/journal?" + urllib.parse.urlencode(params))

    assert [e["event"] for e in search(q="calling qa")[1]["entries"]] == ["acknowledged"]
    assert {e["tag_id"] for e in search(tag=TAB)[1]["entries"]} == {TW}
    assert [e["event"] for e in search(tag=TW, since="-250s")[1]["entries"]] == ["cleared"]
    assert [e["event"] for e in search(until="2024-05-01T09:56:00Z")[1]["entries"]] == ["raised"]
    assert [e["user"] for e in search(user="ANA")[1]["entries"]] == ["ana"]
    assert len(search(limit=1)[1]["entries"]) == 1
    for params, expected in [({"since": "soon"}, "since:"), ({"limit": 0}, "limit: must be between 1"),
                             ({"since": "-1m", "until": "-2m"}, "since (2024"), ({"event": "x"}, "event: 'x' is not one")]:
        status, body = search(**params)
        assert status == 400 and body["error"].startswith(expected), body


def test_journal_is_503_when_the_tower_keeps_none(ctx) -> None:
    server = Flask("no-journal")
    register_api(server, ctx, now=lambda: NOW)
    with WebServer(server, port=0) as web:
        status, body = call(web.url + "/api/journal")
    assert status == 503 and "no alarm journal" in body["error"]
