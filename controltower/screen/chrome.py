"""What every page of the screen shows the same way: the brand block, the navigation, and who is
logged in with a button to log out (or a plain "no login: demo" mark when auth is off)."""

from __future__ import annotations

from dash import dcc, html

from controltower.demo_plant import has_demo_plant
from controltower.websecurity import auth_enabled, current_csrf_token, current_principal

PAGES = (("overview", "◧ Overview", "/"), ("alarms", "⚠ Alarms", "/alarms/"), ("batches", "▤ Batches", "/batches/"),
         ("setpoints", "⚙ Setpoints", "/setpoints/"))
DEMO_PAGE = (("demo", "⚡ Demo plant", "/simulator/"),)  # only in `controltower demo`


def brand(enterprise: str, subtitle: str) -> html.Div:
    return html.Div(
        className="brand",
        children=[html.Div(enterprise, className="brand-enterprise"), html.Div(subtitle, className="brand-site")],
    )


def nav(current: str) -> html.Nav:
    """Links to every page, `current` ("overview", "alarms", "batches", "setpoints" or "demo") marked, then the user box."""
    return html.Nav(
        className="nav",
        children=[
            html.A(label, href=href, id=f"nav-{name}", className="nav-link nav-current" if name == current else "nav-link")
            for name, label, href in PAGES + (DEMO_PAGE if has_demo_plant() else ())
        ] + user_box(),
    )


def user_box() -> list:
    """The logged-in user, their role and a logout button (a POST form carrying the CSRF token);
    nothing outside a request (tests rendering a layout directly)."""
    principal = current_principal()
    if principal is None:
        return [html.Span("no login (demo)", id="nav-user", className="nav-user nav-user-open")] if (
            _in_request() and not auth_enabled()) else []
    return [html.Form(
        action="/logout", method="POST", className="nav-user", id="nav-user",
        children=[
            html.Span(principal.username, id="nav-user-name", className="nav-user-name"),
            html.Span(principal.role.replace("_", " "), className="nav-user-role"),
            dcc.Input(type="hidden", name="csrf_token", value=current_csrf_token() or ""),
            html.Button("Log out", type="submit", id="nav-logout", className="nav-link nav-logout"),
        ],
    )]


def _in_request() -> bool:
    from flask import has_request_context

    return has_request_context()
