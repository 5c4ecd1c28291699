"""Sparkplug B decoding without a broker: births define aliases, data by alias becomes samples,
sequence gaps and unknown aliases queue a rate-limited rebirth request, deaths (with a matching
bdSeq) make the tags stale, and garbage is set aside, never raised past the decoder."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from collector.sources.mqtt import MqttBindingError, MqttSource, PayloadError
from collector.sources.sparkplug import SparkplugDecoder
from collector.sources.sparkplug_b_proto import DataType, Metric, Payload, PropertySet, PropertyValue
from controltower.samples import SAMPLE_SCHEMA
from controltower.site import SiteConfigError, parse_site_config

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
T_MS = int(NOW.timestamp() * 1000)


def site(tags: list[dict], **source) -> dict:
    return {
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": tags},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "spb", "url": "mqtt://127.0.0.1:1883", "payload": "sparkplug_b", **source}],
    }


TAGS = [
    {"id": "fill_weight", "mqtt": {}},  # templates: group lyon, node ff-fill1, device filler1, metric fill_weight
    {"id": "speed", "mqtt": {"sparkplug": {"metric": "Filler/Speed"}}},
    {"id": "count", "data_type": "int", "mqtt": {"sparkplug": {"metric": "Count"}}},
    {"id": "node_temp", "mqtt": {"sparkplug": {"device": "", "metric": "Cabinet/Temperature"}}},
]


def decoder(**source) -> SparkplugDecoder:
    config = parse_site_config(site(TAGS, **source))
    return SparkplugDecoder(config.sources[0], config.tag_table())


def payload(seq: int | None, metrics: list, ts: int = T_MS) -> bytes:
    p = Payload(timestamp=ts, metrics=metrics)
    if seq is not None:
        p.seq = seq
    return p.SerializeToString()


def nbirth(bd_seq: int = 0) -> bytes:
    return payload(0, [
        Metric(name="bdSeq", datatype=DataType.INT64, long_value=bd_seq),
        Metric(name="Node Control/Rebirth", datatype=DataType.BOOLEAN, boolean_value=False),
        Metric(name="Cabinet/Temperature", alias=100, datatype=DataType.FLOAT, float_value=24.5),
    ])


def dbirth(seq: int) -> bytes:
    unit = PropertySet(keys=["engUnit"], values=[PropertyValue(type=DataType.STRING, string_value="g")])
    return payload(seq, [
        Metric(name="fill_weight", alias=1, datatype=DataType.DOUBLE, double_value=2.0, properties=unit),
        Metric(name="Filler/Speed", alias=2, datatype=DataType.FLOAT, float_value=300.0),
        Metric(name="Count", alias=3, datatype=DataType.INT32, int_value=7),
        Metric(name="Unbound", alias=4, datatype=DataType.STRING, string_value="x"),
    ])


N = "spBv1.0/lyon/{}/ff-fill1"
D = "spBv1.0/lyon/{}/ff-fill1/filler1"


def test_births_then_data_by_alias_become_samples() -> None:
    dec = decoder()
    assert dec.decode(N.format("NBIRTH"), nbirth(), NOW) == 1
    assert dec.decode(D.format("DBIRTH"), dbirth(1), NOW) == 3
    ddata = payload(2, [
        Metric(alias=1, timestamp=T_MS + 500, double_value=2.004),
        Metric(alias=3, int_value=(-2) & 0xFFFFFFFF),  # Int32 -2 on its unsigned wire field
        Metric(alias=2, is_null=True),
        Metric(alias=4, string_value="not bound, ignored"),
    ])
    assert dec.decode(D.format("DDATA"), ddata, NOW) == 3
    batch = dec.take_batch()
    assert batch.schema == pl.Schema(SAMPLE_SCHEMA)
    rows = {(r["tag_id"].rsplit(".", 1)[1], r["value"], r["quality"]) for r in batch.iter_rows(named=True)}
    assert rows == {
        ("node_temp", 24.5, "good"), ("fill_weight", 2.0, "good"), ("speed", 300.0, "good"), ("count", 7.0, "good"),
        ("fill_weight", 2.004, "good"), ("count", -2.0, "good"), ("speed", None, "bad"),
    }
    late = batch.filter(pl.col("value") == 2.004)["ts"][0]
    assert late == datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=UTC)  # the metric's own timestamp
    assert set(batch["unit"]) == {"filler1"}
    assert dec.metric_info("lyon", "ff-fill1", "filler1")["fill_weight"].unit == "g"
    assert dec.commands == [] and dec.stats["sequence_gaps"] == 0


def test_sequence_gap_requests_one_rebirth_and_wraps_at_255() -> None:
    dec = decoder()
    dec.decode(N.format("NBIRTH"), nbirth(), NOW)
    dec.decode(D.format("DBIRTH"), dbirth(1), NOW)
    dec.decode(D.format("DDATA"), payload(5, [Metric(alias=1, double_value=2.0)]), NOW)  # 2..4 lost
    dec.decode(D.format("DDATA"), payload(9, [Metric(alias=1, double_value=2.0)]), NOW)  # again, rate-limited
    assert dec.stats["sequence_gaps"] == 2 and dec.stats["rebirths_requested"] == 1
    [(topic, command)] = dec.commands
    assert topic == "spBv1.0/lyon/NCMD/ff-fill1"
    [metric] = Payload.FromString(command).metrics
    assert (metric.name, metric.boolean_value, metric.datatype) == ("Node Control/Rebirth", True, DataType.BOOLEAN)

    wrap = decoder(sparkplug={"rebirth_min_interval_s": 0})
    wrap.decode(N.format("NBIRTH"), nbirth(), NOW)
    wrap.nodes[("lyon", "ff-fill1")].seq = 254
    for seq in (255, 0, 1):
        wrap.decode(N.format("NDATA"), payload(seq, [Metric(alias=100, float_value=25.0)]), NOW)
    assert wrap.stats["sequence_gaps"] == 0 and wrap.commands == []


def test_data_before_any_birth_or_with_unknown_alias_asks_for_a_rebirth() -> None:
    dec = decoder(sparkplug={"rebirth_min_interval_s": 0})
    assert dec.decode(D.format("DDATA"), payload(3, [Metric(alias=1, double_value=2.0)]), NOW) == 0
    assert dec.stats["unknown_alias"] == 1 and len(dec.commands) >= 1
    # A metric sent with its name is still usable without a birth.
    assert dec.decode(D.format("DDATA"), payload(4, [Metric(name="fill_weight", double_value=2.1)]), NOW) == 1


def test_deaths_make_tags_stale_unless_the_bdseq_is_an_older_session() -> None:
    dec = decoder()
    dec.decode(N.format("NBIRTH"), nbirth(bd_seq=4), NOW)
    dec.decode(D.format("DBIRTH"), dbirth(1), NOW)
    dec.take_batch()

    assert dec.decode(D.format("DDEATH"), payload(2, []), NOW) == 3
    stale = dec.take_batch()
    assert stale["value"].null_count() == 3 and set(stale["quality"].cast(str)) == {"bad"}
    assert {t.rsplit(".", 1)[1] for t in stale["tag_id"]} == {"fill_weight", "speed", "count"}

    old_will = payload(None, [Metric(name="bdSeq", datatype=DataType.INT64, long_value=3)])
    assert dec.decode(N.format("NDEATH"), old_will, NOW) == 0
    assert dec.stats["stale_deaths"] == 1

    will = payload(None, [Metric(name="bdSeq", datatype=DataType.INT64, long_value=4)])
    assert dec.decode(N.format("NDEATH"), will, NOW) == 4  # the node's tag and its device's
    assert set(dec.take_batch()["quality"].cast(str)) == {"bad"}
    assert not dec.nodes[("lyon", "ff-fill1")].born


@pytest.mark.parametrize(
    ("topic", "data", "reason"),
    [
        (D.format("DDATA"), b"\xff\xff\xff\xff garbage", "invalid_sparkplug"),
        (D.format("DDATA"), b"\x12\x05\x0a\x80", "invalid_sparkplug"),  # truncated metric
        ("spBv1.0/lyon/DDATA", b"", "invalid_sparkplug_topic"),
        ("spBv1.0/lyon/NDATA/ff-fill1/filler1", b"", "invalid_sparkplug_topic"),
        ("spBv1.0/lyon/XDATA/ff-fill1", b"", "invalid_sparkplug_topic"),
    ],
)
def test_malformed_messages_raise_payload_error_with_reason(topic: str, data: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decoder().decode(topic, data, NOW)
    assert caught.value.reason == reason


def test_source_counts_and_dead_letters_malformed_sparkplug(tmp_path) -> None:
    from collector.deadletter import DeadLetterFile

    config = parse_site_config(site(TAGS))
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    source = MqttSource(config.sources[0], config.tag_table(), dead_letter=dead)
    source.handle_message(D.format("DDATA"), b"\xff\xfe not protobuf", NOW)
    assert source.health.rejected == {"invalid_sparkplug": 1}
    [letter] = dead.read()
    assert (letter["topic"], letter["reason"], letter["payload_encoding"]) == (D.format("DDATA"), "invalid_sparkplug", "base64")


def test_subscriptions_cover_births_data_and_deaths_not_commands() -> None:
    subs = decoder().subscriptions()
    assert "spBv1.0/lyon/DDATA/+/+" in subs and "spBv1.0/lyon/NDEATH/+" in subs
    assert not any("CMD" in s for s in subs)


def test_bad_bindings_fail_at_start_up() -> None:
    config = parse_site_config(site([{"id": "a", "mqtt": {}}, {"id": "b", "mqtt": {"sparkplug": {"metric": "a"}}}]))
    with pytest.raises(MqttBindingError, match="both read Sparkplug metric"):
        SparkplugDecoder(config.sources[0], config.tag_table())
    config = parse_site_config(site([{"id": "a", "mqtt": {"topic": "x/y", "field": "v"}}]))
    with pytest.raises(MqttBindingError, match="JSON binding"):
        SparkplugDecoder(config.sources[0], config.tag_table())
    with pytest.raises(SiteConfigError) as caught:
        parse_site_config(site([{"id": "a", "mqtt": {"sparkplug": {"device": "a/b"}}}]))
    assert "sites[0].areas[0].lines[0].units[0].tags[0].mqtt.sparkplug.device" in str(caught.value)
    with pytest.raises(SiteConfigError) as caught:
        parse_site_config(site([{"id": "a", "mqtt": {}}], sparkplug={"group": "{plant}"}))
    assert "sources[0].sparkplug.group" in str(caught.value) and "{plant}" in str(caught.value)
