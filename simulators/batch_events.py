"""Batch events: a unit's batch starting, changing phase and ending, as the servers announce them.

The plant's batch clock only says where each unit is now; the service compares each unit's
(batch_id, phase) with the previous tick's and turns the differences into events:

    batch_end     the batch the unit was running is over (batch_id and phase: the ended batch's)
    batch_start   a new batch began (its batch_id and first phase)
    phase_change  same batch, next phase (previous_phase says which phase ended)

A new batch id gives batch_end then batch_start, in that order. The first tick after start-up
gives nothing (a batch already running did not start then). Every event carries a sequence
number unique in the service's run, which is how a client acknowledges it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from simulators.clock import iso_utc

TRANSITIONS = ("batch_start", "phase_change", "batch_end")


@dataclass(frozen=True)
class BatchEvent:
    sequence: int
    at: datetime  # simulated time
    unit: str  # site.area.line.unit
    transition: str  # one of TRANSITIONS
    batch_id: str
    phase: str
    previous_phase: str | None = None
    product: str = ""
    recipe: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "sequence": self.sequence,
            "ts": iso_utc(self.at),
            "unit": self.unit,
            "transition": self.transition,
            "batch_id": self.batch_id,
            "phase": self.phase,
            "previous_phase": self.previous_phase,
            "product": self.product,
            "recipe": self.recipe,
        }


class BatchTransitions:
    """Remembers each unit's (batch_id, phase) and reports what changed since the last call."""

    def __init__(self, batch_info: dict[str, tuple[str, str]] | None = None) -> None:
        """`batch_info`: (product, recipe) per unit path, carried by its events."""
        self._last: dict[str, tuple[str, str]] = {}
        self._sequence = 0
        self._info = batch_info or {}

    def update(self, states: dict[str, tuple[str, str]], at: datetime) -> list[BatchEvent]:
        events: list[BatchEvent] = []
        for unit, (batch_id, phase) in states.items():
            before = self._last.get(unit)
            self._last[unit] = (batch_id, phase)
            if before is None or before == (batch_id, phase):
                continue
            old_batch, old_phase = before
            if old_batch != batch_id:
                events.append(self._event(at, unit, "batch_end", old_batch, old_phase, None))
                events.append(self._event(at, unit, "batch_start", batch_id, phase, None))
            else:
                events.append(self._event(at, unit, "phase_change", batch_id, phase, old_phase))
        return events

    def _event(self, at, unit, transition, batch_id, phase, previous_phase) -> BatchEvent:
        self._sequence += 1
        product, recipe = self._info.get(unit, ("", ""))
        return BatchEvent(self._sequence, at, unit, transition, batch_id, phase, previous_phase, product, recipe)
