"""The batch review page for quality engineers, at /batches/ (its own Dash app on the tower's
Flask server, like the alarm console).

Pick a unit, a period and one of the unit's batches; the page shows the batch against its
golden-batch model (`controltower.batch_review`): the verdict in words, the batch's ISA-88
phases (listed with their times, and shaded on the timeline and the trends), a deviation timeline
(envelope excursions per variable as bars, alarms as markers), the T²/SPE score with its limit,
what each variable contributes at the moment clicked on the score (its envelope z and its PCA
contribution), every variable against its envelope, the deviation records, a form to write and
sign one, and the report (HTML) and data (CSV) downloads of `controltower.batch_api`.

Reading needs `batch.review`, signing `deviation.record`: the callbacks check them on the
server (`acting_user`), the same way the API does, and sign through the same function
(`batch_api.sign_deviation`: with authentication on, the password is typed again).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import dash
import plotly.graph_objects as go
import polars as pl
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate
from flask import Flask, redirect
from plotly.subplots import make_subplots

from controltower.api import BadParameter
from controltower.batch_api import batch_stores, sign_deviation
from controltower.batch_review import BatchNotFound, BatchReview, list_batches, review_batch, units
from controltower.deviations import CLASSIFICATIONS, MEANINGS
from controltower.screen.chrome import brand, nav
from controltower.screen.downsample import lttb
from controltower.screen.line import PALETTE, PHASE_ALPHA, phase_colours, rgba
from controltower.websecurity import NotAllowed, acting_user, auth_enabled

if TYPE_CHECKING:
    from controltower.context import TowerContext

PATH = "/batches/"
PERIODS = {"1d": 1, "7d": 7, "30d": 30, "90d": 90}
TREND_POINTS = 400
ALARM_COLOURS = {"critical": "#ff2d55", "high": PALETTE["alarm"], "medium": PALETTE["warning"], "low": "#8fa3b8"}
ALARM_SYMBOLS = {"critical": "x", "high": "diamond", "medium": "triangle-up", "low": "circle"}  # not colour alone
ENVELOPE_FILL = "rgba(92, 200, 255, 0.16)"

# Component ids (this page only).
UNIT, PERIOD, BATCH, SUMMARY, TIMELINE, SCORE, CONTRIB, TRENDS = (
    "br-unit", "br-period", "br-batch", "br-summary", "br-timeline", "br-score", "br-contrib", "br-trends")
MOMENT, RECORDS, EXPORTS = "br-moment", "br-records", "br-exports"
F_CLASS, F_MEANING, F_COMMENT, F_TAGS, F_USER, F_PASSWORD, F_SIGN, F_MESSAGE, F_VERSION = (
    "br-classification", "br-meaning", "br-comment", "br-tags", "br-user", "br-password", "br-sign",
    "br-sign-message", "br-version")


def create_batch_review(server: Flask, ctx: TowerContext, clock: Callable[[], datetime], *, data_dir: Path,
                        assets_folder: str, title: str) -> dash.Dash:
    app = dash.Dash(
        "controltower.batches", server=server, url_base_pathname=PATH, assets_folder=assets_folder, title=title,
        update_title=None, serve_locally=True, suppress_callback_exceptions=False,
    )
    server.add_url_rule(PATH.rstrip("/"), "batch_review_redirect", lambda: redirect(PATH))
    models, deviations = batch_stores(ctx, data_dir)

    def load(unit: str | None, period: str | None, batch_id: str | None) -> BatchReview | None:
        if not unit or not batch_id:
            return None
        since, until = window(clock(), period)
        try:
            return review_batch(ctx.historian, ctx.site, unit, batch_id, since=since, until=until, models=models,
                                journal=ctx.alerts.journal, deviations=deviations)
        except BatchNotFound:
            return None

    app.layout = lambda: layout(ctx)
    register_callbacks(app, ctx, clock, load, deviations)
    return app


def window(now: datetime, period: str | None) -> tuple[datetime, datetime]:
    return now - timedelta(days=PERIODS.get(period or "7d", 7)), now + timedelta(seconds=1)


# --- layout -------------------------------------------------------------------------------------


def layout(ctx: TowerContext) -> html.Div:
    unit_options = [{"label": label, "value": path} for path, label in units(ctx.site)]
    return html.Div(
        className="shell batches",
        children=[
            dcc.Store(id=F_VERSION, data=0),
            dcc.Store(id=MOMENT, data=None),
            html.Header(className="topbar", children=[brand(ctx.site.enterprise, "Batch review"), nav("batches")]),
            html.Main(className="content batch-review", children=[
                html.Section(className="panel batch-pick", children=[
                    html.Label(["Unit", dcc.Dropdown(id=UNIT, options=unit_options,
                                                     value=unit_options[0]["value"] if unit_options else None,
                                                     clearable=False)]),
                    html.Label(["Period", dcc.RadioItems(id=PERIOD, options=[{"label": f" last {k}", "value": k}
                                                                            for k in PERIODS], value="7d", inline=True)]),
                    html.Label(["Batch", dcc.Dropdown(id=BATCH, options=[], value=None, placeholder="pick a batch")]),
                ]),
                html.Section(id=SUMMARY, className="panel batch-summary", children="Pick a unit and a batch."),
                html.Div(id=EXPORTS, className="batch-exports"),
                html.Section(className="panel", children=[
                    html.H3("Deviations over the batch"), dcc.Graph(id=TIMELINE, config={"displaylogo": False}),
                ]),
                html.Section(className="panel batch-score", children=[
                    html.H3("T²/SPE score (1 = control limit): click a moment to see what contributes"),
                    dcc.Graph(id=SCORE, config={"displaylogo": False}),
                    dcc.Graph(id=CONTRIB, config={"displaylogo": False}),
                ]),
                html.Section(className="panel", children=[
                    html.H3("Every variable against its golden envelope"), dcc.Graph(id=TRENDS, config={"displaylogo": False}),
                ]),
                html.Section(className="panel batch-records", children=[
                    html.H3("Deviation records"),
                    html.Div(id=RECORDS),
                    html.H3("Write and sign a record"),
                    html.Div(className="sign-form", children=[
                        html.Label(["Classification", dcc.Dropdown(id=F_CLASS, options=list(CLASSIFICATIONS),
                                                                   value="minor", clearable=False)]),
                        html.Label(["Meaning of the signature", dcc.Dropdown(id=F_MEANING, options=list(MEANINGS),
                                                                             value="reviewed", clearable=False)]),
                        html.Label(["Variables concerned", dcc.Dropdown(id=F_TAGS, options=[], value=[], multi=True)]),
                        html.Label(["Comment", dcc.Textarea(id=F_COMMENT, value="", className="sign-comment")]),
                        html.Label(["User (authentication is off)", dcc.Input(id=F_USER, value="", type="text")],
                                   hidden=auth_enabled()),
                        html.Label(["Your password, to sign", dcc.Input(id=F_PASSWORD, value="", type="password")],
                                   hidden=not auth_enabled()),
                        html.Button("Sign and record", id=F_SIGN, n_clicks=0, className="btn"),
                        html.Div(id=F_MESSAGE, className="sign-message", role="status"),
                    ]),
                ]),
            ]),
        ],
    )


# --- figures ------------------------------------------------------------------------------------


def _styled(fig: go.Figure, height: int, **layout) -> go.Figure:
    """The screen's dark chart style (the line page's palette)."""
    axis = {"gridcolor": PALETTE["grid"], "zeroline": False, "tickfont": {"size": 10}}
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis)
    fig.update_layout(height=height, paper_bgcolor=PALETTE["bg"], plot_bgcolor=PALETTE["plot"],
                      font={"color": PALETTE["text"], "family": "Inter, 'DejaVu Sans', 'Liberation Sans', sans-serif"},
                      **layout)
    return fig


def _empty(text: str) -> go.Figure:
    return _styled(go.Figure(), 120, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                   annotations=[{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}],
                   xaxis={"visible": False}, yaxis={"visible": False})


def _shade_phases(fig: go.Figure, review: BatchReview, *, labels: bool) -> None:
    """A band per phase of the batch across the whole figure (the line page's colours), named on top."""
    colours = phase_colours(review.phases["phase"].fill_null("?").to_list())
    for p in review.phases.iter_rows(named=True):
        phase = p["phase"] or "?"
        end = p["end"] if p["end"] is not None else review.end
        fig.add_shape(type="rect", xref="x", yref="paper", x0=p["start"], x1=end, y0=0, y1=1, layer="below",
                      fillcolor=rgba(colours[phase], PHASE_ALPHA), line={"width": 0}, name=f"phase {phase}")
        if labels:
            fig.add_annotation(text=phase.replace("_", " "), xref="x", yref="paper", x=p["start"], y=1.0,
                               xanchor="left", yanchor="bottom", showarrow=False,
                               font={"size": 10, "color": rgba(colours[phase])})


def phases_children(review: BatchReview) -> html.Div:
    """The batch's phases in words: name, start, end (or "running") and length."""
    if review.phases.is_empty():
        return html.Div("Phases: none stored for this batch (the historian has no batch events for it)",
                        className="sub", id="br-phases")
    colours = phase_colours(review.phases["phase"].fill_null("?").to_list())
    items = []
    for p in review.phases.iter_rows(named=True):
        phase = p["phase"] or "?"
        end = f"{p['end']:%H:%M:%S}" if p["end"] is not None else "running"
        length = f" ({(p['end'] - p['start']).total_seconds() / 60:.0f} min)" if p["end"] is not None else ""
        items.append(html.Li([html.Span("■ ", style={"color": rgba(colours[phase])}), html.B(phase.replace("_", " ")),
                              f" {p['start']:%Y-%m-%d %H:%M:%S} – {end}{length}"], className="br-phase"))
    return html.Div([html.B("Phases (UTC)"), html.Ul(items)], id="br-phases")


def timeline_figure(review: BatchReview) -> go.Figure:
    """Envelope excursions as bars per variable, alarms as markers (symbol and colour by priority)."""
    fig = go.Figure()
    excursions = review.excursions()
    for row in excursions.iter_rows(named=True):
        fig.add_trace(go.Scatter(
            x=[row["start"], row["end"]], y=[row["tag_id"], row["tag_id"]], mode="lines",
            line={"width": 12, "color": PALETTE["alarm"]}, showlegend=False,
            hovertext=f"outside the envelope: {row['rows']} rows, worst |z| {row['worst_z']:.1f}", hoverinfo="text+x"))
    raised = review.alarms.filter(pl.col("event") == "raised") if "event" in review.alarms.columns else review.alarms
    for priority, colour in ALARM_COLOURS.items():
        part = raised.filter(pl.col("priority") == priority) if raised.height else raised
        if part.height:
            fig.add_trace(go.Scatter(x=part["ts"].to_list(), y=part["tag_id"].to_list(), mode="markers",
                                     marker={"symbol": ALARM_SYMBOLS[priority], "size": 11, "color": colour},
                                     name=f"alarm ({priority})", hovertext=part["message"].to_list()))
    _styled(fig, 90 + 28 * len(review.tags), margin={"l": 10, "r": 10, "t": 10, "b": 30},
            xaxis={"range": [review.start, review.end], "type": "date"},
            yaxis={"categoryorder": "array", "categoryarray": review.tags, "type": "category",
                   "range": [-0.5, len(review.tags) - 0.5]},
            legend={"orientation": "h"})
    if not excursions.height and not raised.height:
        fig.add_annotation(text="no envelope excursion and no alarm in this batch", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    _shade_phases(fig, review, labels=False)
    return fig


def score_figure(review: BatchReview, moment: str | None) -> go.Figure:
    if review.score is None or review.score.rows.is_empty():
        return _empty(review.model_note)
    rows = review.score.rows.select("ts", "score").drop_nulls()
    if rows.height > 3 * TREND_POINTS:
        rows = lttb(rows.rename({"score": "value"}), TREND_POINTS, by=None).rename({"value": "score"})
    fig = go.Figure(go.Scatter(x=rows["ts"].to_list(), y=rows["score"].to_list(), mode="lines", name="score",
                               line={"color": PALETTE["score"]}))
    fig.add_hline(y=1.0, line={"color": PALETTE["alarm"], "dash": "dash"}, annotation_text="limit")
    if moment:
        fig.add_vline(x=moment, line={"color": PALETTE["text"], "dash": "dot"})
    return _styled(fig, 220, margin={"l": 10, "r": 10, "t": 10, "b": 30}, showlegend=False,
                   xaxis={"range": [review.start, review.end], "type": "date"})


def contribution_figure(review: BatchReview, moment: str | None) -> go.Figure:
    if review.score is None:
        return _empty("no golden-batch model: no contributions")
    if not moment:
        return _empty("click the score to see what each variable contributes at that moment")
    at = datetime.fromisoformat(moment)  # plotly gives "2024-05-01 05:50:05" (UTC, naive)
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    frame = review.contributions_at(at)
    names = [t.rsplit(".", 1)[-1] for t in frame["tag_id"].to_list()]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("deviation from the envelope (σ)", "PCA contribution (× limit)"))
    fig.add_trace(go.Bar(x=frame["z"].to_list(), y=names, orientation="h", marker={"color": PALETTE["alarm"]}), 1, 1)
    fig.add_trace(go.Bar(x=frame["contribution"].to_list(), y=names, orientation="h", marker={"color": PALETTE["trace"]}),
                  1, 2)
    return _styled(fig, 100 + 26 * len(names), margin={"l": 10, "r": 10, "t": 50, "b": 20}, showlegend=False,
                   yaxis={"autorange": "reversed"}, yaxis2={"autorange": "reversed"},
                   title={"text": f"at {at:%Y-%m-%d %H:%M:%S} UTC", "font": {"size": 12}, "x": 0.5})


def trends_figure(review: BatchReview) -> go.Figure:
    tags = review.tags
    fig = make_subplots(rows=len(tags), cols=1, shared_xaxes=True, vertical_spacing=0.02,
                        subplot_titles=[t.rsplit(".", 1)[-1] for t in tags])
    samples = lttb(review.samples.select("ts", "tag_id", "value"), TREND_POINTS, by="tag_id")
    for i, tag in enumerate(tags, start=1):
        if review.envelope is not None:
            env = review.envelope.filter(pl.col("tag_id") == tag).drop_nulls("low")
            env = env.gather_every(max(1, env.height // TREND_POINTS))
            ts = env["ts"].to_list()
            fig.add_trace(go.Scatter(x=ts + ts[::-1], y=env["high"].to_list() + env["low"].to_list()[::-1],
                                     fill="toself", fillcolor=ENVELOPE_FILL, line={"width": 0},
                                     hoverinfo="skip", showlegend=False, name="envelope"), i, 1)
        s = samples.filter(pl.col("tag_id") == tag)
        fig.add_trace(go.Scatter(x=s["ts"].to_list(), y=s["value"].to_list(), mode="lines", showlegend=False,
                                 line={"color": PALETTE["trace"], "width": 1.2}, name=tag), i, 1)
    _shade_phases(fig, review, labels=True)
    return _styled(fig, 150 * len(tags) + 40, margin={"l": 10, "r": 10, "t": 30, "b": 20})


def summary_children(review: BatchReview) -> list:
    verdict = review.verdict
    facts = [
        html.Div([html.B("Batch "), review.batch_id, html.B("  unit "), review.unit]),
        html.Div([html.B("From "), f"{review.start:%Y-%m-%d %H:%M:%S}", html.B(" to "),
                  f"{review.end:%Y-%m-%d %H:%M:%S} UTC", html.B("  samples "), str(review.samples.height)]),
        html.Div(review.model_note, className="model-note"),
        phases_children(review),
    ]
    if verdict.get("model"):
        bad = verdict["batch_alarm"]
        facts.append(html.Div(
            ("✖ Outside" if bad else "✔ Within") + " its golden-batch limits: "
            f"{verdict['envelope_alarms']} of {verdict['rows']} rows outside the envelope, "
            f"{verdict['mv_alarms']} over the T²/SPE limit; top contributors "
            f"{', '.join(t.rsplit('.', 1)[-1] for t in (verdict['contributors'] or '-').split(';'))}",
            className="verdict verdict-bad" if bad else "verdict verdict-ok", id="br-verdict"))
    return facts


def records_children(review: BatchReview) -> html.Table | html.P:
    if not review.deviations:
        return html.P("No deviation record for this batch yet.", className="empty")
    head = ["Record", "Classification", "Comment", "Moment", "Signed by", "Meaning", "Signed at"]
    return html.Table(className="records", children=[
        html.Thead(html.Tr([html.Th(h) for h in head])),
        html.Tbody([html.Tr([html.Td(v or "") for v in (r.id, r.classification, r.comment, r.at, r.signed_name,
                                                         r.meaning, r.signed_at)]) for r in review.deviations]),
    ])


def export_links(review: BatchReview, period: str | None) -> list:
    since = f"-{period or '7d'}"
    base = f"/api/batches/{quote(review.unit, safe='')}/{quote(review.batch_id, safe='')}"
    return [
        html.A("⬇ Deviation report (HTML)", href=f"{base}/report.html?since={since}", className="btn", id="br-report"),
        html.A("⬇ Data (CSV)", href=f"{base}/data.csv?since={since}", className="btn"),
        html.A("⬇ Envelope (CSV)", href=f"{base}/data.csv?since={since}&what=envelope", className="btn")
        if review.envelope is not None else None,
    ]


# --- callbacks ----------------------------------------------------------------------------------


def register_callbacks(app: dash.Dash, ctx: TowerContext, clock, load, deviations) -> None:
    @app.callback(Output(BATCH, "options"), Output(BATCH, "value"), Input(UNIT, "value"), Input(PERIOD, "value"))
    def batch_options(unit: str | None, period: str | None):
        try:
            acting_user("batch.review")
        except NotAllowed:
            return [{"label": "you may not review batches", "value": "", "disabled": True}], None
        if not unit:
            return [], None
        since, until = window(clock(), period)
        found = list_batches(ctx.historian, ctx.site, unit, since, until)
        options = [{"label": f"{r['batch_id']}  ({r['start']:%Y-%m-%d %H:%M} to {r['end']:%H:%M} UTC)",
                    "value": r["batch_id"]} for r in found.iter_rows(named=True)]
        return options, options[0]["value"] if options else None

    @app.callback(
        Output(SUMMARY, "children"), Output(EXPORTS, "children"), Output(TIMELINE, "figure"), Output(TRENDS, "figure"),
        Output(RECORDS, "children"), Output(F_TAGS, "options"), Output(MOMENT, "data"),
        Input(BATCH, "value"), Input(F_VERSION, "data"), State(UNIT, "value"), State(PERIOD, "value"),
    )
    def show_batch(batch_id: str | None, _version: int, unit: str | None, period: str | None):
        try:
            acting_user("batch.review")
        except NotAllowed as exc:
            return exc.message, [], _empty(""), _empty(""), "", [], None
        review = load(unit, period, batch_id)
        if review is None:
            text = "No batch of this unit in the period." if unit else "Pick a unit and a batch."
            return text, [], _empty(text), _empty(text), "", [], None
        tag_options = [{"label": t.rsplit(".", 1)[-1], "value": t} for t in review.tags]
        return (summary_children(review), export_links(review, period), timeline_figure(review),
                trends_figure(review), records_children(review), tag_options, None)

    @app.callback(
        Output(SCORE, "figure"), Output(CONTRIB, "figure"),
        Input(BATCH, "value"), Input(MOMENT, "data"), State(UNIT, "value"), State(PERIOD, "value"),
    )
    def show_score(batch_id, moment, unit, period):
        try:
            acting_user("batch.review")
        except NotAllowed:
            raise PreventUpdate from None
        review = load(unit, period, batch_id)
        if review is None:
            return _empty(""), _empty("")
        return score_figure(review, moment), contribution_figure(review, moment)

    @app.callback(Output(MOMENT, "data", allow_duplicate=True), Input(SCORE, "clickData"), prevent_initial_call=True)
    def pick_moment(click):
        if not click or not click.get("points"):
            raise PreventUpdate
        return str(click["points"][0]["x"])

    @app.callback(
        Output(F_MESSAGE, "children"), Output(F_VERSION, "data"), Output(F_PASSWORD, "value"),
        Input(F_SIGN, "n_clicks"),
        State(UNIT, "value"), State(PERIOD, "value"), State(BATCH, "value"), State(F_CLASS, "value"),
        State(F_MEANING, "value"), State(F_COMMENT, "value"), State(F_TAGS, "value"), State(F_USER, "value"),
        State(F_PASSWORD, "value"), State(MOMENT, "data"), State(F_VERSION, "data"),
        prevent_initial_call=True,
    )
    def sign(_clicks, unit, period, batch_id, classification, meaning, comment, tags, user, password, moment, version):
        review = load(unit, period, batch_id)
        if review is None:
            return "Pick a batch first.", dash.no_update, ""
        body = {"classification": classification, "meaning": meaning, "comment": comment, "tags": tags or [],
                "user": user or None, "password": password, "at": moment}
        try:
            record = sign_deviation(review, deviations, body, clock())
        except (BadParameter, NotAllowed) as exc:
            return f"Not recorded: {getattr(exc, 'message', None) or exc}", dash.no_update, ""
        return f"Recorded {record.id}, signed by {record.signed_name} ({record.meaning}).", (version or 0) + 1, ""
