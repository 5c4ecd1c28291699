"""The alarm journal on a real file: append, fsync, reopen, search, torn lines."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from analytics.journal import JOURNAL_SCHEMA, AlarmJournal, entries_json
from tests.analytics.helpers import T0

TAG = "lyon.usp.bio1.br101.temperature"


def entry(second: int, event: str = "raised", *, tag: str = TAG, user: str = "system", comment: str = "",
          **extra) -> dict:
    return {"ts": T0 + timedelta(seconds=second), "event": event, "tag_id": tag, "user": user, "comment": comment,
            "alert_id": f"a{second}", **extra}


def test_append_is_one_fsynced_line_per_entry_and_survives_reopening(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sub" / "journal.jsonl"
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    with AlarmJournal(path) as journal:
        written = journal.append(entry(0, message="warning on temperature"))
        journal.append_many([entry(1, "acknowledged", user="ana", comment="seen"), entry(2, "cleared")])
    assert len(calls) >= 2  # every write is fsynced (plus the new file's folder)
    assert written["ts"] == "2024-05-01T08:00:00.000Z" and written["recorded_at"].endswith("Z")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and set(json.loads(lines[1])) == set(JOURNAL_SCHEMA)

    with AlarmJournal(path) as again:  # appends after what is there
        again.append(entry(3, "shelved", user="bob", comment="calibration"))
        frame = again.read()
    assert frame["event"].to_list() == ["raised", "acknowledged", "cleared", "shelved"]
    assert frame["ts_dt"][0] == T0


def test_search_by_tag_text_time_user_and_event(tmp_path: Path) -> None:
    with AlarmJournal(tmp_path / "j.jsonl") as journal:
        journal.append_many([
            entry(0),
            entry(5, "acknowledged", user="Ana", comment="Jacket valve stuck"),
            entry(10, tag="lyon.ff.fill1.filler1.fill_weight"),
            entry(20, "shelved", tag="lyon.ff.fill1.filler1.fill_weight", user="bob", comment="check-weigher swap"),
        ])
        newest_first = journal.search()
        assert newest_first["alert_id"].to_list() == ["a20", "a10", "a5", "a0"]
        assert journal.search(tag=TAG)["alert_id"].to_list() == ["a5", "a0"]
        assert journal.search(tag="lyon.ff.fill1")["alert_id"].to_list() == ["a20", "a10"]  # a path prefix
        assert journal.search(tag="lyon.ff.fill")["alert_id"].to_list() == []  # not half a name
        assert journal.search(text="VALVE")["alert_id"].to_list() == ["a5"]
        assert journal.search(text="shelved")["alert_id"].to_list() == ["a20"]  # the event counts as text
        assert journal.search(since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=20))[
            "alert_id"].to_list() == ["a10", "a5"]
        assert journal.search(user="ana")["alert_id"].to_list() == ["a5"]
        assert journal.search(event="raised", limit=1)["alert_id"].to_list() == ["a10"]
        rows = entries_json(journal.search(user="bob"))
        assert rows[0]["comment"] == "check-weigher swap" and "ts_dt" not in rows[0]
        json.dumps(rows)


def test_a_torn_last_line_is_skipped_and_the_next_entry_starts_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with AlarmJournal(path) as journal:
        journal.append(entry(0))
    with open(path, "ab") as f:
        f.write(b'{"ts": "2024-05-01T08:00:01.000Z", "event": "ackn')  # a crash mid-write
    with AlarmJournal(path) as journal:
        assert journal.read()["alert_id"].to_list() == ["a0"]
        journal.append(entry(2, "cleared"))
        assert journal.read()["alert_id"].to_list() == ["a0", "a2"]


def test_unknown_events_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with AlarmJournal(tmp_path / "j.jsonl") as journal:
        with pytest.raises(ValueError, match="^event: 'deleted' is not one of raised"):
            journal.append_many([entry(0), entry(1, "deleted")])
        assert journal.read().is_empty() and journal.search().is_empty()
    with pytest.raises(ValueError, match="is closed"):
        journal.append(entry(2))
