"""A `TowerContext` built from real parts, for the screen and API tests and the screenshot:
the demo site file, a real LiveState, a real AlertBook fed condition events, the real DuckDB
historian in a temporary folder and a real Metrics registry. Nothing here is a mock; only the
plant is replaced by generated samples."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from analytics.alerts import EVENT_SCHEMA, AlertBook
from collector.sinks.duckdb import DuckDbHistorian
from controltower.live import LiveState
from controltower.metrics import Metrics
from controltower.samples import samples_frame
from controltower.site import SiteConfig, TagInfo, load_site_config

REPO = Path(__file__).resolve().parents[2]
DEMO_SITE = REPO / "config" / "demo-site.yaml"

BIO = "lyon.usp.bio1"
TAB = "lyon.osd.tab1"
FILL = "lyon.ff.fill1"


@dataclass
class DemoContext:
    site: SiteConfig
    tags: list[TagInfo]
    live: LiveState
    alerts: AlertBook
    historian: DuckDbHistorian
    metrics: Metrics
    started_at: datetime
    status: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)

    def health(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sources": [{"name": "plant-opcua", "kind": "opcua", "connected": self.status == "ok", "samples_in": 0}],
            "historian": {"name": self.historian.name, "ok": True, "last_error": None},
            "uptime_s": (datetime.now(UTC) - self.started_at).total_seconds(),
        }

    # --- feeding it ---------------------------------------------------------------------------

    def tag_paths(self) -> pl.DataFrame:
        return pl.DataFrame(
            [{"tag_id": t.tag_id, "site": t.site, "area": t.area, "line": t.line, "unit": t.unit} for t in self.tags]
        )

    def feed(self, frame: pl.DataFrame) -> None:
        """A sample batch into the historian and the live state, as the runtime does."""
        self.historian.write_sync(frame)
        self.live.update(frame)

    def samples(self, rows: list[tuple[datetime, str, float]], batch: dict[str, str] | None = None) -> pl.DataFrame:
        batch = batch or {}
        return samples_frame(
            ts=[r[0] for r in rows],
            tag_id=[r[1] for r in rows],
            value=[r[2] for r in rows],
            batch_id=[batch.get(r[1].rsplit(".", 1)[0]) for r in rows],
            tag_paths=self.tag_paths(),
        )

    def event(self, ts: datetime, tag_id: str, level: int, value: float, limit: float | None = None,
              detector: str = "limits", reason: str = "") -> None:
        """One condition event into the alert book (level 0 clear, 1 warning, 2 alarm)."""
        frame = pl.DataFrame(
            [{"ts": ts, "tag_id": tag_id, "detector": detector, "level": level, "value": value,
              "limit": limit, "reason": reason, "score": float(level)}],
            schema=EVENT_SCHEMA,
        )
        self.alerts.apply(frame)


def build_context(tmp_path: Path, *, started_at: datetime | None = None) -> DemoContext:
    site = load_site_config(DEMO_SITE)
    tags = site.tag_table()
    return DemoContext(
        site=site,
        tags=tags,
        live=LiveState(tags),
        alerts=AlertBook(tags),
        historian=DuckDbHistorian(tmp_path / "historian.duckdb"),
        metrics=Metrics(),
        started_at=started_at or datetime.now(UTC),
    )


# Nominal value and noise of each demo tag (midway between the warning limits or a typical value).
NOMINAL = {
    "temperature": (37.0, 0.08), "ph": (7.0, 0.01), "dissolved_oxygen": (45.0, 1.5), "agitation": (250.0, 3.0),
    "pressure": (0.3, 0.01), "compression_force": (12.0, 0.25), "tablet_weight": (250.0, 1.2),
    "speed": (50.0, 0.8), "fill_weight": (2.0, 0.006), "room_dp": (18.0, 0.4),
    "feed_rate": (4.0, 0.05), "air_flow": (20.0, 0.2), "base_flow": (8.0, 0.3), "foam_level": (3.0, 0.3),
    "biomass": (8.0, 0.05), "ejection_force": (350.0, 5.0), "reject_rate": (0.3, 0.05),
    "particles_0_5um": (120.0, 15.0), "particles_5_0um": (1.5, 0.3),
    **{f"fill_weight_n{k}": (2.0, 0.003) for k in range(1, 9)},
}
BATCHES = {f"{BIO}.br101": "B-BR101-2405-017", f"{TAB}.press1": "T-P1-2405-112"}


def plant_history(ctx: DemoContext, now: datetime, *, seconds: int = 600, period_s: float = 1.0,
                  seed: int = 7) -> pl.DataFrame:
    """`seconds` of 1 Hz demo samples for every tag up to `now`, with a slow drift of the
    bioreactor temperature, a fill-weight spike in the last minute and the filler speed nominal."""
    rng = random.Random(seed)
    rows: list[tuple[datetime, str, float]] = []
    n = int(seconds / period_s)
    for t in ctx.tags:
        base, noise = NOMINAL.get(t.tag.id, (1.0, 0.01))
        if t.tag_id == f"{FILL}.filler1.speed":
            base, noise = 300.0, 2.5
        for i in range(n):
            ts = now - timedelta(seconds=(n - 1 - i) * period_s)
            x = i / n
            v = base + noise * (rng.gauss(0, 1) + 1.5 * math.sin(2 * math.pi * 3 * x))
            if t.tag_id == f"{BIO}.br101.temperature":
                v += 0.7 * x * x  # drifting up towards its warning limit
            if t.tag_id == f"{FILL}.filler1.fill_weight" and i >= n - 45:
                v += 0.075  # a jump through the alarm limit, still on
            if t.tag_id == f"{TAB}.press1.tablet_weight" and i >= n - 90:
                v += 8.5  # above the warning limit
            rows.append((ts, t.tag_id, round(v, 5)))
    return ctx.samples(rows, BATCHES)


def demo_scene(ctx: DemoContext, now: datetime) -> None:
    """The screenshot's scene: 10 minutes of history; an active alarm on the filling line,
    an active warning on the tablet line, and one cleared alert; the bioreactor line normal."""
    ctx.feed(plant_history(ctx, now))
    ctx.metrics.samples_in.labels(source="plant-opcua").inc(6600)
    fw = f"{FILL}.filler1.fill_weight"
    ctx.event(now - timedelta(seconds=45), fw, 1, 2.045, 2.04, reason="above warning high 2.04")
    ctx.event(now - timedelta(seconds=43), fw, 2, 2.078, 2.06, reason="above alarm high 2.06")
    tw = f"{TAB}.press1.tablet_weight"
    ctx.event(now - timedelta(seconds=88), tw, 1, 258.9, 257.5, reason="above warning high 257.5")
    ctx.event(now - timedelta(seconds=400), f"{BIO}.br101.dissolved_oxygen", 1, 24.1, 25.0,
              detector="zscore", reason="unusual for its recent history")
    ctx.event(now - timedelta(seconds=340), f"{BIO}.br101.dissolved_oxygen", 0, 31.0, detector="zscore")
