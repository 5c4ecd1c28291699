"""ISA-88 batches of a unit: consecutive runs of its recipe, each with an id and phases.

Batch ids are `<UNIT>-<NNNN>`, the unit id upper-cased without separators and the batch
number from 1 at plant start (`BR101-0001`, `PRESS1-0002`): deterministic, so a replay of
the same seed names the same batches.
"""

from __future__ import annotations

import re
from itertools import accumulate

from simulators.units.base import BatchState, Recipe


def batch_prefix(unit_id: str) -> str:
    """`br101` -> `BR101`, `filler-1` -> `FILLER1`."""
    return re.sub(r"[^A-Z0-9]", "", unit_id.upper()) or "UNIT"


class BatchClock:
    """Maps simulated seconds since plant start to a unit's batch and phase."""

    def __init__(self, unit_id: str, recipe: Recipe):
        if not recipe or any(p.duration_s <= 0 for p in recipe):
            raise ValueError(f"unit {unit_id}: a recipe needs phases with positive durations")
        self.prefix = batch_prefix(unit_id)
        self.recipe = recipe
        self._ends = list(accumulate(p.duration_s for p in recipe))
        self.batch_duration_s = self._ends[-1]

    def at(self, elapsed_s: float) -> BatchState:
        """The batch state `elapsed_s` simulated seconds after plant start (>= 0)."""
        number, into = divmod(max(elapsed_s, 0.0), self.batch_duration_s)
        index = next((i for i, end in enumerate(self._ends) if into < end), len(self._ends) - 1)
        phase_start = self._ends[index - 1] if index else 0.0
        return BatchState(
            batch_id=f"{self.prefix}-{int(number) + 1:04d}",
            number=int(number) + 1,
            phase=self.recipe[index].name,
            phase_index=index,
            phase_elapsed_s=into - phase_start,
            batch_elapsed_s=into,
        )
