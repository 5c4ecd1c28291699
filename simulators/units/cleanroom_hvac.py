"""A cleanroom served by an air-handling unit: room temperature, humidity, pressure cascade.

Temperature: a PI on the room temperature sets the supply-air temperature (cooling coil,
lagged); the room settles at the supply air plus the heat its people and equipment give off
(a slow, bounded load), through the room's air-change lag. So when the load rises the supply
air runs cooler, as a real AHU trend shows.
Humidity (%RH) follows the outdoor air slowly (the dehumidifier only trims it) and falls a
little when the room is warmer. Differential pressure to the next-lower grade (Pa) is held by
the extract damper: a slow wander plus turbulence.

No batches: one long "operation" phase, so batch ids mark the hours (`ROOM1-0001`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from simulators.units.base import PI, BatchState, Noise, Phase, Recipe, Slow, index_of, lag

_ROOM_SP = 20.0  # degC
_PICKUP = 4.0  # degC the air warms through the room at the nominal load
_ROOM_TAU_S = 300.0
_COIL_TAU_S = 60.0
_HUMIDITY = 45.0  # %RH
_DP = 15.0  # Pa


class CleanroomHvac:
    KIND: ClassVar[str] = "cleanroom_hvac"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = (
        "temperature",
        "humidity",
        "differential_pressure",
        "supply_air_temperature",
    )
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        "temperature": (19.6, 20.4),
        "humidity": (39.0, 51.0),
        "differential_pressure": (12.3, 17.7),
        "supply_air_temperature": (13.5, 18.5),
    }
    # Operator setpoints: name -> (low, high, engineering unit); see `overrides`.
    SETPOINTS: ClassVar[dict[str, tuple[float, float, str]]] = {
        "temperature": (16.0, 25.0, "degC"),
        "differential_pressure": (5.0, 30.0, "Pa"),
    }
    recipe: Recipe = (Phase("operation", 3600.0),)

    def __init__(self, tags: Sequence[str], rng: np.random.Generator):
        """`tags`: the subset of KNOWN_TAGS this unit has, in output order."""
        self.tags = tuple(tags)
        self._out = index_of(self.tags)
        self._noise = Noise(rng)
        # Operator setpoints by name (see SETPOINTS); they take the place of the design values while set.
        self.overrides: dict[str, float] = {}
        supply0 = _ROOM_SP - _PICKUP
        self.room = _ROOM_SP
        self.supply = supply0
        self._pi = PI(kp=3.0, ki=3.0 / 400.0, low=10.0, high=20.0, bias=supply0, integral=0.0)
        self._load = Slow(sigma=0.4, tau_s=900.0)  # degC of extra pickup
        self._outdoor = Slow(sigma=1.5, tau_s=1800.0)  # %RH
        self._damper = Slow(sigma=0.5, tau_s=120.0)  # Pa

    def setpoints(self, batch: BatchState) -> dict[str, float]:
        """The effective setpoint targets now: the operator's where set, else the design values."""
        return {
            "temperature": self.overrides.get("temperature", _ROOM_SP),
            "differential_pressure": self.overrides.get("differential_pressure", _DP),
        }

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        z = self._noise.draw(8)
        room_sp = self.overrides.get("temperature", _ROOM_SP)
        room_meas = self.room + 0.03 * z[0]
        # A warm room (negative error) asks for colder supply air.
        supply_cmd = self._pi.update(room_sp - room_meas, dt_s)
        self.supply = lag(self.supply, supply_cmd, dt_s, _COIL_TAU_S)
        load = _PICKUP + self._load.step(dt_s, z[1])
        self.room = lag(self.room, self.supply + load, dt_s, _ROOM_TAU_S)

        humidity = _HUMIDITY + self._outdoor.step(dt_s, z[2]) - 1.5 * (self.room - _ROOM_SP) + 0.15 * z[3]
        readings = {
            "temperature": room_meas,
            "humidity": humidity,
            "differential_pressure": self.overrides.get("differential_pressure", _DP)
            + self._damper.step(dt_s, z[4])
            + 0.2 * z[5],
            "supply_air_temperature": self.supply + 0.05 * z[6],
        }
        return np.array([readings[t] for t in self.tags], dtype=np.float64)
