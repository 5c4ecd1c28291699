"""A hot water-for-injection distribution loop: storage tank, heat exchanger, loop, analysers.

The loop runs hot (about 83 degC at supply) so it sanitises itself. A PI loop on the supply
temperature opens the steam valve of the heat exchanger; points of use drawing water (a slow,
bounded demand) pull cooler make-up through the tank, which the PI compensates. The return
leg loses heat to the plant room: the less flow returns, the more it cools on its way round.
Return velocity must stay turbulent (> 1 m/s); draws lower it. The still refills the tank
against the draws, so its level wanders slowly.

Quality analysers on the return: conductivity (uS/cm, temperature compensated to 25 degC;
USP <645> stage 1 limit 1.3) and TOC (ppb; USP <643> limit 500). Both wander slowly with the
still's feed water and carry analyser noise.

The loop has no batches; its "recipe" is one long circulation phase, so batch ids mark the
hours of operation (`WFI1-0001`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from simulators.units.base import PI, BatchState, Noise, Phase, Recipe, Slow, index_of, lag

_SUPPLY_SP = 83.0  # degC
_COLD_MAKEUP = 60.0  # degC the loop would settle at with the steam valve shut
_VALVE_GAIN = 0.3  # degC per % of steam valve
_DRAW_COOLING = 0.6  # degC per unit of draw
_LOOP_TAU_S = 120.0
_NOMINAL_FLOW = 1.6  # m/s return velocity with no draw
_FLOW_PER_DRAW = 0.05  # m/s per unit of draw


class WfiLoop:
    KIND: ClassVar[str] = "wfi_loop"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = (
        "supply_temperature",
        "return_temperature",
        "return_flow",
        "conductivity",
        "toc",
        "tank_level",
    )
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        "supply_temperature": (82.3, 83.7),
        "return_temperature": (80.8, 82.6),
        "return_flow": (1.38, 1.82),
        "conductivity": (0.28, 0.63),
        "toc": (25.0, 95.0),
        "tank_level": (44.0, 76.0),
    }
    # Operator setpoints: name -> (low, high, engineering unit); see `overrides`.
    SETPOINTS: ClassVar[dict[str, tuple[float, float, str]]] = {"supply_temperature": (70.0, 90.0, "degC")}
    recipe: Recipe = (Phase("circulation", 3600.0),)

    def __init__(self, tags: Sequence[str], rng: np.random.Generator):
        """`tags`: the subset of KNOWN_TAGS this unit has, in output order."""
        self.tags = tuple(tags)
        self._out = index_of(self.tags)
        self._noise = Noise(rng)
        # Operator setpoints by name (see SETPOINTS); they take the place of the design value while set.
        self.overrides: dict[str, float] = {}
        valve0 = (_SUPPLY_SP - _COLD_MAKEUP) / _VALVE_GAIN
        self.supply = _SUPPLY_SP
        self._pi = PI(kp=6.0, ki=6.0 / 200.0, low=0.0, high=100.0, integral=valve0)
        self.return_temperature = _SUPPLY_SP - 1.2
        self._draw = Slow(sigma=1.0, tau_s=300.0)  # points of use open, arbitrary units
        self._room = Slow(sigma=0.1, tau_s=1800.0)  # plant room temperature effect, degC
        self._feed = Slow(sigma=0.04, tau_s=900.0)  # conductivity from the still's feed, uS/cm
        self._organics = Slow(sigma=8.0, tau_s=1200.0)  # TOC, ppb
        self._level = Slow(sigma=4.0, tau_s=1800.0)  # tank level around 60 %, %

    def setpoints(self, batch: BatchState) -> dict[str, float]:
        """The effective setpoint targets now: the operator's where set, else the design value."""
        return {"supply_temperature": self.overrides.get("supply_temperature", _SUPPLY_SP)}

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        z = self._noise.draw(11)
        draw = self._draw.step(dt_s, z[0])
        supply_meas = self.supply + 0.04 * z[1]
        valve = self._pi.update(self.overrides.get("supply_temperature", _SUPPLY_SP) - supply_meas, dt_s)
        target = _COLD_MAKEUP + _VALVE_GAIN * valve - _DRAW_COOLING * draw
        self.supply = lag(self.supply, target, dt_s, _LOOP_TAU_S)

        flow = _NOMINAL_FLOW - _FLOW_PER_DRAW * draw
        loss = 1.2 * _NOMINAL_FLOW / flow + self._room.step(dt_s, z[2])
        self.return_temperature = lag(self.return_temperature, self.supply - loss, dt_s, 90.0)

        readings = {
            "supply_temperature": supply_meas,
            "return_temperature": self.return_temperature + 0.04 * z[3],
            "return_flow": flow + 0.01 * z[4],
            "conductivity": 0.45 + self._feed.step(dt_s, z[5]) + 0.008 * z[6],
            "toc": 60.0 + self._organics.step(dt_s, z[7]) + 1.5 * z[8],
            "tank_level": 60.0 + self._level.step(dt_s, z[9]) + 0.1 * z[10],
        }
        return np.array([readings[t] for t in self.tags], dtype=np.float64)
