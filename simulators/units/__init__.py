"""Unit process models: one per unit `kind`, and a generic model for the rest.

`build_unit_model(unit, rng)` gives the model the simulator runs for a unit: the kind's model
for the tags it knows (when the tag's limits can hold the model's normal band), the generic
model for every other tag, combined in the unit's tag order.
"""

from __future__ import annotations

import logging

import numpy as np

from controltower.site import Limits, Unit
from simulators.units.base import BatchState, KnownProcess, Recipe, UnitModel
from simulators.units.bioreactor import Bioreactor
from simulators.units.cleanroom_hvac import CleanroomHvac
from simulators.units.filling_line import FillingLine
from simulators.units.freeze_dryer import FreezeDryer
from simulators.units.generic import GenericUnit
from simulators.units.tablet_press import TabletPress
from simulators.units.wfi_loop import WfiLoop

log = logging.getLogger(__name__)

MODELS: dict[str, type[KnownProcess]] = {
    m.KIND: m for m in (Bioreactor, TabletPress, FillingLine, FreezeDryer, WfiLoop, CleanroomHvac)
}

__all__ = [
    "MODELS",
    "BatchState",
    "Recipe",
    "UnitModel",
    "build_unit_model",
    "envelope_fits",
    "known_setpoints",
    "process_faults_of",
    "set_process_faults",
]


def envelope_fits(envelope: tuple[float, float], limits: Limits) -> bool:
    """Whether a model's normal band lies strictly inside the tag's warning (else alarm) limits."""
    low = limits.warning_low if limits.warning_low is not None else limits.alarm_low
    high = limits.warning_high if limits.warning_high is not None else limits.alarm_high
    return (low is None or low < envelope[0]) and (high is None or envelope[1] < high)


def known_setpoints(model: object, batch: BatchState) -> dict[str, float]:
    """A model's effective setpoints (by name) at `batch`; {} for a model without operator setpoints."""
    setpoints = getattr(model, "setpoints", None)
    return setpoints(batch) if setpoints is not None else {}


def process_faults_of(model: object) -> dict[str, tuple[str, ...]]:
    """The process faults a unit's model can take: kind -> the tags (short ids) its physics
    moves and this unit has; {} for a model without process faults (generic, or none declared)."""
    physics = getattr(model, "known", model)
    declared: dict[str, tuple[str, ...]] = getattr(physics, "PROCESS_FAULTS", {})
    simulated = set(getattr(physics, "tags", ()))
    return {kind: tuple(t for t in tags if t in simulated) for kind, tags in declared.items()}


def set_process_faults(model: object, levels: dict[str, float]) -> None:
    """Hand a unit's model its active process faults (kind -> severity); {} when none is active."""
    physics = getattr(model, "known", model)
    if hasattr(physics, "faults"):
        physics.faults = levels


class _Combined:
    """A kind's model for the tags it knows plus the generic model for the others."""

    def __init__(self, tags: tuple[str, ...], known: UnitModel, generic: GenericUnit | None):
        self.tags = tags
        self.recipe = known.recipe
        self._known, self._generic = known, generic
        self.known = known  # the process model: its process faults (see process_faults_of)
        self._known_at = np.array([tags.index(t) for t in known.tags], dtype=np.intp)
        self._generic_at = np.array([tags.index(t) for t in generic.tags], dtype=np.intp) if generic else None
        # Operator setpoints are the process model's (see each model's SETPOINTS).
        self.SETPOINTS = getattr(known, "SETPOINTS", {})
        self.overrides: dict[str, float] = getattr(known, "overrides", {})

    def setpoints(self, batch: BatchState) -> dict[str, float]:
        return known_setpoints(self._known, batch)

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        out = np.empty(len(self.tags))
        out[self._known_at] = self._known.step(dt_s, batch)
        if self._generic is not None:
            out[self._generic_at] = self._generic.step(dt_s, batch)
        return out


def build_unit_model(unit: Unit, rng: np.random.Generator) -> UnitModel:
    """The model for `unit`, drawing all its randomness from `rng`; outputs follow `unit.tags` order."""
    model = MODELS.get(unit.kind) if unit.kind else None
    if unit.kind and model is None:
        log.info(
            "unit %s: no process model for kind %r; its tags are simulated generically", unit.id, unit.kind
        )
    if model is None:
        return GenericUnit(unit.tags, rng)
    known: list[str] = []
    for tag in unit.tags:
        if tag.id not in model.KNOWN_TAGS:
            continue
        if envelope_fits(model.ENVELOPE[tag.id], tag.limits):
            known.append(tag.id)
        else:
            log.warning(
                "unit %s: the %s model's normal band for %s %s does not fit its limits; simulated as generic",
                unit.id,
                model.KIND,
                tag.id,
                model.ENVELOPE[tag.id],
            )
    if not known:
        return GenericUnit(unit.tags, rng)
    others = [t for t in unit.tags if t.id not in known]
    tags = tuple(t.id for t in unit.tags)
    # Separate streams, so adding a generic tag does not change the known signals' noise.
    known_rng, generic_rng = rng.spawn(2)
    known_model = model(known, known_rng)
    generic = GenericUnit(others, generic_rng) if others else None
    return _Combined(tags, known_model, generic)
