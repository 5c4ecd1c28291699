"""What an analytics worker taking over a partition brings with it.

Alarm state that outlives an analytics worker: the alerts a worker finds in the UNS's retained
alarm state (`{root}/v1/alarm-state/...`, docs/uns.md) for a partition it takes over, whether
from its own earlier run or from a worker that died, are put back into its alert book
(`AlertBook.adopt`), and its detectors are told the level those alerts were at, so the same
alert (same id) is cleared, escalated or acknowledged later instead of a new one being raised.

`seed_levels` still reaches into the engine's level table, which has no public setter: kept
here, in one place, so that a change there breaks one module with a test
(tests/integration/test_scale_out.py), not the worker.

Detector windows that outlive it: the partition's recent samples, read from the historian, go
through its detectors (`warm_up`) before the first live value is scored.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

import polars as pl

from analytics.alerts import Alert
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


def warm_up(engine: DetectionEngine, history: pl.DataFrame) -> int:
    """Fill the engine's detector windows (rolling statistics, flatline runs, last values) with
    `history`, a partition's recent samples read from the historian, before it scores live
    values: a partition taken over neither scores blind until its windows fill again nor
    mistakes the first live values for a jump. The scores are thrown away and the engine's alert
    levels are left alone: which alerts are on comes from the retained alarm state (`seed_levels`),
    not from replaying history. Returns the samples used."""
    known = [t.tag_id for t in engine.tags]
    history = history.filter(pl.col("tag_id").is_in(known)).sort("ts", "tag_id")
    if history.is_empty():
        return 0
    for detector in engine.detectors:
        detector.score(history)
    for monitor in engine.monitors:
        monitor.score(history)
    return history.height
