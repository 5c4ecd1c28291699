"""The line page (`/line/<site>.<area>.<line>`): one panel per unit of the line with the live
trends of its tags (warning and alarm limits drawn and labelled), the unit's anomaly score with
its control limit, and its batch phases (ISA-88, from the historian's batch events) shaded and
named, else its batches; above them the line's state, its active alarms and its units' current
batches.

Refresh: the first call sends each unit's figure over the window (LTTB-downsampled on the
server to `queries.LINE_TREND_POINTS` per tag); later ticks send a `Patch` per figure that only
appends the samples newer than the last call and slides the time axis. The whole figure is sent
again only every `FULL_REBUILD_FRACTION` of the window (to drop what scrolled out), when a new
batch or phase starts, or when the page is opened: the phase shading is never in a Patch. `bench/screen.py` measures both.

Every callback body is a plain function of (ctx, now, inputs) (`line_update`, `line_status`),
so tests call them without a browser. All times are UTC.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
from dash import ALL, Dash, Input, Output, Patch, State, dcc, html, no_update
from dash import ctx as callback_ctx

from controltower.screen import ids
from controltower.screen import queries as q
from controltower.screen.setpoints import page_href as setpoints_href

if TYPE_CHECKING:
    from controltower.context import TowerContext

PATH_PREFIX = "/line/"
PALETTE = {
    "bg": "rgba(0,0,0,0)",
    "plot": "#0d141c",
    "grid": "#1e2a37",
    "text": "#aebccb",
    "trace": "#5cc8ff",
    "score": "#c3a6ff",
    "normal_band": "rgba(63, 185, 80, 0.10)",
    "warning": "#f0b429",
    "alarm": "#ff5c5c",
    "batch": ("rgba(174, 188, 203, 0.07)", "rgba(174, 188, 203, 0.0)"),
}
# Phase shading: the Okabe-Ito colours (told apart with the common colour-vision deficiencies;
# its black and dark blue left out, unreadable on the dark plot), picked by the phase's name so a
# phase keeps its colour; every band is also labelled with its name.
PHASE_COLOURS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (213, 94, 0), (204, 121, 167),
                 (153, 153, 153))
PHASE_ALPHA = 0.16
LIMIT_STYLE = {
    # column: (label, colour, dash)
    "alarm_high": ("HH", PALETTE["alarm"], "solid"),
    "warning_high": ("H", PALETTE["warning"], "dash"),
    "warning_low": ("L", PALETTE["warning"], "dash"),
    "alarm_low": ("LL", PALETTE["alarm"], "solid"),
}
STATE_ICON = {"normal": "✔", "warning": "▲", "alarm": "✖", "stale": "◷"}
PRIORITY_ICON = {"critical": "◆", "high": "▲", "medium": "■", "low": "●"}
ROW_HEIGHT_PX = 110
# Send the whole figures again this often (a fraction of the window): drops what scrolled out.
FULL_REBUILD_FRACTION = 0.25


def line_path(line_id: str) -> str:
    return f"{PATH_PREFIX}{line_id}"


def graph_id(unit_id: str) -> dict[str, str]:
    return {"type": ids.LINE_UNIT_GRAPH, "unit": unit_id}


# --- layout -------------------------------------------------------------------------------------


def layout(ctx: TowerContext, now: datetime, line_id: str) -> html.Div:
    """The page's content for `line_id` (a "no such line" notice for an unknown one)."""
    try:
        info = q.line_info(ctx, line_id)
    except q.UnknownLineError:
        return html.Div(
            className="content",
            children=html.Section(className="panel", children=[
                html.H2("No such line", className="panel-title"),
                html.P([f"The site has no line {line_id!r}. ", dcc.Link("Back to the overview", href="/")]),
            ]),
        )
    status = line_status(ctx, now, line_id, None)
    with_setpoints = ctx.site.unit_setpoints()
    panels = [
        html.Section(
            className="panel unit-panel",
            id=f"unit-{u['unit_id']}",
            children=[
                html.Div(className="unit-head", children=[
                    html.H2(u["name"], className="panel-title"),
                    html.Span(u["unit_id"], className="sub mono"),
                    # Its own page (a separate Dash app): a full page load, not a dcc.Link.
                    *([html.A("⚙ Setpoints", href=setpoints_href(u["unit_id"]), id=f"setpoints-{u['unit_id']}",
                              className="nav-link unit-setpoints")] if u["unit_id"] in with_setpoints else []),
                ]),
                dcc.Graph(id=graph_id(u["unit_id"]), figure=_empty_figure("loading…"),
                          config={"displaylogo": False, "responsive": True}, className="unit-graph"),
            ],
        )
        for u in info["units"]
    ]
    return html.Div(
        className="content line-page",
        **{"data-line": line_id},
        children=[
            dcc.Interval(id=ids.LINE_TICK, interval=ctx.site.screen.refresh_ms, n_intervals=0),
            dcc.Store(id=ids.LINE_ID, data=line_id),
            dcc.Store(id=ids.LINE_TREND_STATE, data=None),
            dcc.Store(id=ids.LINE_STATUS_KEY, data=status["key"]),
            html.Div(className="line-head panel", children=[
                html.Div(className="crumbs", children=[
                    dcc.Link("◧ Overview", href="/", className="crumb"), " › ",
                    html.Span(info["site_name"], className="crumb"), " › ",
                    html.Span(info["area_name"], className="crumb"), " › ",
                    html.Span(info["line_name"], className="crumb crumb-current"),
                ]),
                html.Div(status["head"], id=ids.LINE_STATUS),
            ]),
            html.Div(id=ids.LINE_CAPTION, className="trend-caption"),
            *panels,
        ],
    )


def skeleton() -> html.Div:
    """The page's components without data (for the app's validation layout)."""
    return html.Div([
        dcc.Interval(id=ids.LINE_TICK), dcc.Store(id=ids.LINE_ID), dcc.Store(id=ids.LINE_TREND_STATE),
        dcc.Store(id=ids.LINE_STATUS_KEY), html.Div(id=ids.LINE_STATUS), html.Div(id=ids.LINE_CAPTION),
        dcc.Graph(id=graph_id("skeleton")),
    ])


def line_status(ctx: TowerContext, now: datetime, line_id: str, last_key: str | None) -> dict[str, Any]:
    """The line's state, its active alarms by priority and its units' batches: {head (components,
    or no_update when unchanged since `last_key`), key}."""
    states = q.line_states(ctx, now).filter(pl.col("line_id") == line_id)
    alarms = q.console_alarms(ctx, "alarms", line_id=line_id)
    batches = ctx.live.latest().filter(pl.col("tag_id").str.starts_with(line_id + ".")).group_by("unit").agg(
        pl.col("batch_id").drop_nulls().first()).sort("unit")
    row = states.row(0, named=True) if states.height else None
    state = row["state"] if row else "stale"
    fresh = "no data yet" if not row or row["age_s"] is None else (
        f"stale: last sample {row['age_s']:.0f} s ago" if row["stale"] else "live")
    rows = alarms.select("priority", "display_state", "unit", "description", "value", "eng_unit", "message").to_dicts()
    key = hashlib.sha1(repr((state, row and row["state_text"], fresh, rows, batches.rows())).encode()).hexdigest()
    if key == last_key:
        return {"head": no_update, "key": key}
    counts = alarms["priority"].value_counts()
    by_prio = dict(zip(counts["priority"].to_list(), counts["count"].to_list()))
    chips = [html.Span(f"{u} {b}", className="batch-chip mono") for u, b in batches.rows() if b]
    head = [
        html.Div(className="line-state-row", children=[
            html.Span([html.Span(STATE_ICON[state], className="icon"), " ",
                       (row["state_text"] if row else "stale").upper()],
                      className=f"state-badge line-state line-state-{state}", id="line-state",
                      **{"data-state": state}),
            html.Span(fresh, className="line-fresh" + (" line-fresh-stale" if row and row["stale"] else "")),
            *[html.Span(f"{PRIORITY_ICON[p]} {by_prio.get(p, 0)} {p}",
                        className=f"summary-item prio-{p}" + ("" if by_prio.get(p) else " count-zero"))
              for p in ("critical", "high", "medium", "low")],
            html.Span(["Batches: ", *chips] if chips else "Batches: —", className="line-batches"),
        ]),
        _alarm_rows(alarms),
    ]
    return {"head": head, "key": key}


def _alarm_rows(alarms: pl.DataFrame) -> Any:
    if alarms.is_empty():
        return html.Div("No active alarms on this line", className="alerts-empty")
    from controltower.screen.console import STATE_LABEL

    rows = []
    for a in alarms.head(8).iter_rows(named=True):
        icon, word = STATE_LABEL.get(a["display_state"], ("?", a["display_state"].upper()))
        rows.append(html.Tr(className=f"alert-row line-alarm prio-row-{a['priority']}", children=[
            html.Td(html.Span(f"{PRIORITY_ICON.get(a['priority'], '?')} {a['priority'].upper()}",
                              className=f"prio-badge prio-{a['priority']}")),
            html.Td(f"{icon} {word}", className=f"state-{a['display_state']}"),
            html.Td([html.Div(a["description"]), html.Div(a["unit"] or "", className="sub")]),
            html.Td("—" if a["value"] is None else f"{a['value']:.4g} {a['eng_unit'] or ''}".strip(), className="mono num"),
            html.Td(a["message"], className="msg"),
        ]))
    more = [html.Div(f"+{alarms.height - 8} more in the alarm console", className="sub")] if alarms.height > 8 else []
    return html.Div([html.Table(className="alerts", children=html.Tbody(rows)), *more])


# --- trends -------------------------------------------------------------------------------------


def line_update(
    ctx: TowerContext, line_id: str, unit_ids: list[str], state: dict[str, Any] | None, now: datetime,
    *, force_full: bool = False,
) -> tuple[list[Any], dict[str, Any] | None, Any]:
    """(one figure or Patch per unit of `unit_ids`, new store state, caption) for this tick: full
    figures on the first call, when forced, every `FULL_REBUILD_FRACTION` of the window or when a
    batch starts; otherwise Patches appending the samples and scores newer than the last call."""
    window_s = ctx.site.screen.trend_window_s
    cut = q.line_data_clock(ctx, line_id, now)
    full = (
        force_full
        or not state
        or state.get("line") != line_id
        or (now.timestamp() - state.get("built", 0)) > window_s * FULL_REBUILD_FRACTION
    )
    if not full:
        until = datetime.fromisoformat(state["until"])
        if until >= cut:
            return [no_update] * len(unit_ids), no_update, no_update
        trends = q.line_trends(ctx, line_id, cut, window_s, since=until, spacing_s=state.get("spacing_s"))
        last_batches = _last_batches(trends.batches)
        known = state.get("batches", {})
        known_phases = state.get("phases", {})
        if any(known.get(u) != b for u, b in last_batches.items()) or any(
                known_phases.get(u) != p for u, p in _last_phases(trends.phases).items()):
            full = True  # a batch or phase started: redraw the shading
    if full:
        trends = q.line_trends(ctx, line_id, cut, window_s)
        by_tag = trends.samples.partition_by("tag_id", as_dict=True)
        figures = [unit_figure(trends, u, by_tag) for u in unit_ids]
        caption = (f"Last {_age_text(window_s)} · UTC · {trends.samples.height} points shown "
                   f"(LTTB, ≤ {q.LINE_TREND_POINTS} per tag) · anomaly score: {trends.anomaly.label}"
                   + (f", control limit {trends.anomaly.limit:g}" if trends.anomaly.limit is not None else "")
                   + (f"; live models on {len(trends.anomaly.per_unit)} unit(s)" if trends.anomaly.per_unit else ""))
        new_state = {
            "line": line_id, "until": cut.isoformat(), "built": now.timestamp(), "spacing_s": trends.spacing_s,
            "batches": _last_batches(trends.batches), "phases": _last_phases(trends.phases),
        }
        return figures, new_state, caption
    new_state = {**state, "until": cut.isoformat(), "batches": {**known, **last_batches}}
    by_tag = trends.samples.partition_by("tag_id", as_dict=True)
    by_unit = trends.anomaly.scores.partition_by("unit_id", as_dict=True)
    return [unit_patch(trends, u, by_tag, by_unit) for u in unit_ids], new_state, no_update


def _last_batches(batches: pl.DataFrame) -> dict[str, str]:
    """The newest batch id of each unit in `batches`."""
    if batches.is_empty():
        return {}
    last = batches.sort("start").group_by("unit_id").agg(pl.col("batch_id").last())
    return dict(zip(last["unit_id"].to_list(), last["batch_id"].to_list()))


def _last_phases(phases: pl.DataFrame) -> dict[str, str]:
    """The newest phase span of each unit, as `batch/phase@start` (its identity)."""
    if phases.is_empty():
        return {}
    last = phases.sort("start").group_by("unit_id").agg(
        pl.concat_str("batch_id", pl.lit("/"), "phase", pl.lit("@"), pl.col("start").dt.epoch("ms").cast(pl.String))
        .last().alias("key"))
    return dict(zip(last["unit_id"].to_list(), last["key"].to_list()))


def phase_colours(phases: list[str]) -> dict[str, tuple[int, int, int]]:
    """A colour per phase name: the one its name hashes to, else the next one free among these
    phases (taken in name order, so the same phases always get the same colours)."""
    taken: dict[str, tuple[int, int, int]] = {}
    for phase in sorted(set(phases)):
        first = zlib.crc32(phase.encode()) % len(PHASE_COLOURS)
        free = [PHASE_COLOURS[(first + k) % len(PHASE_COLOURS)] for k in range(len(PHASE_COLOURS))]
        taken[phase] = next((c for c in free if c not in taken.values()), free[0])
    return taken


def rgba(colour: tuple[int, int, int], alpha: float = 1.0) -> str:
    return f"rgba({colour[0]}, {colour[1]}, {colour[2]}, {alpha})"


def _phase_shading(trends: q.LineTrends, unit_id: str, shapes: list, annotations: list) -> bool:
    """A band per phase span of the unit (clipped to the window), labelled with the phase's name,
    and the batch id where a batch starts in view; False when the unit has no span."""
    spans = trends.phases.filter(pl.col("unit_id") == unit_id).sort("start")
    if spans.is_empty():
        return False
    seen_batches: set[str] = set()
    colours = phase_colours([p or "?" for p in spans["phase"].to_list()])
    for p in spans.iter_rows(named=True):
        x0 = max(_ms(p["start"]), _ms(trends.start))
        x1 = min(_ms(p["end"]) if p["end"] is not None else _ms(trends.end), _ms(trends.end))
        if x1 <= x0:
            continue
        phase = p["phase"] or "?"
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": x0, "x1": x1, "y0": 0, "y1": 1,
                       "fillcolor": rgba(colours[phase], PHASE_ALPHA), "line": {"width": 0}, "layer": "below",
                       "name": f"phase {phase} of {p['batch_id']}"})
        # In the middle of the band: the window slides (Patches) and an edge label would leave it.
        annotations.append({"text": phase.replace("_", " "), "xref": "x", "yref": "paper", "x": (x0 + x1) // 2,
                            "y": 1.0, "xanchor": "center", "yanchor": "top", "showarrow": False,
                            "font": {"size": 10, "color": rgba(colours[phase])}, "name": f"phase {phase}"})
        if p["batch_id"] not in seen_batches and x0 > _ms(trends.start):
            # Where a batch starts in view (one begun before shows in the page's head): above the plot.
            annotations.append({"text": f"▮ {p['batch_id']}", "xref": "x", "yref": "paper", "x": x0, "y": 1.0,
                                "xanchor": "left", "yanchor": "bottom", "showarrow": False,
                                "font": {"size": 10, "color": PALETTE["text"]}})
        seen_batches.add(p["batch_id"])
    return True


def unit_figure(trends: q.LineTrends, unit_id: str, by_tag: dict | None = None) -> dict[str, Any]:
    """One subplot per tag of the unit and one for its anomaly score, sharing the time axis:
    the normal band (between the warning limits) shaded, warning limits dashed amber, alarm
    limits solid red, all labelled (H/HH/L/LL) for readers who do not tell colours apart; the
    score's control limit dashed and labelled "UCL"; the unit's batch phases shaded (one colour
    per phase, named) with the batch id at each batch's start, or, without stored phases, its
    batches shaded in alternating tones and labelled with their id. A plain plotly dict (graph objects cost more than a refresh).
    `by_tag`: the samples already partitioned by tag, when drawing many units."""
    by_tag = by_tag if by_tag is not None else trends.samples.partition_by("tag_id", as_dict=True)
    empty = trends.samples.clear()
    tags = trends.tags.filter(pl.col("unit_id") == unit_id).to_dicts()
    rows = len(tags) + 1
    spacing = min(0.06, 0.3 / rows)
    height = (1.0 - spacing * (rows - 1)) / rows
    x_range = [_ms(trends.start), _ms(trends.end)]
    data: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    for i in range(rows):
        xa, ya = _axis_key("xaxis", i), _axis_key("yaxis", i)
        x, y = xa.replace("axis", ""), ya.replace("axis", "")
        top = 1.0 - i * (height + spacing)
        layout[xa] = {
            "anchor": y, "range": x_range, "type": "date", "gridcolor": PALETTE["grid"], "zeroline": False,
            "showticklabels": i == rows - 1, "tickfont": {"size": 10}, **({"matches": "x"} if i else {}),
        }
        layout[ya] = {
            "anchor": x, "domain": [max(0.0, top - height), top], "gridcolor": PALETTE["grid"],
            "zeroline": False, "tickfont": {"size": 10}, "nticks": 4,
        }
        if i < len(tags):
            tag = tags[i]
            rows_t = by_tag.get((tag["tag_id"],), empty)
            data.append(_trace(x, y, tag["name"], rows_t["ts"], rows_t["value"], PALETTE["trace"],
                               f"%{{y:.4g}} {tag['eng_unit'] or ''}<extra>{tag['name']}</extra>"))
            title = f"{tag['description']} [{tag['eng_unit']}]" if tag["eng_unit"] else tag["description"]
            _limits(tag, x, y, shapes, annotations)
        else:
            scores = trends.anomaly.scores.filter(pl.col("unit_id") == unit_id)
            data.append(_trace(x, y, "anomaly score", scores["ts"], scores["score"], PALETTE["score"],
                               "%{y:.3g}<extra>anomaly score</extra>"))
            title = f"Anomaly score · {trends.anomaly.label_of(unit_id)}"
            limit = trends.anomaly.limit_of(unit_id)
            if limit is not None:
                layout[ya]["range"] = [0, limit * 1.5]
                layout[ya]["autorange"] = "max"
                shapes.append({"type": "line", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1, "y0": limit,
                               "y1": limit, "line": {"color": PALETTE["alarm"], "width": 1, "dash": "dot"}})
                annotations.append({"text": f"UCL {limit:g}", "xref": f"{x} domain", "yref": y, "x": 1, "y": limit,
                                    "xanchor": "left", "yanchor": "middle", "showarrow": False,
                                    "font": {"size": 10, "color": PALETTE["alarm"]}})
        annotations.append(
            {"text": title, "xref": "paper", "yref": "paper", "x": 0.0, "y": top, "xanchor": "left",
             "yanchor": "bottom", "showarrow": False, "font": {"size": 11, "color": PALETTE["text"]}}
        )
    with_phases = _phase_shading(trends, unit_id, shapes, annotations)
    batches = trends.batches.filter(pl.col("unit_id") == unit_id).sort("start") if not with_phases \
        else trends.batches.clear()
    for k, b in enumerate(batches.iter_rows(named=True)):
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": _ms(b["start"]), "x1": _ms(b["end"]),
                       "y0": 0, "y1": 1, "fillcolor": PALETTE["batch"][k % 2], "line": {"width": 0},
                       "layer": "below", "name": f"batch {b['batch_id']}"})
        annotations.append({"text": f"▮ {b['batch_id']}", "xref": "x", "yref": "paper", "x": _ms(b["start"]), "y": 1.0,
                            "xanchor": "left", "yanchor": "bottom", "showarrow": False,
                            "font": {"size": 10, "color": PALETTE["text"]}})
    layout.update(
        height=ROW_HEIGHT_PX * rows + 50,
        margin={"l": 50, "r": 70, "t": 26, "b": 26},
        paper_bgcolor=PALETTE["bg"],
        plot_bgcolor=PALETTE["plot"],
        font={"color": PALETTE["text"], "family": "Inter, 'DejaVu Sans', 'Liberation Sans', sans-serif"},
        hovermode="x unified",
        uirevision=unit_id,
        shapes=shapes,
        annotations=annotations,
    )
    return {"data": data, "layout": layout}


def unit_patch(trends: q.LineTrends, unit_id: str, by_tag: dict | None = None, by_unit: dict | None = None) -> Patch:
    """Appends the unit's new samples and scores (trace order as in `unit_figure`) and slides
    the shared time axis (the other axes match the first). `by_tag` / `by_unit`: the samples
    and scores already partitioned (`partition_by(..., as_dict=True)`), when patching many units."""
    by_tag = by_tag if by_tag is not None else trends.samples.partition_by("tag_id", as_dict=True)
    by_unit = by_unit if by_unit is not None else trends.anomaly.scores.partition_by("unit_id", as_dict=True)
    patch = Patch()
    tags = trends.tags.filter(pl.col("unit_id") == unit_id)["tag_id"].to_list()
    for i, tag_id in enumerate(tags):
        rows = by_tag.get((tag_id,))
        if rows is not None and rows.height:
            patch["data"][i]["x"].extend(_ms_list(rows["ts"]))
            patch["data"][i]["y"].extend(_values(rows["value"]))
    scores = by_unit.get((unit_id,))
    if scores is not None and scores.height:
        patch["data"][len(tags)]["x"].extend(_ms_list(scores["ts"]))
        patch["data"][len(tags)]["y"].extend(_values(scores["score"]))
    patch["layout"]["xaxis"]["range"] = [_ms(trends.start), _ms(trends.end)]
    return patch


def _trace(x: str, y: str, name: str, ts: pl.Series, values: pl.Series, colour: str, hover: str) -> dict[str, Any]:
    return {"type": "scatter", "mode": "lines", "name": name, "xaxis": x, "yaxis": y, "x": _ms_list(ts),
            "y": _values(values), "line": {"color": colour, "width": 1.4}, "showlegend": False,
            "hovertemplate": hover}


def _limits(tag: dict[str, Any], x: str, y: str, shapes: list, annotations: list) -> None:
    if tag["warning_low"] is not None and tag["warning_high"] is not None:
        shapes.append({"type": "rect", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1, "y0": tag["warning_low"],
                       "y1": tag["warning_high"], "fillcolor": PALETTE["normal_band"], "line": {"width": 0},
                       "layer": "below"})
    for col, (label, colour, dash) in LIMIT_STYLE.items():
        if tag[col] is None:
            continue
        shapes.append({"type": "line", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1, "y0": tag[col],
                       "y1": tag[col], "line": {"color": colour, "width": 1, "dash": dash}})
        annotations.append({"text": f"{label} {tag[col]:g}", "xref": f"{x} domain", "yref": y, "x": 1, "y": tag[col],
                            "xanchor": "left", "yanchor": "middle", "showarrow": False,
                            "font": {"size": 10, "color": colour}})


def _empty_figure(text: str) -> dict[str, Any]:
    return {
        "data": [],
        "layout": {
            "paper_bgcolor": PALETTE["bg"], "plot_bgcolor": PALETTE["plot"], "height": 200,
            "xaxis": {"visible": False}, "yaxis": {"visible": False},
            "annotations": [{"text": text, "showarrow": False, "font": {"color": PALETTE["text"], "size": 14}}],
            "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        },
    }


# --- callbacks ----------------------------------------------------------------------------------


def register_callbacks(app: Dash, ctx: TowerContext, clock: Callable[[], datetime]) -> None:
    @app.callback(
        Output({"type": ids.LINE_UNIT_GRAPH, "unit": ALL}, "figure"),
        Output(ids.LINE_TREND_STATE, "data"),
        Output(ids.LINE_CAPTION, "children"),
        Input(ids.LINE_TICK, "n_intervals"),
        State(ids.LINE_ID, "data"),
        State(ids.LINE_TREND_STATE, "data"),
    )
    def _trends(n: int, line_id: str, state: dict[str, Any] | None):
        unit_ids = [o["id"]["unit"] for o in callback_ctx.outputs_list[0]]
        return line_update(ctx, line_id, unit_ids, state, clock(), force_full=not n)

    @app.callback(
        Output(ids.LINE_STATUS, "children"),
        Output(ids.LINE_STATUS_KEY, "data"),
        Input(ids.LINE_TICK, "n_intervals"),
        State(ids.LINE_ID, "data"),
        State(ids.LINE_STATUS_KEY, "data"),
        prevent_initial_call=True,
    )
    def _status(_n: int, line_id: str, last_key: str | None):
        s = line_status(ctx, clock(), line_id, last_key)
        return s["head"], no_update if s["head"] is no_update else s["key"]


# --- formatting ---------------------------------------------------------------------------------


def _axis_key(prefix: str, i: int) -> str:
    return prefix if i == 0 else f"{prefix}{i + 1}"


def _ms(moment: datetime) -> int:
    """Epoch milliseconds: plotly reads numbers on a date axis as ms since the epoch, UTC, and
    they are a third of the bytes of a date string."""
    return int(moment.astimezone(UTC).timestamp() * 1000)


def _ms_list(ts: pl.Series) -> list[int]:
    return ts.dt.epoch("ms").to_list()


def _values(values: pl.Series) -> list[float]:
    # Five significant digits are more than a trend shows and keep the JSON short.
    return values.cast(pl.Float64).round_sig_figs(5).to_list()


def _age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
