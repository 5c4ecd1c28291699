"""A fed-batch stirred-tank bioreactor (cell culture), as its transmitters see it.

Process, per batch: inoculation -> growth -> production -> harvest. Biomass (relative, 1 at
inoculation) grows logistically in growth, slowly in production, and is drawn down in
harvest (broth out, fresh medium in) so the next batch starts from seed density.

Loops, all on measured values, so noise and lags show in the actuators as on a real skid:
  temperature: PI on the broth temperature sets the jacket temperature (lagged); metabolic
               heat grows with biomass, so the jacket runs cooler as the culture grows.
  pH:          acid production grows with biomass; a PI drives base addition (positive) or
               CO2 sparge (negative), through a mixing lag.
  DO:          oxygen uptake grows with biomass; a PI on DO raises agitation (kLa ~ N^2) to
               hold the setpoint: the DO -> agitation cascade.
  pressure:    a back-pressure loop holds the headspace; aeration rises with biomass.
Phase setpoints are reached by ramps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from simulators.units.base import PI, BatchState, Noise, Phase, Ramp, Recipe, Slow, index_of, lag

# Per-phase setpoints: temperature degC, pH, DO %sat, headspace barg.
_SETPOINTS = {
    "inoculation": {"temperature": 37.0, "ph": 7.05, "do": 50.0, "pressure": 0.20},
    "growth": {"temperature": 37.0, "ph": 7.00, "do": 40.0, "pressure": 0.30},
    "production": {"temperature": 36.5, "ph": 6.95, "do": 40.0, "pressure": 0.30},
    "harvest": {"temperature": 36.5, "ph": 7.00, "do": 50.0, "pressure": 0.35},
}
_RAMP_RATES = {"temperature": 0.002, "ph": 0.0004, "do": 0.05, "pressure": 0.0005}  # per second

_X_SEED, _X_MAX = 1.0, 6.0
_MU_GROWTH, _MU_PRODUCTION = 0.0025, 0.0003  # 1/s, logistic
_HARVEST_RATE = 5.0 / 800.0  # biomass drawn down per second
_KLA_100 = 0.01  # 1/s at 100 rpm
_OUR_PER_X = 0.6  # %sat/s per unit biomass
_DO_SAT = 100.0
_HEAT_PER_X = 0.0002  # degC/s per unit biomass
_ACID_PER_X = 2.0e-5  # pH/s per unit biomass
_BASE_GAIN = 1.0e-4  # pH/s per % pump


class Bioreactor:
    KIND: ClassVar[str] = "bioreactor"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = ("temperature", "ph", "dissolved_oxygen", "agitation", "pressure")
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        "temperature": (36.2, 37.3),
        "ph": (6.88, 7.12),
        "dissolved_oxygen": (30.0, 60.0),
        "agitation": (70.0, 350.0),
        "pressure": (0.14, 0.42),
    }
    recipe: Recipe = (
        Phase("inoculation", 300.0),
        Phase("growth", 1500.0),
        Phase("production", 1200.0),
        Phase("harvest", 900.0),
    )

    def __init__(self, tags: Sequence[str], rng: np.random.Generator):
        """`tags`: the subset of KNOWN_TAGS this unit has, in output order."""
        self.tags = tuple(tags)
        self._out = index_of(self.tags)
        self._noise = Noise(rng)
        sp = _SETPOINTS["inoculation"]
        self._sp = {k: Ramp(v, _RAMP_RATES[k]) for k, v in sp.items()}
        self.biomass = _X_SEED
        # Start at the steady state of the first phase, so the first samples are not a start-up transient.
        self.temperature = sp["temperature"]
        self.jacket = sp["temperature"] - _HEAT_PER_X * _X_SEED * 600.0
        self._temp_pi = PI(
            kp=8.0,
            ki=8.0 / 300.0,
            low=15.0,
            high=50.0,
            bias=sp["temperature"],
            integral=self.jacket - sp["temperature"],
        )
        self.ph = sp["ph"]
        base0 = _ACID_PER_X * _X_SEED / _BASE_GAIN
        self.base_flow = base0
        self._ph_pi = PI(kp=170.0, ki=170.0 / 240.0, low=-30.0, high=30.0, integral=base0)
        self.do = sp["do"]
        n0 = 100.0 * (_OUR_PER_X * _X_SEED / (_KLA_100 * (_DO_SAT - sp["do"]))) ** 0.5
        self.agitation = n0
        self._do_pi = PI(kp=3.0, ki=0.08, low=60.0, high=360.0, integral=n0)
        self.pressure = sp["pressure"]
        self._heat_loss = Slow(sigma=0.02, tau_s=900.0)  # ambient / heat-loss variation, degC equivalent
        self._ph_load = Slow(sigma=0.15, tau_s=600.0)  # relative variation of acid production
        self._uptake = Slow(sigma=0.04, tau_s=600.0)  # relative variation of oxygen uptake
        self._gas = Slow(sigma=0.006, tau_s=200.0)  # exhaust filter / gas supply variation, bar

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        z = self._noise.draw(10)
        sp = {k: r.toward(_SETPOINTS[batch.phase][k], dt_s) for k, r in self._sp.items()}

        x = self.biomass
        if batch.phase == "growth":
            x += dt_s * _MU_GROWTH * x * (1.0 - x / _X_MAX)
        elif batch.phase == "production":
            x += dt_s * _MU_PRODUCTION * x * (1.0 - x / _X_MAX)
        elif batch.phase == "harvest":
            x = max(_X_SEED, x - _HARVEST_RATE * dt_s)
        self.biomass = x

        # Temperature: jacket follows the PI output through its own lag; broth follows the jacket.
        t_meas = self.temperature + 0.015 * z[0]
        jacket_cmd = self._temp_pi.update(sp["temperature"] - t_meas, dt_s)
        self.jacket = lag(self.jacket, jacket_cmd, dt_s, 60.0)
        heat = _HEAT_PER_X * x + self._heat_loss.step(dt_s, z[1]) / 600.0
        self.temperature += dt_s * ((self.jacket - self.temperature) / 600.0 + heat)

        # pH: acid load against base / CO2 through a mixing lag.
        ph_meas = self.ph + 0.003 * z[2]
        pump = self._ph_pi.update(sp["ph"] - ph_meas, dt_s)
        self.base_flow = lag(self.base_flow, pump, dt_s, 15.0)
        acid = _ACID_PER_X * x * (1.0 + self._ph_load.step(dt_s, z[3]))
        self.ph += dt_s * (_BASE_GAIN * self.base_flow - acid)

        # DO: transfer (kLa from agitation) against uptake; agitation follows the PI through the drive.
        do_meas = self.do + 0.25 * z[4]
        n_cmd = self._do_pi.update(sp["do"] - do_meas, dt_s)
        self.agitation = lag(self.agitation, n_cmd, dt_s, 4.0)
        kla = _KLA_100 * (self.agitation / 100.0) ** 2
        our = _OUR_PER_X * x * (1.0 + self._uptake.step(dt_s, z[5]))
        self.do = max(0.0, self.do + dt_s * (kla * (_DO_SAT - self.do) - our))

        # Headspace: the back-pressure loop settles in ~30 s; more aeration pushes it up a little.
        aeration = 0.01 * (x - 3.0) / 3.0
        p_target = sp["pressure"] + aeration + self._gas.step(dt_s, z[6])
        self.pressure = lag(self.pressure, p_target, dt_s, 30.0)

        readings = {
            "temperature": t_meas,
            "ph": ph_meas,
            "dissolved_oxygen": do_meas,
            "agitation": self.agitation + 0.4 * z[7],
            "pressure": self.pressure + 0.002 * z[8],
        }
        return np.array([readings[t] for t in self.tags], dtype=np.float64)
