"""The setpoints page, at /setpoints/?unit=<site.area.line.unit> (its own Dash app on the tower's
Flask server, like the alarm console; the line page links each unit with setpoints here).

A unit's setpoints with their current values, read from the plant's OPC-UA server, their ranges
and units. "Change" on a setpoint opens an editor (new value, reason); "Review" shows the
confirmation -- the old value, the new value, the unit and the reason -- and only "Confirm
write" writes, through the same function as the API (`setpoint_api.change_setpoint`): the
confirmed old value must still be the current one, the range is checked, and the write and its
result are audited. The page shows the result (the value read back, or the server's refusal).

Writing needs `setpoint.write` (operator, administrator): without it the buttons are not shown,
and the callbacks check it on the server anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import dash
from dash import ALL, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate
from flask import Flask, redirect

from controltower.api import BadParameter
from controltower.screen.chrome import brand, nav
from controltower.setpoint_api import SetpointNotFound, Setpoints, SetpointWriteFailed, change_setpoint
from controltower.websecurity import NotAllowed, auth_enabled, current_principal

if TYPE_CHECKING:
    from controltower.context import TowerContext

PATH = "/setpoints/"
REFRESH_MS = 5000
URL, UNIT, TABLE, TICK, EDIT, EDITOR, NEW, REASON, REVIEW, CONFIRM_BOX, CONFIRM, CANCEL, PENDING, RESULT = (
    "sp-url", "sp-unit", "sp-table", "sp-tick", "sp-edit", "sp-editor", "sp-new", "sp-reason", "sp-review",
    "sp-confirm-box", "sp-confirm", "sp-cancel", "sp-pending", "sp-result")
CHANGE = "sp-change"  # pattern-matching id {"type": CHANGE, "setpoint": name}
HIDDEN, SHOWN = {"display": "none"}, {}


def page_href(unit: str) -> str:
    return f"{PATH}?unit={unit}"


def may_write() -> bool:
    """Whether the current request's user may write setpoints (anyone, with authentication off)."""
    if not auth_enabled():
        return True
    principal = current_principal()
    return principal is not None and principal.may("setpoint.write")


def create_setpoints_page(server: Flask, ctx: TowerContext, setpoints: Setpoints, *, assets_folder: str,
                          title: str) -> dash.Dash:
    app = dash.Dash("controltower.setpoints", server=server, url_base_pathname=PATH, assets_folder=assets_folder,
                    title=title, update_title=None, serve_locally=True, suppress_callback_exceptions=True)
    server.add_url_rule(PATH.rstrip("/"), "setpoints_redirect", lambda: redirect(PATH))
    app.layout = lambda: layout(ctx, setpoints)
    register_callbacks(app, setpoints)
    return app


def layout(ctx: TowerContext, setpoints: Setpoints) -> html.Div:
    units = sorted(setpoints.by_unit)
    return html.Div(className="shell setpoints", children=[
        dcc.Location(id=URL, refresh=False),
        dcc.Interval(id=TICK, interval=REFRESH_MS, n_intervals=0),
        dcc.Store(id=EDIT, data=None),
        dcc.Store(id=PENDING, data=None),
        html.Header(className="topbar", children=[brand(ctx.site.enterprise, "Setpoints"), nav("setpoints")]),
        html.Main(className="content", children=[
            html.Section(className="panel", children=[
                html.Label(["Unit", dcc.Dropdown(id=UNIT, options=units, value=units[0] if units else None,
                                                 clearable=False)]),
                html.Div(id=TABLE, children="No unit of this site has setpoints." if not units else "Reading..."),
                html.P("Your role may not change setpoints (operator or administrator only)." if not may_write()
                       else "", className="empty"),
            ]),
            html.Section(id=EDITOR, className="panel", style=HIDDEN, children=[
                html.H3(id="sp-editor-title"),
                html.Label(["New value", dcc.Input(id=NEW, type="number", step="any", debounce=False)]),
                html.Label(["Reason (required, goes into the audit trail)",
                            dcc.Textarea(id=REASON, value="", style={"width": "100%"}, maxLength=500)]),
                html.Button("Review change", id=REVIEW, n_clicks=0, className="btn"),
            ]),
            html.Section(id=CONFIRM_BOX, className="panel", style=HIDDEN, role="alertdialog", children=[
                html.H3("Confirm the setpoint change"),
                html.Div(id="sp-confirm-text"),
                html.Button("Confirm write", id=CONFIRM, n_clicks=0, className="btn btn-ack"),
                html.Button("Cancel", id=CANCEL, n_clicks=0, className="btn"),
            ]),
            html.Div(id=RESULT, className="sign-message", role="status"),
        ]),
    ])


def _fmt(value: Any, unit: str = "") -> str:
    return "—" if value is None else f"{value:g} {unit}".strip()


def setpoints_table(rows: list[dict[str, Any]], writable: bool) -> html.Table:
    head = ["Setpoint", "Current", "Range", "Node", ""]
    body = []
    for r in rows:
        action: Any = ""
        if writable and r["writable"]:
            action = html.Button("Change", id={"type": CHANGE, "setpoint": r["id"]}, n_clicks=0, className="btn")
        elif r["error"]:
            action = html.Span(r["error"], className="empty")
        elif not r["writable"]:
            action = html.Span("not writable for the tower's OPC-UA user", className="empty")
        body.append(html.Tr([
            html.Td(html.Span(r["id"], title=r["description"] or r["id"])),
            html.Td(_fmt(r["value"], r["unit"]), id=f"sp-value-{r['id']}"),
            html.Td(f"{r['low']:g} … {r['high']:g} {r['unit']}".strip()),
            html.Td(html.Code(r["node_id"])),
            html.Td(action),
        ]))
    return html.Table(className="records", children=[html.Thead(html.Tr([html.Th(h) for h in head])),
                                                    html.Tbody(body)])


def register_callbacks(app: dash.Dash, setpoints: Setpoints) -> None:
    @app.callback(Output(UNIT, "value"), Input(URL, "search"), State(UNIT, "value"))
    def unit_from_url(search: str | None, unit: str | None):
        wanted = (parse_qs((search or "").lstrip("?")).get("unit") or [None])[0]
        if wanted and wanted in setpoints.by_unit:
            return wanted
        raise PreventUpdate

    @app.callback(Output(TABLE, "children"), Input(UNIT, "value"), Input(TICK, "n_intervals"),
                  Input(RESULT, "children"))
    def table(unit: str | None, _n, _result):
        if not unit:
            raise PreventUpdate
        try:
            rows = setpoints.current(unit)
        except SetpointNotFound as exc:
            return str(exc)
        return setpoints_table(rows, may_write())

    @app.callback(Output(EDIT, "data"), Output(EDITOR, "style"), Output("sp-editor-title", "children"),
                  Output(NEW, "value"), Output(REASON, "value"),
                  Input({"type": CHANGE, "setpoint": ALL}, "n_clicks"), Input(UNIT, "value"),
                  prevent_initial_call=True)
    def open_editor(clicks, unit: str | None):
        trigger = dash.ctx.triggered_id
        if trigger == UNIT:
            return None, HIDDEN, "", None, ""  # another unit closes the editor
        if not isinstance(trigger, dict) or not dash.ctx.triggered[0]["value"]:
            raise PreventUpdate  # the table was drawn again (its buttons are new, with no click)
        name = trigger["setpoint"]
        try:
            setpoint = setpoints.find(unit or "", name)
        except SetpointNotFound:
            raise PreventUpdate from None
        title = f"Change {name} of {unit} (range {setpoint.low:g} … {setpoint.high:g} {setpoint.unit})"
        return {"unit": unit, "setpoint": name}, SHOWN, title, None, ""

    @app.callback(Output(PENDING, "data"), Output(CONFIRM_BOX, "style"), Output("sp-confirm-text", "children"),
                  Output(RESULT, "children"),
                  Input(REVIEW, "n_clicks"), Input(CONFIRM, "n_clicks"), Input(CANCEL, "n_clicks"),
                  State(EDIT, "data"), State(NEW, "value"), State(REASON, "value"), State(PENDING, "data"),
                  prevent_initial_call=True)
    def review_or_write(_review, _confirm, _cancel, edit, new_value, reason, pending):
        trigger = dash.ctx.triggered_id
        if trigger == CANCEL:
            return None, HIDDEN, "", "Change cancelled; nothing was written."
        if trigger == REVIEW:
            return review(edit, new_value, reason)
        if trigger == CONFIRM and pending:
            return None, HIDDEN, "", write(pending)
        raise PreventUpdate

    def review(edit: dict | None, new_value: Any, reason: str | None):
        """The confirmation step: read the current value now, check what can be checked before it."""
        if not may_write():
            return None, HIDDEN, "", "Not allowed: your role may not change setpoints."
        if not edit:
            raise PreventUpdate
        unit, name = edit["unit"], edit["setpoint"]
        setpoint = setpoints.find(unit, name)
        if new_value is None:
            return None, HIDDEN, "", "Type the new value first."
        if not (reason or "").strip():
            return None, HIDDEN, "", "A reason is required: say why the setpoint is changed."
        if not setpoint.low <= float(new_value) <= setpoint.high:
            return None, HIDDEN, "", (f"{new_value:g} is outside the range {setpoint.low:g} … {setpoint.high:g} "
                                      f"{setpoint.unit}; not written.")
        current = next(r for r in setpoints.current(unit) if r["id"] == name)
        if current["value"] is None:
            return None, HIDDEN, "", f"Cannot read the current value: {current['error']}"
        pending = {"unit": unit, "setpoint": name, "old": current["value"], "value": float(new_value),
                   "reason": reason.strip()}
        text = [
            html.P([html.Strong(f"{unit} · {name}")]),
            html.P(["Old value: ", html.Strong(_fmt(current["value"], setpoint.unit), id="sp-confirm-old")]),
            html.P(["New value: ", html.Strong(_fmt(float(new_value), setpoint.unit), id="sp-confirm-new")]),
            html.P(["Reason: ", html.Em(reason.strip())]),
            html.P("The write goes to the plant over OPC-UA and is recorded in the audit trail under your name."),
        ]
        return pending, SHOWN, text, ""

    def write(pending: dict) -> str:
        unit, name = pending["unit"], pending["setpoint"]
        try:
            _, result = change_setpoint(setpoints, unit, name, {
                "value": pending["value"], "reason": pending["reason"], "expected_old": pending["old"]})
        except NotAllowed as exc:
            return f"Not allowed: {exc.message}"
        except (BadParameter, SetpointNotFound) as exc:
            return f"Not written: {exc}"
        except SetpointWriteFailed as exc:
            return f"Not written ({exc.error.status}): {exc.error}"
        unit_of_measure = setpoints.find(unit, name).unit
        return (f"Written: {name} of {unit} from {_fmt(result.old, unit_of_measure)} to "
                f"{_fmt(result.new, unit_of_measure)} ({result.status}); recorded in the audit trail.")
