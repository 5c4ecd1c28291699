"""The app shell: one Flask server carrying the JSON API (`controltower.api`) and the Dash screen.

    app = create_app(ctx)                       # dash.Dash; app.server is the Flask WSGI app
    WebServer(app, host, port).start()          # controltower.webserver

The overview is at `/`, each line's page at `/line/<site>.<area>.<line>` (`shell` routes between
them), the alarm console (`console`, its own Dash app on the same server) at
`/alarms/`, the batch review (`batches`, another one) at `/batches/`, the setpoint changes
(`setpoints`, another one, over `controltower.setpoint_api`) at `/setpoints/`, and in the demo the
plant panel (`demo_panel`) at `/simulator/`. `security` (`controltower.websecurity`) puts the login, the CSRF and role checks and
the security headers in front of all of it; without one, the site's `screen.auth` must be off. The layout is a function, so each page load renders the current state at once and the
interval then keeps it fresh.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dash
from flask import Flask

from controltower.api import register_api
from controltower.batch_api import register_batch_api
from controltower.demo_plant import register_demo_plant_api
from controltower.screen import batches, console, demo_panel, line, overview, shell
from controltower.screen import setpoints as setpoints_page
from controltower.setpoint_api import Setpoints, register_setpoint_api
from controltower.websecurity import WebSecurity

if TYPE_CHECKING:
    from controltower.context import TowerContext

ASSETS = Path(__file__).with_name("assets")


def create_app(ctx: TowerContext, *, clock: Callable[[], datetime] | None = None, api: bool = True,
               security: WebSecurity | None = None) -> dash.Dash:
    """The Dash screen for `ctx`, with the JSON API and /metrics on the same Flask server
    (`api=False` leaves them out). `clock` returns the aware "now" (default: the UTC wall clock).
    `security` is required when the site's `screen.auth.enabled` is true."""
    now = clock or (lambda: datetime.now(UTC))
    if security is None:
        if ctx.site.screen.auth.enabled:
            raise ValueError("screen.auth.enabled is true: create_app needs security=WebSecurity(...)")
        security = WebSecurity(ctx.site.screen.auth)
    server = Flask("controltower.screen")
    security.install(server)
    data_dir = Path(getattr(ctx, "data_dir", None) or ctx.site.data_dir)
    if api:
        register_api(server, ctx, now=now)
        register_batch_api(server, ctx, data_dir=data_dir, now=now)
    # Setpoint writes over OPC-UA (API and page share the writers and the audit path).
    setpoints = Setpoints(ctx.site, data_dir)
    if api:
        register_setpoint_api(server, setpoints)
    app = dash.Dash(
        "controltower.screen",
        server=server,
        assets_folder=str(ASSETS),
        title=f"{ctx.site.enterprise} · control tower",
        update_title=None,
        serve_locally=True,
        suppress_callback_exceptions=False,
    )
    # The shell routes between the overview (/) and the line pages (/line/<line id>).
    app.validation_layout = shell.validation_layout(ctx, now())
    app.layout = lambda: shell.layout(ctx, now())
    shell.register_callbacks(app, ctx, now)
    overview.register_callbacks(app, ctx, now)
    line.register_callbacks(app, ctx, now)
    # The alarm console: a second Dash app on the same server, under console.PATH.
    alarms = console.create_console(server, ctx, now, assets_folder=str(ASSETS),
                                    title=f"Alarms · {ctx.site.enterprise} · control tower")
    # Batch review for quality engineers: a third Dash app, under batches.PATH.
    reviews = batches.create_batch_review(server, ctx, now, data_dir=data_dir, assets_folder=str(ASSETS),
                                          title=f"Batch review · {ctx.site.enterprise} · control tower")
    # Setpoints for operators: a fourth Dash app, under setpoints_page.PATH.
    changes = setpoints_page.create_setpoints_page(server, ctx, setpoints, assets_folder=str(ASSETS),
                                                   title=f"Setpoints · {ctx.site.enterprise} · control tower")
    hashes = [*app.csp_hashes(), *alarms.csp_hashes(), *reviews.csp_hashes(), *changes.csp_hashes()]
    # The demo plant panel, only when the tower runs its own simulator (`controltower demo`).
    plant = getattr(ctx, "demo_plant", None)
    if plant is not None and api:
        register_demo_plant_api(server, plant)
        panel = demo_panel.create_demo_panel(server, ctx, plant, assets_folder=str(ASSETS),
                                             title=f"Demo plant · {ctx.site.enterprise} · control tower")
        hashes += panel.csp_hashes()
    security.set_script_hashes(hashes)
    return app
