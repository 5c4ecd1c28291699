"""Alerts: the de-duplicated, stateful view of detector conditions that operators see.

The engine hands the book condition *events*, never samples: one row per change of level of a
(tag, detector) pair, plus at most one "peak" row per active condition and batch carrying its
worst sample. The book turns them into alerts:

    level 0 -> >0       raise a new alert (one active alert per (tag_id, detector))
    level a -> b > 0    same alert, severity follows the level (warning -> alarm escalation)
    same level          update the worst value if the row's score is higher
    level >0 -> 0       clear the alert (it moves to the bounded history)

`AlertBook` is thread-safe: the async engine applies events while web threads read; readers
get copies, never the book's own objects.
"""

from __future__ import annotations

import heapq
import threading
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Literal

import polars as pl

from controltower.site import TagInfo

Severity = Literal["warning", "alarm"]
SEVERITY_BY_LEVEL: dict[int, Severity] = {1: "warning", 2: "alarm"}

# The columns `AlertBook.apply` reads; `score` is optional (worst value = highest score).
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("ns", "UTC"),
    "tag_id": pl.String(),
    "detector": pl.String(),
    "level": pl.UInt8(),
    "value": pl.Float64(),
    "limit": pl.Float64(),
    "reason": pl.String(),
    "score": pl.Float64(),
}


@dataclass
class Alert:
    """One excursion of one tag as seen by one detector, from raise to clear."""

    id: str
    tag_id: str
    detector: str
    severity: Severity
    value: float | None  # the worst value while active (highest score)
    message: str
    raised_at: datetime
    cleared_at: datetime | None = None
    site: str = ""
    area: str = ""
    line: str = ""
    unit: str = ""
    description: str = ""
    eng_unit: str = ""
    limit: float | None = None
    # Score of the worst value; internal bookkeeping, not part of to_dict().
    worst_score: float | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    @property
    def line_id(self) -> str:
        return f"{self.site}.{self.area}.{self.line}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: times as ISO-8601 UTC strings, plus `active`."""
        out = asdict(self)
        out.pop("worst_score")
        out["raised_at"] = _iso(self.raised_at)
        out["cleared_at"] = _iso(self.cleared_at) if self.cleared_at is not None else None
        out["active"] = self.active
        return out


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class AlertBook:
    """Active alerts and a bounded history of cleared ones; thread-safe."""

    def __init__(self, tags: Iterable[TagInfo] = (), *, max_history: int = 10_000):
        self._lock = threading.RLock()
        self._tags: dict[str, TagInfo] = {}
        self._active: dict[tuple[str, str], Alert] = {}
        self._cleared: deque[Alert] = deque(maxlen=max_history)
        self.add_tags(tags)

    def add_tags(self, tags: Iterable[TagInfo]) -> None:
        """Tag metadata (ISA-95 path, description, engineering unit) stamped on new alerts."""
        with self._lock:
            self._tags.update((t.tag_id, t) for t in tags)

    def apply(self, events: pl.DataFrame) -> list[Alert]:
        """Apply condition events (see the module docstring), in ts order; return the newly raised alerts."""
        if events.is_empty():
            return []
        if "score" not in events.columns:
            events = events.with_columns(pl.lit(None, pl.Float64).alias("score"))
        events = events.sort("ts", maintain_order=True).select(EVENT_SCHEMA.keys())
        names = list(EVENT_SCHEMA)
        raised: list[Alert] = []
        with self._lock:
            for values in events.iter_rows():
                row = dict(zip(names, values))
                alert = self._apply_one(row, row["score"])
                if alert is not None:
                    raised.append(alert)
            # Copies taken after the whole batch, so they carry its worst values and escalations.
            return [replace(a) for a in raised]

    def _apply_one(self, row: dict[str, Any], score: float | None) -> Alert | None:
        key = (row["tag_id"], row["detector"])
        level = int(row["level"] or 0)
        alert = self._active.get(key)
        if alert is None:
            if level == 0:
                return None
            alert = self._new_alert(row, level, score)
            self._active[key] = alert
            return alert
        if level == 0:
            alert.cleared_at = row["ts"]
            del self._active[key]
            self._cleared.append(alert)
            return None
        severity = SEVERITY_BY_LEVEL.get(level, "alarm")
        if severity != alert.severity:
            alert.severity = severity
            alert.limit = row["limit"]
            alert.message = self._message(row, severity)
        if _worse(score, alert.worst_score):
            alert.value, alert.worst_score = row["value"], score
        return None

    def _new_alert(self, row: dict[str, Any], level: int, score: float | None) -> Alert:
        tag_id = row["tag_id"]
        info = self._tags.get(tag_id)
        severity = SEVERITY_BY_LEVEL.get(level, "alarm")
        if info is not None:
            path = dict(site=info.site, area=info.area, line=info.line, unit=info.unit,
                        description=info.tag.description, eng_unit=info.tag.unit)
        else:
            parts = (tag_id.split(".") + [""] * 4)[:4]
            path = dict(zip(("site", "area", "line", "unit"), parts))
        return Alert(
            id=uuid.uuid4().hex, tag_id=tag_id, detector=row["detector"], severity=severity,
            value=row["value"], message=self._message(row, severity), raised_at=row["ts"],
            limit=row["limit"], worst_score=score, **path,
        )

    @staticmethod
    def _message(row: dict[str, Any], severity: Severity) -> str:
        value = row["value"]
        shown = f"{value:.6g}" if value is not None else "no value"
        why = f": {row['reason']}" if row.get("reason") else ""
        return f"{severity} on {row['tag_id']} ({row['detector']}) at {shown}{why}"

    def active(self) -> list[Alert]:
        """Active alerts, newest first (copies)."""
        with self._lock:
            alerts = [replace(a) for a in self._active.values()]
        return sorted(alerts, key=lambda a: a.raised_at, reverse=True)

    def recent(self, limit: int = 200) -> list[Alert]:
        """The `limit` most recently raised alerts, active and cleared, newest first (copies)."""
        with self._lock:
            pool = list(self._active.values()) + list(self._cleared)
            newest = heapq.nlargest(limit, pool, key=lambda a: a.raised_at)
            return [replace(a) for a in newest]

    def counts_by_line(self) -> dict[str, dict[str, int]]:
        """Active alerts per line id (`site.area.line`): {"warning": n, "alarm": n}."""
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            for alert in self._active.values():
                line = counts.setdefault(alert.line_id, {"warning": 0, "alarm": 0})
                line[alert.severity] += 1
        return counts

    def get(self, alert_id: str) -> Alert | None:
        with self._lock:
            for alert in list(self._active.values()) + list(self._cleared):
                if alert.id == alert_id:
                    return replace(alert)
        return None


def _worse(score: float | None, worst: float | None) -> bool:
    if score is None:
        return False
    return worst is None or score > worst
