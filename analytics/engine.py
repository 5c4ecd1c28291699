"""The detection engine: runs the enabled detectors on each micro-batch and feeds the alert book.

Per (tag, detector) the engine compares each sample's level with the previous one (carried
across batches) and keeps only the changes, plus one "peak" row per active condition and batch
(its highest-scoring sample, for the alert's worst value). Only those events reach Python and
the `AlertBook`; samples stay in Polars.

When a batch's tags share timestamps (batched MQTT, the simulator), it is pivoted once
(`detectors.wide.pivot`) and the detectors with a wide path (`score_wide`) score it as one
NumPy column per tag; the level changes and peaks are then found on those arrays and only the
event rows are built. Other batches, and detectors without a wide path, use the long path.

Detectors with a `check(now)` method (stale data) are also asked each cycle: after scoring a
batch, with the batch clock (the newest sample time seen so far) unless the caller passes the
wall clock; `check(now)` alone runs them when no batch arrived.

Batch events (`batch_events`) go to the monitors that follow phases (a golden model fitted by
phase) and, when a unit's stored `spc` model has centres per ISA-88 phase, to `RunningPhases`:
a micro-batch is then cut at the phase changes inside it (a few an hour: most batches are one
part) and, before each part is scored, the SPC charts take the running phase's centres, the
tags whose centre moved starting their runs, EWMA and CUSUM afresh.

A new version of a stored model (`analytics.model_reload`, which watches the model store) is
handed over with `stage_monitor` from any thread and swapped in at the start of the next
`process`, never while a micro-batch is being scored; it takes over the stream state of the
version it replaces (`monitors._Monitor.take_over`) and its alert point's level, so an active
condition carries on. A new version of a unit's `spc` centre lines (`StoredCentres`) is staged
the same way: the SPC charts take its centres (those of the phase the unit runs, when it has
them per phase; the pinned ones still win) and the tags whose centre moved start their runs,
EWMA and CUSUM afresh, as at a phase change.
"""

from __future__ import annotations

import threading
from datetime import datetime
from itertools import pairwise
from typing import Self

import numpy as np
import polars as pl

from analytics.alerts import EVENT_SCHEMA, Alert, AlertBook
from analytics.detectors.base import TAG_KEY, Detector, per_tag
from analytics.detectors.cusum import CusumChart
from analytics.detectors.ewma import EwmaChart
from analytics.detectors.flatline import FlatlineDetector
from analytics.detectors.limits import LimitDetector
from analytics.detectors.nelson import NelsonRules
from analytics.detectors.quality import BadQualityDetector
from analytics.detectors.robust_zscore import RobustZScore
from analytics.detectors.roc import RateOfChangeDetector
from analytics.detectors.spc import CentreLineChart, RunningPhases, StoredCentres
from analytics.detectors.stale import StaleDataDetector
from analytics.detectors.wide import WideScores, aligned, pivot
from analytics.detectors.zscore import RollingZScore
from controltower.site import DetectorsConfig, TagInfo

_LEVEL_SCHEMA = {"tag_id": pl.String(), "level_was": pl.UInt8()}


def build_detectors(tags: list[TagInfo], config: DetectorsConfig) -> list[Detector]:
    """The detectors `config` enables, in a fixed order (limits, zscore, flatline, quality, rate of
    change, Nelson rules, EWMA, CUSUM, robust z-score, stale data)."""
    detectors: list[Detector] = []
    if config.limits.enabled:
        detectors.append(LimitDetector(tags))
    if config.zscore.enabled:
        z = config.zscore
        detectors.append(RollingZScore(tags, window=z.window, threshold=z.threshold,
                                       min_std_fraction=z.min_std_fraction, warmup=min(30, z.window)))
    if config.flatline.enabled:
        detectors.append(FlatlineDetector(tags, min_run=config.flatline.min_run, tolerance=config.flatline.tolerance))
    if config.quality.enabled:
        detectors.append(BadQualityDetector(tags, min_run=config.quality.min_run))
    if config.rate_of_change.enabled:
        detectors.append(RateOfChangeDetector(tags))
    if config.nelson.enabled:
        detectors.append(NelsonRules(tags, rules=config.nelson.rules, same_side_run=config.nelson.same_side_run))
    if config.ewma.enabled:
        e = config.ewma
        detectors.append(EwmaChart(tags, lam=e.lam, L=e.L, exact_limits=e.exact_limits))
    if config.cusum.enabled:
        detectors.append(CusumChart(tags, k=config.cusum.k, h=config.cusum.h))
    if config.robust_zscore.enabled:
        r = config.robust_zscore
        detectors.append(RobustZScore(tags, window=r.window, threshold=r.threshold,
                                      min_std_fraction=r.min_std_fraction, warmup=min(30, r.window)))
    if config.stale.enabled:
        detectors.append(StaleDataDetector(tags, after_s=config.stale.after_s))
    return detectors


def run_key() -> pl.Expr:
    """A tag key for a frame already sorted by tag_id: numbers the runs of equal tag_id."""
    return (pl.col("tag_id") != pl.col("tag_id").shift(1)).fill_null(True).cum_sum().alias(TAG_KEY)


def is_last_of_run() -> pl.Expr:
    """True on the last row of each tag, in a frame sorted by tag_id."""
    return (pl.col("tag_id") != pl.col("tag_id").shift(-1)).fill_null(True)


def previous_level() -> pl.Expr:
    """The level of the tag's previous sample, or its last level of the previous batch, or 0."""
    return pl.coalesce(per_tag(pl.col("level").shift(1)), pl.col("level_was"), pl.lit(0, pl.UInt8))


def condition_events(scores: pl.DataFrame, levels: pl.DataFrame, detector: str) -> pl.DataFrame:
    """Level changes and per-condition peaks of one detector's scores (sorted by tag_id, ts).

    `levels` holds each tag's last level (tag_id, level_was). Returns `EVENT_SCHEMA` rows in
    the order they must be applied (per tag: by sample, a change before a peak).
    """
    frame = (
        scores.with_row_index("_pos")
        .with_columns(run_key())
        .join(levels, on="tag_id", how="left", maintain_order="left")
        .with_columns((pl.col("level") != previous_level()).alias("_changed"))
        .with_columns(per_tag(pl.col("_changed").cum_sum()).alias("_segment"))
    )
    changes = frame.filter(pl.col("_changed")).with_columns(pl.lit(0).alias("_kind"))
    peaks = (
        frame.filter((pl.col("level") > 0) & pl.col("score").is_not_null())
        .sort("score", descending=True, maintain_order=True)
        .unique([TAG_KEY, "_segment"], keep="first", maintain_order=True)
        .with_columns(pl.lit(1).alias("_kind"))
    )
    return (
        pl.concat([changes, peaks])
        .sort("_pos", "_kind")
        .with_columns(pl.lit(detector).alias("detector"))
        .select(pl.col(c).cast(dt) for c, dt in EVENT_SCHEMA.items())
    )


def wide_condition_events(scores: WideScores, levels: pl.DataFrame, detector: str) -> pl.DataFrame:
    """`condition_events` of a detector's wide scores: the same rows in the same order."""
    wide = scores.batch
    level, score = scores.level, scores.score
    T = level.shape[0]
    previous = np.vstack([aligned(levels, wide.tag_ids, "level_was", 0).astype(np.uint8)[None, :], level[:-1]])
    changed = level != previous
    on = (level > 0) & ~np.isnan(score)
    if wide.present is not None:
        changed &= wide.present
        on &= wide.present
    segment = np.cumsum(changed, axis=0)
    k_on, t_on = np.nonzero(on.T)  # (tag, ts) order
    peaks = np.zeros(0, np.int64)
    if k_on.size:
        group = k_on * (T + 1) + segment[t_on, k_on]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        sc = score[t_on, k_on]
        best = np.repeat(np.maximum.reduceat(sc, starts), np.diff(np.r_[starts, sc.size]))
        at_best = np.flatnonzero(sc == best)
        peaks = at_best[np.unique(group[at_best], return_index=True)[1]]
    k_ch, t_ch = np.nonzero(changed.T)
    k = np.r_[k_ch, k_on[peaks]]
    t = np.r_[t_ch, t_on[peaks]]
    kind = np.r_[np.zeros(k_ch.size, np.int8), np.ones(peaks.size, np.int8)]
    order = np.lexsort((kind, t, k))
    k, t = k[order], t[order]
    lv = level[t, k]
    reason = np.full(k.size, None, dtype=object)
    limit = np.full(k.size, np.nan)
    hit = lv > 0
    if hit.any():
        reason[hit] = scores.reasons(t[hit], k[hit])
        limit[hit] = scores.limits(t[hit], k[hit])
    value = wide.values[t, k]
    null = wide.null[t, k] if wide.null is not None else np.zeros(k.size, bool)
    return pl.DataFrame({
        "ts": pl.Series(wide.ts[t]).cast(EVENT_SCHEMA["ts"]),
        "tag_id": pl.Series(wide.tag_ids, dtype=pl.String).gather(k),
        "detector": pl.Series([detector] * k.size, dtype=pl.String),
        "level": pl.Series(lv, dtype=pl.UInt8),
        "value": pl.Series([None if n else v for v, n in zip(value.tolist(), null.tolist())], dtype=pl.Float64),
        "limit": pl.Series(limit).fill_nan(None),
        "reason": pl.Series(reason.tolist(), dtype=pl.String),
        "score": pl.Series(score[t, k]).fill_nan(None),
    }).select(pl.col(c).cast(dt) for c, dt in EVENT_SCHEMA.items())


class ScoreFrames(dict):
    """Detector name -> its scores of the last batch (`SCORE_SCHEMA`); wide scores are turned
    into that frame only when someone reads them (the engine itself never does)."""

    def __getitem__(self, name: str) -> pl.DataFrame:
        scores = super().__getitem__(name)
        if isinstance(scores, WideScores):
            scores = scores.to_long()
            self[name] = scores
        return scores

    def get(self, name: str, default=None):
        try:
            return self[name]
        except KeyError:
            return default


class DetectionEngine:
    """Enabled detectors + level tracking + an `AlertBook`.

    `process(batch)` returns the alerts newly raised by that batch; `last_scores[name]` holds
    each detector's scores of the last batch (SCORE_SCHEMA) for the screen.
    """

    def __init__(self, tags: list[TagInfo], config: DetectorsConfig, book: AlertBook | None = None,
                 monitors: list | None = None, wide: bool = True):
        self.tags = tags
        self.config = config
        self.book = book if book is not None else AlertBook()
        self.book.add_tags(tags)
        self.detectors = build_detectors(tags, config)
        self._known = pl.Series("tag_id", [t.tag_id for t in tags], pl.String())
        self._known_sorted = sorted(set(self._known.to_list()))
        # False: always the long path (tests compare the two).
        self.wide = wide and any(hasattr(d, "score_wide") for d in self.detectors)
        self._levels: dict[str, pl.DataFrame] = {d.name: pl.DataFrame(schema=_LEVEL_SCHEMA) for d in self.detectors}
        self.last_scores: dict[str, pl.DataFrame] = ScoreFrames()
        self.last_events = pl.DataFrame(schema=EVENT_SCHEMA)
        self.clock: datetime | None = None  # newest sample time seen: the batch clock
        # Stored multivariate models per unit (`analytics.monitors.load_monitors`): one alert
        # point per unit and model kind, with the top contributing tags as root-cause hint.
        # Stored SPC centre lines come in the same list (`runtime.load_unit_monitors`) but score
        # nothing: they set the charts' centres, under those pinned in the site file.
        stored = [m for m in monitors or [] if isinstance(m, StoredCentres)]
        self.monitors = [m for m in monitors or [] if not isinstance(m, StoredCentres)]
        self.stored_centres = {s.unit: s for s in stored}
        self._charts = [d for d in self.detectors if isinstance(d, CentreLineChart)]
        if stored:
            centres = pl.concat([s.centres for s in stored])
            for chart in self._charts:
                chart.use_stored(centres)
        # The charts follow the running phase of the units whose stored centres are per phase;
        # every unit's events are kept, for a new stored version that brings phase centres.
        units = sorted({t.unit_id for t in tags})
        self._phases = RunningPhases(stored, units) if self._charts else None
        self._levels.update((m.name, pl.DataFrame(schema=_LEVEL_SCHEMA)) for m in self.monitors)
        self._staged: list = []  # new model versions, swapped in before the next micro-batch
        self._staged_lock = threading.Lock()

    @property
    def running_phases(self) -> RunningPhases | None:
        """What the SPC charts' phases follow; None while no unit's stored centres are per phase."""
        return self._phases if self._phases is not None and self._phases.units else None

    def stage_monitor(self, monitor) -> None:
        """A new version of a unit's stored model, as a monitor (`monitors.open_monitor`) or its
        `spc` centre lines (`StoredCentres`): it replaces the running version of its unit and
        kind (or joins, when the unit had none) at the start of the next `process`. Safe from
        any thread."""
        with self._staged_lock:
            self._staged.append(monitor)

    def model_versions(self) -> dict[tuple[str, str], int | None]:
        """(unit, kind) -> version of each stored model in use (spc included), the staged ones too."""
        with self._staged_lock:
            staged = list(self._staged)
        return {(m.unit, m.name): m.version for m in [*self.monitors, *self.stored_centres.values(), *staged]}

    def _swap_staged(self) -> None:
        with self._staged_lock:
            staged, self._staged = self._staged, []
        for new in staged:
            if isinstance(new, StoredCentres):
                self._use_centres(new)
                continue
            old = next((m for m in self.monitors if (m.unit, m.name) == (new.unit, new.name)), None)
            if old is None:
                self.monitors = [*self.monitors, new]
            else:
                new.take_over(old)
                self.monitors = [new if m is old else m for m in self.monitors]
            self._levels.setdefault(new.name, pl.DataFrame(schema=_LEVEL_SCHEMA))

    def _use_centres(self, new: StoredCentres) -> None:
        """A unit's new stored centre lines to the charts: the running phase's centres (by the
        batch clock) or the whole-range ones, the pinned ones still winning; the tags whose
        centre or sigma moved restart their chart state (`CentreLineChart.move_centres`)."""
        self.stored_centres[new.unit] = new
        if self._phases is None:  # no SPC chart enabled
            return
        clock_ns = pl.Series([self.clock]).dt.epoch("ns").item() if self.clock is not None else None
        tag_ids, centres = self._phases.replace(new, clock_ns)
        for chart in self._charts:
            chart.move_centres(tag_ids, centres)

    def fit(self, history: pl.DataFrame) -> Self:
        for detector in self.detectors:
            detector.fit(history)
        return self

    @property
    def follows_phases(self) -> bool:
        """True when something in the engine needs the units' batch events (`batch_events`):
        a monitor that follows phases, or SPC charts, whose running phases are kept even while no
        stored centres are per phase (a version that brings them may be reloaded at any time)."""
        return self._phases is not None or any(hasattr(m, "batch_events") for m in self.monitors)

    def batch_events(self, events: pl.DataFrame) -> None:
        """Batch events from the collector (`controltower.batch_events` schema): to the monitors
        that follow phases, and to the SPC charts' running phases."""
        for monitor in self.monitors:
            if hasattr(monitor, "batch_events"):
                monitor.batch_events(events)
        if self._phases is not None:
            self._phases.batch_events(events)

    def process(self, batch: pl.DataFrame, now: datetime | None = None) -> list[Alert]:
        """Score one micro-batch (sample schema) with every detector, then run the clock checks
        (`check(now)`, `now` defaulting to the batch clock); apply the condition changes to the
        book; return the alerts raised. Tags unknown to the config are ignored. With centres per
        phase, the batch is scored in parts cut at the phase changes inside it (`last_scores`
        and `last_events` then hold the last part's). Staged model versions are swapped in first."""
        if self._staged:
            self._swap_staged()
        if self.running_phases is None or batch.is_empty():
            return self._process(batch, now)
        raised = []
        for part, start in self._phase_parts(batch):
            for tag_ids, centres in self.running_phases.moves(start):
                for chart in self._charts:
                    chart.move_centres(tag_ids, centres)
            raised += self._process(part, now)
        return raised

    def _phase_parts(self, batch: pl.DataFrame) -> list[tuple[pl.DataFrame, int]]:
        """(part, its first instant in ns) of `batch` cut at the units' phase changes inside it."""
        ts = batch.get_column("ts").dt.epoch("ns")
        first, last = ts.min(), ts.max()
        cuts = self.running_phases.cuts(first, last)
        if not cuts:
            return [(batch, first)]
        edges = [first, *cuts, last + 1]
        parts = [(batch.filter((ts >= lo) & (ts < hi)), lo) for lo, hi in pairwise(edges)]
        return [(part, lo) for part, lo in parts if part.height]

    def _process(self, batch: pl.DataFrame, now: datetime | None) -> list[Alert]:
        wide = pivot(batch, self._known_sorted) if self.wide else None
        if wide is None or self.monitors or not all(hasattr(d, "score_wide") for d in self.detectors):
            batch = batch.filter(pl.col("tag_id").is_in(self._known.implode()))
        events = []
        if wide is not None or not batch.is_empty():
            newest = batch.get_column("ts").max() if wide is None else pl.Series([wide.ts[-1]]).cast(
                pl.Datetime("ns", "UTC")).item()
            self.clock = newest if self.clock is None or newest > self.clock else self.clock
            for detector in self.detectors:
                if wide is not None and hasattr(detector, "score_wide"):
                    events.append(self._wide_events(detector.score_wide(wide), detector.name))
                    continue
                scores = detector.score(batch)
                self.last_scores[detector.name] = scores
                events.append(self._events(scores, detector.name))
            events.extend(self._monitor_events(batch))
        now = now if now is not None else self.clock
        if now is not None:
            events.extend(self._checks(now))
        self.last_events = pl.concat(events, how="diagonal_relaxed") if events else pl.DataFrame(schema=EVENT_SCHEMA)
        return self.book.apply(self.last_events) if events else []

    def _monitor_events(self, batch: pl.DataFrame) -> list[pl.DataFrame]:
        """Condition events of every stored-model monitor, with their `contributors`."""
        out = []
        for monitor in self.monitors:
            scores = monitor.score(batch)
            if scores.is_empty():
                continue
            self.last_scores[f"{monitor.name}:{monitor.unit}"] = scores
            events = self._events(scores.drop("contributors"), monitor.name)
            out.append(events.join(scores.select("tag_id", "ts", "contributors"), on=["tag_id", "ts"], how="left",
                                   maintain_order="left"))
        return out

    def check(self, now: datetime) -> list[Alert]:
        """Run only the clock checks (stale data) at `now`, e.g. on a timer when no batch came."""
        events = self._checks(now)
        self.last_events = pl.concat(events) if events else pl.DataFrame(schema=EVENT_SCHEMA)
        return self.book.apply(self.last_events) if events else []

    def _checks(self, now: datetime) -> list[pl.DataFrame]:
        out = []
        for detector in self.detectors:
            check = getattr(detector, "check", None)
            if check is not None:
                scores = check(now)
                self.last_scores[f"{detector.name}_check"] = scores
                out.append(self._events(scores, detector.name))
        return out

    def _wide_events(self, scores: WideScores, name: str) -> pl.DataFrame:
        """`_events` of wide scores."""
        self.last_scores[name] = scores
        events = wide_condition_events(scores, self._levels[name], name)
        last = pl.DataFrame({"tag_id": scores.batch.tag_ids, "level_was": scores.level[-1]}, schema=_LEVEL_SCHEMA)
        levels = self._levels[name]
        self._levels[name] = pl.concat([levels.join(last, on="tag_id", how="anti"), last])
        return events

    def _events(self, scores: pl.DataFrame, name: str) -> pl.DataFrame:
        """The condition events of one detector's scores; remembers each tag's last level."""
        events = condition_events(scores, self._levels[name], name)
        last = scores.filter(is_last_of_run()).select("tag_id", pl.col("level").alias("level_was"))
        levels = self._levels[name]
        self._levels[name] = pl.concat([levels.join(last, on="tag_id", how="anti"), last])
        return events
