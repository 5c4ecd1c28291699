"""The demo plant panel, at /simulator/ (only in `controltower demo`): inject a fault into the
simulated plant and watch the control tower catch it on the overview and in the alarm console.

A sensor fault goes on a tag (spike, drift, stuck, bias, noise, dropout, oscillation); a process
fault on a unit whose kind has it (a bioreactor's cooling failure, feed pump failure or
contamination; a freeze dryer's vacuum leak). The injections so far (the simulator's ground
truth) are listed below, newest first. The panel injects through `demo_plant.inject_from`, as
the API does: the same checks, the same audit record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dash
from dash import Input, Output, State, dcc, html
from flask import Flask, redirect

from controltower.api import BadParameter
from controltower.demo_plant import DemoPlant, inject_from
from controltower.screen.chrome import brand, nav
from controltower.websecurity import NotAllowed

if TYPE_CHECKING:
    from controltower.context import TowerContext

PATH = "/simulator/"
TARGET_KIND, TARGET, KIND, DURATION, MAGNITUDE, INJECT, MESSAGE, FAULTS, TICK = (
    "dp-target-kind", "dp-target", "dp-kind", "dp-duration", "dp-magnitude", "dp-inject", "dp-message", "dp-faults",
    "dp-tick")
# What a newcomer is offered first: a clear, quick fault.
DEFAULTS = {"sensor": ("spike", 60.0), "process": ("cooling_failure", 900.0)}
MAGNITUDE_HELP = {
    "sensor": "offset added (spike, bias), reached at the end (drift), standard deviation (noise), amplitude "
              "(oscillation), in the tag's engineering unit; ignored by stuck and dropout",
    "process": "severity, from 0 (none) to 1 (total failure)",
}


def create_demo_panel(server: Flask, ctx: TowerContext, plant: DemoPlant, *, assets_folder: str, title: str) -> dash.Dash:
    app = dash.Dash("controltower.demo_panel", server=server, url_base_pathname=PATH, assets_folder=assets_folder,
                    title=title, update_title=None, serve_locally=True, suppress_callback_exceptions=False)
    server.add_url_rule(PATH.rstrip("/"), "demo_panel_redirect", lambda: redirect(PATH))
    app.layout = lambda: layout(ctx, plant)
    register_callbacks(app, plant)
    return app


def _targets(catalog: dict, which: str) -> list[dict]:
    if which == "process":
        return [{"label": f"{u['path']} ({u['kind']})", "value": u["path"]} for u in catalog["units"] if u["process_kinds"]]
    return [{"label": t, "value": t} for t in catalog["tags"]]


def _kinds(catalog: dict, which: str, target: str | None) -> list[str]:
    if which == "process":
        unit = next((u for u in catalog["units"] if u["path"] == target), None)
        return unit["process_kinds"] if unit else []
    return catalog["sensor_kinds"]


def layout(ctx: TowerContext, plant: DemoPlant) -> html.Div:
    catalog = plant.catalog()
    targets = _targets(catalog, "sensor")
    return html.Div(className="shell demo-panel", children=[
        dcc.Interval(id=TICK, interval=2000, n_intervals=0),
        html.Header(className="topbar", children=[brand(ctx.site.enterprise, "Demo plant"), nav("demo")]),
        html.Main(className="content", children=[
            html.Section(className="panel", children=[
                html.H3("Inject a fault into the simulated plant"),
                html.P("Then watch the overview and the alarm console: the detectors should raise it within "
                       "seconds to minutes, depending on the fault."),
                dcc.RadioItems(id=TARGET_KIND, value="sensor", inline=True, options=[
                    {"label": " sensor fault (on a tag)", "value": "sensor"},
                    {"label": " process fault (on a unit)", "value": "process"}]),
                html.Label(["Target", dcc.Dropdown(id=TARGET, options=targets,
                                                   value=targets[0]["value"] if targets else None, clearable=False)]),
                html.Label(["Kind", dcc.Dropdown(id=KIND, options=catalog["sensor_kinds"], value="spike", clearable=False)]),
                html.Label(["Duration (simulated seconds)", dcc.Input(id=DURATION, type="number", value=60, min=1)]),
                html.Label(["Magnitude", dcc.Input(id=MAGNITUDE, type="number", value=5.0, step="any"),
                            html.Small(MAGNITUDE_HELP["sensor"], id="dp-magnitude-help")]),
                html.Button("Inject", id=INJECT, n_clicks=0, className="btn"),
                html.Div(id=MESSAGE, className="sign-message", role="status"),
            ]),
            html.Section(className="panel", children=[html.H3("Faults so far (ground truth)"), html.Div(id=FAULTS)]),
        ]),
    ])


def faults_table(rows: list[dict]) -> html.Table | html.P:
    if not rows:
        return html.P("None yet.", className="empty")
    head = ["Start (simulated, UTC)", "End", "Kind", "Target", "Magnitude", "Tags it moves"]
    return html.Table(className="records", children=[
        html.Thead(html.Tr([html.Th(h) for h in head])),
        html.Tbody([html.Tr([html.Td(str(v)) for v in (r["start"], r["end"], r["kind"], r["target"], r["magnitude"],
                                                        (r.get("tags") or "").replace(";", ", "))]) for r in rows]),
    ])


def register_callbacks(app: dash.Dash, plant: DemoPlant) -> None:
    @app.callback(Output(TARGET, "options"), Output(TARGET, "value"), Output("dp-magnitude-help", "children"),
                  Input(TARGET_KIND, "value"))
    def targets(which: str):
        options = _targets(plant.catalog(), which)
        return options, options[0]["value"] if options else None, MAGNITUDE_HELP[which]

    @app.callback(Output(KIND, "options"), Output(KIND, "value"), Output(DURATION, "value"), Output(MAGNITUDE, "value"),
                  Input(TARGET, "value"), State(TARGET_KIND, "value"))
    def kinds(target: str | None, which: str):
        options = _kinds(plant.catalog(), which, target)
        kind, duration = DEFAULTS[which]
        kind = kind if kind in options else (options[0] if options else None)
        return options, kind, duration, 1.0 if which == "process" else 5.0

    @app.callback(Output(MESSAGE, "children"), Input(INJECT, "n_clicks"),
                  State(TARGET, "value"), State(KIND, "value"), State(DURATION, "value"), State(MAGNITUDE, "value"),
                  prevent_initial_call=True)
    def inject(_clicks, target, kind, duration, magnitude):
        try:
            fault = inject_from(plant, {"target": target, "kind": kind, "duration_s": duration,
                                        "magnitude": magnitude if magnitude is not None else 0.0})
        except (BadParameter, NotAllowed) as exc:
            return f"Not injected: {getattr(exc, 'message', None) or exc}"
        return (f"Injected {fault.kind} on {fault.target} from {fault.start:%H:%M:%S} to {fault.end:%H:%M:%S} "
                f"(simulated time); it moves {', '.join(t.rsplit('.', 1)[-1] for t in fault.tags)}.")

    @app.callback(Output(FAULTS, "children"), Input(TICK, "n_intervals"), Input(MESSAGE, "children"))
    def faults(_n, _message):
        return faults_table(plant.faults())
