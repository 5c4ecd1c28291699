"""Sensor faults the simulator injects, and the ground-truth log that records each one.

Kinds, applied to the sensor reading (the process itself is not disturbed):
  spike  `magnitude` is added for the whole duration;
  drift  an offset ramps linearly from 0 at the start to `magnitude` at the end;
  stuck  the reading holds the value last reported before the fault started.
A fault is active on [start, end). Every fault is appended to the ground-truth CSV
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

    def active(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def offset(self, at: datetime) -> float:
        """The additive offset at `at` (spike, drift); 0 for stuck."""
        if self.kind is FaultKind.SPIKE:
            return self.magnitude
        if self.kind is FaultKind.DRIFT:
            return self.magnitude * (at - self.start) / (self.end - self.start)
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


@dataclass
class FaultInjector:
    """The plant's faults: scheduled ones (logged when they start) and injected ones (logged
    at once). `apply` turns clean readings into faulty ones for the moment `at`."""

    tag_index: dict[str, int]
    log: GroundTruthLog | None = None
    _faults: list[_Running] = field(default_factory=list)
    injected: int = 0  # faults injected at run time so far

    def validate(self, tag_id: str, kind: str | FaultKind, duration_s: float, magnitude: float) -> FaultKind:
        """Checks a fault request; ValueError naming what is wrong."""
        if tag_id not in self.tag_index:
            raise ValueError(f"unknown tag {tag_id!r}")
        fault_kind = parse_kind(kind)
        if not (isinstance(duration_s, int | float) and math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"fault duration_s must be a positive number of seconds, got {duration_s!r}")
        if not (isinstance(magnitude, int | float) and math.isfinite(magnitude)):
            raise ValueError(f"fault magnitude must be a finite number, got {magnitude!r}")
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
                if run.held is None:
                    run.held = float(previous[run.index]) if previous is not None else float(clean[run.index])
                out[run.index] = run.held
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
