"""`payload: batched_json`: random bytes, random JSON and sample lists with random items never
raise out of `handle_message`; each item becomes a sample or is counted by reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
from hypothesis import example, given
from hypothesis import strategies as st

from collector.sources.mqtt import MqttSource, PayloadError, _number, _parse_time
from controltower.samples import SAMPLE_SCHEMA
from controltower.site import parse_site_config
from tests.fuzz.strategies import FUZZ, json_values

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TOPIC = "plant/lyon/ff/fill1/filler1"
NAMES = ("fill_weight", "SPD")  # how items name the two bound tags
SITE = parse_site_config({
    "enterprise": "E",
    "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
        {"id": "filler1", "tags": [{"id": "fill_weight", "mqtt": {}}, {"id": "speed", "mqtt": {"field": "SPD"}}]},
    ]}]}]}],
    "sources": [{"kind": "mqtt", "name": "m", "url": "mqtt://127.0.0.1:1883", "payload": "batched_json",
                 "timestamp_field": "ts", "batch_field": "batch_id",
                 "topic_template": "plant/{site}/{area}/{line}/{unit}"}],
})


def deliver(payload: bytes, topic: str = TOPIC) -> tuple[int, dict[str, int]]:
    src = MqttSource(SITE.sources[0], SITE.tag_table())
    src.handle_message(topic, payload, NOW)
    batch = src.take_batch()
    assert batch is None or batch.schema == pl.Schema(SAMPLE_SCHEMA)
    return (0 if batch is None else batch.height), src.health.rejected


@FUZZ
@given(payload=st.binary(max_size=200))
@example(payload=b'{"samples": [' * 3000)
def test_arbitrary_bytes(payload: bytes) -> None:
    samples, rejected = deliver(payload)
    assert samples or rejected


@FUZZ
@given(doc=json_values)
def test_arbitrary_json(doc) -> None:
    samples, rejected = deliver(json.dumps(doc).encode())
    assert samples or rejected or doc == {"samples": []}


items = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"tag": st.sampled_from(NAMES) | json_values},
        optional={"value": json_values, "ts": json_values | st.floats() | st.integers(), "quality": json_values},
    ),
)


@FUZZ
@given(samples=st.lists(items, max_size=8), extra=st.fixed_dictionaries({}, optional={"ts": json_values, "batch_id": json_values}))
@example(samples=[{"tag": "SPD", "value": 10**400}], extra={})
@example(samples=[{"tag": "SPD", "value": 1, "ts": 10**16}], extra={})  # year 2286 in ms: beyond Datetime(ns)
def test_every_item_is_a_sample_or_counted(samples: list, extra: dict) -> None:
    got, rejected = deliver(json.dumps({"samples": samples, **extra}).encode())
    if extra.get("ts") is not None and not _time_ok(extra["ts"]):
        assert (got, rejected) == (0, {"bad_timestamp": 1})  # the message's own time: set aside whole
        return
    good, problems = 0, set()
    for item in samples:
        if not isinstance(item, dict):
            problems.add("bad_sample_item")
        elif str(item.get("tag")) not in NAMES:
            problems.add("unbound_tag")
        elif item.get("value") is not None and _number(item["value"]) is None:
            problems.add("non_numeric_value")
        elif item.get("ts") is not None and not _time_ok(item["ts"]):
            problems.add("bad_timestamp")
        else:
            good += 1
    assert got == good
    assert rejected == {reason: 1 for reason in problems}  # one count per reason and message


def _time_ok(raw) -> bool:
    try:
        _parse_time(raw, "ts")
    except PayloadError:
        return False
    return True
