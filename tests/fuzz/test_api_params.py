"""The HTTP API's parameters under generated input: the real Flask app (`create_app`, every /api
route of controltower/api.py and controltower/batch_api.py) through its test client, on the demo
scene in a real DuckDB historian (tests/screen/demo_context) with an alarm journal. Random query
strings (since, until, limit, view, line, tag, q, user, event, what, unit), random path segments
(tag ids, alert ids, units, batch ids) and random JSON (or not JSON) bodies for the POST routes
(ack, shelve, unshelve, suppress, unsuppress, deviations).

The property: never a 5xx; every answer is JSON; an error is `{"error": "<non-empty text>"}` with
a 4xx, and a 400 names the parameter or field it is about. Authentication is off here (its own
tests cover sessions and roles): this is about what the parameters can do to the routes.

Each rejection is counted by route, status and reason (the message with the quoted values taken
out): hypothesis `event()`s (pytest --hypothesis-show-statistics) and, when
CONTROLTOWER_FUZZ_REPORT names a file, one JSON object of counts written at the end.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from analytics.alerts import AlertBook
from analytics.journal import AlarmJournal
from tests.fuzz.strategies import FUZZ, json_values, nasty_text, reason_of, write_report
from tests.screen.demo_context import BATCHES, BIO, FILL, build_context, demo_scene

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
UNIT = f"{BIO}.br101"
TAG = f"{FILL}.filler1.fill_weight"
REJECTIONS: Counter[str] = Counter()

# Values that are nearly right, besides random text: relative and absolute times, numbers at and
# past the bounds, the names a parameter takes, and their near misses.
near_values = st.sampled_from([
    "", "now", "-10m", "-30s", "-2h", "-1d", "-0s", "+5m", "-99999999999d", "-1e9h", "10m", "-m", "--1m",
    "2026-11-29T09:55:00Z", "2026-11-29T09:55:00", "2026-11-29", "2026-13-40T25:61:00Z", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z", "1970-01-01T00:00:00+14:00", "2026-11-29T09:55:00.123456789Z",
    "0", "1", "-1", "50", "10000", "10001", "1" + "0" * 30, "1" * 5000, "1.5", "0x10", " 5", "nan", "inf",
    "alarms", "shelved", "suppressed", "recent", "ALARMS", "samples", "envelope", "ack", "shelve",
    "lyon.usp.bio1", "lyon.ff.fill1", "lyon", "lyon.usp.bio1.br101", TAG, "lyon.*", "%", "_", "'", '"', "\\",
    "operator", "alarm.ack", "'; DROP TABLE samples; --", "\" OR 1=1 --", "/**/", "\x00",
])
param_values = st.one_of(near_values, nasty_text, st.integers().map(str), st.text(max_size=40))
GET_PARAMS = ["since", "until", "limit", "view", "line", "tag", "q", "user", "event", "what", "unit"]
query = st.dictionaries(st.sampled_from(GET_PARAMS), param_values, max_size=6)

segment = st.one_of(st.sampled_from([TAG, UNIT, "lyon.usp.bio1.br101.ph", "B-BR101-2405-017", BATCHES[UNIT],
                                     "nope", "..", ".", "%2F", "a/b"]), nasty_text, st.text(max_size=30))
GET_ROUTES = [
    ("alerts", lambda s: "/api/alerts"),
    ("alarms", lambda s: "/api/alarms"),
    ("journal", lambda s: "/api/journal"),
    ("lines", lambda s: "/api/lines"),
    ("health", lambda s: "/api/health"),
    ("tag history", lambda s: f"/api/tags/{s[0]}/history"),
    ("alert", lambda s: f"/api/alerts/{s[0]}"),
    ("batches", lambda s: "/api/batches"),
    ("batch review", lambda s: f"/api/batches/{s[0]}/{s[1]}"),
    ("batch csv", lambda s: f"/api/batches/{s[0]}/{s[1]}/data.csv"),
    ("batch report", lambda s: f"/api/batches/{s[0]}/{s[1]}/report.html"),
]
POST_ROUTES = [
    ("ack", lambda s: f"/api/alerts/{s[0]}/ack"),
    ("shelve", lambda s: f"/api/alerts/{s[0]}/shelve"),
    ("unshelve", lambda s: f"/api/alerts/{s[0]}/unshelve"),
    ("suppress", lambda s: f"/api/tags/{s[0]}/suppress"),
    ("unsuppress", lambda s: f"/api/tags/{s[0]}/unsuppress"),
    ("deviations", lambda s: f"/api/batches/{s[0]}/{s[1]}/deviations"),
]
BODY_FIELDS = ["user", "comment", "minutes", "reason", "classification", "meaning", "password", "at", "tags",
               "supersedes"]
field_values = st.one_of(json_values, near_values, st.sampled_from([30, 0, -1, 720, 721, 1e308, True, None, [TAG]]))
bodies = st.one_of(
    st.dictionaries(st.sampled_from(BODY_FIELDS), field_values, max_size=6).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
    st.just(b""),
)
# What a 400 may name: the parameters and body fields, and the words the routes use for them.
NAMES = (*GET_PARAMS, *BODY_FIELDS, "body", "tag", "alert", "unit", "batch", "time", "deviation", "JSON")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from controltower.screen import create_app

    root = tmp_path_factory.mktemp("api-fuzz")
    ctx = build_context(root, started_at=NOW - timedelta(hours=1))
    ctx.site = ctx.site.model_copy(update={"screen": ctx.site.screen.model_copy(
        update={"auth": ctx.site.screen.auth.model_copy(update={"enabled": False})})})
    ctx.alerts = AlertBook(ctx.tags, journal=AlarmJournal(root / "alarm_journal.jsonl"), clock=lambda: NOW)
    ctx.data_dir = root
    demo_scene(ctx, NOW)
    app = create_app(ctx, clock=lambda: NOW)
    ids = [a["id"] for a in app.server.test_client().get("/api/alarms?view=recent").get_json()["alarms"]]
    assert ids, "the demo scene raises alerts"
    yield app.server.test_client(), ids
    ctx.historian.close()
    write_report(REJECTIONS)


def check(route: str, response) -> None:
    assert response.status_code < 500, (route, response.status_code, response.get_data()[:500])
    if response.status_code == 308:
        # A %2F in a path segment decodes to "/", and werkzeug's merge_slashes answers "//" with a
        # redirect to the merged path (its own HTML page, not JSON): counted, not an error.
        assert "//" in response.request.path, response.request.path
        REJECTIONS[f"{route} 308 redirect: empty path segment merged by werkzeug"] += 1
        event(f"{route} 308 redirect")
        return
    if route in ("batch csv", "batch report") and response.status_code == 200:
        return  # a download, not JSON
    body = json.loads(response.get_data())
    if response.status_code >= 400:
        assert 400 <= response.status_code < 500
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
        if response.status_code == 400:
            assert any(name.lower() in body["error"].lower() for name in NAMES), body["error"]
        kind = f"{route} {response.status_code} {reason_of(body['error'])}"
        REJECTIONS[kind] += 1
        event(kind)
    else:
        REJECTIONS[f"{route} {response.status_code} accepted"] += 1
        event(f"{route} {response.status_code}")


def _segments(raw: list[str], ids: list[str], pick_id: int) -> list[str]:
    values = [ids[pick_id % len(ids)] if v == "<alert>" else v for v in raw]
    return [quote(v, safe="") for v in values]


@FUZZ
@given(route=st.sampled_from(GET_ROUTES), params=query, raw=st.lists(segment | st.just("<alert>"), min_size=2,
                                                                      max_size=2), pick=st.integers(0, 100))
@example(route=GET_ROUTES[0], params={"limit": "1" * 5000}, raw=["x", "y"], pick=0)
@example(route=GET_ROUTES[5], params={"since": "-99999999999d"}, raw=[TAG, "y"], pick=0)
@example(route=GET_ROUTES[9], params={"what": "\x00", "since": "0001-01-01T00:00:00Z"}, raw=[UNIT, BATCHES[UNIT]],
         pick=0)
@example(route=GET_ROUTES[8], params={"until": "9999-12-31T23:59:59Z"}, raw=[UNIT, "x"], pick=0)  # was a 500
@example(route=GET_ROUTES[7], params={"unit": UNIT, "until": "9999-12-31T23:59:59.5Z"}, raw=["x", "y"], pick=0)
def test_get_parameters(client, route, params: dict, raw: list[str], pick: int) -> None:
    test_client, ids = client
    name, path = route
    check(name, test_client.get(path(_segments(raw, ids, pick)), query_string=params))


@FUZZ
@given(route=st.sampled_from(GET_ROUTES), raw_query=st.text(max_size=80) | st.binary(max_size=80).map(
    lambda b: "".join(f"%{c:02X}" for c in b)))
def test_raw_query_strings(client, route, raw_query: str) -> None:
    test_client, _ = client
    name, path = route
    check(name, test_client.get(path([quote(TAG, safe=""), quote(BATCHES[UNIT], safe="")]), query_string=raw_query))


@FUZZ
@given(route=st.sampled_from(POST_ROUTES), body=bodies, params=query,
       raw=st.lists(segment | st.just("<alert>"), min_size=2, max_size=2), pick=st.integers(0, 100))
@example(route=POST_ROUTES[1], body=b'{"user": "olga", "minutes": 1e308, "reason": "x"}', params={},
         raw=["<alert>", "y"], pick=0)
@example(route=POST_ROUTES[5], body=b'{"classification": [], "at": "2026-13-40"}', params={},
         raw=[UNIT, BATCHES[UNIT]], pick=0)
@example(route=POST_ROUTES[5], body=b'{}', params={"until": "9999-12-31T23:59:59Z"}, raw=[UNIT, BATCHES[UNIT]], pick=0)
@example(route=POST_ROUTES[0], body=b"", params={}, raw=["/\n", TAG], pick=0)  # a redirect, not JSON
def test_post_bodies(client, route, body: bytes, params: dict, raw: list[str], pick: int) -> None:
    test_client, ids = client
    name, path = route
    check(name, test_client.post(path(_segments(raw, ids, pick)), data=body, query_string=params,
                                 content_type="application/json"))
