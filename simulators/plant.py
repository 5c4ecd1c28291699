"""A simulated site: every unit's process model, its batches and the faults, stepped in
simulated time, producing samples in the product's columnar schema.

    plant = Plant(site, seed=7, start=datetime(2024, 5, 1, tzinfo=UTC))
    frame = plant.step(0.5)          # one row per tag, ts = plant.now
    plant.unit_state("lyon.usp.bio1.br101")  # ("BR101-0001", "inoculation")
    plant.inject("lyon.usp.bio1.br101.ph", "bias", 600, 0.3)           # a sensor fault on a tag
    plant.inject("lyon.usp.bio1.br101", "cooling_failure", 600, 1.0)   # a process fault on a unit

Sensor faults change the readings after the models have stepped; process faults are handed to
the unit's model (its `faults`, kind -> severity) before each sub-step, so they act on the
process state and show through its physics and loops.

A reading a fault took away (dropout) is NaN in `advance`'s array and, in the frames of
`step` and `run`, a null value with quality bad.

Deterministic per seed: each unit draws from its own generator (seeded from the plant seed
and the unit's place in the site), so the same seed and the same steps give identical frames,
and a fault injected on one unit does not change another's signals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from controltower.samples import samples_frame, tag_paths_frame
from controltower.site import SimulationConfig, SiteConfig, Unit
from simulators.batches import SPREAD, BatchClock, batch_info
from simulators.clock import as_utc, utc_now
from simulators.faults import DEFAULT_PERIOD_S, PROCESS_KINDS, Fault, FaultInjector, GroundTruthLog
from simulators.units import (
    UnitModel,
    build_unit_model,
    known_setpoints,
    process_faults_of,
    set_process_faults,
)

# The models integrate with steps of at most this many simulated seconds; a longer plant
# step (a fast-forwarded demo) is split, so the dynamics do not depend on the tick.
MAX_SUBSTEP_S = 1.0
# Simulated seconds the models run before `start`, so the first samples are not a start-up transient.
SETTLE_S = 300.0


@dataclass(frozen=True)
class PlantUnit:
    """A unit as the servers see it: its ISA-95 path and its full tag ids."""

    path: str  # site.area.line.unit
    site: str
    area: str
    line: str
    unit: str
    config: Unit
    tag_ids: tuple[str, ...]


class _UnitRun:
    def __init__(self, info: PlantUnit, model: UnitModel, clock: BatchClock, first: int):
        self.info, self.model, self.clock = info, model, clock
        self.slice = slice(first, first + len(info.tag_ids))
        # The batch number the operator setpoints (model.overrides) were written in; they end with it.
        self.override_batch: int | None = None


class Plant:
    """The plant of `site`, from simulated time `start` (default: wall-clock now, UTC).

    `ground_truth`: the file every fault (scheduled or injected) is appended to, CSV (and Parquet
    too when it ends in .parquet; see simulators/faults.py GroundTruthLog); None: not logged.
    Scheduled faults come from `site.simulation.faults`.
    """

    def __init__(
        self,
        site: SiteConfig,
        *,
        seed: int,
        start: datetime | None = None,
        ground_truth: Path | None = None,
    ):
        self.site = site
        self.seed = seed
        self.start = as_utc(start) if start is not None else utc_now()
        self.elapsed_s = 0.0
        table = site.tag_table()
        self.tag_ids: tuple[str, ...] = tuple(t.tag_id for t in table)
        self._index = {t: i for i, t in enumerate(self.tag_ids)}
        self.tag_paths = tag_paths_frame(table)
        self._units: list[_UnitRun] = []
        position = 0
        for s in site.sites:
            for a in s.areas:
                for ln in a.lines:
                    for u in ln.units:
                        path = f"{s.id}.{a.id}.{ln.id}.{u.id}"
                        info = PlantUnit(
                            path, s.id, a.id, ln.id, u.id, u, tuple(f"{path}.{t.id}" for t in u.tags)
                        )
                        rng = np.random.default_rng([seed, len(self._units)])
                        model = build_unit_model(u, rng)
                        # Phase durations vary from batch to batch, drawn from the seed and the unit's place.
                        clock = BatchClock(
                            u.id,
                            model.recipe,
                            seed=(seed, len(self._units)),
                            spread=SPREAD.get(u.kind or "", 0.0),
                        )
                        self._units.append(_UnitRun(info, model, clock, position))
                        position += len(u.tags)
        self._tags_per_unit = np.array([len(r.info.tag_ids) for r in self._units], dtype=np.int64)
        self._by_path = {r.info.path: r for r in self._units}
        self._by_short: dict[str, _UnitRun | None] = {}
        for r in self._units:
            self._by_short[r.info.unit] = None if r.info.unit in self._by_short else r  # None: ambiguous

        # Per unit, the process faults its model takes and the (full) tags each one moves.
        self._process_tags = {
            r.info.path: {
                kind: tuple(f"{r.info.path}.{t}" for t in tags)
                for kind, tags in process_faults_of(r.model).items()
            }
            for r in self._units
        }
        self._faulted: set[str] = set()  # units whose models were handed process faults last sub-step
        self._truth = GroundTruthLog(ground_truth) if ground_truth else None
        self.faults = self._scheduled_faults()
        self._last: np.ndarray | None = None
        self._settle()

    # --- time and state ---------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """Current simulated time (UTC)."""
        return self.start + timedelta(microseconds=round(self.elapsed_s * 1e6))

    @property
    def units(self) -> list[PlantUnit]:
        return [r.info for r in self._units]

    def unit_state(self, unit_id: str) -> tuple[str, str]:
        """(batch_id, phase) of a unit now; `unit_id` is its path `site.area.line.unit` or,
        when unambiguous, its bare id."""
        run = self._unit(unit_id)
        state = run.clock.at(self.elapsed_s)
        return state.batch_id, state.phase

    def process_model(self, unit_id: str) -> object:
        """The process model simulating a unit's known tags (the generic model when it has none),
        to inspect its state (e.g. a controller's output) in tests and notebooks."""
        model = self._unit(unit_id).model
        return getattr(model, "known", model)

    def batch_info(self) -> dict[str, tuple[str, str]]:
        """(product, recipe) of every unit's batches, per unit path."""
        return {r.info.path: batch_info(r.info.config) for r in self._units}

    def unit_states(self) -> dict[str, tuple[str, str]]:
        """(batch_id, phase) now, per unit path."""
        return {path: self.unit_state(path) for path in self._by_path}

    @property
    def last_values(self) -> dict[str, float]:
        """The readings of the last step, by tag id (empty before the first step)."""
        return {} if self._last is None else dict(zip(self.tag_ids, self._last.tolist(), strict=True))

    # --- stepping ---------------------------------------------------------------------

    def advance(self, dt_s: float) -> np.ndarray:
        """Advance by `dt_s` simulated seconds; the readings (faults applied) in `tag_ids` order."""
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
        n = max(1, math.ceil(dt_s / MAX_SUBSTEP_S - 1e-9))
        sub = dt_s / n
        clean = np.empty(len(self.tag_ids))
        for _ in range(n):
            self.elapsed_s += sub
            if self.faults.has_process or self._faulted:
                self._hand_out_process_faults()
            for run in self._units:
                state = run.clock.at(self.elapsed_s)
                if run.override_batch is not None and state.number != run.override_batch:
                    run.model.overrides.clear()  # the batch the operator changed has ended: the recipe again
                    run.override_batch = None
                clean[run.slice] = run.model.step(sub, state)
        readings = self.faults.apply(self.now, clean, self._last)
        self._last = readings
        return readings

    def step(self, dt_s: float) -> pl.DataFrame:
        """Advance by `dt_s` simulated seconds; one sample per tag at the new `now`, in the
        sample schema (quality good, batch_id of the tag's unit, ISA-95 path columns)."""
        values = self.advance(dt_s)
        value, quality = _value_and_quality(values)
        return samples_frame(
            ts=[self.now] * len(self.tag_ids),
            tag_id=list(self.tag_ids),
            value=value,
            quality=quality,
            batch_id=self._batch_ids(),
            tag_paths=self.tag_paths,
        )

    def run(self, duration_s: float, dt_s: float) -> pl.DataFrame:
        """Step `round(duration_s / dt_s)` times; all samples in one frame, time-major (built once: fast)."""
        steps = round(duration_s / dt_s)
        n = len(self.tag_ids)
        values = np.empty((steps, n))
        ts = np.empty(steps, dtype=np.int64)
        batches: list[str] = []
        start_ns = int(self.start.timestamp()) * 1_000_000_000 + self.start.microsecond * 1000
        for i in range(steps):
            values[i] = self.advance(dt_s)
            ts[i] = start_ns + round(self.elapsed_s * 1e6) * 1000
            batches.extend(self._batch_ids())
        value, quality = _value_and_quality(values.reshape(-1))
        return samples_frame(
            ts=pl.Series("ts", np.repeat(ts, n)),
            tag_id=pl.Series("tag_id", list(self.tag_ids) * steps),
            value=value,
            quality=quality,
            batch_id=batches,
            tag_paths=self.tag_paths,
        )

    # --- faults -----------------------------------------------------------------------

    def inject(
        self,
        target: str,
        kind: str,
        duration_s: float,
        magnitude: float = 0.0,
        *,
        period_s: float = DEFAULT_PERIOD_S,
    ) -> Fault:
        """Start a fault now, for `duration_s` simulated seconds; it is appended to the ground
        truth at once. `target`: a full tag id for a sensor fault, a unit path
        (site.area.line.unit) for a process fault, whose `magnitude` is its severity in (0, 1].
        `period_s`: of an oscillation. ValueError naming an unknown target or kind, a kind that
        does not fit the target, or a bad number."""
        if kind in PROCESS_KINDS and target not in self._process_tags and target in self._by_short:
            target = self._unit(target).info.path  # a bare unit id, when unambiguous
        fault_kind = self.faults.validate(target, kind, duration_s, magnitude, period_s)
        begin = self.now
        fault = Fault(
            target,
            fault_kind,
            begin,
            begin + timedelta(seconds=duration_s),
            float(magnitude),
            float(period_s),
            self.faults.affected_tags(target, fault_kind),
        )
        last = None
        if not fault_kind.is_process and self._last is not None:
            last = float(self._last[self._index[target]])
        self.faults.inject(fault, last)
        return fault

    def rebase(self, start: datetime) -> None:
        """Move plant start (and the scheduled faults with it) to `start`; only before the
        first step and injection, e.g. to start simulated time when a service starts ticking."""
        if self.elapsed_s or self.faults.injected:
            raise RuntimeError("the plant has already run; its start can no longer move")
        self.start = as_utc(start)
        self.faults = self._scheduled_faults()

    # --- operator setpoints -------------------------------------------------------------
    # An operator setpoint takes the place of the recipe phase's setpoint until the batch it was
    # written in ends (then the next batch runs its recipe again), or until cleared. Units without
    # batches (a one-phase recipe: WFI loop, HVAC) keep it until cleared. The model ramps to it as
    # to a phase change, so the process visibly follows. Writes draw no random numbers: the same
    # seed and the same writes at the same simulated times replay identically.

    def setpoints(self, unit_path: str) -> dict[str, float]:
        """The unit's effective setpoints now, by name (empty for a unit without a process model)."""
        run = self._unit(unit_path)
        return known_setpoints(run.model, run.clock.at(self.elapsed_s))

    def setpoint_ranges(self, unit_path: str) -> dict[str, tuple[float, float]]:
        """The (low, high) an operator may write, per setpoint name."""
        return {name: (low, high) for name, (low, high, _) in self._setpoint_specs(unit_path).items()}

    def setpoint_units(self, unit_path: str) -> dict[str, str]:
        """The engineering unit of each setpoint, by name."""
        return {name: eu for name, (_, _, eu) in self._setpoint_specs(unit_path).items()}

    def setpoint_overrides(self, unit_path: str) -> dict[str, float]:
        """The operator setpoints in effect (a copy), by name."""
        return dict(getattr(self._unit(unit_path).model, "overrides", {}))

    def write_setpoint(self, unit_path: str, name: str, value: float) -> float:
        """Set an operator setpoint; returns the effective value it replaces. ValueError naming the
        unit, the setpoint and the allowed range for an unknown name or a value outside it."""
        run = self._unit(unit_path)
        specs = self._setpoint_specs(unit_path)
        if name not in specs:
            raise ValueError(
                f"unit {run.info.path}: no setpoint {name!r}; it has {sorted(specs) or 'no operator setpoints'}"
            )
        low, high, eu = specs[name]
        number = float(value)
        if not (math.isfinite(number) and low <= number <= high):
            raise ValueError(
                f"unit {run.info.path}: setpoint {name} = {value!r} is outside its range [{low:g}, {high:g}] {eu}"
            )
        old = self.setpoints(unit_path)[name]
        run.model.overrides[name] = number
        if len(run.model.recipe) > 1:
            run.override_batch = run.clock.at(self.elapsed_s).number
        return old

    def clear_setpoint(self, unit_path: str, name: str | None = None) -> None:
        """Back to the recipe's setpoint for `name` (None: every setpoint of the unit)."""
        run = self._unit(unit_path)
        overrides = getattr(run.model, "overrides", {})
        if name is None:
            overrides.clear()
        else:
            overrides.pop(name, None)
        if not overrides:
            run.override_batch = None

    def _setpoint_specs(self, unit_path: str) -> dict[str, tuple[float, float, str]]:
        return dict(getattr(self._unit(unit_path).model, "SETPOINTS", {}))

    # --- internals --------------------------------------------------------------------

    def _scheduled_faults(self) -> FaultInjector:
        faults = FaultInjector(self._index, self._truth, self._process_tags)
        for f in (self.site.simulation or SimulationConfig()).faults:
            target = f.target
            kind = faults.validate(target, f.kind, f.duration_s, f.magnitude, f.period_s)
            begin = self.start + timedelta(seconds=f.start_s)
            end = begin + timedelta(seconds=f.duration_s)
            tags = faults.affected_tags(target, kind)
            faults.schedule(Fault(target, kind, begin, end, f.magnitude, f.period_s, tags))
        return faults

    def _hand_out_process_faults(self) -> None:
        """Give each unit's model the process faults active now (and {} to those whose ended)."""
        levels = self.faults.process_levels(self.now)
        for path in self._faulted - levels.keys():
            set_process_faults(self._by_path[path].model, {})
        for path, faults in levels.items():
            set_process_faults(self._by_path[path].model, faults)
        self._faulted = set(levels)

    def _batch_ids(self) -> list[str]:
        per_unit = np.array([run.clock.at(self.elapsed_s).batch_id for run in self._units], dtype=object)
        return np.repeat(per_unit, self._tags_per_unit).tolist()

    def _unit(self, unit_id: str) -> _UnitRun:
        run = self._by_path.get(unit_id) or self._by_short.get(unit_id)
        if run is None:
            raise ValueError(f"unknown or ambiguous unit {unit_id!r}; use its path site.area.line.unit")
        return run

    def _settle(self) -> None:
        first = {id(r): r.clock.at(0.0) for r in self._units}
        for _ in range(int(SETTLE_S / MAX_SUBSTEP_S)):
            for run in self._units:
                run.model.step(MAX_SUBSTEP_S, first[id(run)])


def _value_and_quality(values: np.ndarray) -> tuple[pl.Series, pl.Series]:
    """Readings as sample columns: a NaN reading (dropout) is a null value with quality bad."""
    missing = np.isnan(values)
    value = pl.Series("value", values, pl.Float64)
    if not missing.any():
        return value, pl.Series("quality", ["good"] * len(values), pl.String)
    quality = pl.Series("quality", np.where(missing, "bad", "good"), pl.String)
    return value.fill_nan(None), quality
