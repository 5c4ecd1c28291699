"""A rotary tablet press, as its in-line instruments see it.

Each turret station fills its die to a depth with a small station bias; tablet weight is
that fill times the powder's bulk density, which wanders slowly (blend segregation,
hopper level) and is pulled back by the automatic weight control. Main compression force
follows tablet weight steeply (same punch gap, more powder: F ~ w^4) and rises slightly with
turret speed (shorter dwell). The in-line check weighs the tablet passing the sensor, so
the station pattern shows in the readings; force is reported for the same tablet.

Ejection force (the lower punch pushing the tablet out of the die) follows the compaction (the
main force) and the die wall's lubrication, which wanders slowly (magnesium stearate
distribution in the blend): a sticking blend shows as ejection force rising at a steady main
force.

Bounds hold even without the weight control: density +-3.5 mg, station bias +-1.2 mg and
per-tablet scatter +-2.45 mg stay inside +-7.5 mg of target.

Per batch: start_up (turret ramps up) -> compression -> wind_down (turret ramps down).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from simulators.units.base import BatchState, Noise, Phase, Ramp, Recipe, Slow, index_of, lag

_STATIONS = 36
_TARGET_WEIGHT = 250.0  # mg
_FORCE_AT_TARGET = 12.0  # kN at the target weight and 50 rpm
_FORCE_EXPONENT = 4.0
_SPEEDS = {"start_up": 55.0, "compression": 55.0, "wind_down": 38.0}  # rpm
_IDLE_SPEED = 38.0
_EJECTION_AT_TARGET = 350.0  # N at the target compression force, normal lubrication


class TabletPress:
    KIND: ClassVar[str] = "tablet_press"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = ("compression_force", "tablet_weight", "speed", "ejection_force")
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        "compression_force": (10.25, 13.75),
        "tablet_weight": (242.8, 257.2),
        "speed": (36.0, 57.0),
        # 350 N x force ratio (0.854..1.146) x lubrication (+-7 %) +- 14 N of scatter.
        "ejection_force": (262.0, 444.0),
    }
    # Operator setpoints: name -> (low, high, engineering unit); see `overrides`.
    SETPOINTS: ClassVar[dict[str, tuple[float, float, str]]] = {
        "speed": (20.0, 80.0, "rpm"),
        "target_weight": (200.0, 300.0, "mg"),
    }
    recipe: Recipe = (Phase("start_up", 240.0), Phase("compression", 1440.0), Phase("wind_down", 240.0))

    def __init__(self, tags: Sequence[str], rng: np.random.Generator):
        """`tags`: the subset of KNOWN_TAGS this unit has, in output order."""
        self.tags = tuple(tags)
        self._out = index_of(self.tags)
        self._noise = Noise(rng)
        # Operator setpoints by name (see SETPOINTS); they take the place of the recipe's while set.
        self.overrides: dict[str, float] = {}
        # Punch/die tolerances: a fixed fill bias per station, mg.
        self.station_bias = np.clip(rng.standard_normal(_STATIONS) * 0.5, -1.2, 1.2)
        self._speed_sp = Ramp(_IDLE_SPEED, 0.1)
        self.speed = _IDLE_SPEED
        self._density = Slow(sigma=0.004, tau_s=400.0)  # relative bulk density
        self.weight_correction = 0.0  # mg, from the automatic weight control
        self._position = 0.0  # turret angle, in stations
        # Ejection draws from its own stream (spawned: the other tags' stream is unchanged).
        self._extra = Noise(rng.spawn(1)[0])
        self._lubrication = Slow(sigma=0.02, tau_s=900.0)  # relative die-wall friction

    def setpoints(self, batch: BatchState) -> dict[str, float]:
        """The effective setpoint targets now: the operator's where set, else the recipe phase's."""
        return {
            "speed": self.overrides.get("speed", _SPEEDS[batch.phase]),
            "target_weight": self.overrides.get("target_weight", _TARGET_WEIGHT),
        }

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        z = self._noise.draw(4)
        targets = self.setpoints(batch)
        target_weight = targets["target_weight"]
        speed_sp = self._speed_sp.toward(targets["speed"], dt_s)
        self.speed = lag(self.speed, speed_sp, dt_s, 3.0)
        self._position = (self._position + self.speed / 60.0 * _STATIONS * dt_s) % _STATIONS

        density = self._density.step(dt_s, z[0])
        mean_weight = _TARGET_WEIGHT * (1.0 + density) + self.weight_correction
        # The weight control trims fill depth on the average force, i.e. on the mean weight.
        self.weight_correction = lag(
            self.weight_correction, self.weight_correction - (mean_weight - target_weight), dt_s, 150.0
        )

        station = int(self._position)
        weights = mean_weight + self.station_bias  # every station's next tablet, vectorised over the turret
        weight = weights[station] + 0.7 * z[1]
        force = (
            _FORCE_AT_TARGET
            * (weight / _TARGET_WEIGHT) ** _FORCE_EXPONENT
            * (1.0 + 0.002 * (self.speed - 50.0))
            + 0.04 * z[2]
        )
        readings = {"compression_force": force, "tablet_weight": weight, "speed": self.speed + 0.15 * z[3]}
        if "ejection_force" in self._out:
            e = self._extra.draw(2)
            friction = 1.0 + self._lubrication.step(dt_s, e[0])
            readings["ejection_force"] = _EJECTION_AT_TARGET * (force / _FORCE_AT_TARGET) * friction + 4.0 * e[1]
        return np.array([readings[t] for t in self.tags], dtype=np.float64)
