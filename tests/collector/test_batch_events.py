"""Batch events and phase spans: the span arithmetic, the OPC-UA state tracker, the MQTT
batch-event payloads (malformed ones counted and dead-lettered) and the DuckDB historian's
batch_events table with its phase-span query."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from collector.deadletter import DeadLetterFile
from collector.sinks.duckdb import DuckDbHistorian
from collector.sources.batch_state import BatchStateTracker
from collector.sources.mqtt import MqttSource
from controltower.batch_events import batch_events_frame, phase_spans, read_phase_spans, with_phases
from controltower.samples import samples_frame, tag_paths_frame
from controltower.site import MqttSourceConfig, load_site_config
from tests.conftest import REPO

T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
U1, U2 = "s.a.l.u1", "s.a.l.u2"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def events() -> pl.DataFrame:
    return batch_events_frame([
        {"ts": at(0), "unit_id": U1, "batch_id": "B1", "phase": "fill", "transition": "batch_start"},
        {"ts": at(10), "unit_id": U1, "batch_id": "B1", "phase": "heat", "transition": "phase_change"},
        # A batch ends as the next starts, in one instant (listed the other way round on purpose).
        {"ts": at(20), "unit_id": U1, "batch_id": "B2", "phase": "fill", "transition": "batch_start"},
        {"ts": at(20), "unit_id": U1, "batch_id": "B1", "phase": "heat", "transition": "batch_end"},
        {"ts": at(5), "unit_id": U2, "batch_id": "C1", "phase": "run", "transition": "observed"},
        {"ts": at(15), "unit_id": U2, "batch_id": "C1", "phase": "run", "transition": "batch_end"},
    ])


def spans_as_tuples(spans: pl.DataFrame) -> list[tuple]:
    return [(r["unit_id"], r["batch_id"], r["phase"], r["start"], r["end"]) for r in spans.to_dicts()]


def test_phase_spans_run_from_each_event_to_the_units_next_and_the_last_stays_open() -> None:
    assert spans_as_tuples(phase_spans(events())) == [
        (U1, "B1", "fill", at(0), at(10)),
        (U1, "B1", "heat", at(10), at(20)),
        (U1, "B2", "fill", at(20), None),
        (U2, "C1", "run", at(5), at(15)),
    ]
    # Only those overlapping [12, 30): the heat phase that began before, the running one.
    assert [(s[1], s[2]) for s in spans_as_tuples(phase_spans(events(), at(12), at(30)))] == [
        ("B1", "heat"), ("B2", "fill"), ("C1", "run")]


def test_with_phases_gives_each_sample_its_units_phase_and_none_outside_a_span() -> None:
    paths = tag_paths_frame([])  # no tags: paths given per row below
    samples = samples_frame(ts=[at(1), at(12), at(25), at(16), at(12)], tag_id=["x"] * 5, value=[1.0] * 5,
                            batch_id=["B1", "B1", "B2", "C1", "B9"], tag_paths=paths)
    samples = samples.with_columns(site=pl.lit("s"), area=pl.lit("a"), line=pl.lit("l"),
                                   unit=pl.Series(["u1", "u1", "u1", "u2", "u1"]))
    out = with_phases(samples, phase_spans(events()))
    # u2 after its batch ended, and a sample whose batch is not the span's: no phase.
    assert out["phase"].to_list() == ["fill", "heat", "fill", None, None]
    assert out.drop("phase").equals(samples)


def test_tracker_turns_variable_changes_into_transitions_and_holds_back_the_newest_instant() -> None:
    tracker = BatchStateTracker(settle_s=3600)
    tracker.note(U1, "batch_id", "B1", at(0))
    tracker.note(U1, "phase", "fill", at(0))
    assert tracker.take().is_empty()  # the newest instant may still get its other variable
    tracker.note(U1, "phase", "heat", at(10))
    tracker.note(U1, "batch_id", "B2", at(20))  # batch id first, phase in a later notification
    tracker.note(U1, "phase", "heat", at(20))
    first = tracker.take()
    assert first.select("ts", "batch_id", "phase", "transition").rows() == [
        (at(0), "B1", "fill", "observed"), (at(10), "B1", "heat", "phase_change")]
    tracker.note(U1, "phase", "fill", at(20))
    tracker.note(U1, "batch_id", "", at(30))  # no batch runs
    out = tracker.take(everything=True)
    assert out.select("ts", "batch_id", "phase", "transition").rows() == [
        (at(20), "B1", "heat", "batch_end"), (at(20), "B2", "fill", "batch_start"), (at(30), "B2", "fill", "batch_end")]
    # After a reconnect the unchanged state makes no event; a changed one is observed.
    tracker.note(U2, "batch_id", "C1", at(40))
    tracker.note(U2, "phase", "run", at(40))
    tracker.take(everything=True)
    tracker.forget()
    tracker.note(U2, "batch_id", "C1", at(50))
    tracker.note(U2, "phase", "run", at(50))
    tracker.note(U1, "batch_id", "B3", at(50))
    tracker.note(U1, "phase", "fill", at(50))
    again = tracker.take(everything=True)
    assert again.select("unit", "batch_id", "transition").rows() == [("u1", "B3", "observed")]


def test_mqtt_batch_events_are_decoded_and_malformed_ones_dead_lettered(tmp_path: Path) -> None:
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    config = next(s for s in site.sources if s.kind == "mqtt")
    assert isinstance(config, MqttSourceConfig) and config.batch_event_topic
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    source = MqttSource(config, site.tag_table(), dead_letter=dead)
    topic = "plant/lyon/ff/fill1/filler1/_batch"
    assert topic in source.subscriptions()
    good = {"sequence": 3, "ts": "2026-03-01T06:00:10.250000Z", "unit": "spoofed.unit", "transition": "phase_change",
            "batch_id": "FILLER1-0001", "phase": "filling", "previous_phase": "start_up", "product": "mAb", "recipe": "AF-2"}
    source.handle_message(topic, json.dumps(good).encode(), T0)
    for bad in (b"{not json", b"[1]", json.dumps({**good, "transition": "paused"}).encode(),
                json.dumps({**good, "phase": None}).encode(), json.dumps({**good, "ts": "yesterday"}).encode()):
        source.handle_message(topic, bad, T0)
    taken = source.batch_events.take()
    assert taken.select("ts", "site", "unit", "batch_id", "phase", "transition", "product").rows() == [
        (datetime(2026, 3, 1, 6, 0, 10, 250000, tzinfo=UTC), "lyon", "filler1", "FILLER1-0001", "filling",
         "phase_change", "mAb")]
    assert source.health.rejected == {"invalid_batch_event": 5}
    assert [r["topic"] for r in dead.read()] == [topic] * 5
    assert source.decoder.take_batch() is None  # nothing went to the samples


def test_duckdb_stores_batch_events_once_and_answers_phase_spans(tmp_path: Path) -> None:
    historian = DuckDbHistorian(tmp_path / "h.duckdb")
    try:
        historian.write_batch_events_sync(events())
        historian.write_batch_events_sync(events())  # a replay stores nothing twice
        stored = historian.read_batch_events("s", at(-1))
        assert stored.height == events().height
        # From 12 s on: the running heat phase (its event at 10 s) is part of the answer.
        spans = read_phase_spans(historian, "s.a.l.u1", at(12), at(30))
        assert spans_as_tuples(spans) == [(U1, "B1", "heat", at(10), at(20)), (U1, "B2", "fill", at(20), None)]
        assert spans_as_tuples(read_phase_spans(historian, "s.a.l", at(16), at(18))) == [
            (U1, "B1", "heat", at(10), at(20))]
        assert read_phase_spans(historian, "s.a.other", at(0)).is_empty()
        assert read_phase_spans(historian, "s.a.l.u", at(0)).is_empty()  # a prefix is a whole path element
    finally:
        historian.close()


@pytest.mark.parametrize("bad", [{"unit_id": None}, {"ts": None}])
def test_duckdb_skips_events_without_a_unit_or_time(tmp_path: Path, bad) -> None:
    historian = DuckDbHistorian(tmp_path / "h.duckdb")
    try:
        row = {"ts": at(0), "unit_id": U1, "batch_id": "B1", "phase": "fill", "transition": "batch_start"}
        frame = batch_events_frame([row]) if bad.get("unit_id", 1) else batch_events_frame([row]).with_columns(
            unit=pl.lit(None, pl.String))
        if "ts" in bad:
            frame = frame.with_columns(ts=pl.lit(None, frame.schema["ts"]))
        historian.write_batch_events_sync(frame)
        assert historian.read_batch_events("s", at(-10)).is_empty()
    finally:
        historian.close()
