"""Alerts: the de-duplicated, stateful view of detector conditions that operators see.

The engine hands the book condition *events*, never samples: one row per change of level of a
(tag, detector) pair, plus at most one "peak" row per active condition and batch carrying its
worst sample. The book turns them into alerts:

    level 0 -> >0       raise a new alert (one active alert per (tag_id, detector))
    level a -> b > 0    same alert, severity follows the level (warning -> alarm escalation)
    same level          update the worst value if the row's score is higher
    level >0 -> 0       clear the alert (it moves to the bounded history)

Alarm states (ISA-18.2, OPC UA Part 9 "AlarmConditionType"): the condition (active or cleared)
and the operator's acknowledgement make four states; shelving and suppression are separate
flags on top, as in OPC UA (ShelvingState, OutOfServiceState):

                                  ack (user, comment)
    raise --> ACTIVE-UNACKNOWLEDGED ---------------------> ACTIVE-ACKNOWLEDGED
                   |       ^                                  |        |
                   |       +--------- escalation -------------+        |
             clear |         (warning -> alarm: ack again)             | clear
                   v                                                   v
         CLEARED-UNACKNOWLEDGED -------------------------------------> NORMAL
                                  ack (user, comment)

    A condition that returns after NORMAL (or while CLEARED-UNACKNOWLEDGED) is a new alert.

    shelve(minutes, reason)   hides an alarm point (tag, detector) from the operator until the
                              time passes (auto-unshelve) or unshelve; its condition is still
                              tracked and journalled, new occurrences of the point stay shelved
    suppress(tag, reason)     takes a tag out of service (an engineer): its alerts are tracked
                              and journalled but not annunciated, until unsuppress

`active()` lists the annunciated alerts whose condition is active (the line state counts);
`alarm_list()` is the operator's alarm summary: active *and* cleared-unacknowledged alerts (a
returned-to-normal alarm stays there until someone acknowledges it), without shelved,
suppressed or flood-grouped ones.

Priority (low < medium < high < critical) comes from the severity by default (warning ->
medium, alarm -> high); a `PriorityMap` overrides it per tag.

Flood suppression: when more than `flood_limit` alerts are raised on one unit within
`flood_window_s` seconds (event time), the later ones are grouped under the first alert of that
window (the "parent": `group_count` children; each child has `grouped_under` = the parent's id).
The alarm list shows the parent only, acknowledging the parent acknowledges its children, and a
child whose parent has returned to normal is listed on its own again.

Every transition (raised, escalated, de-escalated, cleared, acknowledged, shelved, unshelved,
suppressed, unsuppressed, grouped) goes to the `AlarmJournal` when the book has one. Operator
actions are journalled *before* they take effect (a failed write leaves the alarm unchanged);
condition events are journalled after each applied batch, one write and fsync per batch.

`AlertBook` is thread-safe: the async engine applies events while web threads read and act;
readers get copies, never the book's own objects.
"""

from __future__ import annotations

import heapq
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from controltower.site import TagInfo

if TYPE_CHECKING:
    from analytics.journal import AlarmJournal

log = logging.getLogger(__name__)

Severity = Literal["warning", "alarm"]
SEVERITY_BY_LEVEL: dict[int, Severity] = {1: "warning", 2: "alarm"}

Priority = Literal["low", "medium", "high", "critical"]
PRIORITIES: tuple[Priority, ...] = ("low", "medium", "high", "critical")  # ascending
PRIORITY_BY_SEVERITY: dict[Severity, Priority] = {"warning": "medium", "alarm": "high"}

AlarmState = Literal["active-unacknowledged", "active-acknowledged", "cleared-unacknowledged", "normal"]
ALARM_STATES: tuple[AlarmState, ...] = ("active-unacknowledged", "active-acknowledged", "cleared-unacknowledged", "normal")
SHELVED, OUT_OF_SERVICE = "shelved", "out-of-service"

# Bounds of operator input, checked where it enters (the book), so the API and the screen agree.
MAX_SHELVE_MINUTES = 12 * 60
MAX_USER_CHARS = 100
MAX_COMMENT_CHARS = 1000
SYSTEM_USER = "system"

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
# Optional event column: the root-cause hint of a multivariate condition, the top contributing
# tags of its row, `;`-separated, most responsible first (`analytics.monitors`).
CONTRIBUTORS = "contributors"


class AlarmNotFound(LookupError):
    """An alert id (or tag id) the book does not know; the message says which."""


class AlarmTransitionError(Exception):
    """An operator action not allowed in the alarm's current state (ack of an acknowledged
    alarm, unshelve of an unshelved one...); the message says why."""


class AlarmJournalError(RuntimeError):
    """The journal could not record an operator action, so the action was not done."""


@dataclass
class Alert:
    """One excursion of one tag as seen by one detector, from raise to clear, and what operators
    did with it."""

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
    priority: Priority = "medium"
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    ack_comment: str | None = None
    shelved_until: datetime | None = None
    shelve_reason: str | None = None
    shelved_by: str | None = None
    suppressed: bool = False
    suppress_reason: str | None = None
    grouped_under: str | None = None  # the flood parent's id
    group_count: int = 0  # children grouped under this alert
    # Root-cause hint of a multivariate alert: the top contributing tags at its worst value.
    contributors: list[str] = field(default_factory=list)
    # Score of the worst value; internal bookkeeping, not part of to_dict().
    worst_score: float | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        """The condition is active (not yet returned to normal)."""
        return self.cleared_at is None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    @property
    def state(self) -> AlarmState:
        if self.active:
            return "active-acknowledged" if self.acknowledged else "active-unacknowledged"
        return "normal" if self.acknowledged else "cleared-unacknowledged"

    @property
    def shelved(self) -> bool:
        return self.shelved_until is not None

    @property
    def display_state(self) -> str:
        """`state`, or "shelved" / "out-of-service" when that hides it from operators."""
        if self.suppressed:
            return OUT_OF_SERVICE
        return SHELVED if self.shelved else self.state

    @property
    def line_id(self) -> str:
        return f"{self.site}.{self.area}.{self.line}"

    @property
    def unit_id(self) -> str:
        return f"{self.site}.{self.area}.{self.line}.{self.unit}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: times as ISO-8601 UTC strings, plus `active`, `state`, `shelved`."""
        out = asdict(self)
        out.pop("worst_score")
        for key in ("raised_at", "cleared_at", "acknowledged_at", "shelved_until"):
            out[key] = _iso(out[key]) if out[key] is not None else None
        out["active"] = self.active
        out["state"] = self.state
        out["shelved"] = self.shelved
        return out


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class PriorityMap:
    """An alert's priority from its tag and severity: per-tag overrides over the severity default.

        PriorityMap({"lyon.ff.fill1.filler1.fill_weight": "critical",          # any severity
                     "lyon.usp.bio1.br101.ph": {"warning": "low", "alarm": "critical"}})
    """

    def __init__(self, overrides: Mapping[str, Priority | Mapping[str, Priority]] | None = None,
                 default: Mapping[str, Priority] = PRIORITY_BY_SEVERITY):
        self.default = dict(default)
        self.overrides: dict[str, Priority | dict[str, Priority]] = {}
        for tag_id, value in (overrides or {}).items():
            values = value.values() if isinstance(value, Mapping) else [value]
            bad = [v for v in values if v not in PRIORITIES]
            if bad:
                raise ValueError(f"priority of {tag_id!r}: {bad[0]!r} is not one of {', '.join(PRIORITIES)}")
            self.overrides[tag_id] = dict(value) if isinstance(value, Mapping) else value

    def __call__(self, tag_id: str, severity: Severity) -> Priority:
        override = self.overrides.get(tag_id)
        if isinstance(override, dict):
            override = override.get(severity)
        return override or self.default.get(severity, "high")


@dataclass(frozen=True)
class _Shelf:
    until: datetime
    reason: str
    user: str


class AlertBook:
    """Active alerts, cleared-unacknowledged ones and a bounded history of cleared ones; the
    alarm states, shelving, suppression and flood grouping (see the module docstring).
    Thread-safe.

    journal: an `AlarmJournal` to record every transition in (optional).
    priority: (tag_id, severity) -> priority; default `PriorityMap()` (severity only).
    clock: returns the aware "now" for operator actions and shelving expiry (default: UTC wall
    clock). Condition transitions carry their event's own time.
    """

    def __init__(self, tags: Iterable[TagInfo] = (), *, max_history: int = 10_000,
                 journal: AlarmJournal | None = None,
                 priority: Callable[[str, Severity], Priority] | None = None,
                 clock: Callable[[], datetime] | None = None,
                 flood_limit: int = 10, flood_window_s: float = 60.0):
        if flood_limit < 1 or flood_window_s <= 0:
            raise ValueError("flood_limit must be at least 1 and flood_window_s positive")
        self._lock = threading.RLock()
        self._tags: dict[str, TagInfo] = {}
        self._active: dict[tuple[str, str], Alert] = {}
        self._max_history = max_history
        self._cleared: deque[Alert] = deque()
        self._unacked: dict[str, Alert] = {}  # cleared-unacknowledged, by id
        self._by_id: dict[str, Alert] = {}
        self._shelves: dict[tuple[str, str], _Shelf] = {}
        self._suppressed: dict[str, tuple[str, str]] = {}  # tag_id -> (reason, user)
        self._floods: dict[str, deque[Alert]] = {}
        self.journal = journal
        self.priority = priority or PriorityMap()
        self._clock = clock or (lambda: datetime.now(UTC))
        self.flood_limit = flood_limit
        self.flood_window = timedelta(seconds=flood_window_s)
        self.journal_errors = 0
        self.add_tags(tags)

    def add_tags(self, tags: Iterable[TagInfo]) -> None:
        """Tag metadata (ISA-95 path, description, engineering unit) stamped on new alerts."""
        with self._lock:
            self._tags.update((t.tag_id, t) for t in tags)

    def set_priority(self, priority: Callable[[str, Severity], Priority]) -> None:
        """Replace the priority rule; alerts raised from now on use it."""
        with self._lock:
            self.priority = priority

    # --- condition events --------------------------------------------------------------------

    def apply(self, events: pl.DataFrame) -> list[Alert]:
        """Apply condition events (see the module docstring), in ts order; return the newly raised alerts."""
        if events.is_empty():
            return []
        if "score" not in events.columns:
            events = events.with_columns(pl.lit(None, pl.Float64).alias("score"))
        if CONTRIBUTORS not in events.columns:
            events = events.with_columns(pl.lit(None, pl.String).alias(CONTRIBUTORS))
        events = events.sort("ts", maintain_order=True).select(*EVENT_SCHEMA.keys(), CONTRIBUTORS)
        names = [*EVENT_SCHEMA, CONTRIBUTORS]
        raised: list[Alert] = []
        entries: list[dict[str, Any]] = []
        with self._lock:
            self._expire_shelves(entries)
            for values in events.iter_rows():
                row = dict(zip(names, values))
                alert = self._apply_one(row, row["score"], entries)
                if alert is not None:
                    raised.append(alert)
            self._write(entries)
            # Copies taken after the whole batch, so they carry its worst values and escalations.
            return [replace(a) for a in raised]

    def _apply_one(self, row: dict[str, Any], score: float | None, entries: list[dict[str, Any]]) -> Alert | None:
        key = (row["tag_id"], row["detector"])
        level = int(row["level"] or 0)
        alert = self._active.get(key)
        if alert is None:
            if level == 0:
                return None
            alert = self._new_alert(row, level, score)
            self._active[key] = alert
            self._by_id[alert.id] = alert
            entries.append(_entry("raised", alert, None, alert.state, at=alert.raised_at))
            self._group_flood(alert, entries)
            return alert
        if level == 0:
            before = alert.state
            alert.cleared_at = row["ts"]
            del self._active[key]
            self._remember(alert)
            if not alert.acknowledged:
                self._unacked[alert.id] = alert
                if len(self._unacked) > self._max_history:  # nobody acknowledges: bounded all the same
                    dropped = self._unacked.pop(next(iter(self._unacked)))
                    if not self._cleared or dropped.cleared_at < self._cleared[0].cleared_at:
                        self._by_id.pop(dropped.id, None)  # and gone from the history already
            entries.append(_entry("cleared", alert, before, alert.state, at=alert.cleared_at))
            return None
        severity = SEVERITY_BY_LEVEL.get(level, "alarm")
        if severity != alert.severity:
            before = alert.state
            escalated = severity == "alarm"
            alert.severity = severity
            alert.priority = self.priority(alert.tag_id, severity)
            alert.limit = row["limit"]
            alert.message = self._message(row, severity)
            if escalated:  # a worse condition needs a new acknowledgement
                alert.acknowledged_at = alert.acknowledged_by = alert.ack_comment = None
            entries.append(_entry("escalated" if escalated else "de-escalated", alert, before, alert.state,
                                  at=row["ts"]))
        if _worse(score, alert.worst_score):
            alert.value, alert.worst_score = row["value"], score
            if row.get(CONTRIBUTORS):
                alert.contributors = row[CONTRIBUTORS].split(";")
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
        alert = Alert(
            id=uuid.uuid4().hex, tag_id=tag_id, detector=row["detector"], severity=severity,
            value=row["value"], message=self._message(row, severity), raised_at=row["ts"],
            limit=row["limit"], worst_score=score, priority=self.priority(tag_id, severity), **path,
            contributors=row[CONTRIBUTORS].split(";") if row.get(CONTRIBUTORS) else [],
        )
        shelf = self._shelves.get((tag_id, row["detector"]))
        if shelf is not None:
            alert.shelved_until, alert.shelve_reason, alert.shelved_by = shelf.until, shelf.reason, shelf.user
        if tag_id in self._suppressed:
            alert.suppressed, alert.suppress_reason = True, self._suppressed[tag_id][0]
        return alert

    def _remember(self, alert: Alert) -> None:
        """Into the bounded history; the oldest leaves it (and the id index, unless it still
        waits for an acknowledgement)."""
        self._cleared.append(alert)
        while len(self._cleared) > self._max_history:
            old = self._cleared.popleft()
            if old.id not in self._unacked:
                self._by_id.pop(old.id, None)

    def _group_flood(self, alert: Alert, entries: list[dict[str, Any]]) -> None:
        window = self._floods.setdefault(alert.unit_id, deque())
        start = alert.raised_at - self.flood_window
        while window and window[0].raised_at <= start:
            window.popleft()
        window.append(alert)
        if len(window) <= self.flood_limit:
            return
        first = window[0]
        parent = self._by_id.get(first.grouped_under or "", first)
        for child in window:
            if child is parent or child.grouped_under is not None or child.group_count:
                continue
            child.grouped_under = parent.id
            parent.group_count += 1
            entries.append(_entry("grouped", child, child.state, child.state, at=alert.raised_at,
                                  comment=f"flood on unit {alert.unit_id}: grouped under {parent.id}"))

    @staticmethod
    def _message(row: dict[str, Any], severity: Severity) -> str:
        value = row["value"]
        shown = f"{value:.6g}" if value is not None else "no value"
        why = f": {row['reason']}" if row.get("reason") else ""
        return f"{severity} on {row['tag_id']} ({row['detector']}) at {shown}{why}"

    # --- operator actions --------------------------------------------------------------------

    def acknowledge(self, alert_id: str, user: str, comment: str = "") -> Alert:
        """Acknowledge an unacknowledged alert (and the unacknowledged children of a flood
        parent). Raises AlarmNotFound, AlarmTransitionError (already acknowledged) or ValueError
        (bad user/comment). Returns a copy of the alert."""
        user, comment = _check_user(user), _check_comment(comment)
        with self._lock:
            self._expire_shelves()
            alert = self._find(alert_id)
            if alert.acknowledged:
                raise AlarmTransitionError(
                    f"alert {alert_id} is already acknowledged (by {alert.acknowledged_by} at "
                    f"{_iso(alert.acknowledged_at)}); state {alert.state}")
            now = self._clock()
            targets = [alert] + [c for c in self._children(alert) if not c.acknowledged]
            after = {a.id: ("active-acknowledged" if a.active else "normal") for a in targets}
            self._write([
                _entry("acknowledged", a, a.state, after[a.id], at=now, user=user,
                       comment=comment if a is alert else _joined(f"acknowledged with flood parent {alert.id}", comment))
                for a in targets
            ], strict=True)
            for a in targets:
                a.acknowledged_at, a.acknowledged_by, a.ack_comment = now, user, comment
                self._unacked.pop(a.id, None)
            return replace(alert)

    def shelve(self, alert_id: str, user: str, minutes: float, reason: str) -> Alert:
        """Shelve the alert's alarm point (tag, detector) for `minutes` (0 < minutes <=
        MAX_SHELVE_MINUTES) with a reason. Raises AlarmNotFound, AlarmTransitionError (already
        shelved, or normal: nothing to shelve) or ValueError."""
        user = _check_user(user)
        reason = _check_comment(reason, name="reason", required=True)
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= MAX_SHELVE_MINUTES:
            raise ValueError(f"minutes: must be a number above 0 and at most {MAX_SHELVE_MINUTES}, got {minutes!r}")
        with self._lock:
            self._expire_shelves()
            alert = self._find(alert_id)
            key = (alert.tag_id, alert.detector)
            if key in self._shelves:
                raise AlarmTransitionError(
                    f"alert {alert_id} is already shelved until {_iso(self._shelves[key].until)}; unshelve it first")
            if alert.state == "normal":
                raise AlarmTransitionError(f"alert {alert_id} is normal (cleared and acknowledged): nothing to shelve")
            now = self._clock()
            shelf = _Shelf(until=now + timedelta(minutes=minutes), reason=reason, user=user)
            targets = self._point_alerts(key)
            self._write([_entry("shelved", a, a.display_state, SHELVED, at=now, user=user,
                                comment=f"{reason} (until {_iso(shelf.until)})") for a in targets], strict=True)
            self._shelves[key] = shelf
            for a in targets:
                a.shelved_until, a.shelve_reason, a.shelved_by = shelf.until, reason, user
            return replace(alert)

    def unshelve(self, alert_id: str, user: str, comment: str = "") -> Alert:
        """Return a shelved alarm point to the operator. Raises AlarmNotFound,
        AlarmTransitionError (not shelved) or ValueError."""
        user, comment = _check_user(user), _check_comment(comment)
        with self._lock:
            self._expire_shelves()
            alert = self._find(alert_id)
            key = (alert.tag_id, alert.detector)
            if key not in self._shelves:
                raise AlarmTransitionError(f"alert {alert_id} is not shelved")
            self._unshelve(key, user, comment, self._clock(), strict=True)
            return replace(alert)

    def suppress(self, tag_id: str, user: str, reason: str) -> None:
        """Take a tag out of service (an engineer's action): its alerts stay tracked but are not
        annunciated. Raises AlarmNotFound (a tag the book does not know, when it knows tags),
        AlarmTransitionError (already suppressed) or ValueError."""
        user = _check_user(user)
        reason = _check_comment(reason, name="reason", required=True)
        with self._lock:
            self._check_tag(tag_id)
            if tag_id in self._suppressed:
                raise AlarmTransitionError(f"tag {tag_id} is already out of service: {self._suppressed[tag_id][0]}")
            now = self._clock()
            targets = self._tag_alerts(tag_id)
            self._write([_tag_entry("suppressed", tag_id, "in-service", OUT_OF_SERVICE, now, user, reason)]
                        + [_entry("suppressed", a, a.display_state, OUT_OF_SERVICE, at=now, user=user, comment=reason)
                           for a in targets], strict=True)
            self._suppressed[tag_id] = (reason, user)
            for a in targets:
                a.suppressed, a.suppress_reason = True, reason

    def unsuppress(self, tag_id: str, user: str, comment: str = "") -> None:
        """Return a tag to service. Raises AlarmNotFound, AlarmTransitionError (not suppressed)
        or ValueError."""
        user, comment = _check_user(user), _check_comment(comment)
        with self._lock:
            self._check_tag(tag_id)
            if tag_id not in self._suppressed:
                raise AlarmTransitionError(f"tag {tag_id} is not out of service")
            now = self._clock()
            targets = self._tag_alerts(tag_id)
            entries = [_tag_entry("unsuppressed", tag_id, OUT_OF_SERVICE, "in-service", now, user, comment)]
            for a in targets:
                a.suppressed = False  # for the to-state; restored below if the write fails
                entries.append(_entry("unsuppressed", a, OUT_OF_SERVICE, a.display_state, at=now, user=user,
                                      comment=comment))
                a.suppressed = True
            self._write(entries, strict=True)
            del self._suppressed[tag_id]
            for a in targets:
                a.suppressed, a.suppress_reason = False, None

    def suppressed_tags(self) -> dict[str, str]:
        """Tags out of service: {tag_id: reason}."""
        with self._lock:
            return {t: reason for t, (reason, _) in self._suppressed.items()}

    # --- adopting state decided elsewhere ------------------------------------------------------
    # When the alarm points of a unit move to another book (a scaled-out analytics worker taking
    # over a partition, controltower.uns_alarms), their state comes with them. Nothing is
    # journalled: the book that made those transitions journalled them when they happened.

    def adopt(self, alert: Alert) -> bool:
        """Take `alert` as it is (active, cleared-unacknowledged, shelved, out of service); a copy
        the book already holds (same id) is replaced. False, and nothing changed, when the book
        holds another alert active on the same point (tag, detector)."""
        with self._lock:
            key = (alert.tag_id, alert.detector)
            held = self._by_id.get(alert.id)
            if alert.active and self._active.get(key) not in (None, held):
                return False
            if held is not None:
                if self._active.get(key) is held:
                    del self._active[key]
                self._unacked.pop(alert.id, None)
            if alert.active:
                self._active[key] = alert
            else:
                self._remember(alert)
                if not alert.acknowledged:
                    self._unacked[alert.id] = alert
            self._by_id[alert.id] = alert
            if alert.shelved_until is not None and key not in self._shelves:
                self._shelves[key] = _Shelf(until=alert.shelved_until, reason=alert.shelve_reason or "",
                                            user=alert.shelved_by or "")
            return True

    def adopt_service_state(self, tag_id: str, out_of_service: bool, reason: str = "", user: str = "") -> bool:
        """Take a tag's in / out of service state as decided elsewhere, marking its live alerts;
        True when it changed."""
        with self._lock:
            if out_of_service == (tag_id in self._suppressed) and \
                    (not out_of_service or self._suppressed[tag_id][0] == reason):
                return False
            if out_of_service:
                self._suppressed[tag_id] = (reason, user)
            else:
                self._suppressed.pop(tag_id, None)
            for a in self._tag_alerts(tag_id):
                a.suppressed, a.suppress_reason = out_of_service, (reason if out_of_service else None)
            return True

    def _unshelve(self, key: tuple[str, str], user: str, comment: str, at: datetime, *, strict: bool,
                  entries: list[dict[str, Any]] | None = None) -> None:
        targets = self._point_alerts(key)
        new = []
        for a in targets:
            until = a.shelved_until
            a.shelved_until = None  # for the to-state
            new.append(_entry("unshelved", a, SHELVED, a.display_state, at=at, user=user, comment=comment))
            a.shelved_until = until
        if entries is None:
            self._write(new, strict=strict)
        else:
            entries.extend(new)
        del self._shelves[key]
        for a in targets:
            a.shelved_until = a.shelve_reason = a.shelved_by = None

    def _expire_shelves(self, entries: list[dict[str, Any]] | None = None) -> None:
        """Auto-unshelve the points whose shelving time has passed (journalled by "system" at
        the time it passed)."""
        if not self._shelves:
            return
        now = self._clock()
        own = entries is None
        pending: list[dict[str, Any]] = [] if own else entries
        for key, shelf in list(self._shelves.items()):
            if shelf.until <= now:
                self._unshelve(key, SYSTEM_USER, f"shelving time expired (shelved by {shelf.user}: {shelf.reason})",
                               shelf.until, strict=False, entries=pending)
        if own:
            self._write(pending)

    def _find(self, alert_id: str) -> Alert:
        alert = self._by_id.get(alert_id)
        if alert is None:
            raise AlarmNotFound(f"unknown alert {alert_id!r}")
        return alert

    def _check_tag(self, tag_id: str) -> None:
        if self._tags and tag_id not in self._tags:
            raise AlarmNotFound(f"unknown tag {tag_id!r}")

    def _live(self) -> list[Alert]:
        return list(self._active.values()) + list(self._unacked.values())

    def _point_alerts(self, key: tuple[str, str]) -> list[Alert]:
        """The live alerts (active or cleared-unacknowledged) of one alarm point."""
        return [a for a in self._live() if (a.tag_id, a.detector) == key]

    def _tag_alerts(self, tag_id: str) -> list[Alert]:
        return [a for a in self._live() if a.tag_id == tag_id]

    def _children(self, parent: Alert) -> list[Alert]:
        if not parent.group_count:
            return []
        return [a for a in self._live() if a.grouped_under == parent.id]

    def _write(self, entries: list[dict[str, Any]], *, strict: bool = False) -> None:
        """Journal `entries` (one write, one fsync). `strict`: a failure raises (operator
        actions, before they take effect); otherwise it is logged and counted (condition
        events must not stop detection)."""
        if self.journal is None or not entries:
            return
        try:
            self.journal.append_many(entries)
        except Exception as exc:
            if strict:
                raise AlarmJournalError(f"the alarm journal could not record this, so it was not done: {exc}") from exc
            self.journal_errors += 1
            log.exception("could not write %d alarm journal entries", len(entries))

    # --- reading -----------------------------------------------------------------------------

    def active(self) -> list[Alert]:
        """Annunciated alerts whose condition is active (not shelved, not suppressed), newest
        first (copies)."""
        with self._lock:
            self._expire_shelves()
            alerts = [replace(a) for a in self._active.values() if not (a.shelved or a.suppressed)]
        return sorted(alerts, key=lambda a: a.raised_at, reverse=True)

    def alarm_list(self, *, shelved: bool = False, suppressed: bool = False, grouped: bool = False) -> list[Alert]:
        """The operator's alarm summary: alerts whose condition is active or that wait for an
        acknowledgement, newest first (copies). Shelved, suppressed and flood-grouped children
        (whose parent is listed) are left out unless asked for."""
        with self._lock:
            self._expire_shelves()
            live = [a for a in self._live() if (shelved or not a.shelved) and (suppressed or not a.suppressed)]
            listed = {a.id for a in live}
            alerts = [replace(a) for a in live if grouped or a.grouped_under not in listed]
        return sorted(alerts, key=lambda a: a.raised_at, reverse=True)

    def shelved(self) -> list[Alert]:
        """Shelved live alerts, newest first (copies)."""
        with self._lock:
            self._expire_shelves()
            alerts = [replace(a) for a in self._live() if a.shelved]
        return sorted(alerts, key=lambda a: a.raised_at, reverse=True)

    def recent(self, limit: int = 200) -> list[Alert]:
        """The `limit` most recently raised alerts, active and cleared, newest first (copies)."""
        with self._lock:
            self._expire_shelves()
            pool = list(self._active.values()) + list(self._cleared)
            newest = heapq.nlargest(limit, pool, key=lambda a: a.raised_at)
            return [replace(a) for a in newest]

    def counts_by_line(self) -> dict[str, dict[str, int]]:
        """Annunciated active alerts per line id (`site.area.line`): {"warning": n, "alarm": n}."""
        counts: dict[str, dict[str, int]] = {}
        for alert in self.active():
            line = counts.setdefault(alert.line_id, {"warning": 0, "alarm": 0})
            line[alert.severity] += 1
        return counts

    def get(self, alert_id: str) -> Alert | None:
        with self._lock:
            self._expire_shelves()
            alert = self._by_id.get(alert_id)
            return replace(alert) if alert is not None else None


def _entry(event: str, alert: Alert, from_state: str | None, to_state: str, *, at: datetime,
           user: str = SYSTEM_USER, comment: str = "") -> dict[str, Any]:
    """One journal entry about an alert (see `analytics.journal.JOURNAL_SCHEMA`)."""
    return {
        "ts": at, "event": event, "alert_id": alert.id, "tag_id": alert.tag_id, "detector": alert.detector,
        "line_id": alert.line_id, "priority": alert.priority, "severity": alert.severity,
        "from_state": from_state, "to_state": to_state, "user": user, "comment": comment or "",
        "message": alert.message,
    }


def _tag_entry(event: str, tag_id: str, from_state: str, to_state: str, at: datetime, user: str,
               comment: str) -> dict[str, Any]:
    parts = tag_id.split(".")
    return {
        "ts": at, "event": event, "alert_id": None, "tag_id": tag_id, "detector": None,
        "line_id": ".".join(parts[:3]) if len(parts) >= 3 else None, "priority": None, "severity": None,
        "from_state": from_state, "to_state": to_state, "user": user, "comment": comment or "",
        "message": f"tag {tag_id} {to_state}",
    }


def _check_user(user: Any) -> str:
    if not isinstance(user, str) or not user.strip():
        raise ValueError("user: required (who does this), a non-empty string")
    user = user.strip()
    if len(user) > MAX_USER_CHARS:
        raise ValueError(f"user: at most {MAX_USER_CHARS} characters")
    return user


def _check_comment(text: Any, *, name: str = "comment", required: bool = False) -> str:
    if text is None:
        text = ""
    if not isinstance(text, str):
        # A ValueError like all bad input (the API answers 400).
        raise ValueError(f"{name}: expected a string, got {type(text).__name__}")  # noqa: TRY004
    text = text.strip()
    if required and not text:
        raise ValueError(f"{name}: required, a non-empty string")
    if len(text) > MAX_COMMENT_CHARS:
        raise ValueError(f"{name}: at most {MAX_COMMENT_CHARS} characters")
    return text


def _joined(head: str, tail: str) -> str:
    return f"{head}: {tail}" if tail else head


def _worse(score: float | None, worst: float | None) -> bool:
    if score is None:
        return False
    return worst is None or score > worst
