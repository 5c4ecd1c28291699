"""An aseptic vial filler with a check-weigher, in a cleanroom.

Eight needles dose in turn, each with its own small bias (pump and needle tolerances) and a
per-vial dosing scatter; the product's viscosity drifts slowly (temperature) and the
check-weigher feedback trims the pump strokes back to target. The check-weigher weighs the
vial now passing it, so `fill_weight` is that vial's weight.

Filling speed follows its setpoint through the drive lag. The room's differential pressure to
the corridor is held by the HVAC: a slow wander plus fast turbulence.

Per needle (`fill_weight_n1` .. `fill_weight_n8`): the mean weight of the vials that needle
filled in the last seconds, so a drifting needle shows on its own tag while the vial-by-vial
`fill_weight` mixes all eight. `reject_rate`: vials per minute the check-weigher rejects, those
outside target +-0.05 g (computed from each needle's mean and the dosing scatter) plus a small
base rate for the other causes (stopper, cap). The grade A zone's particle counter: counts per
m3 at >= 0.5 um and >= 5.0 um (`particles_0_5um`, `particles_5_0um`), log-normal around a clean
room's background (a slowly wandering level, with movements in the room, and a little counting
scatter), far below the EU GMP Annex 1 grade A limits (3 520 and 29 per m3).

Per batch: start_up (speed ramps up) -> filling -> wind_down (speed ramps down).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy.special import erfc

from simulators.units.base import BatchState, Noise, Phase, Ramp, Recipe, Slow, index_of, lag

_NEEDLES = 8
_TARGET_FILL = 2.000  # g
_SPEEDS = {"start_up": 300.0, "filling": 300.0, "wind_down": 265.0}  # vials/min
_IDLE_SPEED = 265.0
_ROOM_DP = 18.0  # Pa
_DOSE_SCATTER = 0.004  # g, one vial's dosing scatter (sigma)
_REJECT_TOLERANCE = 0.05  # g around the target
_BASE_REJECTS = 0.3  # vials/min rejected for other causes (stopper, cap)
_PARTICLES = {"particles_0_5um": 120.0, "particles_5_0um": 1.5}  # counts/m3, background median
_NEEDLE_TAGS = tuple(f"fill_weight_n{k + 1}" for k in range(_NEEDLES))


class FillingLine:
    KIND: ClassVar[str] = "filling_line"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = (
        "fill_weight", "speed", "room_dp", *_NEEDLE_TAGS, "reject_rate", *_PARTICLES,
    )
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        # Bounds of the clipped disturbances: viscosity 0.0105 + needle 0.006 + dose 0.014 g.
        "fill_weight": (1.969, 2.031),
        "speed": (262.0, 303.0),
        "room_dp": (14.3, 21.7),
        # A needle's mean: viscosity 0.0105 + its bias 0.006 + the mean's scatter 0.00525 g.
        **{t: (1.978, 2.022) for t in _NEEDLE_TAGS},
        "reject_rate": (0.0, 1.1),
        "particles_0_5um": (0.0, 900.0),  # 120 x exp(0.5 x 3.5 + 0.08 x 3.5)
        "particles_5_0um": (0.0, 11.5),
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
        # The per-needle, reject and particle signals draw from their own stream (spawned, so the
        # stream of the tags above is the same with or without them).
        self._extra = Noise(rng.spawn(1)[0])
        self._particle_level = (Slow(sigma=0.5, tau_s=300.0), Slow(sigma=0.5, tau_s=300.0))  # log of the level
        self._dt_s = 0.0

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
        if len(self.tags) > 3:
            self._dt_s = dt_s
            readings |= self._line_quality(fills, target_fill)
        return np.array([readings[t] for t in self.tags], dtype=np.float64)

    def _line_quality(self, fills: np.ndarray, target_fill: float) -> dict[str, float]:
        """Per-needle means, the check-weigher's reject rate and the particle counts, now."""
        e = self._extra.draw(_NEEDLES + 3)
        out = dict(zip(_NEEDLE_TAGS, (fills + 0.0015 * e[:_NEEDLES]).tolist(), strict=True))
        # Share of each needle's vials outside the tolerance, with its dosing scatter (normal tails).
        scale = _DOSE_SCATTER * math.sqrt(2.0)
        low = (target_fill - _REJECT_TOLERANCE - fills) / scale
        high = (fills - target_fill - _REJECT_TOLERANCE) / scale
        outside = float(np.mean(0.5 * (erfc(-low) + erfc(-high))))
        out["reject_rate"] = self.speed * outside + _BASE_REJECTS * (1.0 + 0.5 * e[-3] / 3.5)
        for (tag, median), slow, z in zip(_PARTICLES.items(), self._particle_level, e[-2:], strict=True):
            # A counter samples a volume over a minute: its count follows the zone's level (which
            # wanders with people and movements) with a little counting scatter, not a new draw.
            out[tag] = median * math.exp(slow.step(self._dt_s, self._extra.draw(1)[0]) + 0.08 * z)
        return out
