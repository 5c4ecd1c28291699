"""A production freeze dryer (lyophiliser): shelves, product probes, chamber gauges, condenser.

Per batch (time compressed, like every model here): freezing -> primary_drying -> secondary_drying.
  freezing:          the shelves ramp down to -45 degC; the product follows through its heat lag.
  primary_drying:    the shelves ramp up to -20 degC; ice sublimes at a rate set by the heat the
                     shelves supply, and the sublimation cools the product well below the shelf
                     (about 14 degC at full rate). When the ice runs out the product temperature
                     rises to meet the shelf: the classic end-of-primary-drying signature.
  secondary_drying:  the shelves ramp up to +30 degC; bound water desorbs, slowly less and less.
Each batch's sublimation rate differs a little (fill volume, cake resistance), so the end of
primary drying moves from batch to batch, as a golden-batch envelope expects.

Chamber pressure is read by two gauges. The capacitance manometer is absolute (gas
independent) and is the controlled variable (nitrogen bleed). The Pirani gauge measures
thermal conductivity and is calibrated for nitrogen; water vapour conducts about 1.6 times
better, so while ice sublimes (the chamber gas is mostly vapour) the Pirani reads well above
the manometer. The gauges disagree during primary drying and come together when the ice is
gone: comparing them is how the end of primary drying is detected on real dryers.

Simplification: a real chamber is at atmosphere while the product freezes; here it is held
at the drying vacuum through the whole batch, since a tag's limits cannot follow the phase.
The condenser (about -72 degC) warms a little under the vapour load.

Process fault (`faults`, kind -> severity 0..1, set by the plant while a fault is active):
  vacuum_leak  air leaks into the chamber at a rate that would hold it 200 ubar x severity above
               setpoint; the pressure control (it can only shut its nitrogen bleed, worth about
               15 ubar) holds what it can, the rest shows on both gauges (air reads on the Pirani
               like nitrogen). The gas conducts more heat to the vials: the product warms
               (during primary drying the ice front warms most, the product risks collapse), and
               sublimation slows as the chamber pressure approaches the ice's vapour pressure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from simulators.units.base import NOISE_CLIP, BatchState, Noise, Phase, Ramp, Recipe, Slow, index_of, lag

# Per-phase setpoints: shelf degC, chamber pressure ubar (capacitance manometer).
_SETPOINTS = {
    "freezing": {"shelf": -45.0, "pressure": 100.0},
    "primary_drying": {"shelf": -20.0, "pressure": 100.0},
    "secondary_drying": {"shelf": 30.0, "pressure": 70.0},
}
_SHELF_RATE = {"freezing": 0.08, "primary_drying": 0.05, "secondary_drying": 0.05}  # degC/s
_PRESSURE_RATE = 0.1  # ubar/s
_SHELF_TAU_S = 60.0  # heat-transfer fluid and shelf mass
_PRODUCT_TAU_S = 240.0  # vial and product heat lag
_VAPOUR_TAU_S = 60.0  # chamber gas composition
_SUBLIMATION_COOLING = 14.0  # degC below the shelf at full sublimation rate
_ICE_PER_S = 1.0 / 1700.0  # ice fraction sublimed per second at full rate (nominal batch)
_ICE_TAPER = 0.05  # below this ice fraction the rate falls (last vials, thin ice)
_PIRANI_WATER_FACTOR = 0.6  # Pirani over-reading per unit vapour fraction (water vs nitrogen)
_CONDENSER = -72.0  # degC
_CONDENSER_LOAD = 6.0  # degC warmer at full sublimation rate
_LEAK_FULL, _BLEED_AUTHORITY = 200.0, 15.0  # ubar: a full leak's pressure rise; what the control absorbs
_LEAK_TAU_S = 60.0  # chamber volume filling / pumping down
_LEAK_WARMING = {"primary_drying": 0.03, "other": 0.01}  # product degC per ubar of leak
_LEAK_SUBLIMATION = 200.0  # ubar of leak that halve the sublimation rate


class FreezeDryer:
    KIND: ClassVar[str] = "freeze_dryer"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = (
        "shelf_temperature",
        "product_temperature",
        "chamber_pressure_cm",
        "chamber_pressure_pirani",
        "condenser_temperature",
    )
    # Bounds of the clipped disturbances around the deterministic trajectory (see test_units).
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        "shelf_temperature": (-46.5, 31.5),
        "product_temperature": (-47.0, 31.0),
        "chamber_pressure_cm": (62.0, 108.0),
        "chamber_pressure_pirani": (62.0, 175.0),
        "condenser_temperature": (-75.0, -63.0),
    }
    # The tags each process fault moves through the physics (the ground truth names them).
    PROCESS_FAULTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "vacuum_leak": ("chamber_pressure_cm", "chamber_pressure_pirani", "product_temperature"),
    }
    # Operator setpoints: name -> (low, high, engineering unit); see `overrides`.
    SETPOINTS: ClassVar[dict[str, tuple[float, float, str]]] = {
        "shelf_temperature": (-50.0, 40.0, "degC"),
        "chamber_pressure": (30.0, 200.0, "ubar"),
    }
    recipe: Recipe = (
        Phase("freezing", 1500.0),
        Phase("primary_drying", 2700.0),
        Phase("secondary_drying", 1500.0),
    )

    def __init__(self, tags: Sequence[str], rng: np.random.Generator):
        """`tags`: the subset of KNOWN_TAGS this unit has, in output order."""
        self.tags = tuple(tags)
        self._out = index_of(self.tags)
        self._noise = Noise(rng)
        # Operator setpoints by name (see SETPOINTS); they take the place of the recipe's while set.
        self.overrides: dict[str, float] = {}
        # Active process faults, kind -> severity (0..1); the plant sets them.
        self.faults: dict[str, float] = {}
        self.leak = 0.0  # ubar above setpoint the control cannot hold
        sp = _SETPOINTS["freezing"]
        # Start as a batch starts: the previous batch just ended warm and dry.
        self._shelf_sp = Ramp(_SETPOINTS["secondary_drying"]["shelf"], _SHELF_RATE["freezing"])
        self._pressure_sp = Ramp(sp["pressure"], _PRESSURE_RATE)
        self.shelf = self._shelf_sp.value
        self.product = self.shelf - 1.0
        self.ice = 1.0
        self.sublimation = 0.0  # 0..1 of the full rate
        self.vapour = 0.02  # water vapour fraction of the chamber gas
        self.rate = _ICE_PER_S
        self._batch = 0
        self._fluid = Slow(sigma=0.15, tau_s=300.0)  # heat-transfer fluid temperature, degC
        self._bleed = Slow(sigma=1.2, tau_s=120.0)  # pressure control around setpoint, ubar
        self._refrigeration = Slow(sigma=0.5, tau_s=600.0)  # condenser, degC

    def setpoints(self, batch: BatchState) -> dict[str, float]:
        """The effective setpoint targets now: the operator's where set, else the recipe phase's."""
        recipe = _SETPOINTS[batch.phase]
        return {
            "shelf_temperature": self.overrides.get("shelf_temperature", recipe["shelf"]),
            "chamber_pressure": self.overrides.get("chamber_pressure", recipe["pressure"]),
        }

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        z = self._noise.draw(9)
        if batch.number != self._batch:
            # A new load: all ice, and this batch's own sublimation rate (+-10% at most).
            self._batch = batch.number
            self.ice = 1.0
            self.rate = _ICE_PER_S * (1.0 + 0.03 * float(np.clip(z[8], -NOISE_CLIP, NOISE_CLIP)))
        phase = batch.phase
        self._shelf_sp.rate = _SHELF_RATE[phase]
        targets = self.setpoints(batch)
        shelf_sp = self._shelf_sp.toward(targets["shelf_temperature"], dt_s)
        self.shelf = lag(self.shelf, shelf_sp + self._fluid.step(dt_s, z[0]), dt_s, _SHELF_TAU_S)

        leak_target = max(0.0, _LEAK_FULL * self.faults.get("vacuum_leak", 0.0) - _BLEED_AUTHORITY)
        self.leak = lag(self.leak, leak_target, dt_s, _LEAK_TAU_S)

        if phase == "primary_drying" and self.ice > 0.0:
            heat = min(max((self.shelf + 45.0) / 25.0, 0.0), 1.0)  # what the shelf can deliver
            target = heat * min(1.0, self.ice / _ICE_TAPER) / (1.0 + self.leak / _LEAK_SUBLIMATION)
            self.sublimation = lag(self.sublimation, target, dt_s, 20.0)
            self.ice = max(0.0, self.ice - self.rate * self.sublimation * dt_s)
        else:
            self.sublimation = lag(self.sublimation, 0.0, dt_s, 20.0)

        if phase == "freezing":
            product_target, vapour_target = self.shelf + 0.5, 0.02
        elif phase == "primary_drying":
            product_target = self.shelf - _SUBLIMATION_COOLING * self.sublimation
            vapour_target = 0.02 + 0.98 * self.sublimation
        else:  # bound water desorbing, less and less
            product_target = self.shelf - 1.0
            vapour_target = 0.02 + 0.13 * np.exp(-batch.phase_elapsed_s / 600.0)
        product_target += self.leak * _LEAK_WARMING.get(phase, _LEAK_WARMING["other"])
        self.product = lag(self.product, product_target, dt_s, _PRODUCT_TAU_S)
        self.vapour = lag(self.vapour, vapour_target, dt_s, _VAPOUR_TAU_S)

        pressure = self._pressure_sp.toward(targets["chamber_pressure"], dt_s) + self._bleed.step(
            dt_s, z[1]
        )
        # The leak's air adds to the controlled pressure; the Pirani over-reads only the vapour.
        cm = pressure + self.leak + 0.4 * z[2]
        pirani = pressure * (1.0 + _PIRANI_WATER_FACTOR * self.vapour) + self.leak + 0.8 * z[3]
        condenser = (
            _CONDENSER
            + _CONDENSER_LOAD * self.sublimation
            + 0.01 * self.leak
            + self._refrigeration.step(dt_s, z[4])
            + 0.1 * z[5]
        )
        readings = {
            "shelf_temperature": self.shelf + 0.05 * z[6],
            "product_temperature": self.product + 0.1 * z[7],
            "chamber_pressure_cm": cm,
            "chamber_pressure_pirani": pirani,
            "condenser_temperature": condenser,
        }
        return np.array([readings[t] for t in self.tags], dtype=np.float64)
