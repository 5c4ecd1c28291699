"""What every page of the screen shows the same way: the brand block and the navigation."""

from __future__ import annotations

from dash import html

PAGES = (("overview", "◧ Overview", "/"), ("alarms", "⚠ Alarms", "/alarms/"))


def brand(enterprise: str, subtitle: str) -> html.Div:
    return html.Div(
        className="brand",
        children=[html.Div(enterprise, className="brand-enterprise"), html.Div(subtitle, className="brand-site")],
    )


def nav(current: str) -> html.Nav:
    """Links to every page, `current` ("overview" or "alarms") marked."""
    return html.Nav(
        className="nav",
        children=[
            html.A(label, href=href, id=f"nav-{name}", className="nav-link nav-current" if name == current else "nav-link")
            for name, label, href in PAGES
        ],
    )
