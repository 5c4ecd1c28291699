"""The overview screen: header (enterprise, sites, clock, data freshness), one tile per line,
the active and recently cleared alerts, and a live trend of one unit. Layout and callbacks
live together here; data comes from `queries`, never from the context directly.

Every callback body is a plain function of (ctx, now, inputs) (`render_status`, `trend_update`),
so tests call them without a browser.

All times on the screen are UTC (labelled), as in the historian and the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl
from dash import Dash, Input, Output, Patch, State, ctx as callback_ctx, dcc, html, no_update

from controltower.screen import ids
from controltower.screen.chrome import brand, nav
from controltower.screen import queries as q

if TYPE_CHECKING:
    from controltower.context import TowerContext

# Shape as well as colour, so the state reads without colour vision.
STATE_ICON = {"normal": "✔", "warning": "▲", "alarm": "✖", "stale": "◷"}
SEVERITY_ICON = {"warning": "▲", "alarm": "✖"}

# Trend colours (the CSS palette's, for plotly).
PALETTE = {
    "bg": "rgba(0,0,0,0)",
    "plot": "#0d141c",
    "grid": "#1e2a37",
    "text": "#aebccb",
    "trace": "#5cc8ff",
    "normal_band": "rgba(63, 185, 80, 0.10)",
    "warning": "#f0b429",
    "alarm": "#ff5c5c",
}
LIMIT_STYLE = {
    # column: (label, colour, dash)
    "alarm_high": ("HH", PALETTE["alarm"], "solid"),
    "warning_high": ("H", PALETTE["warning"], "dash"),
    "warning_low": ("L", PALETTE["warning"], "dash"),
    "alarm_low": ("LL", PALETTE["alarm"], "solid"),
}
ROW_HEIGHT_PX = 150
# Rebuild the whole figure this often (as a fraction of the window), which drops the points
# that scrolled out; in between, only new points are sent (Patch extend).
FULL_REBUILD_FRACTION = 0.25


# --- layout -------------------------------------------------------------------------------------


def layout(ctx: TowerContext, now: datetime) -> html.Div:
    units = q.unit_catalog(ctx)
    sites = " · ".join(s.name or s.id for s in ctx.site.sites)
    status = render_status(ctx, now)
    return html.Div(
        className="shell",
        children=[
            dcc.Interval(id=ids.INTERVAL, interval=ctx.site.screen.refresh_ms, n_intervals=0),
            dcc.Store(id=ids.TREND_STATE, data=None),
            html.Header(
                className="topbar",
                children=[
                    brand(ctx.site.enterprise, f"{sites} · control tower"),
                    html.Div(status["summary"], id=ids.SUMMARY, className="summary"),
                    nav("overview"),
                    html.Div(
                        className="topbar-right",
                        children=[
                            html.Div(status["freshness"], id=ids.FRESHNESS, className=status["freshness_class"]),
                            html.Div(status["clock"], id=ids.CLOCK, className="clock"),
                        ],
                    ),
                ],
            ),
            html.Main(
                className="content",
                children=[
                    html.Section(
                        className="panel lines-panel",
                        children=[
                            html.H2("Lines", className="panel-title"),
                            html.Div(status["tiles"], id=ids.LINE_TILES, className="tiles"),
                        ],
                    ),
                    html.Div(
                        className="columns",
                        children=[
                            html.Section(
                                className="panel alerts-panel",
                                children=[
                                    html.H2(
                                        ["Active alerts ", html.Span(status["active_count"], id=ids.ACTIVE_ALERTS_COUNT,
                                                                     className="count-badge")],
                                        className="panel-title",
                                    ),
                                    html.Div(status["active"], id=ids.ACTIVE_ALERTS),
                                    html.H2("Recently cleared", className="panel-title panel-title-sub"),
                                    html.Div(status["cleared"], id=ids.CLEARED_ALERTS),
                                ],
                            ),
                            html.Section(
                                className="panel trend-panel",
                                children=[
                                    html.Div(
                                        className="trend-head",
                                        children=[
                                            html.H2("Trend", className="panel-title"),
                                            dcc.Dropdown(
                                                id=ids.UNIT_SELECT,
                                                options=[
                                                    {"label": f"{u['line_name']} — {u['name']}", "value": u["unit_id"]}
                                                    for u in units
                                                ],
                                                value=units[0]["unit_id"] if units else None,
                                                clearable=False,
                                                searchable=False,
                                                className="unit-select",
                                            ),
                                        ],
                                    ),
                                    html.Div(id=ids.TREND_CAPTION, className="trend-caption"),
                                    dcc.Graph(
                                        id=ids.TREND_GRAPH,
                                        figure=_empty_figure("loading…"),
                                        config={"displaylogo": False, "responsive": True},
                                        className="trend-graph",
                                    ),
                                ],
                            ),
                        ],
                    ),
                ],
            ),
        ],
    )


# --- status: header, tiles, alerts --------------------------------------------------------------


def render_status(ctx: TowerContext, now: datetime) -> dict[str, Any]:
    """Everything the tick refreshes except the trend: {clock, freshness, freshness_class,
    summary, tiles, active_count, active, cleared} (Dash components or strings)."""
    states = q.line_states(ctx, now)
    active = q.active_alerts(ctx)
    cleared = q.cleared_alerts(ctx, limit=8)

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

    counts = states["state"].value_counts()
    by_state = dict(zip(counts["state"].to_list(), counts["count"].to_list()))
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
        "tiles": [line_tile(row) for row in states.iter_rows(named=True)],
        "active_count": str(active.height),
        "active": alerts_table(active, cleared=False),
        "cleared": alerts_table(cleared, cleared=True),
    }


def line_tile(row: dict[str, Any]) -> html.Div:
    """One line: state colour, icon and text; name; alert counts; batch; last sample age."""
    state = row["state"]
    age = row["age_s"]
    batches = row["batch_ids"] or []
    return html.Div(
        className=f"tile tile-{state}" + (" tile-is-stale" if row["stale"] else ""),
        id=f"tile-{row['line_id']}",
        **{"data-line": row["line_id"], "data-state": state},
        children=[
            html.Div(
                className="tile-head",
                children=[
                    html.Span(STATE_ICON[state], className="tile-icon", **{"aria-hidden": "true"}),
                    html.Span(row["state_text"].upper(), className="tile-state"),
                ],
            ),
            html.Div(row["line_name"], className="tile-name"),
            html.Div(f"{row['area_name']} · {row['line_id']}", className="tile-area"),
            html.Div(
                className="tile-counts",
                children=[
                    html.Span(f"{SEVERITY_ICON['alarm']} {row['alerts_alarm']} alarm",
                              className="count count-alarm" + (" count-zero" if not row["alerts_alarm"] else "")),
                    html.Span(f"{SEVERITY_ICON['warning']} {row['alerts_warning']} warning",
                              className="count count-warning" + (" count-zero" if not row["alerts_warning"] else "")),
                ],
            ),
            html.Div(
                className="tile-meta",
                children=[
                    html.Span("Batch " + (", ".join(batches) if batches else "—"), className="tile-batch"),
                    html.Span(
                        "no data yet" if age is None else f"last sample {_age_text(max(0.0, age))} ago",
                        className="tile-age",
                    ),
                ],
            ),
        ],
    )


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
        cells += [
            html.Td([html.Div(a["line"] or "—"), html.Div(a["unit"] or "", className="sub")]),
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


# --- trend --------------------------------------------------------------------------------------


def trend_update(
    ctx: TowerContext, unit_id: str | None, state: dict[str, Any] | None, now: datetime, *, force_full: bool = False
) -> tuple[Any, dict[str, Any] | None, Any]:
    """The trend's (figure, store state, caption) for this tick. A full figure when the unit
    changed, on the first call, when forced, or every `FULL_REBUILD_FRACTION` of the window;
    otherwise a `Patch` that appends the points of the buckets completed since the last call
    and slides the x range. Only complete buckets are ever sent, so increments never overlap."""
    if not unit_id:
        return _empty_figure("no unit selected"), None, ""
    window_s = ctx.site.screen.trend_window_s
    width = q.bucket_width(window_s)
    cut = _floor(q.data_clock(ctx, unit_id, now), width)
    full = (
        force_full
        or not state
        or state.get("unit") != unit_id
        or state.get("width_ms") != int(width.total_seconds() * 1000)
        or (now.timestamp() - state.get("built", 0)) > window_s * FULL_REBUILD_FRACTION
    )
    until = None if full else datetime.fromisoformat(state["until"])
    if until is not None and until >= cut:
        return no_update, no_update, no_update  # no bucket completed since the last call
    trend = q.unit_trend(ctx, unit_id, cut, window_s, since=until)
    new_state = {
        "unit": unit_id,
        "until": cut.isoformat(),
        "built": now.timestamp() if full else state["built"],
        "width_ms": int(width.total_seconds() * 1000),
    }
    if full:
        n = trend.samples.height
        caption = f"{trend.unit_name} · last {_age_text(window_s)} · UTC · {n} points shown"
        return trend_figure(trend), new_state, caption
    patch = Patch()
    x_range = [_plotly_time(trend.start), _plotly_time(trend.end)]
    for i, tag_id in enumerate(trend.tags["tag_id"]):
        rows = trend.samples.filter(pl.col("tag_id") == tag_id)
        if rows.height:
            patch["data"][i]["x"].extend(_plotly_times(rows["ts"]))
            patch["data"][i]["y"].extend(rows["value"].to_list())
        patch["layout"][_axis_key("xaxis", i)]["range"] = x_range
    return patch, new_state, no_update


def trend_figure(trend: q.UnitTrend) -> dict[str, Any]:
    """One subplot per tag of the unit, sharing the time axis; the normal band (between the
    warning limits) shaded, warning limits dashed amber, alarm limits solid red, labelled
    H/HH/L/LL for readers who do not tell the colours apart. A plain plotly figure dict: building
    it with plotly's graph objects costs ~0.5 s, longer than a screen refresh."""
    tags = trend.tags.to_dicts()
    n = max(1, len(tags))
    spacing = min(0.07, 0.35 / n)
    height = (1.0 - spacing * (n - 1)) / n
    x_range = [_plotly_time(trend.start), _plotly_time(trend.end)]
    data: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    for i, tag in enumerate(tags):
        xa, ya = _axis_key("xaxis", i), _axis_key("yaxis", i)
        x, y = xa.replace("axis", ""), ya.replace("axis", "")
        top = 1.0 - i * (height + spacing)
        layout[xa] = {
            "anchor": y, "range": x_range, "type": "date", "gridcolor": PALETTE["grid"], "zeroline": False,
            "showticklabels": i == n - 1, "tickfont": {"size": 10}, **({"matches": "x"} if i else {}),
        }
        layout[ya] = {
            "anchor": x, "domain": [max(0.0, top - height), top], "gridcolor": PALETTE["grid"],
            "zeroline": False, "tickfont": {"size": 10}, "nticks": 4,
        }
        rows = trend.samples.filter(pl.col("tag_id") == tag["tag_id"])
        data.append(
            {
                "type": "scatter", "mode": "lines", "name": tag["name"], "xaxis": x, "yaxis": y,
                "x": _plotly_times(rows["ts"]), "y": rows["value"].to_list(),
                "line": {"color": PALETTE["trace"], "width": 1.6}, "showlegend": False,
                "hovertemplate": f"%{{y:.4g}} {tag['eng_unit']}<extra>{tag['name']}</extra>",
            }
        )
        title = f"{tag['description']} [{tag['eng_unit']}]" if tag["eng_unit"] else tag["description"]
        annotations.append(
            {"text": title, "xref": "paper", "yref": "paper", "x": 0.5, "y": top, "xanchor": "center",
             "yanchor": "bottom", "showarrow": False, "font": {"size": 11, "color": PALETTE["text"]}}
        )
        if tag["warning_low"] is not None and tag["warning_high"] is not None:
            shapes.append(
                {"type": "rect", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1, "y0": tag["warning_low"],
                 "y1": tag["warning_high"], "fillcolor": PALETTE["normal_band"], "line": {"width": 0}, "layer": "below"}
            )
        for col, (label, colour, dash) in LIMIT_STYLE.items():
            if tag[col] is None:
                continue
            shapes.append(
                {"type": "line", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1, "y0": tag[col], "y1": tag[col],
                 "line": {"color": colour, "width": 1, "dash": dash}}
            )
            annotations.append(
                {"text": f"{label} {tag[col]:g}", "xref": f"{x} domain", "yref": y, "x": 1, "y": tag[col],
                 "xanchor": "left", "yanchor": "middle", "showarrow": False, "font": {"size": 10, "color": colour}}
            )
    layout.update(
        height=ROW_HEIGHT_PX * n + 40,
        margin={"l": 50, "r": 64, "t": 24, "b": 28},
        paper_bgcolor=PALETTE["bg"],
        plot_bgcolor=PALETTE["plot"],
        font={"color": PALETTE["text"], "family": "Inter, 'DejaVu Sans', 'Liberation Sans', sans-serif"},
        hovermode="x unified",
        uirevision=trend.unit_id,
        shapes=shapes,
        annotations=annotations,
    )
    return {"data": data, "layout": layout}


def _empty_figure(text: str) -> dict[str, Any]:
    return {
        "data": [],
        "layout": {
            "paper_bgcolor": PALETTE["bg"], "plot_bgcolor": PALETTE["plot"], "height": 300,
            "xaxis": {"visible": False}, "yaxis": {"visible": False},
            "annotations": [{"text": text, "showarrow": False, "font": {"color": PALETTE["text"], "size": 14}}],
            "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        },
    }


# --- callbacks ----------------------------------------------------------------------------------


def register_callbacks(app: Dash, ctx: TowerContext, clock: Callable[[], datetime]) -> None:
    @app.callback(
        Output(ids.CLOCK, "children"),
        Output(ids.FRESHNESS, "children"),
        Output(ids.FRESHNESS, "className"),
        Output(ids.SUMMARY, "children"),
        Output(ids.LINE_TILES, "children"),
        Output(ids.ACTIVE_ALERTS_COUNT, "children"),
        Output(ids.ACTIVE_ALERTS, "children"),
        Output(ids.CLEARED_ALERTS, "children"),
        Input(ids.INTERVAL, "n_intervals"),
    )
    def _status(_n: int):
        s = render_status(ctx, clock())
        return (s["clock"], s["freshness"], s["freshness_class"], s["summary"], s["tiles"],
                s["active_count"], s["active"], s["cleared"])

    @app.callback(
        Output(ids.TREND_GRAPH, "figure"),
        Output(ids.TREND_STATE, "data"),
        Output(ids.TREND_CAPTION, "children"),
        Input(ids.INTERVAL, "n_intervals"),
        Input(ids.UNIT_SELECT, "value"),
        State(ids.TREND_STATE, "data"),
    )
    def _trend(_n: int, unit_id: str | None, state: dict[str, Any] | None):
        # A page load or a new unit gets a full figure; the tick gets increments.
        force = callback_ctx.triggered_id != ids.INTERVAL
        return trend_update(ctx, unit_id, state, clock(), force_full=force)


# --- formatting ---------------------------------------------------------------------------------


def _axis_key(prefix: str, i: int) -> str:
    return prefix if i == 0 else f"{prefix}{i + 1}"


def _floor(moment: datetime, width: timedelta) -> datetime:
    us = int(moment.timestamp() * 1_000_000)
    step = int(width.total_seconds() * 1_000_000)
    return datetime.fromtimestamp((us - us % step) / 1_000_000, UTC)


def _plotly_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _plotly_times(ts: pl.Series) -> list[str]:
    return ts.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%d %H:%M:%S%.3f").to_list()


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
