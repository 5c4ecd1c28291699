"""An aseptic vial filler with a check-weigher, in a cleanroom.

Eight needles dose in turn, each with its own small bias (pump and needle tolerances) and a
per-vial dosing scatter; the product's viscosity drifts slowly (temperature) and the
check-weigher feedback trims the pump strokes back to target. The check-weigher weighs the
vial now passing it, so `fill_weight` is that vial's weight.

Filling speed follows its setpoint through the drive lag. The room's differential pressure to
the corridor is held by the HVAC: a slow wander plus fast turbulence.

Per batch: start_up (speed ramps up) -> filling -> wind_down (speed ramps down).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from simulators.units.base import BatchState, Noise, Phase, Ramp, Recipe, Slow, index_of, lag

_NEEDLES = 8
_TARGET_FILL = 2.000  # g
_SPEEDS = {"start_up": 300.0, "filling": 300.0, "wind_down": 265.0}  # vials/min
_IDLE_SPEED = 265.0
_ROOM_DP = 18.0  # Pa


class FillingLine:
    KIND: ClassVar[str] = "filling_line"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = ("fill_weight", "speed", "room_dp")
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        # Bounds of the clipped disturbances: viscosity 0.0105 + needle 0.006 + dose 0.014 g.
        "fill_weight": (1.969, 2.031),
        "speed": (262.0, 303.0),
        "room_dp": (14.3, 21.7),
    }
    # Operator setpoints: name -> (low, high, engineering unit); see `overrides`.
    SETPOINTS: ClassVar[dict[str, tuple[float, float, str]]] = {
        "speed": (100.0, 400.0, "vials/min"),
        "target_fill_weight": (1.5, 2.5, "g"),
    }
    recipe: Recipe = (Phase("start_up", 120.0), Phase("filling", 960.0), Phase("wind_down", 120.0))

    def __init__(self, tags: Sequence[str], rng: np.random.Generator):
        """`tags`: the subset of KNOWN_TAGS this unit has, in output order."""
        self.tags = tuple(tags)
        self._out = index_of(self.tags)
        self._noise = Noise(rng)
        # Operator setpoints by name (see SETPOINTS); they take the place of the recipe's while set.
        self.overrides: dict[str, float] = {}
        self.needle_bias = np.clip(rng.standard_normal(_NEEDLES) * 0.003, -0.006, 0.006)  # g
        self._speed_sp = Ramp(_IDLE_SPEED, 0.5)
        self.speed = _IDLE_SPEED
        self._viscosity = Slow(sigma=0.003, tau_s=600.0)  # g of fill it shifts
        self.fill_correction = 0.0
        self._hvac = Slow(sigma=0.8, tau_s=60.0)  # Pa
        self.vials = 0.0  # vials filled so far; picks the needle the check-weigher sees

    def setpoints(self, batch: BatchState) -> dict[str, float]:
        """The effective setpoint targets now: the operator's where set, else the recipe phase's."""
        return {
            "speed": self.overrides.get("speed", _SPEEDS[batch.phase]),
            "target_fill_weight": self.overrides.get("target_fill_weight", _TARGET_FILL),
        }

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        z = self._noise.draw(5)
        targets = self.setpoints(batch)
        target_fill = targets["target_fill_weight"]
        speed_sp = self._speed_sp.toward(targets["speed"], dt_s)
        self.speed = lag(self.speed, speed_sp, dt_s, 5.0)
        self.vials += self.speed / 60.0 * dt_s

        mean_fill = _TARGET_FILL + self._viscosity.step(dt_s, z[0]) + self.fill_correction
        # Check-weigher feedback: integral trim of the pump stroke towards target.
        self.fill_correction -= (mean_fill - target_fill) * dt_s / 300.0
        fills = mean_fill + self.needle_bias  # the next vial of every needle
        fill_weight = fills[int(self.vials) % _NEEDLES] + 0.004 * z[1]

        room_dp = _ROOM_DP + self._hvac.step(dt_s, z[2]) + 0.25 * z[3]
        readings = {"fill_weight": fill_weight, "speed": self.speed + 0.8 * z[4], "room_dp": room_dp}
        return np.array([readings[t] for t in self.tags], dtype=np.float64)
