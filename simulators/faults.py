"""Faults the simulator injects, and the ground-truth log that records each one.

Sensor faults act on one tag's reading (the process itself is not disturbed):
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
the scorecard reports them apart.

Process faults act on a unit's process state (target: the unit path site.area.line.unit) and
reach the readings through the model's physics and loops; `magnitude` is the severity, a
fraction in (0, 1] (1: the worst the model knows). Which unit kinds have which (the unit
models' `PROCESS_FAULTS`, which also name the tags each one moves):
  cooling_failure    bioreactor: the jacket loses that fraction of its cooling capacity;
  feed_pump_failure  bioreactor: the feed flow falls by that fraction (1: pump stopped);
  contamination      bioreactor: a contaminant grows at 0.008/s x severity;
  vacuum_leak        freeze_dryer: air leaks in, up to 200 ubar x severity above what the
                     pressure control can hold.

A fault is active on [start, end). Every fault goes to the ground truth when it starts (an
injected one at once): one row `tag_id, kind, start, end, magnitude, target, tags`, times
ISO-8601 UTC in simulated time; `target` is the tag (sensor fault) or the unit path (process
fault), `tags` the full ids of the tags it is expected to move, separated by `;`, and `tag_id`
the tag of a sensor fault (empty for a process fault; kept first for the readers of the
five-column files). See GroundTruthLog for the files.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import numpy as np
import polars as pl

from simulators.clock import iso_utc

GROUND_TRUTH_COLUMNS = ("tag_id", "kind", "start", "end", "magnitude", "target", "tags")
_FIRST_COLUMNS = GROUND_TRUTH_COLUMNS[:5]  # the files before process faults had only these


class FaultKind(StrEnum):
    SPIKE = "spike"
    DRIFT = "drift"
    STUCK = "stuck"
    BIAS = "bias"
    NOISE = "noise"
    DROPOUT = "dropout"
    OSCILLATION = "oscillation"
    COOLING_FAILURE = "cooling_failure"
    FEED_PUMP_FAILURE = "feed_pump_failure"
    CONTAMINATION = "contamination"
    VACUUM_LEAK = "vacuum_leak"

    @property
    def is_process(self) -> bool:
        """True for a fault of the process (target a unit), False for a sensor fault (target a tag)."""
        return self in PROCESS_KINDS


PROCESS_KINDS = frozenset(
    {FaultKind.COOLING_FAILURE, FaultKind.FEED_PUMP_FAILURE, FaultKind.CONTAMINATION, FaultKind.VACUUM_LEAK}
)
SENSOR_KINDS = frozenset(FaultKind) - PROCESS_KINDS

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
    """One fault in simulated time: on a tag (sensor fault) or a unit (process fault).

    `target`: the tag id or the unit path; `tags`: the tags the fault is expected to move (a
    sensor fault: its tag; a process fault: the ones its unit's model declares and simulates).
    """

    target: str
    kind: FaultKind
    start: datetime
    end: datetime
    magnitude: float = 0.0
    period_s: float = DEFAULT_PERIOD_S  # oscillation only
    tags: tuple[str, ...] = ()

    @property
    def tag_id(self) -> str:
        """The tag of a sensor fault; "" for a process fault."""
        return "" if self.kind.is_process else self.target

    def active(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def offset(self, at: datetime) -> float:
        """The deterministic additive offset at `at` (spike, bias, drift, oscillation); 0 for the others."""
        if self.kind in (FaultKind.SPIKE, FaultKind.BIAS):
            return self.magnitude
        if self.kind is FaultKind.DRIFT:
            return self.magnitude * (at - self.start) / (self.end - self.start)
        if self.kind is FaultKind.OSCILLATION:
            return self.magnitude * math.sin(
                2.0 * math.pi * (at - self.start).total_seconds() / self.period_s
            )
        return 0.0

    def row(self) -> list[str]:
        """The ground-truth row, in GROUND_TRUTH_COLUMNS order."""
        return [
            self.tag_id,
            self.kind.value,
            iso_utc(self.start),
            iso_utc(self.end),
            repr(float(self.magnitude)),
            self.target,
            ";".join(self.tags or ((self.target,) if not self.kind.is_process else ())),
        ]


class GroundTruthLog:
    """Appends faults to the ground truth.

    The CSV is always written: one row appended per fault, flushed and fsynced at once, so a
    reader (a benchmark, `tail -f`) sees it while the run goes on and a crash loses nothing.
    When `path` ends in `.parquet`, the same rows also go to that Parquet file, rewritten whole
    (to a temporary file, then renamed: a reader never sees half a file) at each fault; faults
    are rare, so that costs nothing. The CSV then sits beside it (`ground_truth.csv` for
    `ground_truth.parquet`). An existing file is appended to; a CSV of the older five-column
    format is first rewritten with the new columns (target = tag_id, tags = tag_id).
    """

    def __init__(self, path: Path):
        path = Path(path)
        self.parquet_path = path if path.suffix == ".parquet" else None
        self.path = path.with_suffix(".csv") if self.parquet_path else path
        self._rows: list[list[str]] | None = None  # the Parquet file's rows, loaded at the first append

    def append(self, fault: Fault) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._upgrade_old_csv()
        new = not self.path.exists() or self.path.stat().st_size == 0
        row = fault.row()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(GROUND_TRUTH_COLUMNS)
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        if self.parquet_path is not None:
            self._append_parquet(row)

    def _upgrade_old_csv(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if rows[0] == list(GROUND_TRUTH_COLUMNS):
            return
        if tuple(rows[0]) != _FIRST_COLUMNS:
            raise ValueError(
                f"ground truth {self.path}: unexpected columns {rows[0]}; expected {list(GROUND_TRUTH_COLUMNS)}"
            )
        _write_atomically(
            self.path,
            lambda tmp: _write_csv(tmp, [list(GROUND_TRUTH_COLUMNS)] + [[*r, r[0], r[0]] for r in rows[1:]]),
        )

    def _append_parquet(self, row: list[str]) -> None:
        assert self.parquet_path is not None
        if self._rows is None:
            self._rows = []
            if self.parquet_path.exists():
                old = read_ground_truth(self.parquet_path)
                self._rows = [_frame_row(r) for r in old.iter_rows(named=True)]
        self._rows.append(row)
        frame = _typed(pl.DataFrame(self._rows, schema=list(GROUND_TRUTH_COLUMNS), orient="row"))
        _write_atomically(self.parquet_path, lambda tmp: frame.write_parquet(tmp))


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _frame_row(r: dict) -> list[str]:
    return [
        r["tag_id"] or "",
        r["kind"],
        iso_utc(r["start"]),
        iso_utc(r["end"]),
        repr(float(r["magnitude"])),
        r["target"],
        r["tags"] or "",
    ]


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    """Ground-truth columns as text -> typed: start/end UTC datetimes (us), magnitude float."""
    fmt = "%Y-%m-%dT%H:%M:%S%.fZ"
    return frame.with_columns(
        pl.col("tag_id").fill_null(""),
        pl.col("tags").fill_null(""),
        pl.col("start").str.to_datetime(fmt, time_unit="us", time_zone="UTC"),
        pl.col("end").str.to_datetime(fmt, time_unit="us", time_zone="UTC"),
        pl.col("magnitude").cast(pl.Float64),
    )


def read_ground_truth(path: str | Path) -> pl.DataFrame:
    """A ground-truth file (CSV, old five-column or current, or Parquet) as a frame with the
    GROUND_TRUTH_COLUMNS: text, start/end UTC datetimes, magnitude float; one row per fault."""
    path = Path(path)
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
    else:
        frame = pl.read_csv(path, infer_schema=False)  # all text: a tag id is never taken for a number
        if "target" not in frame.columns:
            frame = frame.with_columns(pl.col("tag_id").alias("target"), pl.col("tag_id").alias("tags"))
        frame = _typed(frame)
    missing = set(GROUND_TRUTH_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"ground truth {path}: missing columns {sorted(missing)}")
    return frame.select(GROUND_TRUTH_COLUMNS)


@dataclass
class _Running:
    fault: Fault
    index: int  # the tag's position in the plant's value array (-1: a process fault)
    logged: bool
    held: float | None = None
    rng: np.random.Generator | None = None  # noise faults: their own stream


@dataclass
class FaultInjector:
    """The plant's faults: scheduled ones (logged when they start) and injected ones (logged
    at once). `apply` turns clean readings into faulty ones for the moment `at`; `process_levels`
    gives the process faults active at a moment, per unit.

    `process_tags`: per unit path, per process fault kind its model has, the full ids of the
    tags that fault moves (what the unit can take, and what the ground truth names).
    """

    tag_index: dict[str, int]
    log: GroundTruthLog | None = None
    process_tags: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    _faults: list[_Running] = field(default_factory=list)
    _process: list[_Running] = field(default_factory=list)
    injected: int = 0  # faults injected at run time so far

    def validate(
        self,
        target: str,
        kind: str | FaultKind,
        duration_s: float,
        magnitude: float,
        period_s: float = DEFAULT_PERIOD_S,
    ) -> FaultKind:
        """Checks a fault request; ValueError naming what is wrong."""
        fault_kind = parse_kind(kind)
        if fault_kind.is_process:
            if target in self.tag_index:
                raise ValueError(
                    f"{fault_kind.value} is a process fault: its target is a unit (site.area.line.unit), "
                    f"not the tag {target!r}"
                )
            if target not in self.process_tags:
                raise ValueError(f"unknown unit {target!r} (a process fault's target is site.area.line.unit)")
            if fault_kind.value not in self.process_tags[target]:
                have = ", ".join(sorted(self.process_tags[target])) or "none"
                raise ValueError(
                    f"unit {target!r} has no {fault_kind.value} process fault (its model has: {have})"
                )
            if not (isinstance(magnitude, int | float) and 0.0 < magnitude <= 1.0):
                raise ValueError(f"a process fault's magnitude is a severity in (0, 1]; got {magnitude!r}")
        elif target not in self.tag_index:
            hint = (
                " (a sensor fault's target is a tag; that is a unit)" if target in self.process_tags else ""
            )
            raise ValueError(f"unknown tag {target!r}{hint}")
        if not (isinstance(duration_s, int | float) and math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"fault duration_s must be a positive number of seconds, got {duration_s!r}")
        if not (isinstance(magnitude, int | float) and math.isfinite(magnitude)):
            raise ValueError(f"fault magnitude must be a finite number, got {magnitude!r}")
        if not (isinstance(period_s, int | float) and math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"fault period_s must be a positive number of seconds, got {period_s!r}")
        if fault_kind is FaultKind.NOISE and magnitude < 0:
            raise ValueError(f"a noise fault's magnitude is a standard deviation, >= 0; got {magnitude!r}")
        return fault_kind

    def affected_tags(self, target: str, kind: FaultKind) -> tuple[str, ...]:
        """The tags a fault on `target` is expected to move."""
        return self.process_tags[target][kind.value] if kind.is_process else (target,)

    def schedule(self, fault: Fault) -> None:
        """A fault that starts later; it goes to the ground truth when it starts."""
        if fault.kind.is_process:
            self._process.append(_Running(fault, -1, logged=False))
        else:
            self._faults.append(_Running(fault, self.tag_index[fault.target], logged=False))

    def inject(self, fault: Fault, last_reading: float | None = None) -> None:
        """A fault starting now; logged immediately. `last_reading` is what a stuck fault holds."""
        if fault.kind.is_process:
            run = _Running(fault, -1, logged=False)
            self._process.append(run)
        else:
            run = _Running(fault, self.tag_index[fault.target], logged=False, held=last_reading)
            self._faults.append(run)
        self.injected += 1
        self._log(run)

    def process_levels(self, at: datetime) -> dict[str, dict[str, float]]:
        """The process faults active at `at`: unit path -> kind -> severity (the largest, when
        two overlap). Logs each when it starts; drops the ones that have ended."""
        if not self._process:
            return {}
        levels: dict[str, dict[str, float]] = {}
        keep: list[_Running] = []
        for run in self._process:
            fault = run.fault
            if at >= fault.end:
                self._log(run)  # one that started and ended between two steps still happened
                continue
            keep.append(run)
            if at < fault.start:
                continue
            self._log(run)
            unit = levels.setdefault(fault.target, {})
            unit[fault.kind.value] = max(unit.get(fault.kind.value, 0.0), fault.magnitude)
        self._process = keep
        return levels

    def apply(self, at: datetime, clean: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """Readings at `at` with the active sensor faults applied; `previous` is the last reported array."""
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
    def has_process(self) -> bool:
        """Whether any process fault is scheduled or running."""
        return bool(self._process)

    @property
    def active_count(self) -> int:
        return len(self._faults) + len(self._process)

    def _log(self, run: _Running) -> None:
        if not run.logged:
            run.logged = True
            if self.log is not None:
                self.log.append(run.fault)
