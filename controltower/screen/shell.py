"""The page shell of the screen's main Dash app: the header every page shares (brand, enterprise
summary, navigation, data freshness, clock), the critical-alarm cue, and the routing between
the overview (`/`, `overview.py`) and the line pages (`/line/<line id>`, `line.py`) with
`dcc.Location`: a click on a tile changes the page without reloading the app.

The critical cue: while a critical alarm is unacknowledged a banner names how many and links to
the alarm console; it flashes while one of them is new to this browser, until the operator
presses "Seen" (remembered for the browser session) or acknowledges it. A short beep comes
with each new one when the operator turns the sound on (off by default; the browser allows
audio after that click). Colour is never the only carrier: the banner has an icon and words.

(Dash's `use_pages` keeps its page registry in a module-level global, which would mix up two
towers' apps in one process, as the tests build; plain `dcc.Location` routing does not.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dash import Dash, Input, Output, State, dcc, html, no_update

from controltower.screen import ids, line, overview
from controltower.screen import queries as q
from controltower.screen.chrome import brand, nav

if TYPE_CHECKING:
    from controltower.context import TowerContext


def layout(ctx: TowerContext, now: datetime) -> html.Div:
    """The shell; the page itself arrives by the routing callback, for the URL the browser has."""
    header = overview.render_header(ctx, now)
    cue = critical_cue(ctx, now, [], None, None)
    sites = " · ".join(s.name or s.id for s in ctx.site.sites)
    return html.Div(
        className="shell",
        children=[
            dcc.Location(id=ids.URL, refresh=False),
            dcc.Interval(id=ids.SHELL_TICK, interval=ctx.site.screen.refresh_ms, n_intervals=0),
            dcc.Store(id=ids.HEADER_KEY, data=f"{header['summary_key']}|{cue['key']}"),
            dcc.Store(id=ids.CRITICAL_SEEN, data=[], storage_type="session"),
            dcc.Store(id=ids.CRITICAL_NOW, data=cue["now"]),
            dcc.Store(id=ids.CRITICAL_NEW, data=None),
            dcc.Store(id=ids.CRITICAL_SOUND_DONE, data=None),
            html.Header(
                className="topbar",
                children=[
                    brand(ctx.site.enterprise, f"{sites} · control tower"),
                    html.Div(header["summary"], id=ids.SUMMARY, className="summary"),
                    nav("overview"),
                    html.Div(
                        className="topbar-right",
                        children=[
                            dcc.Checklist(id=ids.CRITICAL_SOUND,
                                          options=[{"label": " ♪ sound for new critical", "value": "on"}],
                                          value=[], className="sound-toggle"),
                            html.Div(header["freshness"], id=ids.FRESHNESS, className=header["freshness_class"]),
                            html.Div(header["clock"], id=ids.CLOCK, className="clock"),
                        ],
                    ),
                ],
            ),
            html.Div(
                id=ids.CRITICAL_BANNER,
                className=cue["class"],
                role="alert",
                children=[
                    html.Span("◆", className="icon banner-icon", **{"aria-hidden": "true"}),
                    html.Span(cue["text"], id=ids.CRITICAL_BANNER_TEXT, className="banner-text"),
                    html.A("Open the alarm console", href="/alarms/", className="banner-link"),
                    html.Button("✔ Seen", id=ids.CRITICAL_SEEN_BUTTON, n_clicks=0, className="btn banner-seen"),
                ],
            ),
            html.Div(id=ids.PAGE, className="page"),
        ],
    )


def validation_layout(ctx: TowerContext, now: datetime) -> html.Div:
    """Every component any page can show, for Dash to check the callbacks against."""
    return html.Div([layout(ctx, now), overview.skeleton(), line.skeleton()])


def page_for(ctx: TowerContext, now: datetime, path: str | None) -> Any:
    """The page content for a URL path."""
    path = path or "/"
    if path.startswith(line.PATH_PREFIX):
        return line.layout(ctx, now, path[len(line.PATH_PREFIX):].strip("/"))
    if path in ("/", ""):
        return overview.layout(ctx, now)
    return html.Div(className="content", children=html.Section(className="panel", children=[
        html.H2("No such page", className="panel-title"),
        html.P([f"Nothing at {path}. ", dcc.Link("Back to the overview", href="/")]),
    ]))


def critical_cue(ctx: TowerContext, now: datetime, seen: list[str] | None, last_now: list[str] | None,
                 last_key: str | None) -> dict[str, Any]:
    """{class, text, now (the unacknowledged critical alarm ids), new (ids that appeared since
    `last_now`, for the beep; None if none), key}. The banner shows while any is listed and
    flashes while one is not in `seen`."""
    current = q.critical_unacknowledged(ctx)
    unseen = sorted(set(current) - set(seen or []))
    appeared = sorted(set(current) - set(last_now or []))
    if current:
        text = f"{len(current)} unacknowledged CRITICAL alarm" + ("s" if len(current) > 1 else "")
        if unseen:
            text += f" ({len(unseen)} new)"
        css = "critical-banner critical-banner-on" + (" critical-banner-new" if unseen else "")
    else:
        text, css = "", "critical-banner"
    return {"class": css, "text": text, "now": current,
            "new": {"ids": appeared, "at": now.isoformat()} if appeared and last_now is not None else None,
            "key": hashlib.sha1(repr((css, text)).encode()).hexdigest()[:16]}


def register_callbacks(app: Dash, ctx: TowerContext, clock: Callable[[], datetime]) -> None:
    from controltower.screen.console import BEEP_JS

    @app.callback(Output(ids.PAGE, "children"), Input(ids.URL, "pathname"))
    def _route(path: str | None):
        return page_for(ctx, clock(), path)

    @app.callback(
        Output(ids.CLOCK, "children"),
        Output(ids.FRESHNESS, "children"),
        Output(ids.FRESHNESS, "className"),
        Output(ids.SUMMARY, "children"),
        Output(ids.HEADER_KEY, "data"),
        Output(ids.CRITICAL_BANNER, "className"),
        Output(ids.CRITICAL_BANNER_TEXT, "children"),
        Output(ids.CRITICAL_NOW, "data"),
        Output(ids.CRITICAL_NEW, "data"),
        Input(ids.SHELL_TICK, "n_intervals"),
        Input(ids.CRITICAL_SEEN, "data"),
        State(ids.HEADER_KEY, "data"),
        State(ids.CRITICAL_NOW, "data"),
        prevent_initial_call=True,
    )
    def _header(_n: int, seen: list[str] | None, last_key: str | None, last_now: list[str] | None):
        return header_update(ctx, clock(), seen, last_key, last_now)

    @app.callback(
        Output(ids.CRITICAL_SEEN, "data"),
        Input(ids.CRITICAL_SEEN_BUTTON, "n_clicks"),
        State(ids.CRITICAL_NOW, "data"),
        State(ids.CRITICAL_SEEN, "data"),
        prevent_initial_call=True,
    )
    def _seen(_clicks: int, current: list[str] | None, seen: list[str] | None):
        return sorted(set(seen or []) | set(current or []))

    app.clientside_callback(
        BEEP_JS,
        Output(ids.CRITICAL_SOUND_DONE, "data"),
        Input(ids.CRITICAL_NEW, "data"),
        State(ids.CRITICAL_SOUND, "value"),
        prevent_initial_call=True,
    )


def header_update(ctx: TowerContext, now: datetime, seen: list[str] | None, last_key: str | None,
                  last_now: list[str] | None) -> tuple[Any, ...]:
    """The header callback's outputs: the clock and freshness every tick; the summary and the
    critical cue only when they changed."""
    header = overview.render_header(ctx, now)
    cue = critical_cue(ctx, now, seen, last_now, None)
    key = f"{header['summary_key']}|{cue['key']}"
    changed = key != last_key
    return (
        header["clock"], header["freshness"], header["freshness_class"],
        header["summary"] if changed else no_update,
        key if changed else no_update,
        cue["class"] if changed else no_update,
        cue["text"] if changed else no_update,
        cue["now"] if cue["now"] != (last_now or []) else no_update,
        cue["new"] if cue["new"] else no_update,
    )
