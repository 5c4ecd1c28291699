"""The control room screen (Dash): line tiles, active alerts and a live trend per unit.

`create_app(ctx)` builds the Dash app; `queries` is the data layer it (and the JSON API)
reads. Importing this package does not import Dash; `create_app` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dash

    from controltower.context import TowerContext


def create_app(ctx: TowerContext, **kwargs: Any) -> dash.Dash:
    from controltower.screen.app import create_app as _create_app

    return _create_app(ctx, **kwargs)


__all__ = ["create_app"]
