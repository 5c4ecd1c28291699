"""The AlertBook's alarm states (ISA-18.2 / OPC UA Part 9): every transition, the ones refused,
shelving and its expiry, suppression, priorities and flood grouping, with a real journal."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from analytics.alerts import (
    EVENT_SCHEMA,
    AlarmJournalError,
    AlarmNotFound,
    AlarmTransitionError,
    AlertBook,
    PriorityMap,
)
from analytics.journal import AlarmJournal
from tests.analytics.helpers import T0, TEMPERATURE, make_tag

TAG = make_tag(**TEMPERATURE)
TID = TAG.tag_id
PH = make_tag("lyon.usp.bio1.br101.ph", "Broth pH", "pH", alarm_low=6.7, warning_low=6.8, warning_high=7.2,
              alarm_high=7.3)


class Clock:
    """A settable "now" for operator actions and shelving expiry."""

    def __init__(self):
        self.now = T0 + timedelta(minutes=5)

    def __call__(self):
        return self.now


def ev(second: float, level: int, tag_id: str = TID, detector: str = "limits", value: float = 38.5) -> pl.DataFrame:
    return pl.DataFrame(
        [{"ts": T0 + timedelta(seconds=second), "tag_id": tag_id, "detector": detector, "level": level,
          "value": value, "limit": 38.0, "reason": "above limit" if level else None, "score": float(level)}],
        schema=EVENT_SCHEMA,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path):
    with AlarmJournal(tmp_path / "journal.jsonl") as j:
        yield j


@pytest.fixture
def book(journal, clock) -> AlertBook:
    return AlertBook([TAG, PH], journal=journal, clock=clock)


def events_of(journal: AlarmJournal) -> list[tuple[str, str | None, str, str]]:
    rows = journal.read().select("event", "from_state", "to_state", "user").rows()
    return [tuple(r) for r in rows]


def test_raise_ack_clear_active_acknowledged_goes_to_normal(book, journal, clock) -> None:
    (alert,) = book.apply(ev(0, 1))
    assert (alert.state, alert.priority) == ("active-unacknowledged", "medium")
    acked = book.acknowledge(alert.id, "ana", "looking at the jacket")
    assert acked.state == "active-acknowledged" and acked.acknowledged_by == "ana"
    assert acked.acknowledged_at == clock.now and acked.ack_comment == "looking at the jacket"
    assert [a.id for a in book.active()] == [alert.id]
    book.apply(ev(10, 0))
    assert book.get(alert.id).state == "normal"
    assert book.alarm_list() == [] and book.active() == []
    assert events_of(journal) == [
        ("raised", None, "active-unacknowledged", "system"),
        ("acknowledged", "active-unacknowledged", "active-acknowledged", "ana"),
        ("cleared", "active-acknowledged", "normal", "system"),
    ]
    d = book.get(alert.id).to_dict()
    assert d["state"] == "normal" and d["acknowledged_by"] == "ana" and d["acknowledged_at"] == "2024-05-01T08:05:00Z"
    assert d["priority"] == "medium" and d["shelved_until"] is None and d["grouped_under"] is None


def test_cleared_unacknowledged_stays_in_the_alarm_list_until_acknowledged(book, journal) -> None:
    (alert,) = book.apply(ev(0, 2))
    assert alert.priority == "high"
    book.apply(ev(5, 0))
    assert book.active() == []  # the condition is over: the line is no longer in alarm
    (listed,) = book.alarm_list()
    assert listed.id == alert.id and listed.state == "cleared-unacknowledged" and not listed.active
    assert book.acknowledge(alert.id, "ana").state == "normal"
    assert book.alarm_list() == []
    assert [e[0:3] for e in events_of(journal)][-2:] == [
        ("cleared", "active-unacknowledged", "cleared-unacknowledged"),
        ("acknowledged", "cleared-unacknowledged", "normal"),
    ]


def test_acknowledging_twice_or_an_unknown_alert_is_refused(book) -> None:
    (alert,) = book.apply(ev(0, 1))
    book.acknowledge(alert.id, "ana")
    with pytest.raises(AlarmTransitionError, match=r"already acknowledged \(by ana at 2024-05-01T08:05:00Z\)"):
        book.acknowledge(alert.id, "bob")
    book.apply(ev(1, 0))
    with pytest.raises(AlarmTransitionError, match="already acknowledged"):
        book.acknowledge(alert.id, "bob")  # normal
    with pytest.raises(AlarmNotFound, match="unknown alert 'nope'"):
        book.acknowledge("nope", "bob")
    with pytest.raises(ValueError, match="^user: required"):
        book.acknowledge(alert.id, "  ")
    with pytest.raises(ValueError, match="^comment: at most 1000"):
        book.acknowledge(alert.id, "ana", "x" * 1001)


def test_escalation_needs_a_new_acknowledgement_de_escalation_does_not(book, journal) -> None:
    (alert,) = book.apply(ev(0, 1))
    book.acknowledge(alert.id, "ana")
    book.apply(ev(1, 2, value=39.5))
    escalated = book.get(alert.id)
    assert (escalated.severity, escalated.priority, escalated.state) == ("alarm", "high", "active-unacknowledged")
    assert escalated.acknowledged_by is None
    book.acknowledge(alert.id, "ana")
    book.apply(ev(2, 1))
    assert (book.get(alert.id).severity, book.get(alert.id).state) == ("warning", "active-acknowledged")
    assert [e[:3] for e in events_of(journal)][2:] == [
        ("escalated", "active-acknowledged", "active-unacknowledged"),
        ("acknowledged", "active-unacknowledged", "active-acknowledged"),
        ("de-escalated", "active-acknowledged", "active-acknowledged"),
    ]


def test_shelving_hides_the_alarm_point_tracks_it_and_expires(book, journal, clock) -> None:
    (alert,) = book.apply(ev(0, 2))
    shelved = book.shelve(alert.id, "ana", 30, "sensor being recalibrated")
    assert shelved.shelved_until == clock.now + timedelta(minutes=30) and shelved.shelve_reason == "sensor being recalibrated"
    assert shelved.state == "active-unacknowledged" and shelved.display_state == "shelved"
    assert book.active() == [] and book.alarm_list() == [] and book.counts_by_line() == {}
    assert [a.id for a in book.shelved()] == [alert.id]
    # Still tracked while shelved: it clears, and a new occurrence of the same point is shelved too.
    book.apply(ev(10, 0))
    assert book.get(alert.id).state == "cleared-unacknowledged"
    (again,) = book.apply(ev(20, 1))
    assert again.shelved and again.shelve_reason == "sensor being recalibrated"
    assert book.alarm_list() == []
    # Other points of the same tag are not shelved.
    (other,) = book.apply(ev(21, 1, detector="zscore"))
    assert [a.id for a in book.alarm_list()] == [other.id]

    clock.now += timedelta(minutes=31)
    assert {a.id for a in book.alarm_list()} == {alert.id, again.id, other.id}
    assert book.shelved() == [] and book.get(again.id).shelved_until is None
    unshelved = journal.search(event="unshelved")
    assert unshelved.height == 2 and set(unshelved["user"]) == {"system"}
    assert unshelved["ts"][0] == "2024-05-01T08:35:00.000Z"  # when the shelving ran out
    assert "shelving time expired" in unshelved["comment"][0]
    assert set(unshelved["from_state"]) == {"shelved"}


def test_shelve_and_unshelve_are_refused_when_they_make_no_sense(book, clock) -> None:
    (alert,) = book.apply(ev(0, 2))
    for minutes in (0, -5, 721, True, "30", None):
        with pytest.raises(ValueError, match="^minutes: must be a number above 0 and at most 720"):
            book.shelve(alert.id, "ana", minutes, "why")
    with pytest.raises(ValueError, match="^reason: required"):
        book.shelve(alert.id, "ana", 30, "")
    with pytest.raises(AlarmTransitionError, match="is not shelved"):
        book.unshelve(alert.id, "ana")
    book.shelve(alert.id, "ana", 30, "maintenance")
    with pytest.raises(AlarmTransitionError, match="already shelved until 2024-05-01T08:35:00Z"):
        book.shelve(alert.id, "bob", 10, "again")
    back = book.unshelve(alert.id, "bob", "done")
    assert not back.shelved and [a.id for a in book.alarm_list()] == [alert.id]
    book.acknowledge(alert.id, "bob")
    book.apply(ev(5, 0))
    with pytest.raises(AlarmTransitionError, match="is normal"):
        book.shelve(alert.id, "ana", 30, "too late")


def test_suppression_takes_a_tag_out_of_service(book, journal) -> None:
    (alert,) = book.apply(ev(0, 2))
    book.suppress(TID, "eng", "transmitter replaced, loop check pending")
    assert book.suppressed_tags() == {TID: "transmitter replaced, loop check pending"}
    assert book.active() == [] and book.alarm_list() == []
    assert book.get(alert.id).display_state == "out-of-service"
    (new,) = book.apply(ev(5, 1, detector="zscore"))
    assert new.suppressed and book.alarm_list() == []
    (ph,) = book.apply(ev(6, 1, tag_id=PH.tag_id))
    assert [a.id for a in book.alarm_list()] == [ph.id]  # other tags unaffected
    with pytest.raises(AlarmTransitionError, match="already out of service"):
        book.suppress(TID, "eng", "twice")
    with pytest.raises(AlarmNotFound, match="unknown tag"):
        book.suppress("lyon.usp.bio1.br101.nope", "eng", "x")
    with pytest.raises(ValueError, match="^reason: required"):
        book.suppress(PH.tag_id, "eng", " ")
    book.unsuppress(TID, "eng", "loop checked")
    assert {a.id for a in book.alarm_list()} == {alert.id, new.id, ph.id}
    with pytest.raises(AlarmTransitionError, match="not out of service"):
        book.unsuppress(TID, "eng")
    tag_rows = journal.search(tag=TID, event="suppressed").filter(pl.col("alert_id").is_null())
    assert tag_rows.select("from_state", "to_state", "user").row(0) == ("in-service", "out-of-service", "eng")
    assert journal.search(event="unsuppressed").height == 3  # the tag and its two alerts


def test_priorities_default_from_severity_and_overridable_per_tag(journal) -> None:
    rule = PriorityMap({TID: "critical", PH.tag_id: {"warning": "low"}})
    book = AlertBook([TAG, PH], priority=rule)
    (t,) = book.apply(ev(0, 1))
    (p,) = book.apply(ev(0, 1, tag_id=PH.tag_id))
    assert (t.priority, p.priority) == ("critical", "low")
    book.apply(ev(1, 2, tag_id=PH.tag_id))
    assert book.get(p.id).priority == "high"  # no override for its alarm: the default
    with pytest.raises(ValueError, match="priority of 'x': 'urgent' is not one of low, medium, high, critical"):
        PriorityMap({"x": "urgent"})


def test_flood_groups_alerts_of_one_unit_under_the_first(journal, clock) -> None:
    tags = [make_tag(f"lyon.usp.bio1.br101.t{i}") for i in range(14)] + [PH]
    book = AlertBook(tags, journal=journal, clock=clock, flood_limit=10, flood_window_s=60)
    # Three alerts a minute apart: no flood.
    for i in range(3):
        book.apply(ev(i * 61, 1, tag_id=f"lyon.usp.bio1.br101.t{i}"))
    assert all(a.grouped_under is None for a in book.alarm_list()) and len(book.alarm_list()) == 3
    # Then eleven within ten seconds on the same unit, and one on another unit.
    start = 3 * 61 + 30
    frame = pl.concat([ev(start + i, 1, tag_id=f"lyon.usp.bio1.br101.t{3 + i}") for i in range(11)])
    raised = book.apply(frame)
    parent = raised[0]
    assert book.get(parent.id).group_count == 10
    assert all(book.get(a.id).grouped_under == parent.id for a in raised[1:])
    listed = book.alarm_list()
    assert len(listed) == 4 and parent.id in {a.id for a in listed}  # three earlier + the parent
    assert len(book.alarm_list(grouped=True)) == 14
    assert journal.search(event="grouped").height == 10

    # Acknowledging the parent acknowledges its children; once it is normal, they are listed alone.
    book.acknowledge(parent.id, "ana", "one cause: chiller trip")
    assert all(book.get(a.id).state == "active-acknowledged" for a in raised)
    child_acks = journal.search(event="acknowledged", text="flood parent")
    assert child_acks.height == 10 and set(child_acks["user"]) == {"ana"}
    book.apply(ev(start + 20, 0, tag_id=parent.tag_id))
    assert book.get(parent.id).state == "normal"
    assert len(book.alarm_list()) == 3 + 10


def test_a_failed_journal_write_leaves_the_alarm_unchanged(tmp_path, clock) -> None:
    journal = AlarmJournal(tmp_path / "j.jsonl")
    book = AlertBook([TAG], journal=journal, clock=clock)
    (alert,) = book.apply(ev(0, 1))
    journal.close()
    with pytest.raises(AlarmJournalError, match="could not record this, so it was not done"):
        book.acknowledge(alert.id, "ana")
    assert book.get(alert.id).state == "active-unacknowledged"
    book.apply(ev(1, 0))  # detection goes on; the failure is counted
    assert book.journal_errors == 1 and book.get(alert.id).state == "cleared-unacknowledged"


def test_the_book_works_without_a_journal(clock) -> None:
    book = AlertBook([TAG], clock=clock)
    (alert,) = book.apply(ev(0, 1))
    assert book.acknowledge(alert.id, "ana").state == "active-acknowledged"
    assert book.journal is None
