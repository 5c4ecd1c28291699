"""The enterprise overview (`/`): every line of every site as a tile, grouped by site, and the
active and recently cleared alerts. A tile shows its line's state (colour, icon and word), its
alarms by priority, its data freshness and current batch, and links to the line page
(`line.py`). Compact enough for 3 sites x 22 lines on one full-HD screen.

Refresh: the tick sends only what changed. Each tile and each site header has a key (the
values it shows); the first call sends them all, later calls a `Patch` that replaces the tiles
whose key changed, and the alert tables only when their rows changed. A tile shows its data
age only once the line is stale, so a healthy plant's tiles do not change every second.

Every callback body is a plain function of (ctx, now, inputs) (`render_tiles`, `render_alerts`),
so tests call them without a browser. All times on the screen are UTC (labelled).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
from dash import Dash, Input, Output, Patch, State, dcc, html, no_update

from controltower.screen import ids
from controltower.screen import queries as q

if TYPE_CHECKING:
    from controltower.context import TowerContext

# Shape as well as colour, so the state reads without colour vision.
STATE_ICON = {"normal": "✔", "warning": "▲", "alarm": "✖", "stale": "◷"}
SEVERITY_ICON = {"warning": "▲", "alarm": "✖"}
PRIORITY_ICON = {"critical": "◆", "high": "▲", "medium": "■", "low": "●"}
PRIORITY_SHORT = {"critical": "crit", "high": "high", "medium": "med", "low": "low"}
CLEARED_SHOWN = 8


# --- layout -------------------------------------------------------------------------------------


def layout(ctx: TowerContext, now: datetime) -> html.Div:
    """The page's content (the shell in app.py carries the header and the navigation)."""
    tiles = render_tiles(ctx, now, None)
    alerts = render_alerts(ctx, None)
    return html.Div(
        className="content overview",
        children=[
            dcc.Interval(id=ids.INTERVAL, interval=ctx.site.screen.refresh_ms, n_intervals=0),
            dcc.Store(id=ids.TILE_KEYS, data=tiles["keys"]),
            dcc.Store(id=ids.ALERTS_KEY, data=alerts["key"]),
            html.Section(
                className="panel lines-panel",
                children=[
                    html.H2(["Lines ", html.Span(tiles["count"], className="count-badge")], className="panel-title"),
                    html.Div(tiles["children"], id=ids.LINE_TILES, className="sites"),
                ],
            ),
            html.Section(
                className="panel alerts-panel",
                children=[
                    html.H2(["Active alerts ", html.Span(alerts["active_count"], id=ids.ACTIVE_ALERTS_COUNT,
                                                         className="count-badge")], className="panel-title"),
                    html.Div(alerts["active"], id=ids.ACTIVE_ALERTS),
                    html.H2("Recently cleared", className="panel-title panel-title-sub"),
                    html.Div(alerts["cleared"], id=ids.CLEARED_ALERTS),
                ],
            ),
        ],
    )


def skeleton() -> html.Div:
    """The page's components without data (for the app's validation layout)."""
    return html.Div([
        dcc.Interval(id=ids.INTERVAL), dcc.Store(id=ids.TILE_KEYS), dcc.Store(id=ids.ALERTS_KEY),
        html.Div(id=ids.LINE_TILES), html.Span(id=ids.ACTIVE_ALERTS_COUNT), html.Div(id=ids.ACTIVE_ALERTS),
        html.Div(id=ids.CLEARED_ALERTS),
    ])


# --- header (in the shell, every page) ----------------------------------------------------------


def render_header(ctx: TowerContext, now: datetime) -> dict[str, Any]:
    """{clock, freshness, freshness_class, summary}: the shell's header over the whole enterprise."""
    states = q.line_states(ctx, now)
    last = states["last_ts"].max()
    if last is None:
        freshness, fresh_state = "No data yet", "stale"
    else:
        age = max(0.0, (now - last).total_seconds())
        fresh_state = "stale" if age > ctx.site.screen.stale_after_s else "fresh"
        freshness = f"Data {_age_text(age)} old"
    n_stale = int(states["stale"].sum())
    if n_stale:
        freshness += f" · {n_stale}/{states.height} lines stale"
    by_state = _state_counts(states)
    summary = [
        html.Span([html.Span(STATE_ICON[s], className="icon"), f" {by_state.get(s, 0)} {s}"],
                  className=f"summary-item state-{s}")
        for s in ("alarm", "warning", "stale", "normal")
    ]
    return {
        "clock": now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "freshness": [html.Span("●" if fresh_state == "fresh" else "◷", className="icon"), " ", freshness],
        "freshness_class": f"freshness freshness-{fresh_state}",
        "summary": summary,
        "summary_key": repr(sorted(by_state.items())),
    }


# --- tiles --------------------------------------------------------------------------------------


def tile_frame(ctx: TowerContext, now: datetime) -> pl.DataFrame:
    """`queries.line_states` with the alarm-list counts per priority of each line."""
    prio = q.priority_counts_by_line(ctx)
    return q.line_states(ctx, now).join(prio, on="line_id", how="left").with_columns(
        pl.col(p).fill_null(0) for p in q.PRIORITY_RANK
    )


def render_tiles(ctx: TowerContext, now: datetime, last_keys: dict[str, Any] | None) -> dict[str, Any]:
    """The tiles grouped by site: {children (the full list, or a Patch of what changed since
    `last_keys`, or no_update), keys, count}. Keys: {"layout": the lines in order, "sites":
    per site key, "tiles": per line key}."""
    rows = tile_frame(ctx, now).to_dicts()
    stale_after = ctx.site.screen.stale_after_s
    sites: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        sites.setdefault(row["site"], []).append(row)
    keys = {
        "layout": _key([r["line_id"] for r in rows]),
        "sites": [_key(_site_counts(lines)) for lines in sites.values()],
        "tiles": [[_key(_tile_view(r, stale_after)) for r in lines] for lines in sites.values()],
    }
    out = {"keys": keys, "count": str(len(rows))}
    if not last_keys or last_keys.get("layout") != keys["layout"]:
        out["children"] = [site_group(lines, stale_after) for lines in sites.values()]
        return out
    patch, changed = Patch(), False
    for i, lines in enumerate(sites.values()):
        if last_keys["sites"][i] != keys["sites"][i]:
            patch[i]["props"]["children"][0] = site_header(lines)
            changed = True
        for j, row in enumerate(lines):
            if last_keys["tiles"][i][j] != keys["tiles"][i][j]:
                patch[i]["props"]["children"][1]["props"]["children"][j] = line_tile(row, stale_after)
                changed = True
    out["children"] = patch if changed else no_update
    return out


def site_group(lines: list[dict[str, Any]], stale_after: float) -> html.Section:
    """A site: its header (name, line count, lines per state) and a compact grid of its tiles."""
    return html.Section(
        className="site-group",
        id=f"site-{lines[0]['site']}",
        children=[site_header(lines), html.Div([line_tile(r, stale_after) for r in lines], className="tiles")],
    )


def site_header(lines: list[dict[str, Any]]) -> html.Div:
    counts = _site_counts(lines)
    return html.Div(
        className="site-head",
        children=[
            html.Span(lines[0]["site_name"], className="site-name"),
            html.Span(f"{len(lines)} lines", className="site-lines"),
            *[html.Span([html.Span(STATE_ICON[s], className="icon"), f" {counts[s]} {s}"],
                        className=f"summary-item state-{s}" + ("" if counts[s] else " count-zero"))
              for s in ("alarm", "warning", "stale", "normal")],
            *[html.Span(f"{PRIORITY_ICON[p]} {counts[p]} {p}", className=f"summary-item prio-{p}")
              for p in q.PRIORITY_RANK if counts[p]],
        ],
    )


def line_tile(row: dict[str, Any], stale_after: float = 10.0) -> dcc.Link:
    """One line, a link to its page: state colour, icon and word; name; alarms by priority;
    current batch; data freshness (its age once stale)."""
    view = _tile_view(row, stale_after)
    state = row["state"]
    batches = row["batch_ids"] or []
    prios = [html.Span(f"{PRIORITY_ICON[p]}{row[p]} {PRIORITY_SHORT[p]}", className=f"count prio-{p}",
                       title=f"{row[p]} {p} priority alarm(s)")
             for p in q.PRIORITY_RANK if row[p]]
    tile = html.Div(
        className=f"tile tile-{state}" + (" tile-is-stale" if row["stale"] else ""),
        id=f"tile-{row['line_id']}",
        title=f"{row['site_name']} · {row['area_name']} · {row['line_name']} ({row['line_id']})",
        **{"data-line": row["line_id"], "data-state": state},
        children=[
            html.Div(
                className="tile-head",
                children=[
                    html.Span(STATE_ICON[state], className="tile-icon", **{"aria-hidden": "true"}),
                    html.Span(row["state_text"].upper(), className="tile-state"),
                    html.Span(view["fresh"], className="tile-age"),
                ],
            ),
            html.Div(row["line_name"], className="tile-name"),
            html.Div(prios or html.Span("no alarms", className="count count-zero"), className="tile-counts"),
            html.Div(", ".join(batches) if batches else "no batch", className="tile-batch",
                     title="current batch"),
        ],
    )
    return dcc.Link(tile, href=f"/line/{row['line_id']}", className="tile-link", id=f"tile-link-{row['line_id']}")


def _tile_view(row: dict[str, Any], stale_after: float) -> dict[str, Any]:
    """What a tile shows, and so what its key is made of."""
    age = row["age_s"]
    if age is None:
        fresh = "◷ no data"
    elif row["stale"]:
        fresh = f"◷ {_age_text(max(0.0, age))}"
    else:
        fresh = "● live"
    return {"state": row["state"], "text": row["state_text"], "fresh": fresh, "batches": row["batch_ids"],
            "prio": [row[p] for p in q.PRIORITY_RANK], "name": row["line_name"]}


def _site_counts(lines: list[dict[str, Any]]) -> dict[str, int]:
    counts = {s: 0 for s in q.STATES}
    for r in lines:
        counts[r["state"]] += 1
    for p in q.PRIORITY_RANK:
        counts[p] = sum(r[p] for r in lines)
    return counts


def _state_counts(states: pl.DataFrame) -> dict[str, int]:
    counts = states["state"].value_counts()
    return dict(zip(counts["state"].to_list(), counts["count"].to_list()))


# --- alerts -------------------------------------------------------------------------------------


def render_alerts(ctx: TowerContext, last_key: str | None) -> dict[str, Any]:
    """{active_count, active, cleared, key}; the tables are no_update when their rows did not
    change since `last_key`."""
    active = q.active_alerts(ctx)
    cleared = q.cleared_alerts(ctx, limit=CLEARED_SHOWN)
    key = _key((active.rows(), cleared.rows()))
    if key == last_key:
        return {"active_count": no_update, "active": no_update, "cleared": no_update, "key": key}
    return {
        "active_count": str(active.height),
        "active": alerts_table(active, cleared=False),
        "cleared": alerts_table(cleared, cleared=True),
        "key": key,
    }


def alerts_table(alerts: pl.DataFrame, *, cleared: bool) -> html.Table | html.Div:
    if alerts.is_empty():
        text = "No alerts cleared recently" if cleared else "No active alerts"
        return html.Div(text, className="alerts-empty")
    head = ["Raised (UTC)"] + (["Cleared"] if cleared else []) + ["Line / unit", "Tag", "Severity", "Value"]
    head += [] if cleared else ["Reason"]
    rows = []
    for a in alerts.iter_rows(named=True):
        sev = a["severity"]
        cells = [html.Td(_hms(a["raised_at"]), title=q.iso_utc(a["raised_at"]), className="mono")]
        if cleared:
            cells.append(html.Td(_hms(a["cleared_at"]), title=q.iso_utc(a["cleared_at"]), className="mono"))
        where = html.Div(a["line"] or "—")
        if a["line_id"]:
            where = dcc.Link(a["line"], href=f"/line/{a['line_id']}", className="line-link")
        cells += [
            html.Td([where, html.Div(a["unit"] or "", className="sub")]),
            html.Td([html.Div(a["description"]), html.Div(a["tag_id"], className="sub mono")]),
            html.Td(html.Span(f"{SEVERITY_ICON.get(sev, '?')} {sev.upper()}", className=f"sev-badge sev-{sev}")),
            html.Td(_value_text(a["value"], a["eng_unit"]), className="mono num"),
        ]
        if not cleared:
            cells.append(html.Td(_short_message(a), title=a["message"], className="msg"))
        rows.append(
            html.Tr(cells, className=f"alert-row sev-row-{sev}" + (" alert-cleared" if cleared else " alert-active"))
        )
    return html.Table(
        className="alerts" + (" alerts-cleared" if cleared else ""),
        children=[html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)],
    )


# --- callbacks ----------------------------------------------------------------------------------


def register_callbacks(app: Dash, ctx: TowerContext, clock: Callable[[], datetime]) -> None:
    @app.callback(
        Output(ids.LINE_TILES, "children"),
        Output(ids.TILE_KEYS, "data"),
        Input(ids.INTERVAL, "n_intervals"),
        State(ids.TILE_KEYS, "data"),
        prevent_initial_call=True,
    )
    def _tiles(_n: int, last_keys: dict[str, Any] | None):
        t = render_tiles(ctx, clock(), last_keys)
        unchanged = t["children"] is no_update
        return t["children"], no_update if unchanged else t["keys"]

    @app.callback(
        Output(ids.ACTIVE_ALERTS_COUNT, "children"),
        Output(ids.ACTIVE_ALERTS, "children"),
        Output(ids.CLEARED_ALERTS, "children"),
        Output(ids.ALERTS_KEY, "data"),
        Input(ids.INTERVAL, "n_intervals"),
        State(ids.ALERTS_KEY, "data"),
        prevent_initial_call=True,
    )
    def _alerts(_n: int, last_key: str | None):
        a = render_alerts(ctx, last_key)
        return a["active_count"], a["active"], a["cleared"], no_update if a["key"] == last_key else a["key"]


# --- formatting ---------------------------------------------------------------------------------


def _key(value: Any) -> str:
    return hashlib.sha1(repr(value).encode()).hexdigest()[:16]


def _hms(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%H:%M:%S")


def _age_text(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _short_message(alert: dict[str, Any]) -> str:
    """"limits: above alarm high 2.06" from the book's full message, whose other parts (severity,
    tag, value) have columns of their own; the full message stays in the cell's tooltip."""
    message = alert["message"] or ""
    reason = message.split(": ", 1)[1] if ": " in message else message
    return f"{alert['detector']}: {reason}" if alert["detector"] else reason


def _value_text(value: float | None, eng_unit: str | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4g} {eng_unit or ''}".strip()
