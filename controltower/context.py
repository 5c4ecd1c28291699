"""The `TowerContext` protocol: what the screen and the JSON API read from a running control
tower. `controltower.runtime.ControlTower` implements it; tests can build one from real parts."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from controltower.live import LiveState
from controltower.metrics import Metrics
from controltower.site import SiteConfig, TagInfo

if TYPE_CHECKING:
    from analytics.alerts import AlertBook
    from collector.sinks import Historian


class TowerContext(Protocol):
    site: SiteConfig
    tags: list[TagInfo]
    live: LiveState
    alerts: AlertBook
    historian: Historian
    metrics: Metrics
    started_at: datetime

    def health(self) -> dict[str, Any]:
        """{"status": "ok" | "degraded", "sources": [{name, kind, connected, samples_in, ...}],
        "historian": {"name", "ok", "last_error"}, "uptime_s": float}"""
        ...
