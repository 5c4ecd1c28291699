"""Hot reload of stored models: a running engine takes a new model version without a restart.

`ModelReloader(engine, root, units, ...).poll()` lists the store's versions of each (unit, kind)
of the engine's units (`models.STORE_KINDS`; the kinds pinned in the site file are left alone,
the file says which version runs). When the newest version differs from the one last seen (a
new `controltower model fit`, or a kind fitted for the first time) and from the one running, it
is loaded, which verifies its file hash, manifest hash and, with CONTROLTOWER_MODEL_KEY set,
its signature (`ModelStore.load`), and handed to the engine (`DetectionEngine.stage_monitor`)
as a monitor, or for `spc` as the SPC charts' centre lines (`StoredCentres`), which the engine
swaps in before its next micro-batch. A version refused (altered, unsigned, a monitor reading
tags the site lacks) is logged once as an error and the running version keeps scoring; the
next version fitted is tried again. (The charts leave out the tags of an `spc` model the site
lacks, at start-up as here.)

A poll is cheap: one directory listing per (unit, kind) (`ModelStore.versions`); manifests and
arrays are read only when the newest version changed. `watch` polls every
`detectors.models.reload_s` seconds, in a thread (loading a model takes milliseconds to a
second, the event loop must not wait), for the tower (`controltower.runtime`) and the analytics
workers (`controltower.services`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from analytics.detectors.spc import StoredCentres
from analytics.models import SPC, STORE_KINDS, ModelStore, ModelStoreError
from analytics.monitors import open_monitor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reload:
    """One model change a poll saw: loaded (error None) or refused (error says why)."""

    unit: str
    kind: str
    old_version: int | None
    new_version: int
    old_fingerprint: str | None
    new_fingerprint: str | None
    error: str | None = None


class ModelReloader:
    """Watches the model store for new versions of `units`' models and stages them in `engine`."""

    def __init__(self, engine, root: Path, units: list[str], *, pin: dict[str, dict[str, int]] | None = None,
                 on_delay_rows: int = 5, alarm_score: float = 3.0, known_tags: set[str] | None = None):
        self.engine = engine
        self.store = ModelStore(root)
        self.watched = [(u, k) for u in units for k in STORE_KINDS if k not in (pin or {}).get(u, {})]
        self.options = {"on_delay_rows": on_delay_rows, "alarm_score": alarm_score, "known_tags": known_tags}
        # The newest version seen per (unit, kind): what runs, else what the start-up could not load.
        running = engine.model_versions()
        self._seen = {key: running.get(key, self._newest(*key)) for key in self.watched}

    def _newest(self, unit: str, kind: str) -> int | None:
        try:
            versions = self.store.versions(unit, kind)
        except (ModelStoreError, OSError) as exc:
            log.warning("model reload: cannot list %s models of %s: %s", kind, unit, exc)
            return None
        return versions[-1] if versions else None

    def poll(self) -> list[Reload]:
        """Load and stage every newly stored version; what changed, refusals included."""
        changes = []
        for unit, kind in self.watched:
            newest = self._newest(unit, kind)
            if newest is None or newest == self._seen[(unit, kind)]:
                continue
            self._seen[(unit, kind)] = newest
            running = self.engine.model_versions()
            old = running.get((unit, kind))
            if newest == old:
                continue
            old_fingerprint = self._fingerprint(unit, kind, old)
            try:
                model, fingerprint = self._open(unit, kind, newest)
            except ModelStoreError as exc:
                log.error("model reload: %s model v%d of %s refused, %s: %s", kind, newest, unit,
                          f"v{old} keeps scoring" if old is not None else "none scores", exc)
                changes.append(Reload(unit, kind, old, newest, old_fingerprint, None, str(exc)))
                continue
            self.engine.stage_monitor(model)
            log.info("model reload: %s model v%d of %s %s from the next micro-batch", kind, newest, unit,
                     f"replaces v{old}" if old is not None else "scores")
            changes.append(Reload(unit, kind, old, newest, old_fingerprint, fingerprint))
        return changes

    def _open(self, unit: str, kind: str, version: int):
        """(what the engine takes: a monitor, or the spc centre lines; the training fingerprint),
        verified by the store; ModelStoreError when refused."""
        if kind == SPC:
            centres = StoredCentres.of(self.store.load(unit, SPC, version))
            return centres, centres.fingerprint
        monitor = open_monitor(self.store, unit, kind, version, **self.options)
        return monitor, monitor.fitted.fingerprint

    def _fingerprint(self, unit: str, kind: str, version: int | None) -> str | None:
        if version is None:
            return None
        try:
            return self.store.manifest(unit, kind, version).get("fingerprint")
        except ModelStoreError:
            return None


async def watch(reloaders: Callable[[], list[ModelReloader]], period_s: float,
                changed: Callable[[Reload], None] | None = None) -> None:
    """Poll the current `reloaders()` every `period_s` seconds (in a thread) until cancelled;
    each change goes to `changed` (e.g. the audit trail)."""
    while True:
        await asyncio.sleep(period_s)
        for reloader in reloaders():
            try:
                changes = await asyncio.to_thread(reloader.poll)
            except Exception:  # a bug here must not stop the tower: the running models keep scoring
                log.exception("model reload failed")
                continue
            for change in changes:
                if changed is not None:
                    try:
                        changed(change)
                    except Exception:
                        log.exception("model reload: recording %s %s v%d failed", change.unit, change.kind,
                                      change.new_version)
