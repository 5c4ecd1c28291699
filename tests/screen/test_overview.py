"""The screen's callback bodies, without a browser: status (header, tiles, alert tables) and
the trend (a full figure, then Patch increments)."""

from __future__ import annotations

from datetime import timedelta

from dash import Patch, no_update

from controltower.screen import create_app, ids, overview
from tests.screen.conftest import NOW
from tests.screen.demo_context import BIO, FILL, TAB, demo_scene

UNIT = f"{BIO}.br101"


def _classes(component) -> list[str]:
    return component.className.split()


def test_status_renders_tiles_with_state_text_and_icon(ctx) -> None:
    demo_scene(ctx, NOW)
    s = overview.render_status(ctx, NOW)
    assert s["clock"] == "2024-05-01 10:00:00 UTC"
    assert s["freshness_class"] == "freshness freshness-fresh"
    tiles = {t.id: t for t in s["tiles"]}
    assert list(tiles) == [f"tile-{BIO}", f"tile-{TAB}", f"tile-{FILL}"]
    fill = tiles[f"tile-{FILL}"]
    assert "tile-alarm" in _classes(fill)
    head = fill.children[0]
    assert head.children[0].children == overview.STATE_ICON["alarm"] and head.children[1].children == "ALARM"
    assert s["active_count"] == "2"
    rows = s["active"].children[1].children
    assert [r.className.split()[1] for r in rows] == ["sev-row-alarm", "sev-row-warning"]
    assert len(s["cleared"].children[1].children) == 1


def test_status_flags_stale_data(ctx) -> None:
    demo_scene(ctx, NOW - timedelta(minutes=2))
    s = overview.render_status(ctx, NOW)
    assert s["freshness_class"] == "freshness freshness-stale"
    assert s["freshness"][-1] == "Data 2 min old · 3/3 lines stale"
    fill = next(t for t in s["tiles"] if t.id == f"tile-{FILL}")
    assert _classes(fill) == ["tile", "tile-alarm", "tile-is-stale"]
    assert fill.children[0].children[1].children == "ALARM · STALE"


def test_no_alerts_and_no_data(ctx) -> None:
    s = overview.render_status(ctx, NOW)
    assert s["active"].children == "No active alerts"
    assert s["freshness"][-1] == "No data yet · 3/3 lines stale"
    assert all("tile-stale" in _classes(t) for t in s["tiles"])


def test_trend_is_a_full_figure_then_increments(ctx) -> None:
    demo_scene(ctx, NOW)
    fig, state, caption = overview.trend_update(ctx, UNIT, None, NOW)
    assert isinstance(fig, dict) and len(fig["data"]) == 5
    assert [t["name"] for t in fig["data"]] == ["temperature", "ph", "dissolved_oxygen", "agitation", "pressure"]
    assert all(len(t["x"]) <= 2 * 600 for t in fig["data"])
    assert fig["layout"]["xaxis"]["range"] == ["2024-05-01 09:50:00.000", "2024-05-01 10:00:00.000"]
    labels = {a["text"] for a in fig["layout"]["annotations"]}
    assert {"HH 39", "H 38", "L 36", "LL 35", "Broth temperature (TT-101), jacket-controlled [degC]"} <= labels
    assert state["unit"] == UNIT and caption.startswith("Bioreactor BR-101 (2000 L) · last 10 min")
    n_points = sum(len(t["x"]) for t in fig["data"])

    # Same bucket: nothing to send.
    assert overview.trend_update(ctx, UNIT, state, NOW + timedelta(milliseconds=300)) == (no_update,) * 3

    # Two new samples per tag, then a tick: only they travel, as a Patch.
    later = NOW + timedelta(seconds=3)
    ctx.feed(ctx.samples([(NOW + timedelta(seconds=s), t.tag_id, 1.0 + s) for s in (1, 2) for t in ctx.tags
                          if t.unit_id == UNIT]))
    patch, state2, caption2 = overview.trend_update(ctx, UNIT, state, later)
    assert isinstance(patch, Patch) and caption2 is no_update
    ops = patch.to_plotly_json()["operations"]
    extends = [op for op in ops if op["operation"] == "Extend"]
    assert len(extends) == 10  # x and y of 5 traces
    assert sum(len(op["params"]["value"]) for op in extends) == 2 * 5 * 3  # the sample at NOW, +1 s, +2 s
    ranges = [op for op in ops if op["location"][-1] == "range"]
    assert ranges[0]["params"]["value"] == ["2024-05-01 09:50:03.000", "2024-05-01 10:00:03.000"]
    assert n_points > 0 and state2["until"] > state["until"]

    # A new unit, or an old figure, gets a full figure again.
    fig3, _, _ = overview.trend_update(ctx, f"{FILL}.filler1", state2, later)
    assert isinstance(fig3, dict) and len(fig3["data"]) == 3
    fig4, _, _ = overview.trend_update(ctx, UNIT, state2, NOW + timedelta(minutes=5))
    assert isinstance(fig4, dict)


def test_app_registers_the_screen_callbacks(ctx) -> None:
    app = create_app(ctx, clock=lambda: NOW)
    outputs = " ".join(app.callback_map)
    for component in (ids.LINE_TILES, ids.ACTIVE_ALERTS, ids.TREND_GRAPH, ids.CLOCK):
        assert component in outputs
    layout = app.layout()
    assert layout.children[0].interval == ctx.site.screen.refresh_ms
