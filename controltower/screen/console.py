"""The alarm console (`/alarms/`): the operator's alarm summary as a sortable, filterable grid
(dash-ag-grid), the actions on the selected alarm (acknowledge with a comment, shelve for a
time with a reason, unshelve), the alarm journal with a search box, and a cue for new critical
alarms (a pulsing banner; a short beep through the Web Audio API when the operator turns the
sound on, off by default).

It is a second Dash app on the overview's Flask server (`create_console`), so the overview's
layout and callbacks stay as they are and as fast; the two link to each other. Every state is
shown by colour *and* by an icon and a word (colour-blind safe). Data comes from `queries`; the
actions call the `AlertBook`, as the JSON API does. Every callback body is a plain function of
(ctx, now, inputs) (`grid_update`, `perform_action`, `selected_details`, `journal_update`), so
tests call them without a browser.

With authentication on, the acting user is the logged-in one (shown in the "Acting as" field,
which cannot be changed) and the action callback checks their role on the server
(`controltower.websecurity.acting_user`) before anything is done; with it off (the demo), the
name typed in the console. Each action is also an audit record. All times are UTC.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dash
import dash_ag_grid as dag
import polars as pl
from dash import Input, Output, Patch, State, dcc, html, no_update
from flask import Flask, redirect

from analytics.alerts import MAX_SHELVE_MINUTES, PRIORITIES, AlarmNotFound, AlarmTransitionError
from controltower.audit import AuditError
from controltower.screen import ids
from controltower.screen import queries as q
from controltower.screen.chrome import brand, nav
from controltower.websecurity import NotAllowed, acting_user, audit_record, current_principal

if TYPE_CHECKING:
    from controltower.context import TowerContext

PATH = "/alarms/"

# Icon + word for each state the console shows (`Alert.display_state`).
STATE_LABEL = {
    "active-unacknowledged": ("●", "ACTIVE · UNACK"),
    "active-acknowledged": ("◉", "ACTIVE · ACK"),
    "cleared-unacknowledged": ("○", "CLEARED · UNACK"),
    "normal": ("✔", "NORMAL"),
    "shelved": ("‖", "SHELVED"),
    "out-of-service": ("⊘", "OUT OF SERVICE"),
}
# A number as well as a word and a colour: "1 CRITICAL" sorts before "2 HIGH".
PRIORITY_LABEL = {"critical": "1 ◆ CRITICAL", "high": "2 ▲ HIGH", "medium": "3 ■ MEDIUM", "low": "4 ● LOW"}
VIEWS = [
    {"label": "Alarm list", "value": "alarms"},
    {"label": "Shelved", "value": "shelved"},
    {"label": "Out of service", "value": "suppressed"},
    {"label": "Recent (all)", "value": "recent"},
]
# The permission (`controltower.auth.PERMISSIONS`) each console action needs.
ACTION_PERMISSION = {"ack": "alarm.ack", "shelve": "alarm.shelve", "unshelve": "alarm.unshelve"}
SHELVE_CHOICES = [m for m in (15, 30, 60, 120, 240, 480, 720) if m <= MAX_SHELVE_MINUTES]
JOURNAL_ROWS = 100
CONSOLE_LIMIT = 500

COLUMNS: list[dict[str, Any]] = [
    {"field": "priority_label", "headerName": "Priority", "width": 140, "sort": "asc", "sortIndex": 0,
     "cellClass": "cell-priority", "cellClassRules": {
         f"prio-{p}": f"params.data.priority == '{p}'" for p in PRIORITIES}},
    {"field": "state_label", "headerName": "State", "width": 180, "cellClass": "cell-state", "cellClassRules": {
        f"state-{s}": f"params.data.display_state == '{s}'" for s in STATE_LABEL}},
    {"field": "raised", "headerName": "Raised (UTC)", "width": 170, "sort": "desc", "sortIndex": 1,
     "cellClass": "mono"},
    {"field": "where", "headerName": "Line / unit", "width": 150},
    {"field": "tag_id", "headerName": "Tag", "width": 230, "cellClass": "mono"},
    {"field": "description", "headerName": "Description", "width": 190},
    {"field": "value", "headerName": "Value", "width": 105, "type": "rightAligned", "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "params.value == null ? '—' : Number(params.value.toPrecision(4)) + ' ' + "
                                   "(params.data.eng_unit || '')"}, "cellClass": "mono"},
    {"field": "message", "headerName": "Message", "flex": 1, "minWidth": 180, "tooltipField": "message"},
    {"field": "ack", "headerName": "Acknowledged", "width": 150},
    {"field": "shelved", "headerName": "Shelved until (UTC)", "width": 165, "tooltipField": "shelve_reason"},
    {"field": "group", "headerName": "Flood", "width": 120},
]
# A dark theme through AG Grid's theming API, matching screen.css.
GRID_THEME = (
    "themeQuartz.withParams({backgroundColor: '#0d141c', foregroundColor: '#dbe4ee', "
    "headerBackgroundColor: '#111923', headerTextColor: '#8597aa', borderColor: '#1e2a37', "
    "rowHoverColor: 'rgba(92, 200, 255, 0.08)', selectedRowBackgroundColor: 'rgba(92, 200, 255, 0.18)', "
    "accentColor: '#5cc8ff', fontFamily: 'Inter, DejaVu Sans, Liberation Sans, sans-serif', fontSize: 13, "
    "headerFontSize: 11, rowHeight: 34, headerHeight: 34, wrapperBorderRadius: 4})"
)

# Web Audio beep, only when the sound checkbox is ticked (browsers allow audio after a click,
# which ticking it is).
BEEP_JS = """
function(fresh, sound) {
    if (!fresh || !fresh.ids || !fresh.ids.length || !sound || !sound.length) {
        return window.dash_clientside.no_update;
    }
    try {
        const Ctx = window.AudioContext || window.webkitAudioContext;
        window._ctBeep = window._ctBeep || new Ctx();
        const ac = window._ctBeep, t = ac.currentTime;
        [0, 0.25].forEach(function (d) {
            const osc = ac.createOscillator(), gain = ac.createGain();
            osc.type = 'square'; osc.frequency.value = 880;
            gain.gain.setValueAtTime(0.08, t + d); gain.gain.setValueAtTime(0, t + d + 0.15);
            osc.connect(gain); gain.connect(ac.destination);
            osc.start(t + d); osc.stop(t + d + 0.16);
        });
    } catch (e) { return 'no audio: ' + e; }
    return fresh.at;
}
"""


def create_console(server: Flask, ctx: TowerContext, clock: Callable[[], datetime], *, assets_folder: str,
                   title: str) -> dash.Dash:
    """The console as a Dash app under `PATH` on `server` (which carries the overview)."""
    app = dash.Dash(
        "controltower.console",
        server=server,
        url_base_pathname=PATH,
        assets_folder=assets_folder,
        title=title,
        update_title=None,
        serve_locally=True,
        suppress_callback_exceptions=False,
    )
    # The overview's Dash app answers every other path, /alarms included: send it on.
    server.add_url_rule(PATH.rstrip("/"), "alarm_console_redirect", lambda: redirect(PATH))
    app.layout = lambda: layout(ctx, clock())
    register_callbacks(app, ctx, clock)
    return app


# --- layout -------------------------------------------------------------------------------------


def layout(ctx: TowerContext, now: datetime) -> html.Div:
    grid = grid_update(ctx, now, "alarms", list(PRIORITIES), None, None)
    return html.Div(
        className="shell console",
        children=[
            dcc.Interval(id=ids.CONSOLE_TICK, interval=ctx.site.screen.refresh_ms, n_intervals=0),
            dcc.Store(id=ids.CONSOLE_VERSION, data=0),
            dcc.Store(id=ids.CONSOLE_ROWS_KEY, data=grid["key"]),
            dcc.Store(id=ids.CONSOLE_SEEN_CRITICAL, data=grid["seen"]),
            dcc.Store(id=ids.CONSOLE_NEW_CRITICAL, data=None),
            dcc.Store(id=ids.CONSOLE_SOUND_DONE, data=None),
            dcc.Store(id=ids.CONSOLE_JOURNAL_KEY, data=None),
            html.Header(
                className="topbar",
                children=[
                    brand(ctx.site.enterprise, "Alarm console"),
                    nav("alarms"),
                    html.Div(grid["summary"], id=ids.CONSOLE_SUMMARY, className="summary"),
                    html.Div(grid["cue"], id=ids.CONSOLE_CUE, className=grid["cue_class"], role="alert"),
                    html.Div(
                        className="topbar-right",
                        children=[
                            dcc.Checklist(
                                id=ids.CONSOLE_SOUND, options=[{"label": " ♪ sound for new critical", "value": "on"}],
                                value=[], className="sound-toggle", inputClassName="sound-input",
                            ),
                            html.Div(now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), id=ids.CONSOLE_CLOCK,
                                     className="clock"),
                        ],
                    ),
                ],
            ),
            html.Main(
                className="content",
                children=[
                    html.Section(
                        className="panel console-panel",
                        children=[
                            html.Div(
                                className="console-toolbar",
                                children=[
                                    html.H2(["Alarms ", html.Span(grid["count"], id=ids.CONSOLE_COUNT,
                                                                  className="count-badge")],
                                            className="panel-title"),
                                    dcc.RadioItems(id=ids.CONSOLE_VIEW, options=VIEWS, value="alarms", inline=True,
                                                   className="view-select", inputClassName="view-input"),
                                    dcc.Checklist(
                                        id=ids.CONSOLE_PRIORITIES,
                                        options=[{"label": PRIORITY_LABEL[p][2:], "value": p} for p in reversed(PRIORITIES)],
                                        value=list(PRIORITIES), inline=True, className="priority-select",
                                    ),
                                    dcc.Input(id=ids.CONSOLE_QUICK_FILTER, type="search", placeholder="Filter rows…",
                                              debounce=False, className="text-input quick-filter"),
                                ],
                            ),
                            dag.AgGrid(
                                id=ids.CONSOLE_GRID,
                                columnDefs=COLUMNS,
                                rowData=grid["rows"],
                                getRowId="params.data.id",
                                defaultColDef={"sortable": True, "resizable": True, "filter": True},
                                rowClassRules={
                                    "row-unack": "params.data.state.endsWith('unacknowledged')",
                                    "row-critical": "params.data.priority == 'critical'",
                                    "row-normal": "params.data.state == 'normal'",
                                },
                                dashGridOptions={
                                    "theme": {"function": GRID_THEME},
                                    "rowSelection": {"mode": "singleRow", "checkboxes": False,
                                                     "enableClickSelection": True},
                                    "animateRows": False,
                                    "tooltipShowDelay": 300,
                                },
                                className="console-grid",
                                style={"height": "340px", "width": "100%"},
                            ),
                        ],
                    ),
                    html.Div(
                        className="columns console-columns",
                        children=[
                            html.Section(
                                className="panel actions-panel",
                                children=[
                                    html.H2("Selected alarm", className="panel-title"),
                                    html.Div(selected_details(ctx, None), id=ids.CONSOLE_SELECTED,
                                             className="selected"),
                                    _user_field(current_principal()),
                                    html.Div(
                                        className="action-row",
                                        children=[
                                            dcc.Input(id=ids.CONSOLE_ACK_COMMENT, type="text", maxLength=1000,
                                                      placeholder="Comment (optional)", className="text-input grow"),
                                            html.Button("✔ Acknowledge", id=ids.CONSOLE_ACK, n_clicks=0,
                                                        className="btn btn-ack"),
                                        ],
                                    ),
                                    html.Div(
                                        className="action-row",
                                        children=[
                                            dcc.Dropdown(
                                                id=ids.CONSOLE_SHELVE_MINUTES,
                                                options=[{"label": _minutes_text(m), "value": m} for m in SHELVE_CHOICES],
                                                value=60, clearable=False, searchable=False, className="minutes-select",
                                            ),
                                            dcc.Input(id=ids.CONSOLE_SHELVE_REASON, type="text", maxLength=1000,
                                                      placeholder="Reason to shelve (required)", className="text-input grow"),
                                            html.Button("‖ Shelve", id=ids.CONSOLE_SHELVE, n_clicks=0,
                                                        className="btn btn-shelve"),
                                            html.Button("▶ Unshelve", id=ids.CONSOLE_UNSHELVE, n_clicks=0,
                                                        className="btn btn-unshelve"),
                                        ],
                                    ),
                                    html.Div(id=ids.CONSOLE_RESULT, className="result", role="status"),
                                ],
                            ),
                            html.Section(
                                className="panel journal-panel",
                                children=[
                                    html.Div(
                                        className="journal-head",
                                        children=[
                                            html.H2("Alarm journal", className="panel-title"),
                                            dcc.Input(id=ids.CONSOLE_JOURNAL_SEARCH, type="search", debounce=True,
                                                      placeholder="Search tag, user, comment, event…",
                                                      className="text-input grow"),
                                        ],
                                    ),
                                    html.Div(journal_update(ctx, None, None)[0], id=ids.CONSOLE_JOURNAL,
                                             className="journal"),
                                ],
                            ),
                        ],
                    ),
                ],
            ),
        ],
    )


# --- callback bodies ----------------------------------------------------------------------------


def grid_update(ctx: TowerContext, now: datetime, view: str | None, priorities: list[str] | None,
                last_key: str | None, seen: list[str] | None) -> dict[str, Any]:
    """Everything the tick refreshes: {rows (or no_update when unchanged), key, count, summary,
    cue, cue_class, seen, new_critical (or None), clock}."""
    frame = q.console_alarms(ctx, view or "alarms", limit=CONSOLE_LIMIT)
    if priorities is not None:
        frame = frame.filter(pl.col("priority").is_in(priorities))
    rows = grid_rows(frame)
    key = hashlib.sha1(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()

    listed = q.console_alarms(ctx, "alarms", limit=CONSOLE_LIMIT)
    unack = listed.filter(pl.col("state").str.ends_with("unacknowledged"))
    critical = unack.filter(pl.col("priority") == "critical")["id"].to_list()
    fresh = sorted(set(critical) - set(seen or []))
    summary = []
    for p in reversed(PRIORITIES):
        n_all = int((listed["priority"] == p).sum())
        n_unack = int((unack["priority"] == p).sum())
        summary.append(html.Span(f"{PRIORITY_LABEL[p][2:]} {n_all}" + (f" ({n_unack} unack)" if n_unack else ""),
                                 className=f"summary-item prio-{p}" + ("" if n_all else " count-zero")))
    if critical:
        cue = [html.Span("◆", className="icon"), f" {len(critical)} unacknowledged CRITICAL alarm"
               + ("s" if len(critical) > 1 else "")]
        cue_class = "critical-cue critical-cue-on" + (" critical-cue-new" if fresh else "")
    else:
        cue, cue_class = "", "critical-cue"
    return {
        "rows": rows if key != last_key else no_update,
        "key": key,
        "count": str(frame.height),
        "summary": summary,
        "cue": cue,
        "cue_class": cue_class,
        "seen": critical,
        "new_critical": {"ids": fresh, "at": now.isoformat()} if fresh else None,
        "clock": now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def grid_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Console rows (`queries.CONSOLE_SCHEMA`) as the grid's rowData."""
    out = []
    for a in frame.iter_rows(named=True):
        icon, word = STATE_LABEL.get(a["display_state"], ("?", a["display_state"].upper()))
        ack = None
        if a["acknowledged_by"]:
            ack = f"{a['acknowledged_by']} {_hms(a['acknowledged_at'])}"
        if a["group_count"]:
            group = f"+{a['group_count']} grouped"
        elif a["grouped_under"]:
            group = "↳ in a flood"
        else:
            group = ""
        out.append({
            "id": a["id"],
            "priority": a["priority"],
            "priority_label": PRIORITY_LABEL.get(a["priority"], a["priority"]),
            "state": a["state"],
            "display_state": a["display_state"],
            "state_label": f"{icon} {word}",
            "raised": _stamp(a["raised_at"]),
            "where": " / ".join(x for x in (a["line"], a["unit"]) if x) or "—",
            "tag_id": a["tag_id"],
            "description": a["description"],
            "value": a["value"],
            "eng_unit": a["eng_unit"] or "",
            "message": a["message"],
            "ack": ack,
            "ack_comment": a["ack_comment"],
            "shelved": _stamp(a["shelved_until"]) if a["shelved_until"] else None,
            "shelve_reason": a["shelve_reason"],
            "group": group,
        })
    return out


def selected_details(ctx: TowerContext, alert_id: str | None) -> Any:
    """The selected alarm's summary (looked up again, so it shows its current state)."""
    alert = ctx.alerts.get(alert_id) if alert_id else None
    if alert is None:
        return html.Div("Select an alarm in the grid to act on it.", className="alerts-empty")
    icon, word = STATE_LABEL.get(alert.display_state, ("?", alert.display_state))
    lines = [
        html.Div([html.Span(PRIORITY_LABEL[alert.priority][2:], className=f"prio-badge prio-{alert.priority}"), " ",
                  html.Span(f"{icon} {word}", className=f"state-badge state-{alert.display_state}",
                            id="console-selected-state"),
                  " ", html.Span(alert.description or alert.tag_id, className="selected-name")]),
        html.Div(alert.message, className="sub"),
        html.Div(f"{alert.tag_id} · raised {_stamp(alert.raised_at)} UTC"
                 + (f" · cleared {_stamp(alert.cleared_at)}" if alert.cleared_at else ""), className="sub mono"),
    ]
    if alert.acknowledged_by:
        lines.append(html.Div(f"Acknowledged by {alert.acknowledged_by} at {_stamp(alert.acknowledged_at)}"
                              + (f": “{alert.ack_comment}”" if alert.ack_comment else ""), className="sub"))
    if alert.shelved_until:
        lines.append(html.Div(f"Shelved by {alert.shelved_by} until {_stamp(alert.shelved_until)}: {alert.shelve_reason}",
                              className="sub"))
    return lines


def perform_action(ctx: TowerContext, action: str, alert_id: str | None, *, user: str | None,
                   comment: str | None = None, minutes: float | None = None,
                   reason: str | None = None) -> tuple[bool, str]:
    """Acknowledge, shelve or unshelve the alert `alert_id` as `user`; (ok, message for the
    operator). Never raises for what an operator can get wrong."""
    if not alert_id:
        return False, "Select an alarm in the grid first."
    if not (user or "").strip():
        return False, "Enter your name first: every action is recorded in the journal under it."
    book = ctx.alerts
    found = book.get(alert_id)
    before = found.display_state if found is not None else None
    try:
        if action == "ack":
            alert = book.acknowledge(alert_id, user, comment or "")
            done = f"Acknowledged {alert.tag_id} ({alert.state})"
        elif action == "shelve":
            alert = book.shelve(alert_id, user, minutes, reason)
            done = f"Shelved {alert.tag_id} until {_stamp(alert.shelved_until)} UTC"
        elif action == "unshelve":
            alert = book.unshelve(alert_id, user, comment or "")
            done = f"Unshelved {alert.tag_id} ({alert.state})"
        else:
            return False, f"unknown action {action!r}"
    except (AlarmNotFound, AlarmTransitionError, ValueError) as exc:
        return False, str(exc.args[0] if isinstance(exc, AlarmNotFound) and exc.args else exc)
    try:
        audit_record(user, ACTION_PERMISSION[action], f"{alert.tag_id} alert {alert.id}", old=before,
                     new=alert.display_state, reason=(reason if action == "shelve" else comment) or None)
    except AuditError as exc:
        return False, f"{done}, but it could not be recorded in the audit trail: {exc}"
    return True, done


def journal_update(ctx: TowerContext, text: str | None, last_key: str | None) -> tuple[Any, str | None]:
    """The journal table for `text`, and its key (the file's size and the search); the table
    is no_update when neither changed since `last_key`."""
    journal = ctx.alerts.journal
    if journal is None:
        return html.Div("This control tower keeps no alarm journal.", className="alerts-empty"), None
    size = journal.path.stat().st_size if journal.path.exists() else 0
    key = f"{size}:{text or ''}"
    if key == last_key:
        return no_update, key
    frame = q.journal_entries(ctx, text=text, limit=JOURNAL_ROWS)
    if frame is None or frame.is_empty():
        return html.Div("No journal entries match." if text else "The journal is empty.", className="alerts-empty"), key
    rows = []
    for e in frame.iter_rows(named=True):
        change = f"{_state_word(e['from_state'])} → {_state_word(e['to_state'])}"
        rows.append(html.Tr(
            className=f"journal-row journal-{e['event']}",
            children=[
                html.Td(_stamp(e["ts_dt"])[5:], className="mono nowrap", title=e["ts"] or ""),
                html.Td(e["event"], className="journal-event"),
                html.Td(_short_tag(e["tag_id"]), className="mono sub-cell", title=e["tag_id"] or ""),
                html.Td(change, className="journal-change"),
                html.Td(e["user"] or ""),
                html.Td(e["comment"] or html.Span(e["message"] or "", className="sub"), className="msg",
                        title=e["message"] or ""),
            ],
        ))
    head = ["Time (UTC)", "Event", "Tag", "State", "User", "Comment"]
    return html.Table(className="alerts journal-table",
                      children=[html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)]), key


# --- callbacks ----------------------------------------------------------------------------------


def register_callbacks(app: dash.Dash, ctx: TowerContext, clock: Callable[[], datetime]) -> None:
    @app.callback(
        Output(ids.CONSOLE_GRID, "rowData"),
        Output(ids.CONSOLE_ROWS_KEY, "data"),
        Output(ids.CONSOLE_COUNT, "children"),
        Output(ids.CONSOLE_SUMMARY, "children"),
        Output(ids.CONSOLE_CUE, "children"),
        Output(ids.CONSOLE_CUE, "className"),
        Output(ids.CONSOLE_SEEN_CRITICAL, "data"),
        Output(ids.CONSOLE_NEW_CRITICAL, "data"),
        Output(ids.CONSOLE_CLOCK, "children"),
        Input(ids.CONSOLE_TICK, "n_intervals"),
        Input(ids.CONSOLE_VERSION, "data"),
        Input(ids.CONSOLE_VIEW, "value"),
        Input(ids.CONSOLE_PRIORITIES, "value"),
        State(ids.CONSOLE_ROWS_KEY, "data"),
        State(ids.CONSOLE_SEEN_CRITICAL, "data"),
    )
    def _grid(_n, _version, view, priorities, last_key, seen):
        g = grid_update(ctx, clock(), view, priorities, last_key, seen)
        return (g["rows"], g["key"], g["count"], g["summary"], g["cue"], g["cue_class"], g["seen"],
                g["new_critical"] if g["new_critical"] else no_update, g["clock"])

    @app.callback(Output(ids.CONSOLE_GRID, "dashGridOptions"), Input(ids.CONSOLE_QUICK_FILTER, "value"),
                  prevent_initial_call=True)
    def _quick_filter(text):
        patch = Patch()
        patch["quickFilterText"] = text or ""
        return patch

    @app.callback(
        Output(ids.CONSOLE_SELECTED, "children"),
        Input(ids.CONSOLE_GRID, "selectedRows"),
        Input(ids.CONSOLE_VERSION, "data"),
        Input(ids.CONSOLE_TICK, "n_intervals"),
    )
    def _selected(selected, _version, _n):
        return selected_details(ctx, _selected_id(selected))

    @app.callback(
        Output(ids.CONSOLE_RESULT, "children"),
        Output(ids.CONSOLE_RESULT, "className"),
        Output(ids.CONSOLE_VERSION, "data"),
        Output(ids.CONSOLE_ACK_COMMENT, "value"),
        Output(ids.CONSOLE_SHELVE_REASON, "value"),
        Input(ids.CONSOLE_ACK, "n_clicks"),
        Input(ids.CONSOLE_SHELVE, "n_clicks"),
        Input(ids.CONSOLE_UNSHELVE, "n_clicks"),
        State(ids.CONSOLE_GRID, "selectedRows"),
        State(ids.CONSOLE_USER, "value"),
        State(ids.CONSOLE_ACK_COMMENT, "value"),
        State(ids.CONSOLE_SHELVE_MINUTES, "value"),
        State(ids.CONSOLE_SHELVE_REASON, "value"),
        State(ids.CONSOLE_VERSION, "data"),
        prevent_initial_call=True,
    )
    def _act(_ack, _shelve, _unshelve, selected, user, comment, minutes, reason, version):
        action = {ids.CONSOLE_ACK: "ack", ids.CONSOLE_SHELVE: "shelve",
                  ids.CONSOLE_UNSHELVE: "unshelve"}[dash.ctx.triggered_id]
        try:  # the role is checked here, on the server, whatever the page shows
            user = acting_user(ACTION_PERMISSION[action], user)
        except NotAllowed as exc:
            return ([html.Span("✖ ", className="icon"), exc.message], "result result-error", no_update, no_update,
                    no_update)
        ok, message = perform_action(ctx, action, _selected_id(selected), user=user, comment=comment,
                                     minutes=minutes, reason=reason)
        css = "result result-ok" if ok else "result result-error"
        text = [html.Span("✔ " if ok else "✖ ", className="icon"), message]
        if not ok:
            return text, css, no_update, no_update, no_update
        return (text, css, (version or 0) + 1, "" if action == "ack" else no_update,
                "" if action == "shelve" else no_update)

    @app.callback(
        Output(ids.CONSOLE_JOURNAL, "children"),
        Output(ids.CONSOLE_JOURNAL_KEY, "data"),
        Input(ids.CONSOLE_JOURNAL_SEARCH, "value"),
        Input(ids.CONSOLE_VERSION, "data"),
        Input(ids.CONSOLE_TICK, "n_intervals"),
        State(ids.CONSOLE_JOURNAL_KEY, "data"),
    )
    def _journal(text, _version, _n, last_key):
        return journal_update(ctx, text, last_key)

    app.clientside_callback(
        BEEP_JS,
        Output(ids.CONSOLE_SOUND_DONE, "data"),
        Input(ids.CONSOLE_NEW_CRITICAL, "data"),
        State(ids.CONSOLE_SOUND, "value"),
        prevent_initial_call=True,
    )


# --- formatting ---------------------------------------------------------------------------------


def _user_field(principal) -> html.Label:
    """Who acts: the logged-in user, fixed; with auth off, a name to type."""
    if principal is not None:
        return html.Label(["Acting as ", dcc.Input(id=ids.CONSOLE_USER, type="text", value=principal.username,
                                                   disabled=True, className="text-input"),
                           html.Span(f" {principal.role.replace('_', ' ')}", className="sub")], className="field")
    return html.Label(["Your name ", dcc.Input(id=ids.CONSOLE_USER, type="text", placeholder="who acts (recorded)",
                                               className="text-input", maxLength=100)], className="field")


def _selected_id(selected: list[dict[str, Any]] | None) -> str | None:
    return selected[0].get("id") if selected else None


def _stamp(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _hms(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%H:%M:%S")


def _state_word(state: str | None) -> str:
    """A journal state as the console shows it: "ACTIVE · UNACK"; others as written."""
    if not state:
        return "—"
    return STATE_LABEL[state][1] if state in STATE_LABEL else state.upper()


def _short_tag(tag_id: str | None) -> str:
    """unit.tag of a tag id (the full id is in the cell's tooltip)."""
    return ".".join((tag_id or "").split(".")[-2:])


def _minutes_text(minutes: int) -> str:
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h"
