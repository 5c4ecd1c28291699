"""The control tower at run time: sources, historian, detectors, alert book and screen for one
site config, wired together and run on one event loop (the screen's web server in a thread).

`controltower run` and `controltower demo` both end up here; the demo only adds a simulated
plant and an embedded broker in front of it (`controltower.demo`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from analytics.alerts import AlertBook
from analytics.engine import DetectionEngine
from analytics.journal import AlarmJournal
from collector.deadletter import DeadLetterFile
from collector.pipeline import Pipeline
from collector.sinks import Historian, open_historian
from collector.sources import Source
from collector.sources.mqtt import MqttSource
from collector.sources.opcua import OpcUaSource
from collector.spool import Spool
from controltower.audit import AuditTrail, open_trail, record_config, record_model_change
from controltower.live import LiveState
from controltower.metrics import Metrics
from controltower.site import SiteConfig

log = logging.getLogger(__name__)


def build_sources(site: SiteConfig, data_dir: Path) -> list[Source]:
    tags = site.tag_table()
    dead_letter = DeadLetterFile(data_dir / "dead_letter.jsonl")
    batch_nodes = {
        f"{s.id}.{a.id}.{ln.id}.{u.id}": u.batch_node_id
        for s in site.sites for a in s.areas for ln in a.lines for u in ln.units
        if u.batch_node_id
    }
    phase_nodes = {
        f"{s.id}.{a.id}.{ln.id}.{u.id}": u.phase_node_id
        for s in site.sites for a in s.areas for ln in a.lines for u in ln.units
        if u.phase_node_id
    }
    sources: list[Source] = []
    for config in site.sources:
        if config.kind == "opcua":
            source = OpcUaSource(config, tags, data_dir=data_dir)
            source.bind_batch_nodes(batch_nodes, phase_nodes)
            sources.append(source)
        else:
            sources.append(MqttSource(config, tags, dead_letter=dead_letter, data_dir=data_dir))
    return sources


def load_unit_monitors(site: SiteConfig, data_dir: Path, units: list[str] | None = None) -> list:
    """The stored models of the site's units (or of `units`: an analytics worker's partition)
    (`controltower model fit`): the multivariate and golden ones as live monitors, then each
    unit's `spc` centre lines (`StoredCentres`, which the engine hands to its SPC charts); none
    when `detectors.models.enabled` is false or nothing is stored."""
    config = site.detectors.models
    root = site.resolve_path(config.dir, data_dir)
    if not config.enabled or not root.is_dir():
        return []
    from analytics.monitors import load_monitors

    units = sorted({t.unit_id for t in site.tag_table()}) if units is None else units
    monitors = load_monitors(root, units, pin=config.pin, on_delay_rows=config.on_delay_rows,
                             alarm_score=config.alarm_score, known_tags={t.tag_id for t in site.tag_table()})
    return monitors + load_stored_centres(root, units, config.pin)


def load_stored_centres(root: Path, units: list[str], pin: dict[str, dict[str, int]]) -> list:
    """Each unit's stored `spc` model (the pinned version, else the newest) as `StoredCentres`;
    one that cannot be loaded is logged and skipped (its charts keep only the pinned centres)."""
    from analytics.detectors.spc import StoredCentres
    from analytics.models import SPC, ModelStore, ModelStoreError

    store = ModelStore(root)
    found = []
    for unit in units:
        try:
            if not store.versions(unit, SPC):
                continue
            fitted = store.load(unit, SPC, pin.get(unit, {}).get(SPC))
        except ModelStoreError as exc:
            log.error("SPC centre lines not loaded: %s", exc)
            continue
        stored = StoredCentres.of(fitted)
        found.append(stored)
        log.info("loaded spc centre lines v%s of %s (%d tags; %d phase centres, followed by phase)", stored.version,
                 unit, stored.centres.height, stored.phases.height)
    return found


def model_reloader(site: SiteConfig, data_dir: Path, engine: DetectionEngine, units: list[str] | None = None):
    """A `ModelReloader` for the engine's units (all the site's, or an analytics worker's
    partition), or None when stored models or their reload (`detectors.models.reload_s` 0) are off."""
    config = site.detectors.models
    if not config.enabled or config.reload_s <= 0:
        return None
    from analytics.model_reload import ModelReloader

    units = sorted({t.unit_id for t in site.tag_table()}) if units is None else units
    return ModelReloader(engine, site.resolve_path(config.dir, data_dir), units, pin=config.pin,
                         on_delay_rows=config.on_delay_rows, alarm_score=config.alarm_score,
                         known_tags={t.tag_id for t in site.tag_table()})


class ControlTower:
    """Implements `controltower.context.TowerContext` for the screen and the API."""

    def __init__(self, site: SiteConfig, *, data_dir: Path | None = None, historian: Historian | None = None):
        self.site = site
        self.data_dir = Path(data_dir or site.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tags = site.tag_table()
        self.metrics = Metrics()
        self.live = LiveState(self.tags)
        self.journal = AlarmJournal(self.data_dir / "alarm_journal.jsonl")
        self.alerts = AlertBook(journal=self.journal)
        self.engine = DetectionEngine(self.tags, site.detectors, self.alerts, monitors=load_unit_monitors(site, self.data_dir))
        self.reloader = model_reloader(site, self.data_dir, self.engine)
        self.historian = historian or open_historian(site.historian, self.data_dir)
        self.sources = build_sources(site, self.data_dir)
        self.metrics.watch_sources(lambda: [s.health for s in self.sources])
        spool = Spool.from_config(site.spool, self.data_dir) if site.spool.enabled else None
        self.pipeline = Pipeline(
            self.sources, self.historian, consumers=[self.live.update, self._detect], metrics=self.metrics,
            spool=spool, event_consumers=[self._batch_events],
        )
        self.metrics.watch_spool(self.pipeline.spool_health)
        self.started_at = datetime.now(UTC)
        self._data_clock: tuple[datetime, float] | None = None  # newest sample ts seen, monotonic then
        self.web = None
        # The audit trail (controltower.audit): a configuration that differs from the last one
        # recorded is a change, recorded as such.
        self.audit: AuditTrail = open_trail(self.data_dir)
        record_config(self.audit, site.model_dump_json(), source="site configuration")

    def _detect(self, batch: pl.DataFrame) -> None:
        started = time.perf_counter()
        raised = self.engine.process(batch)
        self.metrics.detect_seconds.observe(time.perf_counter() - started)
        if batch.height:
            newest = batch["ts"].max()
            if self._data_clock is None or newest > self._data_clock[0]:
                self._data_clock = (newest, time.monotonic())
        self._raised(raised)

    def _batch_events(self, events: pl.DataFrame) -> None:
        """Batch events to the engine: its monitors and SPC charts that follow phases."""
        self.engine.batch_events(events)

    def _raised(self, raised: list) -> None:
        for alert in raised:
            self.metrics.alerts_raised.labels(alert.detector, alert.severity).inc()
            log.info("alert raised: %s", alert.message)
        self.metrics.alerts_active.set(len(self.alerts.active()))

    def data_now(self) -> datetime:
        """The plant's clock now: the newest sample time seen, advanced by the wall time since it
        was seen (so a plant whose clock is offset, or simulated time, does not look stale); the
        wall clock before the first sample."""
        if self._data_clock is None:
            return datetime.now(UTC)
        seen, at = self._data_clock
        return seen + timedelta(seconds=time.monotonic() - at)

    async def check_clock(self, period_s: float | None = None) -> None:
        """Run the clock-driven detectors (stale data) every `period_s` until cancelled: a source
        that went silent sends no batch that would run them."""
        config = self.site.detectors.stale
        if not config.enabled:
            return
        period = period_s if period_s is not None else min(5.0, config.after_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                self._raised(self.engine.check(self.data_now()))
            except Exception:  # a detector's bug must not stop the tower
                log.exception("clock-driven detectors failed")

    async def watch_models(self, period_s: float | None = None) -> None:
        """Swap in new stored model versions (`analytics.model_reload`) every `period_s`
        (default `detectors.models.reload_s`) until cancelled; each is audited."""
        if self.reloader is None:
            return
        from analytics.model_reload import watch

        await watch(lambda: [self.reloader], period_s or self.site.detectors.models.reload_s, self._audit_reload)

    def _audit_reload(self, change) -> None:
        """A model version swapped in (`model.load`) or refused (`model.refuse`) by the running tower."""
        record_model_change(self.audit, change)

    def health(self) -> dict[str, Any]:
        sources = [s.health.as_dict() for s in self.sources]
        spool = self.pipeline.spool_health()
        ok = (
            all(s["connected"] for s in sources)
            and self.pipeline.historian_ok
            and not (spool and spool["last_error"])
        )
        return {
            "status": "ok" if ok else "degraded",
            "enterprise": self.site.enterprise,
            "uptime_s": round((datetime.now(UTC) - self.started_at).total_seconds(), 1),
            "sources": sources,
            "historian": {
                "name": self.historian.name,
                "ok": self.pipeline.historian_ok,
                "last_error": self.pipeline.historian_error,
                "samples_stored": self.pipeline.samples_stored,
                "batch_events_stored": self.pipeline.batch_events_stored,
            },
            "spool": spool,
            "alerts_active": len(self.alerts.active()),
        }

    def start_screen(self, host: str | None = None, port: int | None = None) -> str:
        """Serve the Dash screen and the JSON API in a background thread; return its URL."""
        from controltower.screen.app import create_app
        from controltower.site import LOOPBACK_HOSTS
        from controltower.websecurity import WebSecurity
        from controltower.webserver import WebServer

        auth = self.site.screen.auth
        bind = host or self.site.screen.host
        if not auth.enabled and bind not in LOOPBACK_HOSTS:
            raise ValueError(
                f"screen.auth.enabled is false: the screen may only listen on a loopback address "
                f"({', '.join(LOOPBACK_HOSTS)}), not {bind!r}; enable auth in the site file or bind 127.0.0.1"
            )
        security = WebSecurity.from_config(auth, data_dir=self.data_dir, audit=self.audit)
        app = create_app(self, security=security)
        self.web = WebServer(app.server, host=bind, port=self.site.screen.port if port is None else port)
        self.web.start()
        log.info("control tower screen at %s", self.web.url)
        return self.web.url

    def stop_screen(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    async def resume_phases(self) -> int:
        """Before collecting: each unit's last stored batch event, to the engine, so models and
        SPC centres that follow phases know the phase running when the tower (re)starts instead
        of waiting for the unit's next event. Returns the events fed (0 when nothing follows
        phases, or the historian stores no events or does not answer: then they wait, as before)."""
        read = getattr(self.historian, "read_batch_events", None)
        if read is None or not self.engine.follows_phases:
            return 0
        now = datetime.now(UTC)
        try:
            # From `now` on there is nothing yet: what comes back is each unit's last event before it.
            frames = [await asyncio.to_thread(read, site.id, now) for site in self.site.sites]
        except Exception as exc:  # noqa: BLE001  # HistorianError or a driver's own: never stop the tower
            log.warning("running batch phases not resumed, the historian did not answer: %s", exc)
            return 0
        events = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
        if events.height:
            self.engine.batch_events(events)
            log.info("resumed the running phase of %d unit(s) from the historian", events.height)
        return events.height

    async def run(self, duration_s: float | None = None) -> None:
        """Collect, detect and store until cancelled or for `duration_s` seconds."""
        await self.resume_phases()
        task = asyncio.create_task(self.pipeline.run(), name="pipeline")
        clock = asyncio.create_task(self.check_clock(), name="clock-checks")
        models = asyncio.create_task(self.watch_models(), name="model-reload")
        try:
            if duration_s is None:
                await task
            else:
                done, _ = await asyncio.wait({task}, timeout=duration_s)
                if task in done:
                    task.result()
        finally:
            clock.cancel()
            models.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, clock, models, return_exceptions=True)

    def close(self) -> None:
        self.stop_screen()
        self.pipeline.close()
        self.historian.close()
        self.journal.close()
