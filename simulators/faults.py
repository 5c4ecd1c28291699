"""Sensor faults the simulator injects, and the ground-truth log that records each one.

Kinds, applied to the sensor reading (the process itself is not disturbed):
  spike        `magnitude` is added for the whole duration (a short excursion);
  bias         `magnitude` is added from the start to the end: a calibration shift, a step;
  drift        an offset ramps linearly from 0 at the start to `magnitude` at the end;
  stuck        the reading holds the value last reported before the fault started;
  noise        Gaussian noise of standard deviation `magnitude` is added (a loose connection,
               a failing transmitter); its draws come from a generator seeded by the tag's place
               and the fault's start, so a replay gives the same noise;
  dropout      no reading: the value is null (NaN in the array) and the sample's quality bad;
  oscillation  `magnitude` * sin(2 pi (t - start) / `period_s`) is added (a hunting valve or loop).
spike and bias add the same offset; they differ in intent (a spike is short, a bias lasts), and
the scorecard reports them apart. A fault is active on [start, end). Every fault is appended to the ground-truth CSV
(tag_id, kind, start, end, magnitude; ISO-8601 UTC in simulated time) when it is injected,
and flushed at once, so a benchmark reading the file sees it while the run goes on.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import numpy as np

from simulators.clock import iso_utc

GROUND_TRUTH_COLUMNS = ("tag_id", "kind", "start", "end", "magnitude")


class FaultKind(StrEnum):
    SPIKE = "spike"
    DRIFT = "drift"
    STUCK = "stuck"
    BIAS = "bias"
    NOISE = "noise"
    DROPOUT = "dropout"
    OSCILLATION = "oscillation"


DEFAULT_PERIOD_S = 60.0  # oscillation period when none is given


def parse_kind(kind: str | FaultKind) -> FaultKind:
    """The FaultKind for `kind`; ValueError naming it when it is not one."""
    try:
        return FaultKind(kind)
    except ValueError:
        raise ValueError(
            f"unknown fault kind {kind!r}; expected one of {', '.join(k.value for k in FaultKind)}"
        ) from None


@dataclass(frozen=True)
class Fault:
    """One fault on one tag, in simulated time."""

    tag_id: str
    kind: FaultKind
    start: datetime
    end: datetime
    magnitude: float = 0.0
    period_s: float = DEFAULT_PERIOD_S  # oscillation only

    def active(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def offset(self, at: datetime) -> float:
        """The deterministic additive offset at `at` (spike, bias, drift, oscillation); 0 for the others."""
        if self.kind in (FaultKind.SPIKE, FaultKind.BIAS):
            return self.magnitude
        if self.kind is FaultKind.DRIFT:
            return self.magnitude * (at - self.start) / (self.end - self.start)
        if self.kind is FaultKind.OSCILLATION:
            return self.magnitude * math.sin(2.0 * math.pi * (at - self.start).total_seconds() / self.period_s)
        return 0.0

    def row(self) -> list[str]:
        return [
            self.tag_id,
            self.kind.value,
            iso_utc(self.start),
            iso_utc(self.end),
            repr(float(self.magnitude)),
        ]


class GroundTruthLog:
    """Appends faults to a CSV file; the header is written when the file is new or empty."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, fault: Fault) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(GROUND_TRUTH_COLUMNS)
            writer.writerow(fault.row())
            f.flush()
            os.fsync(f.fileno())


@dataclass
class _Running:
    fault: Fault
    index: int  # the tag's position in the plant's value array
    logged: bool
    held: float | None = None
    rng: np.random.Generator | None = None  # noise faults: their own stream


@dataclass
class FaultInjector:
    """The plant's faults: scheduled ones (logged when they start) and injected ones (logged
    at once). `apply` turns clean readings into faulty ones for the moment `at`."""

    tag_index: dict[str, int]
    log: GroundTruthLog | None = None
    _faults: list[_Running] = field(default_factory=list)
    injected: int = 0  # faults injected at run time so far

    def validate(
        self,
        tag_id: str,
        kind: str | FaultKind,
        duration_s: float,
        magnitude: float,
        period_s: float = DEFAULT_PERIOD_S,
    ) -> FaultKind:
        """Checks a fault request; ValueError naming what is wrong."""
        if tag_id not in self.tag_index:
            raise ValueError(f"unknown tag {tag_id!r}")
        fault_kind = parse_kind(kind)
        if not (isinstance(duration_s, int | float) and math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"fault duration_s must be a positive number of seconds, got {duration_s!r}")
        if not (isinstance(magnitude, int | float) and math.isfinite(magnitude)):
            raise ValueError(f"fault magnitude must be a finite number, got {magnitude!r}")
        if not (isinstance(period_s, int | float) and math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"fault period_s must be a positive number of seconds, got {period_s!r}")
        if fault_kind is FaultKind.NOISE and magnitude < 0:
            raise ValueError(f"a noise fault's magnitude is a standard deviation, >= 0; got {magnitude!r}")
        return fault_kind

    def schedule(self, fault: Fault) -> None:
        """A fault that starts later; it goes to the ground truth when it starts."""
        self._faults.append(_Running(fault, self.tag_index[fault.tag_id], logged=False))

    def inject(self, fault: Fault, last_reading: float | None) -> None:
        """A fault starting now; logged immediately. `last_reading` is what a stuck fault holds."""
        self._faults.append(_Running(fault, self.tag_index[fault.tag_id], logged=False, held=last_reading))
        self.injected += 1
        self._log(self._faults[-1])

    def apply(self, at: datetime, clean: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """Readings at `at` with the active faults applied; `previous` is the last reported array."""
        if not self._faults:
            return clean
        out = clean.copy()
        keep: list[_Running] = []
        for run in self._faults:
            fault = run.fault
            if at >= fault.end:
                self._log(run)  # a fault that started and ended between two steps still happened
                continue
            keep.append(run)
            if at < fault.start:
                continue
            self._log(run)
            if fault.kind is FaultKind.STUCK:
                if run.held is None or not math.isfinite(run.held):
                    held = float(previous[run.index]) if previous is not None else math.nan
                    run.held = held if math.isfinite(held) else float(clean[run.index])
                out[run.index] = run.held
            elif fault.kind is FaultKind.DROPOUT:
                out[run.index] = math.nan
            elif fault.kind is FaultKind.NOISE:
                if run.rng is None:
                    start_us = round(fault.start.timestamp() * 1e6)
                    run.rng = np.random.default_rng([run.index, start_us & 0xFFFFFFFFFFFF])
                out[run.index] += fault.magnitude * float(run.rng.standard_normal())
            else:
                out[run.index] += fault.offset(at)
        self._faults = keep
        return out

    @property
    def active_count(self) -> int:
        return len(self._faults)

    def _log(self, run: _Running) -> None:
        if not run.logged:
            run.logged = True
            if self.log is not None:
                self.log.append(run.fault)
