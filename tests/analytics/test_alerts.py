import json
import threading
from datetime import timedelta

import polars as pl

from analytics.alerts import EVENT_SCHEMA, AlertBook
from tests.analytics.helpers import T0, TEMPERATURE, make_tag

TAG = make_tag(**TEMPERATURE)


def events(*rows: tuple) -> pl.DataFrame:
    """rows: (second, tag_id, detector, level, value, score)."""
    return pl.DataFrame(
        [{"ts": T0 + timedelta(seconds=s), "tag_id": t, "detector": d, "level": lv, "value": v,
          "limit": 39.0 if lv == 2 else 38.0 if lv == 1 else None,
          "reason": "above limit" if lv else None, "score": sc} for s, t, d, lv, v, sc in rows],
        schema=EVENT_SCHEMA,
    )


def test_raise_escalate_worst_value_clear():
    book = AlertBook([TAG])
    tid = TAG.tag_id
    raised = book.apply(events((0, tid, "limits", 1, 38.5, 0.1)))
    assert len(raised) == 1 and raised[0].severity == "warning" and raised[0].active
    assert raised[0].line == "bio1" and raised[0].description == "Broth temperature" and raised[0].eng_unit == "degC"
    assert book.apply(events((1, tid, "limits", 2, 39.5, 0.4), (2, tid, "limits", 2, 40.0, 0.5),
                             (3, tid, "limits", 1, 38.6, 0.15))) == []
    (alert,) = book.active()
    assert alert.id == raised[0].id and alert.severity == "warning" and alert.value == 40.0
    assert book.counts_by_line() == {"lyon.usp.bio1": {"warning": 1, "alarm": 0}}
    book.apply(events((4, tid, "limits", 0, 37.0, 0.0)))
    assert book.active() == [] and book.counts_by_line() == {}
    (cleared,) = book.recent()
    assert cleared.cleared_at == T0 + timedelta(seconds=4) and not cleared.active
    d = cleared.to_dict()
    json.dumps(d)
    assert d["raised_at"] == "2024-05-01T08:00:00Z" and d["cleared_at"] == "2024-05-01T08:00:04Z"


def test_one_active_alert_per_tag_and_detector():
    book = AlertBook([TAG])
    tid = TAG.tag_id
    raised = book.apply(events((0, tid, "limits", 1, 38.5, 0.1), (0, tid, "zscore", 1, 38.5, 9.0),
                               (1, tid, "limits", 1, 38.7, 0.2)))
    assert sorted(a.detector for a in raised) == ["limits", "zscore"]
    assert len(book.active()) == 2


def test_history_is_bounded_and_recent_is_newest_first():
    book = AlertBook([TAG], max_history=5)
    tid = TAG.tag_id
    for i in range(10):
        book.apply(events((2 * i, tid, "limits", 1, 38.5, 0.1), (2 * i + 1, tid, "limits", 0, 37.0, 0.0)))
    recent = book.recent()
    assert len(recent) == 5
    assert [a.raised_at for a in recent] == sorted((a.raised_at for a in recent), reverse=True)
    assert recent[0].raised_at == T0 + timedelta(seconds=18)


def test_concurrent_readers_while_applying():
    book = AlertBook([TAG], max_history=100)
    tags = [f"lyon.usp.bio1.br101.t{i}" for i in range(20)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def read():
        try:
            while not stop.is_set():
                for alert in book.active():
                    alert.to_dict()
                book.recent(50)
                book.counts_by_line()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        for step in range(80):  # ends on step 79: level 1
            level = step % 3  # 0 -> 1 -> 2 -> 0 ...
            book.apply(events(*((step, t, "limits", level, 38.0 + level, float(level)) for t in tags)))
    finally:
        stop.set()
        for r in readers:
            r.join(timeout=10)
    assert not errors
    assert len(book.active()) == 20 and all(a.severity == "warning" for a in book.active())
    assert len(book.recent(1000)) == 100 + 20
