"""ISA-88 batches of a unit: consecutive runs of its recipe, each with an id and phases.

Batch ids are `<UNIT>-<NNNN>`, the unit id upper-cased without separators and the batch
number from 1 at plant start (`BR101-0001`, `PRESS1-0002`): deterministic, so a replay of
the same seed names the same batches.

Batch-to-batch variability: with a `seed` and a `spread` (a fraction, e.g. 0.04), every phase
of every batch lasts its recipe duration times (1 + u * spread), u uniform in [-1, 1], drawn
from a generator seeded by (seed, batch number): the same seed gives the same batches, any
batch can be looked up without the ones before it being drawn first, and no phase is ever
more than `spread` off its recipe. `SPREAD` gives the spread per unit kind: real batches for
the process units, none for the utilities whose "batches" mark hours of operation.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

import numpy as np

from simulators.units.base import BatchState, Recipe

# Phase-duration spread per unit kind (fraction of the recipe duration, bounded).
SPREAD: dict[str, float] = {
    "bioreactor": 0.04,
    "freeze_dryer": 0.03,
    "tablet_press": 0.03,
    "filling_line": 0.03,
}
MAX_SPREAD = 0.25

# What a unit of each kind makes and by which recipe, unless its site entry says (Unit.product,
# Unit.recipe): announced with every batch event and on the unit's OPC-UA node.
PRODUCTS: dict[str, tuple[str, str]] = {
    "bioreactor": ("mAb-101 drug substance", "CHO fed-batch FB-101 v3"),
    "freeze_dryer": ("mAb-101 lyophilisate, 20 mg vials", "Lyophilisation cycle LC-12 v2"),
    "tablet_press": ("Paracetamol 500 mg tablets", "Compression TP-500 v4"),
    "filling_line": ("mAb-101 solution, 2 mL vials", "Aseptic fill AF-2 v5"),
    "wfi_loop": ("Water for injection", "WFI circulation at 80 degC"),
    "cleanroom_hvac": ("Cleanroom air", "Room pressure cascade"),
}


def batch_info(unit) -> tuple[str, str]:
    """(product, recipe) of a unit (a `controltower.site.Unit`): its own, else its kind's."""
    product, recipe = PRODUCTS.get(unit.kind or "", ("unspecified product", "generic run"))
    return unit.product or product, unit.recipe or recipe


def batch_prefix(unit_id: str) -> str:
    """`br101` -> `BR101`, `filler-1` -> `FILLER1`."""
    return re.sub(r"[^A-Z0-9]", "", unit_id.upper()) or "UNIT"


class BatchClock:
    """Maps simulated seconds since plant start to a unit's batch and phase.

    `seed`: an int or a sequence of ints (e.g. (plant seed, unit index)) for the per-batch
    phase durations; `spread`: how far (fraction) a phase may differ from the recipe. Without
    a seed, or with spread 0, every batch runs the recipe exactly.
    """

    def __init__(
        self, unit_id: str, recipe: Recipe, *, seed: int | Sequence[int] | None = None, spread: float = 0.0
    ):
        if not recipe or any(p.duration_s <= 0 for p in recipe):
            raise ValueError(f"unit {unit_id}: a recipe needs phases with positive durations")
        if not 0.0 <= spread <= MAX_SPREAD:
            raise ValueError(f"unit {unit_id}: batch spread must be in [0, {MAX_SPREAD}], got {spread!r}")
        self.prefix = batch_prefix(unit_id)
        self.recipe = recipe
        self._seed = None if seed is None or spread == 0.0 else [int(s) for s in np.atleast_1d(seed)]
        self._spread = spread
        self.batch_duration_s = sum(p.duration_s for p in recipe)  # nominal, the recipe's
        # Batch start times, extended lazily; per batch, the phase end offsets within it.
        self._starts: list[float] = [0.0]
        self._phase_ends: list[list[float]] = [self._draw_phase_ends(1)]

    def phase_durations(self, number: int) -> tuple[float, ...]:
        """The phase durations (s) of batch `number` (from 1)."""
        self._extend_to_batch(number)
        ends = self._phase_ends[0 if self._seed is None else number - 1]
        return tuple(b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True))

    def at(self, elapsed_s: float) -> BatchState:
        """The batch state `elapsed_s` simulated seconds after plant start (>= 0)."""
        elapsed_s = max(elapsed_s, 0.0)
        if self._seed is None:
            number, into = divmod(elapsed_s, self.batch_duration_s)
            ends = self._phase_ends[0]
            number = int(number)
        else:
            while self._starts[-1] + self._phase_ends[-1][-1] <= elapsed_s:
                self._append_batch()
            number = bisect_right(self._starts, elapsed_s) - 1
            into = elapsed_s - self._starts[number]
            ends = self._phase_ends[number]
        index = next((i for i, end in enumerate(ends) if into < end), len(ends) - 1)
        phase_start = ends[index - 1] if index else 0.0
        return BatchState(
            batch_id=f"{self.prefix}-{number + 1:04d}",
            number=number + 1,
            phase=self.recipe[index].name,
            phase_index=index,
            phase_elapsed_s=into - phase_start,
            batch_elapsed_s=into,
        )

    def _extend_to_batch(self, number: int) -> None:
        if self._seed is not None:
            while len(self._phase_ends) < number:
                self._append_batch()

    def _append_batch(self) -> None:
        self._starts.append(self._starts[-1] + self._phase_ends[-1][-1])
        self._phase_ends.append(self._draw_phase_ends(len(self._phase_ends) + 1))

    def _draw_phase_ends(self, number: int) -> list[float]:
        durations = [p.duration_s for p in self.recipe]
        if self._seed is not None:
            u = np.random.default_rng([*self._seed, number]).uniform(-1.0, 1.0, len(durations))
            durations = [d * (1.0 + self._spread * float(x)) for d, x in zip(durations, u, strict=True)]
        return list(accumulate(durations))
