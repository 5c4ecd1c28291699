"""Alarm state that outlives an analytics worker: the alerts a worker finds in the UNS's retained
alarm state (`{root}/v1/alarm-state/...`, docs/uns.md) for a partition it takes over, whether
from its own earlier run or from a worker that died, are put back into its alert book, and its
detectors are told the level those alerts were at, so the same alert (same id) is cleared,
escalated or acknowledged later instead of a new one being raised.

This reaches into `AlertBook` and `DetectionEngine` state that they keep private: the book has
no public way to take an alert it did not raise. Kept here, in one place, so that a change
there breaks one module with a test (tests/integration/test_scale_out.py), not the worker.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

import polars as pl

from analytics.alerts import Alert, AlertBook, _Shelf
from analytics.engine import DetectionEngine

_TIMES = ("raised_at", "cleared_at", "acknowledged_at", "shelved_until")
_FIELDS = {f.name for f in fields(Alert)} - {"worst_score"}
LEVEL_BY_SEVERITY = {"warning": 1, "alarm": 2}


def alert_from_state(state: dict[str, Any]) -> Alert:
    """An `Alert` from its `to_dict()` form (the retained alarm state); ValueError if it is not one."""
    try:
        values = {k: v for k, v in state.items() if k in _FIELDS}
        for key in _TIMES:
            if values.get(key) is not None:
                values[key] = datetime.fromisoformat(values[key])
        return Alert(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not an alarm state: {exc}") from None


class RestorableAlertBook(AlertBook):
    """An AlertBook that can take back alerts from the retained alarm state."""

    def restore(self, alert: Alert) -> bool:
        """Put `alert` back as it was (active, cleared-unacknowledged, shelved); a copy of it the
        book still holds (a partition that comes back to this worker) is replaced, since the
        retained state is the newer. False when the book holds another alert active on the point."""
        with self._lock:
            key = (alert.tag_id, alert.detector)
            held = self._by_id.pop(alert.id, None)
            if held is not None:
                if self._active.get(key) is held:
                    del self._active[key]
                self._unacked.pop(alert.id, None)
            if alert.active and key in self._active:
                return False
            if alert.active:
                self._active[key] = alert
            else:
                self._remember(alert)
                if not alert.acknowledged:
                    self._unacked[alert.id] = alert
            self._by_id[alert.id] = alert
            if alert.shelved_until is not None and key not in self._shelves:
                self._shelves[key] = _Shelf(until=alert.shelved_until, reason=alert.shelve_reason or "",
                                            user=alert.shelved_by or "")
            return True


def seed_levels(engine: DetectionEngine, alerts: list[Alert]) -> None:
    """Tell the engine the level each restored active alert's tag was at for its detector, so
    that a sample back to normal clears the alert (without it the engine starts every tag at
    level 0 and sees no change)."""
    by_detector: dict[str, list[tuple[str, int]]] = {}
    for alert in alerts:
        if alert.active:
            by_detector.setdefault(alert.detector, []).append((alert.tag_id, LEVEL_BY_SEVERITY.get(alert.severity, 2)))
    for name, rows in by_detector.items():
        levels = engine._levels.get(name)
        if levels is None:  # a detector this worker does not run (configuration changed)
            continue
        seeded = pl.DataFrame({"tag_id": [t for t, _ in rows], "level_was": [lv for _, lv in rows]},
                              schema=levels.schema)
        engine._levels[name] = pl.concat([levels.join(seeded, on="tag_id", how="anti"), seeded])
