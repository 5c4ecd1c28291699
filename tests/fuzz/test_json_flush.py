"""The whole-flush JSON decoder (`collector.sources.json_flush`) against the per-message reference
(`MqttJsonDecoder.decode`): for any flush of messages, the same samples and the same rejections
by reason; and a flush of plain messages is taken whole by the fast path (none decoded one by one)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.sources.mqtt import MqttJsonDecoder, PayloadError
from controltower.samples import SAMPLE_SCHEMA
from controltower.site import parse_site_config
from tests.fuzz.strategies import EXAMPLES, FUZZ, json_values

# A flush of up to 12 messages per example, decoded twice: a third of the usual count keeps it to seconds.
FLUSHES = settings(FUZZ, max_examples=max(1, EXAMPLES // 3))

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TOPICS = ["plant/s/a/l/u1", "plant/s/a/l/u2", "plant/s/a/l/u3"]
FIELDS = ["x", "y", "z"]


def site(payload: str):
    units = [{"id": u.rsplit("/", 1)[1], "tags": [{"id": f, "mqtt": {}} for f in FIELDS]} for u in TOPICS[:2]]
    # u3 binds its tags to other fields, so a flush has two groups of topics.
    units.append({"id": "u3", "tags": [{"id": f, "mqtt": {"field": f"{f}_raw"}} for f in FIELDS[:2]]})
    return parse_site_config({
        "enterprise": "E",
        "sites": [{"id": "s", "areas": [{"id": "a", "lines": [{"id": "l", "units": units}]}]}],
        "sources": [{"kind": "mqtt", "name": "m", "url": "mqtt://127.0.0.1:1883", "payload": payload,
                     "topic_template": "plant/{site}/{area}/{line}/{unit}"}],
    })


SITES = {fmt: site(fmt) for fmt in ("json", "batched_json")}

numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**20), 10**20))
times = st.one_of(
    st.floats(min_value=-1e13, max_value=1e13, allow_nan=False),
    st.integers(-(2**54), 2**54),
    st.datetimes(min_value=datetime(1600, 1, 1), max_value=datetime(2300, 1, 1), timezones=st.just(UTC)).map(
        lambda d: d.isoformat().replace("+00:00", "Z")),
    st.sampled_from(["2026-11-29", "20261129", "1795946400", "yesterday", "", "2026-11-29T10:00:00+02:00"]),
)
texts = st.one_of(st.text(max_size=8), st.sampled_from(["F1-0007", "7", "1e5", "true", "{}"]))
scalars = st.one_of(numbers, times, texts, st.none(), st.booleans())


@st.composite
def object_payload(draw) -> tuple[str, bytes]:
    topic = draw(st.sampled_from(TOPICS + ["plant/unbound"]))
    keys = FIELDS + [f"{f}_raw" for f in FIELDS[:2]]
    doc = draw(st.dictionaries(st.sampled_from(keys), numbers if draw(st.booleans()) else scalars, max_size=4))
    if draw(st.booleans()):
        doc["ts"] = draw(times if draw(st.booleans()) else scalars)
    if draw(st.booleans()):
        doc["batch_id"] = draw(texts if draw(st.booleans()) else scalars)
    if draw(st.integers(0, 9)) == 0:
        doc["quality"] = draw(st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(["good", "bad", "meh", 3])))
    if draw(st.integers(0, 9)) == 0:
        doc = draw(json_values)
    return topic, _encode(draw, doc)


@st.composite
def batched_payload(draw) -> tuple[str, bytes]:
    topic = draw(st.sampled_from(TOPICS + ["plant/unbound"]))
    names = FIELDS + ["x_raw", "y_raw", "nope"]
    item = st.fixed_dictionaries(
        {"tag": st.sampled_from(names), "value": numbers},
        optional={"ts": times, "quality": st.sampled_from(["good", "bad", "uncertain", "meh", 1])},
    )
    odd_item = st.one_of(item, st.dictionaries(st.sampled_from(["tag", "value", "ts", "quality"]), scalars), json_values)
    doc = {"samples": draw(st.lists(item if draw(st.booleans()) else odd_item, max_size=5))}
    if draw(st.booleans()):
        doc["ts"] = draw(times)
    if draw(st.booleans()):
        doc["batch_id"] = draw(st.one_of(texts, scalars, st.integers(-(10**20), 10**20)))
    if draw(st.integers(0, 9)) == 0:
        doc = draw(json_values)
    return topic, _encode(draw, doc)


def _encode(draw, doc) -> bytes:
    text = json.dumps(doc, indent=draw(st.sampled_from([None, None, None, 1])))
    return text.encode()


def both_ways(fmt: str, messages: list[tuple[str, bytes]]):
    """(batch, rejections) through the flush and through the reference, message by message."""
    config = SITES[fmt]
    flush = MqttJsonDecoder(config.sources[0], config.tag_table())
    reference = MqttJsonDecoder(config.sources[0], config.tag_table())
    received = [NOW + timedelta(milliseconds=i) for i in range(len(messages))]
    expected_rejections = Counter()
    for (topic, payload), at in zip(messages, received):
        flush.add(topic, payload, at)
        try:
            reference.decode(topic, payload, at)
        except PayloadError as exc:
            expected_rejections[(topic, exc.reason, str(exc))] += 1
        while reference.partial_errors:
            exc = reference.partial_errors.pop()
            expected_rejections[(topic, exc.reason, str(exc))] += 1
    got = flush.take_batch()
    got_rejections = Counter((topic, exc.reason, str(exc)) for topic, _, exc in flush.rejected)
    return got, reference.take_batch(), got_rejections, expected_rejections


def same_samples(got: pl.DataFrame | None, expected: pl.DataFrame | None) -> None:
    if expected is None:
        assert got is None
        return
    assert got is not None and got.schema == pl.Schema(SAMPLE_SCHEMA)
    order = ["tag_id", "ts", "server_ts", "value", "quality", "batch_id"]
    a = got.with_columns(pl.col("quality").cast(pl.String)).sort(order, nulls_last=True)
    b = expected.with_columns(pl.col("quality").cast(pl.String)).sort(order, nulls_last=True)
    assert a.to_dicts() == b.to_dicts()


PAYLOADS = {"json": object_payload, "batched_json": batched_payload}


@pytest.mark.parametrize("fmt", list(PAYLOADS))
@FLUSHES
@given(data=st.data())
def test_flush_gives_what_the_reference_gives(fmt: str, data) -> None:
    messages = data.draw(st.lists(PAYLOADS[fmt](), max_size=12), label="messages")
    got, expected, got_rejections, expected_rejections = both_ways(fmt, messages)
    same_samples(got, expected)
    assert got_rejections == expected_rejections


def test_plain_flushes_take_the_fast_path_whole() -> None:
    t0 = 1795946400.25
    objects = [(TOPICS[i % 2], json.dumps({"ts": t0 + i, "batch_id": "F1-0007", "x": i * 0.5, "y": -1.0}).encode())
               for i in range(50)]
    objects += [(TOPICS[2], json.dumps({"ts": "2026-11-29T10:00:00.5Z", "x_raw": 3}).encode())]
    batched = [(TOPICS[i % 3], json.dumps({"ts": t0, "samples": [
        {"tag": "x" if i % 3 < 2 else "x_raw", "value": 1.5, "quality": "uncertain"},
        {"tag": "y" if i % 3 < 2 else "y_raw", "value": 2, "ts": (t0 + i) * 1000}]}).encode()) for i in range(50)]
    for fmt, messages, samples in (("json", objects, 101), ("batched_json", batched, 100)):
        config = SITES[fmt]
        decoder = MqttJsonDecoder(config.sources[0], config.tag_table())
        result = decoder._flush_decoder.decode([t for t, _ in messages], [p for _, p in messages], [NOW] * len(messages))
        assert result.slow == [] and result.batch.height == samples
        got, expected, got_rejections, expected_rejections = both_ways(fmt, messages)
        same_samples(got, expected)
        assert not got_rejections and not expected_rejections
