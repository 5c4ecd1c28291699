"""Sparkplug B (`payload: sparkplug_b`): random bytes on spBv1.0 topics and valid protobuf payloads
with random metric values, types, aliases, sequence numbers and timestamps never raise out of
`handle_message`; garbage is counted by reason, and each bound metric becomes a sample or is counted."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
from hypothesis import example, given
from hypothesis import strategies as st

from collector.sources.mqtt import MqttSource
from collector.sources.sparkplug_b_proto import DataType, Metric, Payload
from controltower.samples import SAMPLE_SCHEMA
from controltower.site import parse_site_config
from tests.collector.test_sparkplug_decoder import TAGS, D, N, dbirth, nbirth, site
from tests.fuzz.strategies import FUZZ, nasty_text

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
SITE = parse_site_config(site(TAGS, sparkplug={"rebirth_min_interval_s": 0}))
# What the births of `dbirth` declare on the bound device, by alias; "Unbound" is bound to no tag.
ALIASES = {1: "fill_weight", 2: "Filler/Speed", 3: "Count", 4: "Unbound"}
BOUND = {"fill_weight", "Filler/Speed", "Count"}
NUMERIC = ("int_value", "long_value", "float_value", "double_value", "boolean_value")

KINDS = st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "DCMD", "STATE", "XDATA"])
topics = st.one_of(
    st.builds(lambda k, rest: f"spBv1.0/lyon/{k}/{rest}", KINDS,
              st.sampled_from(["ff-fill1", "ff-fill1/filler1", "ff-fill1/other", "x", "a/b/c", ""])),
    st.builds(lambda parts: "/".join(parts), st.lists(nasty_text, max_size=6)),
)


def source() -> MqttSource:
    return MqttSource(SITE.sources[0], SITE.tag_table())


def take(src: MqttSource) -> int:
    batch = src.decoder.take_batch()
    assert batch is None or batch.schema == pl.Schema(SAMPLE_SCHEMA)
    return 0 if batch is None else batch.height


@FUZZ
@given(topic=topics, payload=st.binary(max_size=200), born=st.booleans())
@example(topic=D.format("DDATA"), payload=b"\x12\x05\x0a\x80", born=True)
@example(topic=D.format("DDATA"), payload=b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", born=True)  # ts 2**64-1 ms
def test_random_bytes_never_raise(topic: str, payload: bytes, born: bool) -> None:
    src = source()
    if born:
        src.handle_message(N.format("NBIRTH"), nbirth(), NOW)
        src.handle_message(D.format("DBIRTH"), dbirth(1), NOW)
        take(src)
    src.handle_message(topic, payload, NOW)
    take(src)
    assert set(src.health.rejected) <= {"invalid_sparkplug", "invalid_sparkplug_topic", "non_numeric_value"}
    if not topic.startswith("spBv1.0/"):
        assert src.health.rejected == {"invalid_sparkplug_topic": 1}


values = st.one_of(
    st.none(),
    st.tuples(st.just("int_value"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("long_value"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("float_value"), st.floats(width=32)),
    st.tuples(st.just("double_value"), st.floats()),
    st.tuples(st.just("boolean_value"), st.booleans()),
    st.tuples(st.just("string_value"), st.text(max_size=10)),
    st.tuples(st.just("bytes_value"), st.binary(max_size=10)),
)


@st.composite
def metrics(draw) -> Metric:
    fields = {}
    if draw(st.booleans()):
        fields["name"] = draw(st.sampled_from([*ALIASES.values(), "bdSeq", ""]) | st.text(max_size=8))
    if draw(st.booleans()):
        fields["alias"] = draw(st.sampled_from(list(ALIASES)) | st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        fields["datatype"] = draw(st.sampled_from(list(DataType)) | st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        fields["timestamp"] = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        fields["is_null"] = True
    value = draw(values)
    if value is not None:
        fields[value[0]] = value[1]
    return Metric(**fields)


def expected(ms: list[Metric]) -> tuple[int, bool]:
    """(samples, whether a bound metric holds a string or bytes) for a DDATA after the births."""
    samples, non_numeric = 0, False
    for m in ms:
        if m.HasField("name"):
            name = m.name
        elif m.HasField("alias") and m.alias in ALIASES:
            name = ALIASES[m.alias]
        else:
            continue  # an unknown alias: counted in stats, a rebirth is asked for
        if name not in BOUND:
            continue
        which = m.WhichOneof("value")
        if m.is_null or which in NUMERIC:
            samples += 1
        elif which is not None:
            non_numeric = True
    return samples, non_numeric


@FUZZ
@given(ms=st.lists(metrics(), max_size=6), seq=st.none() | st.integers(0, 2**64 - 1),
       ts=st.none() | st.integers(0, 2**64 - 1))
@example(ms=[Metric(name="Count", datatype=DataType.INT8, int_value=0xFF)], seq=2, ts=None)
@example(ms=[Metric(name="fill_weight", timestamp=10**16, double_value=1.0)], seq=2, ts=None)  # year 2286
@example(ms=[Metric(alias=1, double_value=1.0)], seq=None, ts=9_300_000_000_000)  # year 2264
def test_valid_payloads_with_random_metrics(ms: list[Metric], seq: int | None, ts: int | None) -> None:
    src = source()
    src.handle_message(N.format("NBIRTH"), nbirth(), NOW)
    src.handle_message(D.format("DBIRTH"), dbirth(1), NOW)
    take(src)
    message = Payload(metrics=ms)
    if seq is not None:
        message.seq = seq
    if ts is not None:
        message.timestamp = ts
    src.handle_message(D.format("DDATA"), message.SerializeToString(), NOW)
    samples, non_numeric = expected(ms)
    assert take(src) == samples
    assert src.health.rejected == ({"non_numeric_value": 1} if non_numeric else {})
    if seq is not None and seq != 2:
        assert src.decoder.stats["sequence_gaps"] == 1 and src.decoder.commands


@FUZZ
@given(kinds=st.lists(st.sampled_from(["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH"]), max_size=10),
       seqs=st.lists(st.integers(0, 300), min_size=10, max_size=10))
def test_any_order_of_births_data_and_deaths(kinds: list[str], seqs: list[int]) -> None:
    """Messages in any order (deaths before births, data after deaths) never raise."""
    src = source()
    for kind, seq in zip(kinds, seqs):
        topic = (N if kind[0] == "N" else D).format(kind)
        body = {"NBIRTH": nbirth(), "DBIRTH": dbirth(seq % 256)}.get(kind)
        if body is None:
            body = Payload(seq=seq % 256, metrics=[Metric(alias=1, double_value=1.0), Metric(alias=100, float_value=2.0),
                                                    Metric(name="bdSeq", long_value=seq)]).SerializeToString()
        src.handle_message(topic, body, NOW)
    take(src)
    assert not src.health.rejected
