"""The line page without a browser: its queries (trends, anomaly score, batches), the full
figures then Patch increments, and how many bytes a refresh is next to the full figures."""

from __future__ import annotations

import json
from datetime import timedelta

import plotly
import polars as pl
import pytest
from dash import Patch, no_update

from controltower.screen import line, shell
from controltower.screen import queries as q
from tests.screen.conftest import NOW
from tests.screen.demo_context import BIO, FILL, demo_scene

UNITS = [f"{BIO}.br101"]  # the demo's bioreactor line has one unit


def _json_bytes(value) -> int:
    if isinstance(value, Patch):
        value = value.to_plotly_json()
    return len(json.dumps(value, cls=plotly.utils.PlotlyJSONEncoder).encode())


def test_line_info_and_unknown_line(ctx) -> None:
    info = q.line_info(ctx, BIO)
    assert info["line_name"] and [u["unit_id"] for u in info["units"]] == UNITS
    try:
        q.line_info(ctx, "lyon.usp.nope")
    except q.UnknownLineError as exc:
        assert "lyon.usp.nope" in str(exc)
    else:
        raise AssertionError("an unknown line must raise")


def test_line_trends_downsample_score_and_batches(ctx) -> None:
    demo_scene(ctx, NOW)
    trends = q.line_trends(ctx, BIO, NOW, 600, points=100)
    assert set(trends.tags["unit_id"]) == set(UNITS)
    per_tag = trends.samples.group_by("tag_id").len()
    assert per_tag["len"].max() == 100 and per_tag.height == trends.tags.height
    # The anomaly score: the rolling z-score of the unit, with the engine's threshold as its limit.
    assert trends.anomaly.limit == ctx.site.detectors.zscore.threshold
    assert set(trends.anomaly.scores["unit_id"]) == set(UNITS)
    assert trends.anomaly.scores["score"].min() >= 0
    # The bioreactor's batch (the demo's samples carry it), none for the room.
    assert trends.batches.select("unit_id", "batch_id").rows() == [(f"{BIO}.br101", "B-BR101-2405-017")]
    assert q.line_trends(ctx, FILL, NOW, 600).batches.is_empty()
    assert trends.spacing_s == 1.0


def test_anomaly_score_crosses_its_limit_on_a_step(ctx) -> None:
    demo_scene(ctx, NOW)
    unit = f"{BIO}.br101"
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=s), f"{unit}.ph", 7.6) for s in (1, 2)]))
    trends = q.line_trends(ctx, BIO, NOW + timedelta(seconds=3), 600)
    scores = trends.anomaly.scores.filter(pl.col("unit_id") == unit)
    assert scores["score"].tail(2).min() > trends.anomaly.limit
    assert scores.filter(pl.col("ts") < NOW - timedelta(seconds=60))["score"].max() < trends.anomaly.limit


def test_batch_intervals_split_on_a_new_batch() -> None:
    t0 = NOW
    raw = pl.DataFrame({
        "tag_id": ["l.a.b.u1.x"] * 6 + ["l.a.b.u2.y"] * 2,
        "ts": [t0 + timedelta(seconds=s) for s in (0, 1, 2, 3, 4, 5, 0, 1)],
        "batch_id": ["B1", "B1", None, "B2", "B2", "B2", None, None],
    })
    got = q.batch_intervals(raw)
    assert got.select("unit_id", "batch_id").rows() == [("l.a.b.u1", "B1"), ("l.a.b.u1", "B2")]
    assert got["start"].to_list()[1] == t0 + timedelta(seconds=3) and got["end"].to_list()[1] == t0 + timedelta(seconds=5)


def test_full_figures_then_small_patches(ctx) -> None:
    demo_scene(ctx, NOW)
    figures, state, caption = line.line_update(ctx, BIO, UNITS, None, NOW)
    assert all(isinstance(f, dict) for f in figures) and "anomaly score: z-score" in caption
    br101 = figures[0]
    names = [t.tag.id for t in ctx.tags if t.unit_id == UNITS[0]]
    assert names[:5] == ["temperature", "ph", "dissolved_oxygen", "agitation", "pressure"]
    assert [t["name"] for t in br101["data"]] == [*names, "anomaly score"]
    labels = {a["text"] for a in br101["layout"]["annotations"]}
    assert {"HH 39", "H 38", "L 36", "LL 35", "UCL 8", "▮ B-BR101-2405-017"} <= labels
    assert br101["layout"]["xaxis"]["range"] == [int((NOW - timedelta(minutes=10)).timestamp() * 1000),
                                                 int(NOW.timestamp() * 1000)]
    # Same time: nothing to send.
    assert line.line_update(ctx, BIO, UNITS, state, NOW) == ([no_update], no_update, no_update)

    # One new sample per tag, a tick later: Patches that append it and slide the axis.
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=1), t.tag_id, 1.0) for t in ctx.tags if t.line_id == BIO],
                         {f"{BIO}.br101": "B-BR101-2405-017"}))
    patches, state2, caption2 = line.line_update(ctx, BIO, UNITS, state, NOW + timedelta(seconds=2))
    assert all(isinstance(p, Patch) for p in patches) and caption2 is no_update
    ops = patches[0].to_plotly_json()["operations"]
    extends = [op for op in ops if op["operation"] == "Extend"]
    # The sample at NOW (the first read ended just before it) and the new one; no overlap.
    assert extends[0]["params"]["value"] == [int(NOW.timestamp() * 1000), int(NOW.timestamp() * 1000) + 1000]
    assert extends[1]["params"]["value"][-1] == 1.0
    # 1 Hz up to NOW, NOW excluded: 599 samples per tag, LTTB-downsampled to the page's points.
    assert sum(len(t["x"]) for t in br101["data"][:-1]) == len(names) * min(599, q.LINE_TREND_POINTS)
    assert state2["until"] > state["until"]
    # The refresh is a small fraction of the full figures (themselves LTTB-downsampled: 300 points per tag).
    full, inc = _json_bytes(figures), _json_bytes(patches)
    assert inc * 25 < full, (inc, full)

    # A new batch on a unit redraws the figures (its shading); so does age.
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=2), t.tag_id, 1.0) for t in ctx.tags if t.unit_id == UNITS[0]],
                         {UNITS[0]: "B-BR101-2405-018"}))
    redrawn, _, _ = line.line_update(ctx, BIO, UNITS, state2, NOW + timedelta(seconds=3))
    assert all(isinstance(f, dict) for f in redrawn)
    old, _, _ = line.line_update(ctx, BIO, UNITS, state2, NOW + timedelta(minutes=5))
    assert all(isinstance(f, dict) for f in old)


def test_line_status_shows_state_alarms_by_priority_and_batches(ctx) -> None:
    demo_scene(ctx, NOW)
    s = line.line_status(ctx, NOW, FILL, None)
    text = str(s["head"])
    assert "ALARM" in text and "1 high" in text and "ACTIVE · UNACK" in text
    assert line.line_status(ctx, NOW, FILL, s["key"])["head"] is no_update


def test_critical_cue_flashes_until_seen(ctx) -> None:
    from analytics.alerts import PriorityMap

    ctx.alerts.set_priority(PriorityMap({f"{FILL}.filler1.fill_weight": {"alarm": "critical"}}))
    assert shell.critical_cue(ctx, NOW, [], [], None)["class"] == "critical-banner"
    demo_scene(ctx, NOW)
    cue = shell.critical_cue(ctx, NOW, [], [], None)
    assert cue["class"] == "critical-banner critical-banner-on critical-banner-new"
    assert cue["text"] == "1 unacknowledged CRITICAL alarm (1 new)" and cue["new"]["ids"] == cue["now"]
    seen = shell.critical_cue(ctx, NOW, cue["now"], cue["now"], None)
    assert seen["class"] == "critical-banner critical-banner-on" and seen["new"] is None
    ctx.alerts.acknowledge(cue["now"][0], "ana", "")
    assert shell.critical_cue(ctx, NOW, cue["now"], cue["now"], None)["class"] == "critical-banner"


def test_incremental_scores_equal_scoring_from_scratch(ctx) -> None:
    """A refresh continues the carried scorer (or rebuilds it from its look-back when another
    refresh came between): either way its scores are those of scoring the whole history."""
    demo_scene(ctx, NOW)
    full = q.line_trends(ctx, BIO, NOW, 600)
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=s), t.tag_id, 37.0 + s / 10) for s in (1, 2)
                          for t in ctx.tags if t.line_id == BIO]))
    end = NOW + timedelta(seconds=3)
    tags = [t for t in ctx.tags if t.line_id == BIO]
    everything = q.unit_anomaly(ctx, ctx.historian.read([t.tag_id for t in tags], NOW - timedelta(minutes=10), end),
                                tags).scores.filter(pl.col("ts") >= NOW)
    carried = q.line_trends(ctx, BIO, end, 600, since=NOW, spacing_s=full.spacing_s).anomaly.scores
    q._SCORERS.clear()
    rebuilt = q.line_trends(ctx, BIO, end, 600, since=NOW, spacing_s=full.spacing_s).anomaly.scores
    assert everything.height == 3 and everything["score"].max() > 0
    for got in (carried, rebuilt):
        assert got["ts"].to_list() == everything["ts"].to_list()
        assert got["score"].to_list() == pytest.approx(everything["score"].to_list(), rel=1e-9)


def test_refresh_response_over_http_is_small_next_to_the_first_render(ctx) -> None:
    """The real callback round trip (POST /_dash-update-component, as the browser sends it):
    the refresh's response bytes are a small fraction of the first render's."""
    from controltower.screen import create_app, ids

    demo_scene(ctx, NOW)
    clock = {"now": NOW}
    app = create_app(ctx, clock=lambda: clock["now"])
    client = app.server.test_client()
    key = next(k for k in app.callback_map if ids.LINE_TREND_STATE in k)
    outputs = [[{"id": {"type": ids.LINE_UNIT_GRAPH, "unit": u}, "property": "figure"} for u in UNITS],
               {"id": ids.LINE_TREND_STATE, "property": "data"}, {"id": ids.LINE_CAPTION, "property": "children"}]

    def post(tick: int, state):
        body = {"output": key, "outputs": outputs,
                "inputs": [{"id": ids.LINE_TICK, "property": "n_intervals", "value": tick}],
                "state": [{"id": ids.LINE_ID, "property": "data", "value": BIO},
                          {"id": ids.LINE_TREND_STATE, "property": "data", "value": state}],
                "changedPropIds": [f"{ids.LINE_TICK}.n_intervals"]}
        resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
        assert resp.status_code == 200, resp.data[:300]
        return resp.data, json.loads(resp.data)["response"][ids.LINE_TREND_STATE]["data"]

    first, state = post(0, None)
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=1), t.tag_id, 1.0) for t in ctx.tags if t.line_id == BIO],
                         {UNITS[0]: "B-BR101-2405-017"}))
    clock["now"] = NOW + timedelta(seconds=2)
    refresh, _ = post(1, state)
    assert b'"Patch"' in refresh or b'"operations"' in refresh
    assert len(first) > 50_000 and len(refresh) * 25 < len(first), (len(refresh), len(first))


def test_a_units_live_multivariate_model_is_its_anomaly_score(ctx) -> None:
    """When the engine runs a stored model for a unit (here a PCA fitted on the unit's own
    history), the line page shows that model's score over its limit (UCL 1), not the z-score."""
    from analytics.engine import DetectionEngine
    from analytics.models import fit_unit_model
    from analytics.monitors import RowMonitor

    demo_scene(ctx, NOW)
    unit = UNITS[0]
    variables = tuple(t.tag_id for t in ctx.tags if t.unit_id == unit)
    history = ctx.historian.read(list(variables), NOW - timedelta(minutes=10), NOW)
    fitted = fit_unit_model("pca", history, unit=unit, variables=variables)
    ctx.engine = DetectionEngine(ctx.tags, ctx.site.detectors, ctx.alerts, monitors=[RowMonitor(fitted)])
    q._SCORERS.clear()
    trends = q.line_trends(ctx, BIO, NOW, 600, points=600)  # every score: compared one by one below
    assert trends.anomaly.limit_of(unit) == 1.0 and trends.anomaly.label_of(unit).startswith("pca model")
    expected = RowMonitor(fitted).score(history)
    got = trends.anomaly.scores.filter(pl.col("unit_id") == unit)
    assert got["ts"].to_list() == expected["ts"].to_list()
    assert got["score"].to_list() == pytest.approx(expected["score"].to_list(), rel=1e-9)
    figure = line.unit_figure(trends, unit)
    texts = {a["text"] for a in figure["layout"]["annotations"]}
    assert "UCL 1" in texts and any(t.startswith("Anomaly score · pca model") for t in texts)
