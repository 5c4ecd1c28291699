"""MQTT JSON payloads (`payload: json`) against the demo site's MQTT source: whatever arrives,
`handle_message` never raises, each message becomes samples or is counted in `health.rejected`
(and dead-lettered), and `take_batch` returns None or a frame with exactly the sample schema."""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from hypothesis import example, given
from hypothesis import strategies as st

from collector.deadletter import DeadLetterFile
from collector.sources.mqtt import MqttSource
from controltower.samples import SAMPLE_SCHEMA
from controltower.site import load_site_config
from tests.conftest import REPO
from tests.fuzz.strategies import FUZZ, json_values

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
SITE = load_site_config(REPO / "config" / "demo-site.yaml")
CONFIG = next(s for s in SITE.sources if s.kind == "mqtt" and s.payload == "json")
TAGS = SITE.tag_table()
TOPIC = "plant/lyon/ff/fill1/filler1"  # the demo's bound topic: fill_weight, speed, room_dp
FIELDS = ("fill_weight", "speed", "room_dp")
_DEAD_DIR = Path(tempfile.mkdtemp(prefix="fuzz-mqtt-json-"))


def source(dead_letter: bool = False) -> MqttSource:
    dead = None
    if dead_letter:
        fd, name = tempfile.mkstemp(dir=_DEAD_DIR, suffix=".jsonl")
        os.close(fd)  # only the unique name is wanted: an open descriptor per example ran out at ~20,000
        path = Path(name)
        path.unlink()
        dead = DeadLetterFile(path)
    return MqttSource(CONFIG, TAGS, dead_letter=dead)


def deliver(src: MqttSource, topic: str, payload: bytes) -> tuple[int, int]:
    """(samples decoded, payloads set aside) for one message; checks the batch on the way."""
    before = sum(src.health.rejected.values())
    src.handle_message(topic, payload, NOW)
    batch = src.take_batch()  # JSON messages are decoded with the rest of their flush
    rejected = sum(src.health.rejected.values()) - before
    assert batch is None or batch.schema == pl.Schema(SAMPLE_SCHEMA)
    samples = 0 if batch is None else batch.height
    if src.dead_letter is not None:
        assert len(src.dead_letter.read()) == sum(src.health.rejected.values())
    return samples, rejected


def test_bound_topic_is_the_demo_one() -> None:
    assert set(source().decoder.bindings) == {TOPIC}


@FUZZ
@given(payload=st.binary(max_size=200), topic=st.sampled_from([TOPIC, "plant/other", ""]) | st.text(max_size=30))
@example(payload=b"[" * 100_000, topic=TOPIC)  # nesting deeper than the recursion limit
@example(payload=b'{"speed": 1' + b"0" * 5000 + b"}", topic=TOPIC)  # an int beyond Python's digit limit
@example(payload=b"\xff\xfe{}", topic=TOPIC)
def test_arbitrary_bytes_never_raise_and_are_counted(payload: bytes, topic: str) -> None:
    samples, rejected = deliver(source(dead_letter=True), topic, payload)
    assert samples or rejected


@FUZZ
@given(doc=json_values)
@example(doc={"speed": 10**400})  # too large for a float
@example(doc={})  # an object with none of the bound fields
@example(doc={"speed": 1.0, "ts": 1e300})
def test_arbitrary_json_never_raises_and_is_counted(doc) -> None:
    samples, rejected = deliver(source(dead_letter=True), TOPIC, json.dumps(doc).encode())
    assert samples or rejected


def _number(raw) -> bool:
    if isinstance(raw, (int, float)):
        try:
            float(raw)
        except OverflowError:
            return False
        return True
    return False


timestamps = st.one_of(
    json_values,
    st.datetimes(timezones=st.just(UTC) | st.none()).map(lambda d: d.isoformat()),
    st.floats(min_value=-1e20, max_value=1e20),
    st.integers(min_value=-(2**70), max_value=2**70),
)


@FUZZ
@given(
    values=st.fixed_dictionaries({}, optional={f: json_values for f in FIELDS}),
    extra=st.fixed_dictionaries({}, optional={"ts": timestamps, "batch_id": json_values, "quality": json_values}),
)
@example(values={"speed": 1.0}, extra={"ts": "9999-12-31T00:00:00"})  # a valid time Polars cannot hold in ns
@example(values={"speed": 1.0}, extra={"ts": -(10**13)})  # 1653 in epoch milliseconds
@example(values={"speed": 1.0}, extra={"quality": {"speed": [[]]}})
def test_almost_valid_objects_keep_every_good_field(values: dict, extra: dict) -> None:
    """Valid messages with random types in the value, ts, batch_id and quality fields: the numbers
    and nulls become samples unless the whole message is set aside, and anything else is counted."""
    src = source()
    samples, rejected = deliver(src, TOPIC, json.dumps({**values, **extra}).encode())
    assert samples or rejected
    usable = sum(1 for v in values.values() if v is None or _number(v))
    bad = len(values) - usable
    if samples:
        assert samples == usable
        assert rejected == (1 if bad else 0)
    else:
        assert rejected == 1
    if "bad_timestamp" not in src.health.rejected:
        assert samples == usable


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(FIELDS), st.floats(allow_nan=False, allow_infinity=False), min_size=1))
def test_numbers_come_through_unchanged(doc: dict) -> None:
    src = source()
    src.handle_message(TOPIC, json.dumps(doc).encode(), NOW)
    batch = src.take_batch()
    got = {t.rsplit(".", 1)[1]: v for t, v in zip(batch["tag_id"], batch["value"])}
    assert got == doc and not src.health.rejected
    assert all(math.isfinite(v) for v in got.values())
