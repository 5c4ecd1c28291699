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


def _tiles(rendered) -> dict:
    """line id -> the tile Div, from render_tiles' site groups of links."""
    return {link.children.id: link.children for group in rendered["children"] for link in group.children[1].children}


def test_tiles_are_links_grouped_by_site_with_state_text_and_icon(ctx) -> None:
    demo_scene(ctx, NOW)
    t = overview.render_tiles(ctx, NOW, None)
    assert [g.id for g in t["children"]] == ["site-lyon"]
    links = t["children"][0].children[1].children
    assert [link.href for link in links] == [f"/line/{BIO}", f"/line/{TAB}", f"/line/{FILL}"]
    tiles = _tiles(t)
    assert list(tiles) == [f"tile-{BIO}", f"tile-{TAB}", f"tile-{FILL}"]
    fill = tiles[f"tile-{FILL}"]
    assert "tile-alarm" in _classes(fill)
    head = fill.children[0]
    assert head.children[0].children == overview.STATE_ICON["alarm"] and head.children[1].children == "ALARM"
    assert head.children[2].children == "● live"
    # Alarms by priority (by default alarm -> high, warning -> medium), in words as well as colour.
    assert [c.children for c in fill.children[2].children] == ["▲1 high"]
    assert [c.children for c in tiles[f"tile-{TAB}"].children[2].children] == ["■1 med"]
    assert tiles[f"tile-{BIO}"].children[2].children.children == "no alarms"
    assert tiles[f"tile-{BIO}"].children[3].children == "B-BR101-2405-017"
    # The site header counts lines per state, with icons.
    header = t["children"][0].children[0]
    texts = [c.children[1] if isinstance(c.children, list) else c.children for c in header.children[2:]]
    assert texts[:4] == [" 1 alarm", " 1 warning", " 0 stale", " 1 normal"]


def test_tiles_refresh_sends_only_what_changed(ctx) -> None:
    demo_scene(ctx, NOW)
    first = overview.render_tiles(ctx, NOW, None)
    # Nothing changed a second later: nothing is sent (the tiles show no per-second age).
    again = overview.render_tiles(ctx, NOW + timedelta(seconds=1), first["keys"])
    assert again["children"] is no_update
    # A new alarm on the bioreactor line: a Patch replacing that tile and the site header only.
    ctx.event(NOW, f"{BIO}.br101.temperature", 2, 39.4, 39.0, reason="above alarm high 39")
    changed = overview.render_tiles(ctx, NOW + timedelta(seconds=1), first["keys"])
    assert isinstance(changed["children"], Patch)
    ops = changed["children"].to_plotly_json()["operations"]
    assert sorted(tuple(op["location"]) for op in ops) == [
        (0, "props", "children", 0), (0, "props", "children", 1, "props", "children", 0)]
    assert ops[-1]["params"]["value"].children.id == f"tile-{BIO}"


def test_header_flags_stale_data(ctx) -> None:
    demo_scene(ctx, NOW - timedelta(minutes=2))
    h = overview.render_header(ctx, NOW)
    assert h["clock"] == "2024-05-01 10:00:00 UTC"
    assert h["freshness_class"] == "freshness freshness-stale"
    assert h["freshness"][-1] == "Data 2 min old · 3/3 lines stale"
    fill = _tiles(overview.render_tiles(ctx, NOW, None))[f"tile-{FILL}"]
    assert _classes(fill) == ["tile", "tile-alarm", "tile-is-stale"]
    assert fill.children[0].children[1].children == "ALARM · STALE"
    assert fill.children[0].children[2].children == "◷ 2 min"


def test_no_alerts_and_no_data(ctx) -> None:
    a = overview.render_alerts(ctx, None)
    assert a["active"].children == "No active alerts"
    assert overview.render_header(ctx, NOW)["freshness"][-1] == "No data yet · 3/3 lines stale"
    assert all("tile-stale" in _classes(t) for t in _tiles(overview.render_tiles(ctx, NOW, None)).values())


def test_alert_tables_are_sent_only_when_they_change(ctx) -> None:
    demo_scene(ctx, NOW)
    a = overview.render_alerts(ctx, None)
    assert a["active_count"] == "2"
    rows = a["active"].children[1].children
    assert [r.className.split()[1] for r in rows] == ["sev-row-alarm", "sev-row-warning"]
    assert len(a["cleared"].children[1].children) == 1
    assert overview.render_alerts(ctx, a["key"])["active"] is no_update


def test_app_routes_overview_and_line_pages(ctx) -> None:
    from controltower.screen import shell

    app = create_app(ctx, clock=lambda: NOW)
    outputs = " ".join(app.callback_map)
    for component in (ids.LINE_TILES, ids.ACTIVE_ALERTS, ids.CLOCK, ids.PAGE, ids.LINE_UNIT_GRAPH, ids.CRITICAL_BANNER):
        assert component in outputs
    assert "overview" in shell.page_for(ctx, NOW, "/").className
    assert shell.page_for(ctx, NOW, f"/line/{FILL}").className == "content line-page"
    assert "No such line" in str(shell.page_for(ctx, NOW, "/line/lyon.nope.x").children)
    assert "No such page" in str(shell.page_for(ctx, NOW, "/elsewhere").children)
