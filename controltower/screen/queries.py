"""The screen's and the API's thin query layer: pure functions of a `TowerContext` and the time
`now`, returning Polars frames (or small dataclasses of frames). No Dash here, so every number
the screen shows can be tested without a browser.

Line state, one word per line, in this precedence:

    alarm    at least one active alert of severity "alarm" on the line
    warning  else at least one active "warning" alert
    stale    else no sample from the line for `screen.stale_after_s` seconds, or never, or its
             newest sample dated ahead of the tower's clock (live.FUTURE_TOLERANCE_S)
    normal   else

An active alarm outranks staleness because the alarm is the last thing known about the process
and must stay in front of the operator; but an operator must also see that the data stopped, so
the `stale` column is kept separately and `state_text` carries both ("alarm · stale").
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from controltower.batch_events import empty_phase_spans, read_phase_spans
from controltower.live import FUTURE_TOLERANCE_S
from controltower.samples import TIMESTAMP_DTYPE
from controltower.site import TagInfo

if TYPE_CHECKING:
    from controltower.context import TowerContext

STATES = ("normal", "warning", "alarm", "stale")
SEVERITIES = ("warning", "alarm")

LINE_STATE_SCHEMA: dict[str, pl.DataType] = {
    "line_id": pl.String(),
    "site": pl.String(),
    "area": pl.String(),
    "line": pl.String(),
    "site_name": pl.String(),
    "area_name": pl.String(),
    "line_name": pl.String(),
    "state": pl.String(),
    "state_text": pl.String(),
    "stale": pl.Boolean(),
    "last_ts": TIMESTAMP_DTYPE,
    "age_s": pl.Float64(),
    "alerts_warning": pl.Int64(),
    "alerts_alarm": pl.Int64(),
    "batch_ids": pl.List(pl.String()),
}

ALERT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "raised_at": TIMESTAMP_DTYPE,
    "cleared_at": TIMESTAMP_DTYPE,
    "active": pl.Boolean(),
    "severity": pl.String(),
    "detector": pl.String(),
    "tag_id": pl.String(),
    "line_id": pl.String(),
    "unit_id": pl.String(),
    "site": pl.String(),
    "area": pl.String(),
    "line": pl.String(),
    "unit": pl.String(),
    "description": pl.String(),
    "eng_unit": pl.String(),
    "value": pl.Float64(),
    "message": pl.String(),
}


class UnknownTagError(KeyError):
    """A tag id that is not in the site's tag table."""

    def __init__(self, tag_id: str):
        super().__init__(tag_id)
        self.tag_id = tag_id

    def __str__(self) -> str:
        return f"unknown tag {self.tag_id!r}"


# --- the site -----------------------------------------------------------------------------------


def line_catalog(ctx: TowerContext) -> pl.DataFrame:
    """One row per configured line, in site-file order: line_id, site, area, line and their names."""
    rows = []
    for site in ctx.site.sites:
        for area in site.areas:
            for line in area.lines:
                rows.append(
                    {
                        "line_id": f"{site.id}.{area.id}.{line.id}",
                        "site": site.id,
                        "area": area.id,
                        "line": line.id,
                        "site_name": site.name or site.id,
                        "area_name": area.name or area.id,
                        "line_name": line.name or line.id,
                    }
                )
    return pl.DataFrame(rows, schema={k: LINE_STATE_SCHEMA[k] for k in list(LINE_STATE_SCHEMA)[:7]})


def unit_catalog(ctx: TowerContext) -> list[dict[str, str]]:
    """Every unit, in site-file order: {unit_id, line_id, name, line_name} (for the unit selector)."""
    out = []
    for site in ctx.site.sites:
        for area in site.areas:
            for line in area.lines:
                for unit in line.units:
                    out.append(
                        {
                            "unit_id": f"{site.id}.{area.id}.{line.id}.{unit.id}",
                            "line_id": f"{site.id}.{area.id}.{line.id}",
                            "name": unit.name or unit.id,
                            "line_name": line.name or line.id,
                        }
                    )
    return out


def find_tag(ctx: TowerContext, tag_id: str) -> TagInfo:
    for tag in ctx.tags:
        if tag.tag_id == tag_id:
            return tag
    raise UnknownTagError(tag_id)


# --- line states --------------------------------------------------------------------------------


def line_states(ctx: TowerContext, now: datetime) -> pl.DataFrame:
    """One row per configured line (schema `LINE_STATE_SCHEMA`): its state (see the module doc),
    `state_text` for display, the newest sample time `last_ts` and its age `age_s` (null if the
    line never reported), active alert counts per severity and the current batch ids of its units
    (from the newest sample of each tag)."""
    stale_after = ctx.site.screen.stale_after_s
    now_ns = _to_ns(now)
    lines = line_catalog(ctx)

    latest = ctx.live.latest()
    fresh = (
        latest.group_by("site", "area", "line")
        .agg(
            pl.col("ts").max().alias("last_ts"),
            pl.col("batch_id").drop_nulls().unique().sort().alias("batch_ids"),
        )
    )
    counts = alert_counts_by_line(_active_list(ctx))

    out = (
        lines.join(fresh, on=["site", "area", "line"], how="left")
        .join(counts, on="line_id", how="left")
        .with_columns(
            ((pl.lit(now_ns) - pl.col("last_ts").dt.epoch("ns")) / 1e9).alias("age_s"),
            pl.col("alerts_warning").fill_null(0),
            pl.col("alerts_alarm").fill_null(0),
            pl.col("batch_ids").fill_null(pl.lit([], pl.List(pl.String()))),
        )
        # Dated ahead of the tower's clock (a plant clock ahead): the age says nothing about
        # freshness, so the line is not shown as normal either (controltower/live.py).
        .with_columns(stale=pl.col("age_s").is_null() | (pl.col("age_s") > stale_after)
                      | (pl.col("age_s") < -FUTURE_TOLERANCE_S))
        .with_columns(
            state=pl.when(pl.col("alerts_alarm") > 0)
            .then(pl.lit("alarm"))
            .when(pl.col("alerts_warning") > 0)
            .then(pl.lit("warning"))
            .when(pl.col("stale"))
            .then(pl.lit("stale"))
            .otherwise(pl.lit("normal"))
        )
        .with_columns(
            state_text=pl.when(pl.col("stale") & (pl.col("state") != "stale"))
            .then(pl.col("state") + pl.lit(" · stale"))
            .otherwise(pl.col("state"))
        )
    )
    return out.select([pl.col(c).cast(dt) for c, dt in LINE_STATE_SCHEMA.items()])


def alert_counts_by_line(alerts: Iterable[Any]) -> pl.DataFrame:
    """Active alerts per line_id: columns line_id, alerts_warning, alerts_alarm."""
    frame = alerts_frame(alerts)
    return frame.group_by("line_id").agg(
        (pl.col("severity") == "warning").sum().cast(pl.Int64).alias("alerts_warning"),
        (pl.col("severity") == "alarm").sum().cast(pl.Int64).alias("alerts_alarm"),
    )


def freshness(ctx: TowerContext, now: datetime) -> dict[str, Any]:
    """Data freshness over the whole site: {last_ts (datetime|None), age_s (float|None),
    lines, lines_stale}."""
    states = line_states(ctx, now)
    last = states["last_ts"].max()
    return {
        "last_ts": last,
        "age_s": (now - last).total_seconds() if last is not None else None,
        "lines": states.height,
        "lines_stale": int(states["stale"].sum()),
    }


# --- alerts -------------------------------------------------------------------------------------


def _active_list(ctx: TowerContext) -> list[Any]:
    return list(ctx.alerts.active())


def alerts_frame(alerts: Iterable[Any]) -> pl.DataFrame:
    """Alerts as a frame (`ALERT_SCHEMA`), from their attributes (see analytics.alerts.Alert)."""
    rows = [_alert_row(a) for a in alerts]
    return pl.DataFrame(rows, schema=ALERT_SCHEMA)


def _alert_row(alert: Any) -> dict[str, Any]:
    site, area, line, unit = (getattr(alert, k, None) for k in ("site", "area", "line", "unit"))
    line_id = f"{site}.{area}.{line}" if site and area and line else None
    unit_id = f"{line_id}.{unit}" if line_id and unit else None
    value = getattr(alert, "value", None)
    cleared_at = getattr(alert, "cleared_at", None)
    return {
        "id": str(alert.id),
        "raised_at": _as_utc(alert.raised_at),
        "cleared_at": _as_utc(cleared_at),
        "active": cleared_at is None,
        "severity": str(alert.severity),
        "detector": str(getattr(alert, "detector", "") or ""),
        "tag_id": alert.tag_id,
        "line_id": line_id,
        "unit_id": unit_id,
        "site": site,
        "area": area,
        "line": line,
        "unit": unit,
        "description": getattr(alert, "description", None) or alert.tag_id,
        "eng_unit": getattr(alert, "eng_unit", None),
        "value": float(value) if value is not None else None,
        "message": getattr(alert, "message", "") or "",
    }


def _filter_line(alerts: list[Any], line_id: str | None) -> list[Any]:
    if line_id is None:
        return alerts
    return [a for a in alerts if f"{a.site}.{a.area}.{a.line}" == line_id]


def active_alert_objects(ctx: TowerContext, line_id: str | None = None) -> list[Any]:
    """The active Alert objects (alarms first, then newest first), optionally of one line."""
    alerts = _filter_line(_active_list(ctx), line_id)
    return sorted(alerts, key=lambda a: (a.severity != "alarm", -_as_utc(a.raised_at).timestamp()))


def recent_alert_objects(ctx: TowerContext, limit: int = 50, line_id: str | None = None) -> list[Any]:
    """The book's recent alerts (active or cleared), newest first, optionally of one line."""
    # Ask for more when filtering, so a busy line elsewhere does not crowd this one out.
    alerts = _filter_line(list(ctx.alerts.recent(limit if line_id is None else limit * 10)), line_id)
    alerts.sort(key=lambda a: _as_utc(a.raised_at), reverse=True)
    return alerts[:limit]


def active_alerts(ctx: TowerContext, line_id: str | None = None) -> pl.DataFrame:
    """Active alerts (`ALERT_SCHEMA`), alarms first, then newest first."""
    return alerts_frame(active_alert_objects(ctx, line_id))


def recent_alerts(ctx: TowerContext, limit: int = 50, line_id: str | None = None) -> pl.DataFrame:
    """Recent alerts (`ALERT_SCHEMA`, active and cleared), newest first, at most `limit`."""
    return alerts_frame(recent_alert_objects(ctx, limit, line_id))


def cleared_alerts(ctx: TowerContext, limit: int = 20) -> pl.DataFrame:
    """Recently cleared alerts, newest clearance first, at most `limit`."""
    frame = recent_alerts(ctx, limit * 5).filter(pl.col("cleared_at").is_not_null())
    return frame.sort("cleared_at", descending=True).head(limit)


# --- the alarm console ---------------------------------------------------------------------------

CONSOLE_VIEWS = ("alarms", "shelved", "suppressed", "recent")
PRIORITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
CONSOLE_SCHEMA: dict[str, pl.DataType] = {
    **ALERT_SCHEMA,
    "priority": pl.String(),
    "state": pl.String(),
    "display_state": pl.String(),
    "acknowledged_at": TIMESTAMP_DTYPE,
    "acknowledged_by": pl.String(),
    "ack_comment": pl.String(),
    "shelved_until": TIMESTAMP_DTYPE,
    "shelve_reason": pl.String(),
    "suppressed": pl.Boolean(),
    "grouped_under": pl.String(),
    "group_count": pl.Int64(),
}


def alarm_list_objects(ctx: TowerContext, line_id: str | None = None, view: str = "alarms",
                       limit: int = 500) -> list[Any]:
    """Alert objects of one console view, most urgent first (priority, then unacknowledged,
    then newest):

        alarms      the alarm summary: active and cleared-unacknowledged, not shelved,
                    out of service or grouped under a listed flood parent
        shelved     shelved alarms
        suppressed  alarms of tags out of service
        recent      the `limit` most recently raised alerts, whatever their state
    """
    book = ctx.alerts
    if view == "alarms":
        alerts = book.alarm_list()
    elif view == "shelved":
        alerts = book.shelved()
    elif view == "suppressed":
        alerts = [a for a in book.alarm_list(suppressed=True, shelved=True, grouped=True) if a.suppressed]
    elif view == "recent":
        alerts = list(book.recent(limit))
    else:
        raise ValueError(f"view: {view!r} is not one of {', '.join(CONSOLE_VIEWS)}")
    alerts = _filter_line(alerts, line_id)
    if view == "recent":
        return sorted(alerts, key=lambda a: _as_utc(a.raised_at), reverse=True)[:limit]
    return sorted(alerts, key=lambda a: (PRIORITY_RANK.get(a.priority, 9), a.acknowledged_at is not None,
                                         -_as_utc(a.raised_at).timestamp()))[:limit]


def console_alarms(ctx: TowerContext, view: str = "alarms", line_id: str | None = None,
                   limit: int = 500) -> pl.DataFrame:
    """One console view (see `alarm_list_objects`) as a frame (`CONSOLE_SCHEMA`)."""
    alerts = alarm_list_objects(ctx, line_id, view, limit)
    rows = []
    for a in alerts:
        row = _alert_row(a)
        row.update(
            priority=a.priority, state=a.state, display_state=a.display_state,
            acknowledged_at=_as_utc(a.acknowledged_at), acknowledged_by=a.acknowledged_by,
            ack_comment=a.ack_comment, shelved_until=_as_utc(a.shelved_until), shelve_reason=a.shelve_reason,
            suppressed=a.suppressed, grouped_under=a.grouped_under, group_count=a.group_count,
        )
        rows.append(row)
    return pl.DataFrame(rows, schema=CONSOLE_SCHEMA)


def journal_entries(ctx: TowerContext, *, text: str | None = None, limit: int = 100, **filters: Any) -> pl.DataFrame | None:
    """The alarm journal's newest entries matching `text` (and `AlarmJournal.search` filters);
    None when the tower keeps no journal."""
    journal = ctx.alerts.journal
    if journal is None:
        return None
    return journal.search(text=text or None, limit=limit, **filters)


# --- history and trends -------------------------------------------------------------------------


def tag_history(ctx: TowerContext, tag_id: str, since: datetime, until: datetime | None = None) -> pl.DataFrame:
    """Samples of one tag with since <= ts < until (until None: up to now), oldest first:
    columns ts, value, quality, batch_id. Raises UnknownTagError for a tag not in the site."""
    find_tag(ctx, tag_id)
    frame = ctx.historian.read([tag_id], since, until)
    return frame.sort("ts").select("ts", "value", "quality", "batch_id")


def tag_limits(tags: Sequence[TagInfo]) -> pl.DataFrame:
    """One row per tag: tag_id, name (short id), description, eng_unit and its four limits."""
    return pl.DataFrame(
        [
            {
                "tag_id": t.tag_id,
                "name": t.tag.id,
                "description": t.tag.description or t.tag.id,
                "eng_unit": t.tag.unit,
                "alarm_low": t.tag.limits.alarm_low,
                "warning_low": t.tag.limits.warning_low,
                "warning_high": t.tag.limits.warning_high,
                "alarm_high": t.tag.limits.alarm_high,
            }
            for t in tags
        ],
        schema={
            "tag_id": pl.String(),
            "name": pl.String(),
            "description": pl.String(),
            "eng_unit": pl.String(),
            "alarm_low": pl.Float64(),
            "warning_low": pl.Float64(),
            "warning_high": pl.Float64(),
            "alarm_high": pl.Float64(),
        },
    )


PRIORITY_COUNT_SCHEMA: dict[str, pl.DataType] = {
    "line_id": pl.String(), "critical": pl.Int64(), "high": pl.Int64(), "medium": pl.Int64(), "low": pl.Int64(),
}


def priority_counts_by_line(ctx: TowerContext) -> pl.DataFrame:
    """Per line with active alarms in the alarm list (not shelved or out of service): how many
    of each priority (`PRIORITY_COUNT_SCHEMA`)."""
    listed = [a for a in ctx.alerts.alarm_list() if a.cleared_at is None]
    frame = pl.DataFrame(
        {"line_id": [f"{a.site}.{a.area}.{a.line}" for a in listed], "priority": [a.priority for a in listed]},
        schema={"line_id": pl.String(), "priority": pl.String()},
    )
    return frame.group_by("line_id").agg(
        (pl.col("priority") == p).sum().cast(pl.Int64).alias(p) for p in PRIORITY_RANK
    ).select(PRIORITY_COUNT_SCHEMA.keys())


def critical_unacknowledged(ctx: TowerContext) -> list[str]:
    """Ids of the critical alarms in the alarm list not yet acknowledged, sorted."""
    return sorted(str(a.id) for a in ctx.alerts.alarm_list()
                  if a.priority == "critical" and str(a.state).endswith("unacknowledged"))


# --- the line page -------------------------------------------------------------------------------

# Points per tag on the line page (LTTB): about one per 5 px of a full-HD trend, where LTTB
# still keeps every peak and step. The x values (epoch ms) are two thirds of a figure's bytes,
# so points are what the page's first render costs: at 600 a 50-tag line sent 796 kB
# (bench/screen.py, docs/benchmarks.md "Screen refresh").
LINE_TREND_POINTS = 300


class UnknownLineError(KeyError):
    def __init__(self, line_id: str):
        super().__init__(line_id)
        self.line_id = line_id

    def __str__(self) -> str:
        return f"unknown line {self.line_id!r}"


def line_info(ctx: TowerContext, line_id: str) -> dict[str, Any]:
    """{line_id, site_name, area_name, line_name, units: [{unit_id, name}]} of a configured line;
    raises UnknownLineError."""
    for site in ctx.site.sites:
        for area in site.areas:
            for line in area.lines:
                if f"{site.id}.{area.id}.{line.id}" == line_id:
                    return {
                        "line_id": line_id,
                        "site_name": site.name or site.id,
                        "area_name": area.name or area.id,
                        "line_name": line.name or line.id,
                        "units": [{"unit_id": f"{line_id}.{u.id}", "name": u.name or u.id} for u in line.units],
                    }
    raise UnknownLineError(line_id)


@dataclass(frozen=True)
class AnomalyScores:
    """A unit-level anomaly score over time: `scores` (unit_id, ts, score), the control `limit`
    above which the engine raises an alert (None: no limit), and what the score is (`label`)."""

    scores: pl.DataFrame
    limit: float | None
    label: str
    # How far before the first wanted sample the scorer needs history (its warm-up).
    lookback_samples: int
    # Units scored otherwise (a live multivariate model): unit_id -> (limit, label).
    per_unit: dict[str, tuple[float | None, str]] = field(default_factory=dict)

    def limit_of(self, unit_id: str) -> float | None:
        return self.per_unit.get(unit_id, (self.limit, self.label))[0]

    def label_of(self, unit_id: str) -> str:
        return self.per_unit.get(unit_id, (self.limit, self.label))[1]


SCORE_SCHEMA: dict[str, pl.DataType] = {"unit_id": pl.String(), "ts": TIMESTAMP_DTYPE, "score": pl.Float64()}


class ZScoreAnomaly:
    """A unit-level anomaly score from the engine's rolling z-score: at each time, the largest z
    of the unit's tags, against the z-score threshold as its control limit. Streaming like the
    detector it wraps: each `score(raw)` continues from the samples scored before, so an
    incremental screen update scores only its new samples."""

    def __init__(self, ctx: TowerContext, tags: Sequence[TagInfo]):
        from analytics.detectors.zscore import RollingZScore

        z = ctx.site.detectors.zscore
        self.enabled = z.enabled
        self.limit: float | None = z.threshold if z.enabled else None
        self.label = f"z-score (rolling {z.window})"
        self.lookback_samples = z.window
        self._detector = RollingZScore(list(tags), window=z.window, threshold=z.threshold,
                                       min_std_fraction=z.min_std_fraction, warmup=min(30, z.window))

    def score(self, raw: pl.DataFrame) -> pl.DataFrame:
        """Scores (`SCORE_SCHEMA`) of the raw samples (sample schema), newer than those before."""
        if not self.enabled or raw.is_empty():
            return pl.DataFrame(schema=SCORE_SCHEMA)
        return (
            self._detector.score(raw)
            .drop_nulls("score")
            .with_columns(unit_id=pl.col("tag_id").str.replace(r"\.[^.]+$", ""))
            .group_by("unit_id", "ts")
            .agg(pl.col("score").max())
            .sort("unit_id", "ts")
            .select([pl.col(c).cast(dt) for c, dt in SCORE_SCHEMA.items()])
        )


class ModelAnomaly:
    """A unit's live multivariate model (the engine's row monitor: pca, dpca, iforest, knn, wpca or
    wknn) as its anomaly score: the model's score over its calibrated threshold, so the limit is 1.
    A copy of the engine's monitor, so the screen's streaming state never touches the engine's."""

    def __init__(self, monitor: Any):
        self._monitor = type(monitor)(monitor.fitted, monitor.on_delay_rows, monitor.alarm_score)
        self.unit = monitor.unit
        self.limit: float | None = 1.0
        self.label = f"{monitor.name} model" + (f" v{monitor.version}" if monitor.version else "") + ", score / limit"
        self.lookback_samples = self._monitor.lags + 1
        self._variables = list(monitor.variables)

    def score(self, raw: pl.DataFrame) -> pl.DataFrame:
        mine = raw.filter(pl.col("tag_id").is_in(self._variables))
        if mine.is_empty():
            return pl.DataFrame(schema=SCORE_SCHEMA)
        return self._monitor.score(mine).select(
            pl.col("tag_id").cast(pl.String).alias("unit_id"), pl.col("ts").cast(TIMESTAMP_DTYPE),
            pl.col("score").cast(pl.Float64))


class LineAnomaly:
    """Every unit of a line: its live multivariate model's score when the engine runs one for
    the unit (`ModelAnomaly`), else the rolling z-score (`ZScoreAnomaly`)."""

    def __init__(self, ctx: TowerContext, tags: Sequence[TagInfo]):
        units = {t.unit_id for t in tags}
        monitors = [m for m in getattr(getattr(ctx, "engine", None), "monitors", None) or []
                    if getattr(m, "unit", None) in units and getattr(m, "name", None) in ROW_MODEL_KINDS]
        self._models: dict[str, ModelAnomaly] = {}
        for m in monitors:
            self._models.setdefault(m.unit, ModelAnomaly(m))
        self._z = ZScoreAnomaly(ctx, [t for t in tags if t.unit_id not in self._models])
        self.limit, self.label = self._z.limit, self._z.label
        self.per_unit = {u: (m.limit, m.label) for u, m in self._models.items()}
        self.lookback_samples = max([self._z.lookback_samples, *(m.lookback_samples for m in self._models.values())])

    def score(self, raw: pl.DataFrame) -> pl.DataFrame:
        if not self._models:
            return self._z.score(raw)
        units = pl.col("tag_id").str.replace(r"\.[^.]+$", "")
        parts = [self._z.score(raw.filter(~units.is_in(list(self._models))))]
        parts += [m.score(raw) for m in self._models.values()]
        return pl.concat(parts).sort("unit_id", "ts")


# The monitor kinds that score rows of a unit as they come (the golden batch needs the batch's start).
ROW_MODEL_KINDS = ("pca", "dpca", "iforest", "knn")


def anomaly_scorer(ctx: TowerContext, tags: Sequence[TagInfo]) -> LineAnomaly:
    """The scorer of the units of `tags` (`score(raw)`, `limit`, `label`, `per_unit`,
    `lookback_samples`): per unit, its live multivariate model when the engine runs one
    (`controltower model fit`, `detectors.models`), else the rolling z-score. The one place to
    change what the screen calls a unit's anomaly score."""
    return LineAnomaly(ctx, tags)


def unit_anomaly(ctx: TowerContext, raw: pl.DataFrame, tags: Sequence[TagInfo]) -> AnomalyScores:
    """The anomaly score of each unit over the raw samples `raw` (sample schema, the units'
    tags), with its control limit, scored from scratch (see `anomaly_scorer`)."""
    scorer = anomaly_scorer(ctx, tags)
    return AnomalyScores(scorer.score(raw), scorer.limit, scorer.label, scorer.lookback_samples, scorer.per_unit)


# Scorers carried between a line page's refreshes, by (tower, line) with the time they have
# scored up to: a refresh that continues from there scores only its new samples, instead of
# reading and scoring the scorer's whole look-back again. Another browser on the same line at
# another point in time simply rebuilds it. Bounded; guarded for the threaded web server.
_SCORERS: OrderedDict[tuple[int, str], tuple[Any, datetime]] = OrderedDict()
_SCORERS_LOCK = threading.Lock()
_SCORERS_MAX = 64


def _carried_scorer(ctx: TowerContext, line_id: str, since: datetime) -> Any | None:
    with _SCORERS_LOCK:
        found = _SCORERS.pop((id(ctx), line_id), None)
    if found is not None and found[1] == since:
        return found[0]
    return None


def _carry_scorer(ctx: TowerContext, line_id: str, scorer: Any, until: datetime) -> None:
    with _SCORERS_LOCK:
        _SCORERS[(id(ctx), line_id)] = (scorer, until)
        while len(_SCORERS) > _SCORERS_MAX:
            _SCORERS.popitem(last=False)


BATCH_SCHEMA: dict[str, pl.DataType] = {
    "unit_id": pl.String(), "batch_id": pl.String(), "start": TIMESTAMP_DTYPE, "end": TIMESTAMP_DTYPE,
}


def batch_intervals(raw: pl.DataFrame) -> pl.DataFrame:
    """Per unit, the runs of one batch id in the raw samples (sample schema): unit_id, batch_id,
    start (first sample), end (last sample), sorted by unit then start. Samples without a batch
    id end a run but make none. (The ISA-88 phases are the historian's batch events: `LineTrends.phases`.)"""
    if raw.is_empty():
        return pl.DataFrame(schema=BATCH_SCHEMA)
    per_time = (
        raw.select(pl.col("tag_id").str.replace(r"\.[^.]+$", "").alias("unit_id"), "ts", "batch_id")
        .group_by("unit_id", "ts")
        .agg(pl.col("batch_id").drop_nulls().first())
        .sort("unit_id", "ts")
    )
    return (
        per_time.with_columns(run=pl.struct("unit_id", "batch_id").rle_id())
        .group_by("run", maintain_order=True)
        .agg(pl.col("unit_id").first(), pl.col("batch_id").first(), pl.col("ts").min().alias("start"),
             pl.col("ts").max().alias("end"))
        .drop_nulls("batch_id")
        .select([pl.col(c).cast(dt) for c, dt in BATCH_SCHEMA.items()])
    )


@dataclass(frozen=True)
class LineTrends:
    """What the line page draws: every unit's tags with their limits, their samples over the
    window (LTTB-downsampled), the units' anomaly scores with the control limit, and the batches."""

    line_id: str
    start: datetime
    end: datetime
    # unit_id, tag_id, name, description, eng_unit, alarm_low, warning_low, warning_high, alarm_high
    tags: pl.DataFrame
    # unit_id, tag_id, ts, value (sorted by tag then time)
    samples: pl.DataFrame
    anomaly: AnomalyScores
    # unit_id, batch_id, start, end
    batches: pl.DataFrame
    # the median spacing of the samples read (s), None when fewer than two
    spacing_s: float | None
    # unit_id, batch_id, phase, start, end (null: running): the ISA-88 phase spans over the window
    # (or, for an increment, those overlapping it), from the historian's batch events
    phases: pl.DataFrame = field(default_factory=empty_phase_spans)


def line_data_clock(ctx: TowerContext, line_id: str, now: datetime) -> datetime:
    """Like `data_clock`, for a whole line."""
    newest = ctx.live.latest().filter(pl.col("tag_id").str.starts_with(line_id + "."))["ts"].max()
    return max(now, newest) if newest is not None else now


def line_trends(
    ctx: TowerContext,
    line_id: str,
    now: datetime,
    window_s: float | None = None,
    *,
    since: datetime | None = None,
    spacing_s: float | None = None,
    points: int = LINE_TREND_POINTS,
) -> LineTrends:
    """The line's trends over [now - window_s, now). With `since` (an incremental update), the
    samples and scores are those with ts >= since only, and the scorer is given the history it
    needs before `since` (its window times `spacing_s`, the sample spacing of the first read).
    Samples are LTTB-downsampled to `points` per tag over the window (an increment gets its
    share of them)."""
    from controltower.screen.downsample import lttb

    window_s = window_s if window_s is not None else ctx.site.screen.trend_window_s
    info = line_info(ctx, line_id)
    tags = [t for t in ctx.tags if t.line_id == line_id]
    start = now - timedelta(seconds=window_s)
    want_from = max(start, since) if since is not None else start
    scorer = _carried_scorer(ctx, line_id, since) if since is not None else None
    lookback = 0.0
    if scorer is None:
        scorer = anomaly_scorer(ctx, tags)
        if since is not None:  # the scorer needs its window of samples before `since`
            lookback = (scorer.lookback_samples + 1) * (spacing_s or 1.0)
    raw = ctx.historian.read([t.tag_id for t in tags], want_from - timedelta(seconds=lookback), now)
    scores = scorer.score(raw)
    _carry_scorer(ctx, line_id, scorer, now)
    anomaly = AnomalyScores(scores.filter(pl.col("ts") >= want_from), scorer.limit, scorer.label,
                            scorer.lookback_samples, scorer.per_unit)
    wanted = raw.filter(pl.col("ts") >= want_from) if lookback else raw
    share = (now - want_from).total_seconds() / window_s if window_s else 1.0
    n_points = max(3, round(points * min(1.0, share)))
    samples = lttb(wanted.select("tag_id", "ts", "value"), n_points)
    samples = samples.with_columns(unit_id=pl.col("tag_id").str.replace(r"\.[^.]+$", "")).select(
        "unit_id", "tag_id", "ts", "value")
    anomaly = AnomalyScores(lttb(anomaly.scores, n_points, y="score", by="unit_id"), anomaly.limit, anomaly.label,
                            anomaly.lookback_samples, anomaly.per_unit)
    if spacing_s is None and wanted.height > len(tags):
        diffs = wanted.select(pl.col("ts").diff().over("tag_id").dt.total_microseconds() / 1e6).to_series()
        spacing_s = diffs.drop_nulls().filter(diffs.drop_nulls() > 0).median()
    limits = tag_limits(tags).with_columns(unit_id=pl.Series([t.unit_id for t in tags], dtype=pl.String()))
    units = [u["unit_id"] for u in info["units"]]
    return LineTrends(
        line_id=line_id,
        start=start,
        end=now,
        tags=limits.filter(pl.col("unit_id").is_in(units)),
        samples=samples,
        anomaly=anomaly,
        batches=batch_intervals(wanted),
        spacing_s=spacing_s,
        phases=read_phase_spans(ctx.historian, line_id, want_from, now),
    )


# --- helpers ------------------------------------------------------------------------------------


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, (int, float)):  # epoch seconds
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)  # Python 3.11 reads a trailing Z


def _to_ns(now: datetime) -> int:
    now = _as_utc(now)
    return int(now.timestamp()) * 1_000_000_000 + now.microsecond * 1000


def iso_utc(value: datetime | None, timespec: str = "milliseconds") -> str | None:
    """ISO-8601 in UTC with a `Z`, millisecond precision by default; None stays None."""
    if value is None:
        return None
    return _as_utc(value).isoformat(timespec=timespec).replace("+00:00", "Z")
