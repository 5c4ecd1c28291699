"""`controltower evaluate --scenario FILE`: run a fault scenario offline through the detectors
and score what they caught against the ground truth.

A scenario (YAML, `config/scenarios/*.yaml`):

    name: demo-faults                    # shown on the scorecard
    description: ...                     # optional
    site: ../demo-site.yaml              # a site file, relative to the scenario file ...
    # enterprise: {sites: 1, lines: 6}   # ... or a generated enterprise (simulators/enterprise.py)
    seed: 7                              # the plant's seed (default 42)
    start: 2024-05-01T06:00:00Z          # simulated time at plant start (default 2024-05-01T00:00:00Z)
    duration_s: 7200                     # simulated seconds
    tick_s: 1.0                          # sample period (default 1)
    batch_s: 30                          # micro-batch handed to the detection engine (default 30)
    grace_s: 60                          # an alert this long after a fault's end still counts (default 60)
    process_grace_s: 300                 # the same after a process fault's end (default 300): the
                                         # physics takes minutes to settle once its cause is gone
    detectors: {...}                     # optional: replaces the site's detectors section
    faults:                              # replace the site's scheduled faults
      - {tag: lyon.ff.fill1.filler1.fill_weight, kind: spike, start_s: 600, duration_s: 60, magnitude: 0.12}
      - {unit: lyon.usp.bio1.br101, kind: cooling_failure, start_s: 1800, duration_s: 900, magnitude: 1.0}

Fault kinds and what `magnitude` means: see simulators/faults.py (sensor faults on a `tag`:
spike, bias, drift, stuck, noise, dropout, oscillation, `period_s` for oscillation; process
faults on a `unit`, magnitude a severity in (0, 1]: cooling_failure, feed_pump_failure,
contamination, vacuum_leak).

The run: the plant steps `tick_s` at a time (faults applied, as live), every `batch_s` of
samples goes to `DetectionEngine.process` in time order (the live engine's code path), and
every alert raised is kept with its clear time. Nothing is published; it runs as fast as the
CPU allows. The events scored are the rows the plant wrote to its ground truth (CSV, or
Parquet for a `--ground-truth` path ending in .parquet; a temporary file when none is given),
read back: what is scored is what was published.

Scoring (times are simulated). A fault's tags: a sensor fault's own tag; a process fault's
tags are the ones its unit's model says the physics moves (the ground truth's `tags`).
  fault window   [start, end + grace_s) of one fault, on each of its tags (process faults:
                 end + process_grace_s, as the process settles after its cause ends).
  detected       an alert on any of the fault's tags (any detector) raised inside its window;
                 delay = first such raise - fault start.
  true alert     an alert whose active span [raised, cleared or run end] overlaps a fault
                 window of its tag; every other alert is a false alarm.
  per event      precision = detected faults / (detected faults + false alarms),
                 recall = detected faults / faults, F1 their harmonic mean.
  per tag        a tag is positive when it is one of a fault's tags; predicted positive when
                 it has an alert. TP = faulty tags with a true alert, FP = fault-free tags with
                 an alert, FN = faulty tags without a true alert.
  false alarms per simulated hour = false alarms / (duration_s / 3600).
Undefined ratios (nothing to divide by) print as "-" and are null in JSON.

The text scorecard's layout is stable (scripts may read it); `--json` prints the same content
as one JSON object (`Scorecard.to_dict`).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from analytics.alerts import Alert, AlertBook
from analytics.engine import DetectionEngine
from controltower.site import (
    PROCESS_FAULT_UNIT_KINDS,
    DetectorsConfig,
    FaultConfig,
    SimulationConfig,
    SiteConfig,
    Strict,
    load_site_config,
)
from simulators.clock import as_utc
from simulators.enterprise import build_enterprise
from simulators.faults import PROCESS_KINDS, FaultKind, read_ground_truth
from simulators.plant import Plant

DEFAULT_START = datetime(2024, 5, 1, tzinfo=UTC)
KIND_ORDER = tuple(k.value for k in FaultKind)


class EnterpriseRef(Strict):
    sites: int = Field(ge=1, le=100)
    lines: int = Field(ge=1, le=500)


class ScenarioConfig(Strict):
    """A scenario file, validated (see the module docstring)."""

    name: str = Field(min_length=1)
    description: str = ""
    site: str | None = None
    enterprise: EnterpriseRef | None = None
    seed: int = 42
    start: datetime = DEFAULT_START
    duration_s: float = Field(gt=0, le=30 * 86400)
    tick_s: float = Field(default=1.0, gt=0, le=60)
    batch_s: float = Field(default=30.0, gt=0, le=3600)
    grace_s: float = Field(default=60.0, ge=0)
    process_grace_s: float = Field(default=300.0, ge=0)
    detectors: DetectorsConfig | None = None
    faults: list[FaultConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_plant(self) -> ScenarioConfig:
        if (self.site is None) == (self.enterprise is None):
            raise ValueError(
                "a scenario needs exactly one of 'site' (a site file) or 'enterprise' ({sites, lines})"
            )
        if self.batch_s < self.tick_s:
            raise ValueError(f"batch_s ({self.batch_s}) must be at least tick_s ({self.tick_s})")
        return self


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the file, the key and the reason."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path, self.problems = str(path), problems
        super().__init__(
            "\n".join(f"{self.path}: {k}: {r}" if k else f"{self.path}: {r}" for k, r in problems)
        )


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario: its config and the site to simulate, whose scheduled faults are the scenario's."""

    config: ScenarioConfig
    site: SiteConfig
    path: Path | None = None

    @property
    def start(self) -> datetime:
        return as_utc(self.config.start)


def _loc(loc: tuple[Any, ...]) -> str:
    key = ""
    for item in loc:
        key += f"[{item}]" if isinstance(item, int) else (f".{item}" if key else str(item))
    return key


def parse_scenario(data: Any, path: str | Path = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate scenario data (as YAML loads it) and build its site. A site file path is
    relative to `base_dir` (the scenario file's folder). ScenarioError names key and reason."""
    if not isinstance(data, dict):
        raise ScenarioError(path, [("", f"the top level must be a mapping, found {type(data).__name__}")])
    try:
        config = ScenarioConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            reason = (
                "unknown key (check its spelling and place)"
                if err["type"] == "extra_forbidden"
                else err["msg"]
            )
            problems.append((_loc(tuple(err["loc"])), reason.removeprefix("Value error, ")))
        raise ScenarioError(path, problems) from None
    if config.site is not None:
        site_path = Path(config.site)
        if not site_path.is_absolute():
            site_path = (base_dir or Path.cwd()) / site_path
        site = load_site_config(site_path)
    else:
        assert config.enterprise is not None
        site = build_enterprise(config.enterprise.sites, config.enterprise.lines, seed=config.seed)
    known = {tag_id for tag_id, _ in site.iter_tags()}
    units = {
        f"{s.id}.{a.id}.{ln.id}.{u.id}": u.kind
        for s in site.sites
        for a in s.areas
        for ln in a.lines
        for u in ln.units
    }
    problems = []
    for i, fault in enumerate(config.faults):
        if fault.unit is None and fault.tag not in known:
            problems.append(
                (f"faults[{i}].tag", f"no tag {fault.tag!r} in the site (full id site.area.line.unit.tag)")
            )
        if fault.unit is not None and fault.unit not in units:
            problems.append(
                (f"faults[{i}].unit", f"no unit {fault.unit!r} in the site (path site.area.line.unit)")
            )
        elif fault.unit is not None and units[fault.unit] not in PROCESS_FAULT_UNIT_KINDS[fault.kind]:
            having = ", ".join(PROCESS_FAULT_UNIT_KINDS[fault.kind])
            reason = f"unit {fault.unit!r} is of kind {units[fault.unit]!r}, which has no {fault.kind} process fault"
            problems.append((f"faults[{i}].kind", f"{reason} (units of kind {having} have it)"))
        if fault.start_s >= config.duration_s:
            problems.append(
                (
                    f"faults[{i}].start_s",
                    f"{fault.start_s:g} is not before the scenario's end ({config.duration_s:g} s)",
                )
            )
    if problems:
        raise ScenarioError(path, problems)
    simulation = (site.simulation or SimulationConfig()).model_copy(
        update={"faults": list(config.faults), "seed": config.seed}
    )
    update: dict[str, Any] = {"simulation": simulation}
    if config.detectors is not None:
        update["detectors"] = config.detectors
    return Scenario(config, site.model_copy(update=update), Path(path) if path != "<scenario>" else None)


def load_scenario(path: str | Path, **overrides: Any) -> Scenario:
    """Read and validate a scenario YAML file; `overrides` replace top-level keys (e.g. seed,
    duration_s). ScenarioError (or SiteConfigError for its site file) names the file, the key
    and the reason."""
    path = Path(path)
    data = _read_yaml(path)
    if overrides and isinstance(data, dict):
        data = {**data, **overrides}
    return parse_scenario(data, path, path.parent)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(path, [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ScenarioError(
            path, [("", f"not valid YAML at {where}: {getattr(exc, 'problem', None) or exc}")]
        ) from None


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthEvent:
    """One injected fault, in seconds from plant start: its target (a tag, or a unit for a
    process fault) and the tags it is expected to move."""

    target: str
    kind: str
    start_s: float
    end_s: float
    magnitude: float
    tags: tuple[str, ...] = ()

    @property
    def tag_id(self) -> str:
        """The target (kept for the readers of the sensor-fault-only scorecards)."""
        return self.target

    @property
    def affected(self) -> tuple[str, ...]:
        return self.tags or (self.target,)


def truth_events(truth: Any, start: datetime) -> list[TruthEvent]:
    """Ground-truth rows (a frame as `read_ground_truth` gives it) as events, in seconds from `start`."""
    rows = sorted(truth.iter_rows(named=True), key=lambda r: (r["start"], r["target"]))
    seconds = lambda at: (as_utc(at) - start).total_seconds()
    return [
        TruthEvent(
            r["target"],
            r["kind"],
            seconds(r["start"]),
            seconds(r["end"]),
            float(r["magnitude"]),
            tuple(t for t in (r["tags"] or "").split(";") if t),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class AlertSpan:
    """One alert, in seconds from plant start (`cleared_s` None: still active at the end)."""

    tag_id: str
    detector: str
    severity: str
    raised_s: float
    cleared_s: float | None


@dataclass
class RunResult:
    """What an offline run produced: the ground truth, every alert, and how long it took."""

    events: list[TruthEvent]
    alerts: list[AlertSpan]
    duration_s: float
    samples: int
    wall_s: float
    tags: int


def run_scenario(scenario: Scenario, *, ground_truth: Path | None = None) -> RunResult:
    """Simulate the scenario and feed the detection engine micro-batch by micro-batch, in time
    order. The events are read back from the ground truth the plant wrote: `ground_truth`
    (CSV, or Parquet too when it ends in .parquet; appended to), else a temporary file."""
    if ground_truth is None:
        with tempfile.TemporaryDirectory(prefix="controltower-evaluate-") as tmp:
            return run_scenario(scenario, ground_truth=Path(tmp) / "ground_truth.csv")
    ground_truth = Path(ground_truth)
    before = read_ground_truth(ground_truth).height if ground_truth.exists() else 0
    cfg = scenario.config
    began = time.perf_counter()
    site = scenario.site
    tags = site.tag_table()
    plant = Plant(site, seed=cfg.seed, start=scenario.start, ground_truth=ground_truth)
    book = AlertBook(max_history=10**9)
    engine = DetectionEngine(tags, site.detectors, book=book)
    total = max(1, round(cfg.duration_s / cfg.tick_s))
    per_batch = max(1, round(cfg.batch_s / cfg.tick_s))
    done = samples = 0
    while done < total:
        steps = min(per_batch, total - done)
        frame = plant.run(steps * cfg.tick_s, cfg.tick_s)
        engine.process(frame)
        done += steps
        samples += frame.height
    start = scenario.start
    seconds = lambda at: (as_utc(at) - start).total_seconds()
    alerts = [
        AlertSpan(
            a.tag_id,
            a.detector,
            a.severity,
            seconds(a.raised_at),
            None if a.cleared_at is None else seconds(a.cleared_at),
        )
        for a in sorted(book.recent(limit=10**9), key=_alert_order)
    ]
    written = read_ground_truth(ground_truth).slice(before) if ground_truth.exists() else None
    events = truth_events(written, start) if written is not None else []
    return RunResult(events, alerts, total * cfg.tick_s, samples, time.perf_counter() - began, len(tags))


def _alert_order(a: Alert) -> tuple[datetime, str, str]:
    return (a.raised_at, a.tag_id, a.detector)


# --- scoring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventScore:
    event: TruthEvent
    detected: bool
    delay_s: float | None
    detector: str | None  # the detector of the first alert in the window
    detectors: tuple[str, ...]  # every detector that alerted in the window


@dataclass(frozen=True)
class Rates:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "f1": _round(self.f1),
        }


@dataclass
class Scorecard:
    """The scored run (see the module docstring); `to_text()` and `to_dict()` render it."""

    name: str
    source: str
    enterprise: str
    sites: int
    lines: int
    tags: int
    seed: int
    tick_s: float
    batch_s: float
    grace_s: float
    detector_names: tuple[str, ...]
    run: RunResult
    events: list[EventScore] = field(default_factory=list)
    false_alarms: list[AlertSpan] = field(default_factory=list)
    per_event: Rates = Rates(0, 0, 0)
    per_tag: Rates = Rates(0, 0, 0)
    process_grace_s: float = 300.0

    @property
    def hours(self) -> float:
        return self.run.duration_s / 3600.0

    @property
    def false_alarms_per_hour(self) -> float:
        return len(self.false_alarms) / self.hours

    def kinds(self) -> list[dict[str, Any]]:
        """One row per fault kind present: events, detected, recall, mean and max delay."""
        rows = []
        present = {e.event.kind for e in self.events}
        for kind in [k for k in KIND_ORDER if k in present] + sorted(present - set(KIND_ORDER)):
            scores = [e for e in self.events if e.event.kind == kind]
            delays = [e.delay_s for e in scores if e.delay_s is not None]
            rows.append(
                {
                    "kind": kind,
                    "events": len(scores),
                    "detected": sum(e.detected for e in scores),
                    "recall": _round(sum(e.detected for e in scores) / len(scores)),
                    "delay_mean_s": _round(sum(delays) / len(delays)) if delays else None,
                    "delay_max_s": _round(max(delays)) if delays else None,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "source": self.source,
            "site": {
                "enterprise": self.enterprise,
                "sites": self.sites,
                "lines": self.lines,
                "tags": self.tags,
            },
            "seed": self.seed,
            "simulated_s": self.run.duration_s,
            "tick_s": self.tick_s,
            "batch_s": self.batch_s,
            "grace_s": self.grace_s,
            "process_grace_s": self.process_grace_s,
            "samples": self.run.samples,
            "wall_s": round(self.run.wall_s, 3),
            "detectors": list(self.detector_names),
            "kinds": self.kinds(),
            "events": [
                {
                    "kind": e.event.kind,
                    "tag_id": e.event.tag_id,
                    "target": e.event.target,
                    "tags": list(e.event.affected),
                    "start_s": e.event.start_s,
                    "duration_s": e.event.end_s - e.event.start_s,
                    "magnitude": e.event.magnitude,
                    "detected": e.detected,
                    "delay_s": _round(e.delay_s),
                    "first_detector": e.detector,
                    "detectors": list(e.detectors),
                }
                for e in self.events
            ],
            "alerts": len(self.run.alerts),
            "false_alarms": {
                "count": len(self.false_alarms),
                "per_hour": _round(self.false_alarms_per_hour),
                "by_detector": dict(sorted(Counter(a.detector for a in self.false_alarms).items())),
                "alerts": [
                    {
                        "tag_id": a.tag_id,
                        "detector": a.detector,
                        "severity": a.severity,
                        "raised_s": _round(a.raised_s),
                        "cleared_s": _round(a.cleared_s),
                    }
                    for a in self.false_alarms
                ],
            },
            "per_event": self.per_event.to_dict(),
            "per_tag": self.per_tag.to_dict(),
        }

    def to_text(self, max_false_alarms: int = 20) -> str:
        """The scorecard as text, in a stable layout (simulators/README.md shows it): a header of
        four lines, the per-kind table, the per-event table, the alert and false-alarm lines
        (false alarms listed up to `max_false_alarms`), the precision / recall / F1 table."""
        run = self.run
        rate = run.samples / run.wall_s if run.wall_s > 0 else float("inf")
        out = [
            f"scenario    {self.name} ({self.source})",
            f"plant       {self.enterprise}: {self.sites} site(s), {self.lines} line(s), {self.tags} tags; seed {self.seed}",
            (
                f"simulated   {_hms(run.duration_s)} ({run.duration_s:g} s, {self.tick_s:g} s ticks, micro-batches of "
                f"{self.batch_s:g} s) in {run.wall_s:.1f} s wall clock ({rate:,.0f} samples/s)"
            ),
            f"detectors   {', '.join(self.detector_names) or 'none'}; grace {self.grace_s:g} s after a fault ends"
            + (
                f", {self.process_grace_s:g} s after a process fault"
                if any(e.event.kind in PROCESS_KINDS for e in self.events)
                else ""
            ),
            "",
            "per fault kind",
        ]
        kinds = self.kinds()
        out += (
            _table(
                ["kind", "events", "detected", "recall", "delay_mean_s", "delay_max_s"],
                [
                    [
                        k["kind"],
                        k["events"],
                        k["detected"],
                        _fmt(k["recall"], 2),
                        _fmt(k["delay_mean_s"], 1),
                        _fmt(k["delay_max_s"], 1),
                    ]
                    for k in kinds
                ],
                right={1, 2, 3, 4, 5},
            )
            if kinds
            else ["(no faults)"]
        )
        out += ["", "per event"]
        out += (
            _table(
                [
                    "#",
                    "kind",
                    "tag",
                    "start_s",
                    "duration_s",
                    "magnitude",
                    "detected",
                    "delay_s",
                    "first_detector",
                ],
                [
                    [
                        i + 1,
                        e.event.kind,
                        e.event.tag_id,
                        f"{e.event.start_s:g}",
                        f"{e.event.end_s - e.event.start_s:g}",
                        f"{e.event.magnitude:g}",
                        "yes" if e.detected else "no",
                        _fmt(e.delay_s, 1),
                        e.detector or "-",
                    ]
                    for i, e in enumerate(self.events)
                ],
                right={0, 3, 4, 5, 7},
            )
            if self.events
            else ["(no faults)"]
        )
        by_detector = Counter(a.detector for a in self.false_alarms)
        out += [
            "",
            (
                f"alerts        {len(run.alerts)} ({len(run.alerts) - len(self.false_alarms)} on faults, "
                f"{len(self.false_alarms)} false)"
            ),
            f"false alarms  {len(self.false_alarms)} ({self.false_alarms_per_hour:.2f} per simulated hour)"
            + (
                f"; by detector: {', '.join(f'{d} {n}' for d, n in sorted(by_detector.items()))}"
                if by_detector
                else ""
            ),
        ]
        if self.false_alarms:
            shown = self.false_alarms[:max_false_alarms]
            out += _table(
                ["raised_s", "tag", "detector", "severity"],
                [[f"{a.raised_s:g}", a.tag_id, a.detector, a.severity] for a in shown],
                right={0},
                indent="  ",
            )
            if len(self.false_alarms) > len(shown):
                out.append(f"  ... {len(self.false_alarms) - len(shown)} more (--json lists all)")
        out += [""]
        out += _table(
            ["", "tp", "fp", "fn", "precision", "recall", "f1"],
            [
                [name, r.tp, r.fp, r.fn, _fmt(r.precision, 3), _fmt(r.recall, 3), _fmt(r.f1, 3)]
                for name, r in (("per event", self.per_event), ("per tag", self.per_tag))
            ],
            right={1, 2, 3, 4, 5, 6},
        )
        return "\n".join(out) + "\n"


def score(scenario: Scenario, run: RunResult) -> Scorecard:
    """Score a run against its ground truth (definitions in the module docstring)."""
    cfg = scenario.config
    grace = cfg.grace_s
    end_of_run = run.duration_s

    def until(e: TruthEvent) -> float:
        """The end of a fault's window: its end plus the grace for its kind."""
        return e.end_s + (cfg.process_grace_s if e.kind in PROCESS_KINDS else grace)

    by_tag: dict[str, list[AlertSpan]] = {}
    for a in run.alerts:
        by_tag.setdefault(a.tag_id, []).append(a)
    windows: dict[str, list[tuple[float, float]]] = {}
    for e in run.events:
        for tag in e.affected:
            windows.setdefault(tag, []).append((e.start_s, until(e)))

    events = []
    for e in run.events:
        inside = [a for tag in e.affected for a in by_tag.get(tag, []) if e.start_s <= a.raised_s < until(e)]
        first = min(inside, key=lambda a: (a.raised_s, a.detector)) if inside else None
        events.append(
            EventScore(
                e,
                first is not None,
                None if first is None else first.raised_s - e.start_s,
                None if first is None else first.detector,
                tuple(sorted({a.detector for a in inside})),
            )
        )

    def overlaps(a: AlertSpan) -> bool:
        until = a.cleared_s if a.cleared_s is not None else end_of_run
        return any(a.raised_s < hi and until >= lo for lo, hi in windows.get(a.tag_id, []))

    false_alarms = [a for a in run.alerts if not overlaps(a)]
    detected = sum(e.detected for e in events)
    faulty = set(windows)
    caught = {
        tag
        for e in events
        for tag in e.event.affected
        if any(e.event.start_s <= a.raised_s < until(e.event) for a in by_tag.get(tag, []))
    }
    alerted_clean = {a.tag_id for a in run.alerts} - faulty
    site = scenario.site
    return Scorecard(
        name=cfg.name,
        source=str(scenario.path) if scenario.path else "<scenario>",
        enterprise=site.enterprise,
        sites=len(site.sites),
        lines=sum(len(a.lines) for s in site.sites for a in s.areas),
        tags=run.tags,
        seed=cfg.seed,
        tick_s=cfg.tick_s,
        batch_s=cfg.batch_s,
        grace_s=grace,
        process_grace_s=cfg.process_grace_s,
        detector_names=tuple(
            n for n in type(site.detectors).model_fields if getattr(site.detectors, n).enabled
        ),
        run=run,
        events=events,
        false_alarms=false_alarms,
        per_event=Rates(detected, len(false_alarms), len(events) - detected),
        per_tag=Rates(len(caught), len(alerted_clean), len(faulty - caught)),
    )


def evaluate(scenario: Scenario, *, ground_truth: Path | None = None) -> Scorecard:
    """Run and score a scenario."""
    return score(scenario, run_scenario(scenario, ground_truth=ground_truth))


# --- formatting ---------------------------------------------------------------------------


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def _table(header: list[str], rows: list[list[Any]], right: set[int], indent: str = "") -> list[str]:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(indent + "  ".join(parts).rstrip())
    return lines


# --- CLI ----------------------------------------------------------------------------------


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The `controltower evaluate` options."""
    parser.add_argument("--scenario", required=True, type=Path, help="scenario YAML (see config/scenarios/)")
    parser.add_argument("--json", action="store_true", help="print the scorecard as one JSON object")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument(
        "--duration", type=float, help="override the scenario's duration_s (simulated seconds)"
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        help="also write the injected faults to this file (CSV; a .parquet path writes Parquet and a CSV beside it)",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Run `evaluate` for parsed CLI args: print the scorecard; 0 when it ran. A bad scenario
    raises ScenarioError (a ValueError) or SiteConfigError naming the file, key and reason."""
    path = args.scenario
    overrides: dict[str, Any] = {}
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if getattr(args, "duration", None) is not None:
        overrides["duration_s"] = args.duration
    scenario = load_scenario(path, **overrides)
    card = evaluate(scenario, ground_truth=getattr(args, "ground_truth", None))
    if getattr(args, "json", False):
        print(json.dumps(card.to_dict(), indent=2))
    else:
        print(card.to_text(), end="")
    return 0


__all__ = [
    "Scenario",
    "ScenarioConfig",
    "ScenarioError",
    "Scorecard",
    "add_evaluate_arguments",
    "evaluate",
    "load_scenario",
    "parse_scenario",
    "run_evaluate",
    "run_scenario",
    "score",
]
