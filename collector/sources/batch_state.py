"""Batch events from a server that shows each unit's batch *state* (its batch id and phase
variables, as OPC-UA servers do) rather than announcing transitions.

Changes of the two variables are noted as they arrive (`note`, from a subscription callback: no
I/O); `take` turns them into batch events (`controltower.batch_events`) by comparing each unit's
(batch id, phase) with the last one it knew, in source-time order:

    first state seen of a unit (this run)     observed
    another batch id                          batch_end (the old batch), batch_start (the new one)
    empty batch id                            batch_end (no batch runs)
    same batch, another phase                 phase_change

A server updates the two variables in one write but may notify them separately, so the changes
of the newest source time are held back until a newer one arrives (or `settle_s` has passed):
a new batch and its first phase then make one batch_start, not a start in the old phase.
"""

from __future__ import annotations

import time
from datetime import datetime

import polars as pl

from controltower.batch_events import batch_events_frame, empty_batch_events


class BatchStateTracker:
    def __init__(self, *, settle_s: float = 2.0):
        self.settle_s = settle_s
        self._known: dict[str, tuple[str | None, str | None]] = {}
        self._before_reconnect: dict[str, tuple[str | None, str | None]] = {}
        # (source time, arrival (monotonic), unit, "batch_id" | "phase", value)
        self._changes: list[tuple[datetime, float, str, str, str | None]] = []

    def note(self, unit_id: str, what: str, value: object, at: datetime) -> None:
        """A new value of the unit's batch id or phase variable (`what`), with its source time."""
        text = str(value).strip() if value is not None else ""
        self._changes.append((at, time.monotonic(), unit_id, what, text or None))

    def take(self, *, everything: bool = False) -> pl.DataFrame:
        """The batch events of the changes noted so far (see the module doc); `everything`: do not
        hold the newest source time back (the source is stopping)."""
        if not self._changes:
            return empty_batch_events()
        changes = sorted(self._changes, key=lambda c: (c[0], c[2]))
        newest = max(c[0] for c in changes)
        settled = time.monotonic() - self.settle_s
        ready = [c for c in changes if everything or c[0] < newest or c[1] <= settled]
        self._changes = [c for c in changes if not (everything or c[0] < newest or c[1] <= settled)]
        rows: list[dict[str, object]] = []
        i = 0
        while i < len(ready):  # one group per (source time, unit): applied together
            at, unit = ready[i][0], ready[i][2]
            before = self._known.get(unit)
            batch, phase = before if before is not None else (None, None)
            while i < len(ready) and ready[i][0] == at and ready[i][2] == unit:
                _, _, _, what, value = ready[i]
                batch, phase = (value, phase) if what == "batch_id" else (batch, value)
                i += 1
            if (batch, phase) == before or batch is None and before is None:
                continue
            if before is None and self._before_reconnect.pop(unit, None) == (batch, phase):
                self._known[unit] = (batch, phase)  # the same phase as before the reconnect: no event
                continue
            self._known[unit] = (batch, phase)
            rows.extend(_transitions(unit, at, before, batch, phase))
        return batch_events_frame(rows)

    def forget(self) -> None:
        """A new session: the next state seen of each unit is `observed` again (what happened
        while disconnected is not known), unless it is the state known before."""
        self._before_reconnect.update(self._known)
        self._known.clear()


def _transitions(unit: str, at: datetime, before, batch: str | None, phase: str | None) -> list[dict[str, object]]:
    row = {"ts": at, "unit_id": unit}
    if before is None or before[0] is None:
        if batch is None:
            return []
        return [{**row, "batch_id": batch, "phase": phase, "transition": "observed" if before is None else "batch_start"}]
    old_batch, old_phase = before
    if batch == old_batch:
        return [{**row, "batch_id": batch, "phase": phase, "transition": "phase_change"}]
    out = [{**row, "batch_id": old_batch, "phase": old_phase, "transition": "batch_end"}]
    if batch is not None:
        out.append({**row, "batch_id": batch, "phase": phase, "transition": "batch_start"})
    return out
