"""The unified namespace's pure parts: topics, partitions, the partition assignment, and the
values encoding (one unit's samples per message, Arrow IPC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from controltower.samples import samples_frame
from controltower.site import SiteConfigError, UnsConfig, parse_site_config
from controltower.uns import (
    ARROW_FROM_ROWS,
    Topics,
    UnsPublisher,
    UnsTopicError,
    assign,
    decode_values,
    encode_values,
    partition_of,
    split_by_unit,
)

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def batch(units: list[str], n: int) -> pl.DataFrame:
    """`n` samples of each unit's tag `a` (unit paths site.area.line.unit), interleaved."""
    tags = [f"{u}.a" for _ in range(n) for u in units]
    paths = pl.DataFrame({"tag_id": [f"{u}.a" for u in units],
                          **{c: [u.split(".")[i] for u in units] for i, c in enumerate(("site", "area", "line", "unit"))}})
    return samples_frame(ts=[T0 + timedelta(seconds=i) for i in range(len(tags))], tag_id=tags,
                         value=[float(i) for i in range(len(tags))], tag_paths=paths)


def test_partition_is_stable_and_in_range() -> None:
    # crc32, not Python's per-process salted hash: every collector and worker agrees.
    assert partition_of("lyon.ff.fill1.filler1", 16) == partition_of("lyon.ff.fill1.filler1", 16)
    assert partition_of("lyon.ff.fill1.filler1", 16) == 552313375 % 16  # zlib.crc32 of that path, pinned: a change would move every unit
    spread = {partition_of(f"s.a.l.u{i}", 16) for i in range(200)}
    assert spread == set(range(16))


def test_assignment_covers_every_partition_once_and_moves_only_the_leavers() -> None:
    three = assign(64, {"a", "b", "c"})
    owned = sorted(k for ks in three.values() for k in ks)
    assert owned == list(range(64))
    assert all(len(ks) >= 10 for ks in three.values()), three  # roughly even
    two = assign(64, {"a", "b"})
    # Partitions of a and b stay where they were; only c's move.
    assert set(three["a"]) <= set(two["a"]) and set(three["b"]) <= set(two["b"])
    assert set(two["a"]) | set(two["b"]) == set(range(64))
    assert assign(4, set()) == {}
    assert assign(4, ["x"]) == {"x": [0, 1, 2, 3]}


def test_topics_round_trip() -> None:
    topics = Topics("ct", 16)
    topic = topics.values("lyon", "ff", "fill1", "filler1")
    k = partition_of("lyon.ff.fill1.filler1", 16)
    assert topic == f"ct/v1/values/p{k}/lyon/ff/fill1/filler1"
    assert topics.parse_values(topic) == (k, "lyon.ff.fill1.filler1")
    assert topics.values_filter(3) == "ct/v1/values/p3/#"
    assert topics.alerts("lyon", "ff", "fill1", "filler1") == "ct/v1/alerts/lyon/ff/fill1/filler1"
    assert topics.worker_name(topics.worker("w1")) == "w1"
    for bad in ("ct/v1/values/lyon/ff/fill1/filler1", "ct/v2/values/p1/a/b/c/d", "ct/v1/values/p1/a/b/c"):
        with pytest.raises(UnsTopicError, match="not a"):
            topics.parse_values(bad)


@pytest.mark.parametrize("n", [1, 4, ARROW_FROM_ROWS - 1, ARROW_FROM_ROWS, 500])
def test_a_batch_splits_per_unit_and_round_trips(n: int) -> None:
    units = ["lyon.ff.fill1.filler1", "lyon.ff.fill1.filler2", "cork.ff.fill2.filler2"]
    frame = batch(units, n).with_columns(
        # the other columns' awkward values: a missing value, a batch id on some, another quality
        value=pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("value")),
        batch_id=pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("B-7")),
        quality=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("uncertain")).otherwise(pl.lit("good")).cast(
            pl.Enum(["good", "uncertain", "bad"])),
    )
    parts = split_by_unit(frame)
    assert [p for p, _ in parts] == [tuple(u.split(".")) for u in units]
    for path, part in parts:
        assert part.height == n and set(part["unit"]) == {path[3]}
        payload = encode_values(part)
        assert payload.startswith(b"{" if n < ARROW_FROM_ROWS else b"\xff\xff\xff\xff")
        assert decode_values(payload, ".".join(path)).equals(part)
        # Compact: at most ~1.5x the raw 8 bytes of value + 8 of time per sample, plus a bounded header.
        assert len(payload) < 2600 + 24 * n, len(payload)
    assert sum(p.height for _, p in parts) == frame.height


def test_all_good_samples_of_a_tick_are_small_json() -> None:
    part = split_by_unit(batch(["lyon.ff.fill1.filler1"], 3))[0][1]
    payload = encode_values(part)
    assert len(payload) < 200, payload  # quality, receive time and batch id sent once, not per sample
    assert decode_values(payload, "lyon.ff.fill1.filler1").equals(part)


def test_samples_without_a_unit_are_left_out_and_counted() -> None:
    frame = pl.concat([batch(["s.a.l.u"], 3), batch(["s.a.l.u"], 2).with_columns(pl.lit(None, pl.String).alias("unit"))])
    publisher = UnsPublisher(UnsConfig(enabled=True), client_id="t")
    publisher.publish_batch(frame)
    assert publisher.pending == 1 and publisher.stats.unplaced_samples == 2


def test_a_full_queue_drops_the_oldest_and_counts() -> None:
    publisher = UnsPublisher(UnsConfig(enabled=True, queue_batches=3), client_id="t")
    for i in range(5):
        publisher.publish_batch(batch([f"s.a.l.u{i}"], 4))
    assert publisher.pending == 3
    assert (publisher.stats.dropped_messages, publisher.stats.dropped_samples) == (2, 8)
    assert [m.topic.rsplit("/", 1)[1] for m in publisher._queue] == ["u2", "u3", "u4"]


def test_corrupt_payload_is_a_value_error() -> None:
    for payload in (b"{\"ts\": 1}", b"{\"ts\": [1], \"tag\": [\"a\", \"b\"]}", b"[]", b"\xff"):
        with pytest.raises(ValueError, match="not a columnar JSON sample batch"):
            decode_values(payload, "s.a.l.u")
    with pytest.raises(ValueError, match="not an Arrow IPC sample batch"):
        decode_values(b"\xff\xff\xff\xff\x00\x01", "s.a.l.u")


def test_uns_config_is_validated_with_file_and_key() -> None:
    base = {"enterprise": "E", "sites": [{"id": "s", "areas": [{"id": "a", "lines": [{"id": "l", "units": [
        {"id": "u", "tags": [{"id": "t", "mqtt": {"topic": "x"}}]}]}]}]}]}
    site = parse_site_config(base | {"uns": {"enabled": True, "url": "mqtt://10.0.0.5:1883", "partitions": 32}})
    assert site.uns.partitions == 32 and site.uns.root == "ct"
    for bad, key in (({"root": "ct/#"}, "uns.root"), ({"partitions": 0}, "uns.partitions"),
                     ({"url": "http://x"}, "uns.url"), ({"qos": 2}, "uns.qos")):
        with pytest.raises(SiteConfigError, match=key.replace(".", r"\.")):
            parse_site_config(base | {"uns": bad}, "site.yaml")


def test_services_refuse_a_site_without_the_uns(tmp_path, capsys) -> None:
    from controltower.cli import main

    site = tmp_path / "site.yaml"
    site.write_text("enterprise: E\nsites: [{id: s, areas: [{id: a, lines: [{id: l, units: [{id: u, tags: "
                    "[{id: t, mqtt: {topic: x}}]}]}]}]}]\nsources: [{kind: mqtt, name: m, url: 'mqtt://127.0.0.1:1'}]\n"
                    f"data_dir: {tmp_path / 'data'}\n")
    assert main(["collect", "--config", str(site)]) == 2
    assert "uns.enabled is false" in capsys.readouterr().err
    assert main(["analyse", "--config", str(site), "--worker", "a/b"]) == 2
    assert "uns.enabled is false" in capsys.readouterr().err
    site.write_text(site.read_text() + "uns: {enabled: true}\n")
    assert main(["analyse", "--config", str(site), "--worker", "a/b"]) == 2
    assert "a worker name is 1-64 characters" in capsys.readouterr().err
    assert main(["collect", "--config", str(site), "--source", "nope"]) == 2
    assert "no source named nope" in capsys.readouterr().err


def test_tag_service_topics_round_trip() -> None:
    topics = Topics("ct", 16)
    k = partition_of("lyon.ff.fill1.filler1", 16)
    tag = "lyon.ff.fill1.filler1.fill_weight"
    assert topics.tag_service(tag) == f"ct/v1/tag-service/p{k}/lyon/ff/fill1/filler1/fill_weight"
    assert topics.parse_tag(topics.tag_service(tag), "tag-service") == tag
    assert topics.parse_tag(topics.tag_state(tag), "tag-state") == tag
    assert topics.tag_service_filter(k) == f"ct/v1/tag-service/p{k}/#"
    for bad in ("lyon.ff.fill1.filler1", "lyon.ff.fill1.filler1.a/b", "a..c.d.e"):
        with pytest.raises(ValueError, match="not a tag id"):
            topics.tag_service(bad)
    with pytest.raises(UnsTopicError):
        topics.parse_tag("ct/v1/tag-state/lyon/ff/fill1", "tag-state")


def test_alert_book_adopts_alerts_and_service_state_without_journalling() -> None:
    from analytics.alerts import Alert, AlertBook

    journalled: list[dict] = []

    class Journal:
        def append_many(self, entries):
            journalled.extend(entries)

    book = AlertBook(journal=Journal())  # type: ignore[arg-type]
    alert = Alert(id="a1", tag_id="s.a.l.u.t", detector="limits", severity="alarm", value=3.0, message="high",
                  raised_at=T0, site="s", area="a", line="l", unit="u")
    assert book.adopt(alert) and [a.id for a in book.active()] == ["a1"]
    other = Alert(id="a2", tag_id="s.a.l.u.t", detector="limits", severity="alarm", value=3.1, message="high",
                  raised_at=T0)
    assert not book.adopt(other), "one active alert per point"
    assert book.adopt_service_state("s.a.l.u.t", True, "sensor swap", "eng1")
    assert book.suppressed_tags() == {"s.a.l.u.t": "sensor swap"} and book.get("a1").suppressed
    assert not book.adopt_service_state("s.a.l.u.t", True, "sensor swap", "eng1")
    assert book.adopt_service_state("s.a.l.u.t", False) and not book.get("a1").suppressed
    assert journalled == []
    book.acknowledge("a1", "op1")  # an adopted alert is the book's own from then on
    assert [e["event"] for e in journalled] == ["acknowledged"]
