"""A fed-batch stirred-tank bioreactor (cell culture), as the transmitters of its skid see it.

Process, per batch: inoculation -> growth -> production -> harvest. Biomass (relative, about 1
at inoculation) grows logistically in growth, slowly in production, and is drawn down in
harvest (broth out, fresh medium in) so the next batch starts from seed density. The culture
lives on a substrate (relative g/L): the medium brings some, the feed pump brings the rest in
growth and production, at a rate proportional to the biomass (the recipe's feed profile).
Growth and oxygen uptake follow the substrate (Monod): starve the culture and both fall.

Each batch draws its own growth rate, final density, seed density and feed ratio (a few per
cent, bounded; phase durations vary in simulators/batches.py), so batches differ the way real
ones do and a golden-batch envelope has something to learn.

Loops, all on measured values, so noise and lags show in the actuators as on a real skid:
  temperature: PI on the broth temperature sets the jacket temperature (lagged); metabolic and
               agitation heat grow with the culture, so the jacket runs cooler as it grows.
  pH:          acid production grows with biomass; a PI drives base addition (positive) or
               CO2 sparge (negative), through a mixing lag. `base_flow` reads the base pump.
  DO:          a PI on DO drives a split-range cascade: its output first raises agitation
               (kLa ~ N^2) up to the shear limit for cells (300 rpm), then the sparge air flow
               (kLa ~ Q^0.5) from its 20 slpm minimum up to 100 slpm. In normal operation
               agitation alone holds DO; air flow leaves its minimum only when the oxygen demand
               is abnormal, as operators set these skids up.
  pressure:    a back-pressure loop holds the headspace; aeration pushes it up a little.
  foam:        foam events come at random (more often with more gas through the broth); the
               foam probe's level rises until it reaches the antifoam trigger (25 %), a dose of
               antifoam then knocks it back down within a minute.
Phase setpoints are reached by ramps.

Process faults (`faults`, kind -> severity 0..1, set by the plant while a fault is active):
  cooling_failure    the jacket loses that fraction of its cooling capacity (the coldest it can
                     run rises from the 15 degC cooling water towards the broth temperature + 1;
                     real jackets have margin, so below ~0.7 the loop still copes): at 1 the
                     broth heats with the culture's heat and the temperature PI sits at its low
                     clamp (saturated) without winding up.
  feed_pump_failure  the feed flow falls by that fraction (1: pump stopped): the substrate runs
                     out within minutes, uptake and growth stall, DO rises (the classic DO
                     spike) and agitation backs off.
  contamination      a fast-growing contaminant (growth rate 0.008/s x severity) that takes
                     oxygen, makes acid and eats the substrate: DO falls, agitation then air
                     flow saturate, base addition climbs, the pH sags. When the fault ends the
                     contaminant is taken as dealt with (batch sterilised) and washes out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from simulators.units.base import PI, BatchState, Noise, Phase, Ramp, Recipe, Slow, index_of, lag

# Per-phase setpoints: temperature degC, pH, DO %sat, headspace barg, feed L/h per unit biomass.
_SETPOINTS = {
    "inoculation": {"temperature": 37.0, "ph": 7.05, "do": 50.0, "pressure": 0.20},
    "growth": {"temperature": 37.0, "ph": 7.00, "do": 40.0, "pressure": 0.30},
    "production": {"temperature": 36.5, "ph": 6.95, "do": 40.0, "pressure": 0.30},
    "harvest": {"temperature": 36.5, "ph": 7.00, "do": 50.0, "pressure": 0.35},
}
_RAMP_RATES = {"temperature": 0.002, "ph": 0.0004, "do": 0.05, "pressure": 0.0005}  # per second
# Operator setpoints (name -> key in _SETPOINTS): what a client may write, and the range it may write.
_SETPOINT_KEYS = {"temperature": "temperature", "ph": "ph", "dissolved_oxygen": "do", "pressure": "pressure"}
_FEED_PER_X = {"inoculation": 0.0, "growth": 0.9, "production": 0.9, "harvest": 0.0}  # L/h per unit biomass
_FEED_RAMP = 0.005  # L/h per second: the pump speeds up and down gently

_X_SEED, _X_MAX = 1.0, 6.0
_MU_GROWTH, _MU_PRODUCTION = 0.0025, 0.0003  # 1/s, logistic, at the nominal substrate level
_HARVEST_RATE = 5.0 / 800.0  # biomass drawn down per second
_VCD_PER_X = 2.0  # 1e6 viable cells/mL per unit biomass (capacitance probe, calibrated)
# Substrate (relative g/L): Monod half-saturation, uptake per unit biomass, medium level.
_KS, _UPTAKE, _MEDIUM = 0.25, 0.0028, 3.0
_F_NOMINAL = 0.8  # S/(Ks+S) at the fed steady state: growth and uptake are scaled to it
_FEED_GAIN = _F_NOMINAL * _UPTAKE / 0.9  # substrate per second per L/h: feed matches uptake at S = 4 Ks
_MAINTENANCE = 0.3  # share of oxygen uptake a starved culture keeps
# DO cascade: the PI output is in rpm-equivalents; above the agitation limit it opens the air.
_N_MIN, _N_MAX, _CASCADE_MAX = 60.0, 300.0, 420.0
_AIR_MIN, _AIR_MAX = 20.0, 100.0  # slpm
_KLA_100 = 0.01  # 1/s at 100 rpm and minimum air
_OUR_PER_X = 0.6  # %sat/s per unit biomass
_DO_SAT = 100.0
_HEAT_PER_X = 0.0008  # degC/s per unit biomass (metabolic heat)
_HEAT_BASE = 0.0006  # degC/s from agitation and pumps
_JACKET_TAU_S, _BROTH_TAU_S = 60.0, 600.0
_CW_SUPPLY = 15.0  # degC: the coldest the jacket can run (cooling water)
_ACID_PER_X = 2.0e-5  # pH/s per unit biomass
_BASE_GAIN = 1.0e-4  # pH/s per % pump
_BASE_ML_PER_PCT = 10.0  # mL/min of base per % pump speed
# Foam: events per second at minimum air, rise rate %/s, antifoam trigger and knock-down.
_FOAM_RATE, _FOAM_RISE, _FOAM_TRIGGER, _FOAM_BASE = 1.0 / 2400.0, 0.15, 25.0, 2.0
# Contaminant: inoculum, growth rate at severity 1, cap, and its oxygen / acid / heat / substrate per unit.
_C0, _MU_C, _C_MAX = 0.1, 0.008, 25.0
_OUR_PER_C, _ACID_PER_C, _HEAT_PER_C, _UPTAKE_PER_C = 1.0, 1.2e-4, 0.0001, 0.004
_WASHOUT_TAU_S = 60.0
# Per-batch variation, as bounded fractions (uniform draws).
_BATCH_SPREAD = {"mu": 0.08, "x_max": 0.04, "seed": 0.06, "feed": 0.05}


class Bioreactor:
    KIND: ClassVar[str] = "bioreactor"
    KNOWN_TAGS: ClassVar[tuple[str, ...]] = (
        "temperature",
        "ph",
        "dissolved_oxygen",
        "agitation",
        "pressure",
        "feed_rate",
        "air_flow",
        "base_flow",
        "foam_level",
        "biomass",
    )
    ENVELOPE: ClassVar[dict[str, tuple[float, float]]] = {
        "temperature": (36.2, 37.3),
        "ph": (6.88, 7.12),
        "dissolved_oxygen": (30.0, 60.0),
        "agitation": (60.0, 300.0),
        "pressure": (0.14, 0.42),
        "feed_rate": (-0.2, 7.5),  # L/h
        "air_flow": (18.5, 21.5),  # slpm: at its minimum in normal operation
        "base_flow": (-0.5, 80.0),  # mL/min
        "foam_level": (0.5, 32.0),  # % of the foam probe's span
        "biomass": (1.5, 14.0),  # 1e6 viable cells/mL
    }
    # The tags each process fault moves through the physics (the ground truth names them).
    PROCESS_FAULTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "cooling_failure": ("temperature",),
        "feed_pump_failure": ("feed_rate", "dissolved_oxygen", "agitation", "biomass"),
        "contamination": ("dissolved_oxygen", "agitation", "air_flow", "base_flow", "ph"),
    }
    # Operator setpoints: name -> (low, high, engineering unit); see `overrides`.
    SETPOINTS: ClassVar[dict[str, tuple[float, float, str]]] = {
        "temperature": (30.0, 40.0, "degC"),
        "ph": (6.5, 7.5, "pH"),
        "dissolved_oxygen": (10.0, 90.0, "%sat"),
        "pressure": (0.05, 0.8, "barg"),
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
        # Batch-to-batch variation has its own stream, so it does not shift the signals' noise.
        self._batch_rng = np.random.default_rng(rng.integers(2**63))
        # Operator setpoints by name (see SETPOINTS); they take the place of the recipe's while set.
        self.overrides: dict[str, float] = {}
        # Active process faults, kind -> severity (0..1); the plant sets them.
        self.faults: dict[str, float] = {}
        self._batch = 0
        self._params = {k: 1.0 for k in _BATCH_SPREAD}
        self._next_seed = _X_SEED * self._draw("seed")
        sp = _SETPOINTS["inoculation"]
        self._sp = {k: Ramp(v, _RAMP_RATES[k]) for k, v in sp.items()}
        self.biomass = self._next_seed
        self.substrate = _MEDIUM
        self.contaminant = 0.0
        self._feed_sp = Ramp(0.0, _FEED_RAMP)
        self.feed_rate = 0.0
        # Start at the steady state of the first phase, so the first samples are not a start-up transient.
        self.temperature = sp["temperature"]
        self.jacket = sp["temperature"] - self._heat(self.biomass) * _BROTH_TAU_S
        self.jacket_cmd = self.jacket
        self._temp_pi = PI(
            kp=8.0,
            ki=8.0 / 300.0,
            low=_CW_SUPPLY,
            high=50.0,
            bias=sp["temperature"],
            integral=self.jacket - sp["temperature"],
        )
        self.ph = sp["ph"]
        base0 = _ACID_PER_X * self.biomass / _BASE_GAIN
        self.base_flow = base0
        self._ph_pi = PI(kp=170.0, ki=170.0 / 240.0, low=-30.0, high=30.0, integral=base0)
        self.do = sp["do"]
        n0 = 100.0 * (_OUR_PER_X * self.biomass / (_KLA_100 * (_DO_SAT - sp["do"]))) ** 0.5
        self.agitation = n0
        self.air_flow = _AIR_MIN
        self._do_pi = PI(kp=3.0, ki=0.08, low=_N_MIN, high=_CASCADE_MAX, integral=n0)
        self.pressure = sp["pressure"]
        self.foam = _FOAM_BASE
        self._foaming = False
        self._foam_rise = 0.0
        self._heat_loss = Slow(sigma=0.02, tau_s=900.0)  # ambient / heat-loss variation, degC equivalent
        self._ph_load = Slow(sigma=0.15, tau_s=600.0)  # relative variation of acid production
        self._uptake = Slow(sigma=0.04, tau_s=600.0)  # relative variation of oxygen uptake
        self._gas = Slow(sigma=0.006, tau_s=200.0)  # exhaust filter / gas supply variation, bar

    def setpoints(self, batch: BatchState) -> dict[str, float]:
        """The effective setpoint targets now: the operator's where set, else the recipe phase's."""
        recipe = _SETPOINTS[batch.phase]
        return {name: self.overrides.get(name, recipe[k]) for name, k in _SETPOINT_KEYS.items()}

    @property
    def batch_parameters(self) -> dict[str, float]:
        """This batch's multipliers (growth rate, final density, seed density, feed ratio), each 1 +- its spread."""
        return dict(self._params)

    def _draw(self, key: str) -> float:
        return 1.0 + _BATCH_SPREAD[key] * float(self._batch_rng.uniform(-1.0, 1.0))

    def _heat(self, x: float) -> float:
        return _HEAT_PER_X * x + _HEAT_BASE + _HEAT_PER_C * self.contaminant

    def _new_batch(self, number: int) -> None:
        self._batch = number
        self._params = {k: self._draw(k) for k in ("mu", "x_max", "feed")}
        self._params["seed"] = self._next_seed / _X_SEED
        self._next_seed = _X_SEED * self._draw("seed")  # what this batch's harvest leaves behind
        self.contaminant = 0.0

    def step(self, dt_s: float, batch: BatchState) -> np.ndarray:
        z = self._noise.draw(14)
        if batch.number != self._batch:
            self._new_batch(batch.number)
        targets = self.setpoints(batch)
        sp = {k: self._sp[k].toward(targets[name], dt_s) for name, k in _SETPOINT_KEYS.items()}
        faults = self.faults
        p = self._params

        # Contaminant: grows while the fault lasts, washes out once it is dealt with.
        severity = faults.get("contamination", 0.0)
        if severity > 0.0:
            c = max(self.contaminant, _C0)
            self.contaminant = min(_C_MAX, c * math.exp(_MU_C * severity * dt_s))
        elif self.contaminant > 0.0:
            self.contaminant = lag(self.contaminant, 0.0, dt_s, _WASHOUT_TAU_S)
            if self.contaminant < 1e-3:
                self.contaminant = 0.0
        c = self.contaminant

        # Feed: the recipe's profile follows the biomass; a failing pump delivers less of it.
        self._feed_sp.toward(_FEED_PER_X[batch.phase] * p["feed"] * self.biomass, dt_s)
        self.feed_rate = self._feed_sp.value * (1.0 - faults.get("feed_pump_failure", 0.0))

        # Substrate and growth (Monod), biomass (logistic).
        x = self.biomass
        monod = self.substrate / (_KS + self.substrate)
        if batch.phase == "harvest":  # broth out, fresh medium in
            self.substrate = lag(self.substrate, _MEDIUM, dt_s, 300.0)
        else:
            uptake = (_UPTAKE * x + _UPTAKE_PER_C * c) * monod
            self.substrate = max(0.0, self.substrate + dt_s * (_FEED_GAIN * self.feed_rate - uptake))
        limit = monod / _F_NOMINAL
        x_max = _X_MAX * p["x_max"]
        if batch.phase == "growth":
            x += dt_s * _MU_GROWTH * p["mu"] * limit * x * (1.0 - x / x_max)
        elif batch.phase == "production":
            x += dt_s * _MU_PRODUCTION * p["mu"] * limit * x * (1.0 - x / x_max)
        elif batch.phase == "harvest":
            x = max(self._next_seed, x - _HARVEST_RATE * dt_s)
        self.biomass = x

        # Temperature: jacket follows the PI output through its own lag; broth follows the jacket.
        # A cooling failure raises the coldest jacket temperature the utility can reach.
        # The controller's low clamp is the coldest the jacket can reach, so its integral stops
        # winding while the jacket cannot follow (no cold undershoot once cooling returns).
        t_meas = self.temperature + 0.015 * z[0]
        lost = faults.get("cooling_failure", 0.0)
        self._temp_pi.low = _CW_SUPPLY + lost * (self.temperature + 1.0 - _CW_SUPPLY)
        self.jacket_cmd = self._temp_pi.update(sp["temperature"] - t_meas, dt_s)
        self.jacket = lag(self.jacket, self.jacket_cmd, dt_s, _JACKET_TAU_S)
        heat = self._heat(x) + self._heat_loss.step(dt_s, z[1]) / _BROTH_TAU_S
        self.temperature += dt_s * ((self.jacket - self.temperature) / _BROTH_TAU_S + heat)

        # pH: acid load against base / CO2 through a mixing lag.
        ph_meas = self.ph + 0.003 * z[2]
        pump = self._ph_pi.update(sp["ph"] - ph_meas, dt_s)
        self.base_flow = lag(self.base_flow, pump, dt_s, 15.0)
        acid = _ACID_PER_X * x * (1.0 + self._ph_load.step(dt_s, z[3])) + _ACID_PER_C * c
        self.ph += dt_s * (_BASE_GAIN * self.base_flow - acid)

        # DO: the PI output drives agitation first, then air flow (split range); transfer against uptake.
        do_meas = self.do + 0.25 * z[4]
        cascade = self._do_pi.update(sp["do"] - do_meas, dt_s)
        self.agitation = lag(self.agitation, min(cascade, _N_MAX), dt_s, 4.0)
        air_cmd = _AIR_MIN + max(0.0, cascade - _N_MAX) * (_AIR_MAX - _AIR_MIN) / (_CASCADE_MAX - _N_MAX)
        self.air_flow = lag(self.air_flow, air_cmd, dt_s, 5.0)
        kla = _KLA_100 * (self.agitation / 100.0) ** 2 * (self.air_flow / _AIR_MIN) ** 0.5
        demand = _MAINTENANCE + (1.0 - _MAINTENANCE) * limit
        our = _OUR_PER_X * x * demand * (1.0 + self._uptake.step(dt_s, z[5])) + _OUR_PER_C * c
        self.do = max(0.0, self.do + dt_s * (kla * (_DO_SAT - self.do) - our))

        # Headspace: the back-pressure loop settles in ~30 s; more gas pushes it up a little.
        aeration = 0.01 * (x - 3.0) / 3.0 + 0.0008 * (self.air_flow - _AIR_MIN)
        p_target = sp["pressure"] + aeration + self._gas.step(dt_s, z[6])
        self.pressure = lag(self.pressure, p_target, dt_s, 30.0)

        # Foam: an event starts at random (more gas, more often), rises, and antifoam knocks it down.
        if not self._foaming and batch.phase in ("growth", "production"):
            chance = _FOAM_RATE * (self.air_flow / _AIR_MIN) * dt_s
            self._foaming = float(self._noise.uniform(1)[0]) < chance
        target_rise = _FOAM_RISE if self._foaming else 0.0
        self._foam_rise = lag(self._foam_rise, target_rise, dt_s, 30.0)
        if self._foaming:
            self.foam += dt_s * self._foam_rise
            if self.foam >= _FOAM_TRIGGER:
                self._foaming, self._foam_rise = False, 0.0  # antifoam dosed
        else:
            self.foam = lag(self.foam, _FOAM_BASE, dt_s, 20.0)

        readings = {
            "temperature": t_meas,
            "ph": ph_meas,
            "dissolved_oxygen": do_meas,
            "agitation": self.agitation + 0.4 * z[7],
            "pressure": self.pressure + 0.002 * z[8],
            "feed_rate": self.feed_rate + 0.02 * z[9],
            "air_flow": self.air_flow + 0.15 * z[10],
            "base_flow": _BASE_ML_PER_PCT * max(self.base_flow, 0.0) + 0.05 * z[11],
            "foam_level": self.foam + 0.2 * z[12],
            "biomass": _VCD_PER_X * x * (1.0 + 0.003 * z[13]),
        }
        return np.array([readings[t] for t in self.tags], dtype=np.float64)
