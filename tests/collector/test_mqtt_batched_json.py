"""`payload: batched_json`: one message, many samples, each with its own tag, time and quality;
bad items are counted per reason and set aside while the good ones are kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest

from collector.deadletter import DeadLetterFile
from collector.sources.mqtt import MqttJsonDecoder, MqttSource, PayloadError
from controltower.samples import SAMPLE_SCHEMA
from controltower.site import parse_site_config

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TOPIC = "plant/lyon/ff/fill1/filler1"


def config(**batched):
    data = {
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": [{"id": "fill_weight", "mqtt": {}}, {"id": "speed", "mqtt": {"field": "SPD"}}]},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "m", "url": "mqtt://127.0.0.1:1883", "payload": "batched_json",
                     "topic_template": "plant/{site}/{area}/{line}/{unit}", **({"batched_json": batched} if batched else {})}],
    }
    return parse_site_config(data)


def test_items_become_samples_with_their_own_time_and_quality() -> None:
    site = config()
    decoder = MqttJsonDecoder(site.sources[0], site.tag_table())
    doc = {"batch_id": "F1-0007", "samples": [
        {"tag": "fill_weight", "ts": 1795946400.5, "value": 2.003},
        {"tag": "SPD", "ts": "2026-11-29T10:00:01Z", "value": 301, "quality": "uncertain"},
        {"tag": "fill_weight", "ts": 1795946401500, "value": None},
    ]}
    assert decoder.decode(TOPIC, json.dumps(doc).encode(), NOW) == 3
    batch = decoder.take_batch()
    assert batch.schema == pl.Schema(SAMPLE_SCHEMA)
    assert batch["value"].to_list() == [2.003, 301.0, None]
    assert batch["quality"].cast(str).to_list() == ["good", "uncertain", "bad"]
    assert batch["batch_id"].to_list() == ["F1-0007"] * 3
    assert [t.isoformat() for t in batch["ts"]] == [
        "2026-11-29T10:00:00.500000+00:00", "2026-11-29T10:00:01+00:00", "2026-11-29T10:00:01.500000+00:00"]


def test_configurable_field_paths() -> None:
    site = config(samples_field="data.points", tag_field="n", value_field="v", timestamp_field="t", quality_field=None)
    decoder = MqttJsonDecoder(site.sources[0], site.tag_table())
    doc = {"ts": "2026-11-29T09:00:00Z", "data": {"points": [{"n": "SPD", "v": 299.0, "quality": "bad"}]}}
    assert decoder.decode(TOPIC, json.dumps(doc).encode(), NOW) == 1
    row = decoder.take_batch().row(0, named=True)
    assert row["value"] == 299.0 and row["quality"] == "good" and row["ts"].hour == 9  # message time, no quality key


def test_bad_items_are_counted_and_good_ones_kept(tmp_path) -> None:
    site = config()
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    source = MqttSource(site.sources[0], site.tag_table(), dead_letter=dead)
    doc = {"samples": [{"tag": "fill_weight", "value": 2.0}, {"tag": "nope", "value": 1}, {"tag": "SPD", "value": "fast"},
                       7, {"tag": "SPD", "ts": "yesterday", "value": 1}]}
    source.handle_message(TOPIC, json.dumps(doc).encode(), NOW)
    assert source.take_batch().height == 1  # decoded with the rest of its flush
    assert source.health.rejected == {"unbound_tag": 1, "non_numeric_value": 1, "bad_sample_item": 1, "bad_timestamp": 1}
    source.handle_message(TOPIC, b'{"samples": {"not": "a list"}}', NOW)
    source.handle_message(TOPIC, b"[]", NOW)
    assert source.take_batch() is None
    assert source.health.rejected["no_sample_list"] == 1 and source.health.rejected["not_an_object"] == 1
    assert {d["reason"] for d in dead.read()} >= {"unbound_tag", "no_sample_list", "not_an_object"}


def test_a_message_whose_items_all_fail_one_way_raises_that_reason() -> None:
    site = config()
    decoder = MqttJsonDecoder(site.sources[0], site.tag_table())
    with pytest.raises(PayloadError) as caught:
        decoder.decode(TOPIC, b'{"samples": [{"tag": "x", "value": 1}]}', NOW)
    assert caught.value.reason == "unbound_tag"
