"""Batch events on the UNS: their topic is in the unit's partition (as its values), and a message
round-trips the event frame; a payload that is not a list of events is a ValueError."""

from __future__ import annotations

import pytest

from controltower.batch_events import BATCH_EVENT_SCHEMA
from controltower.site import UnsConfig
from controltower.uns import Topics, UnsPublisher, decode_batch_events, encode_batch_events, partition_of
from tests.collector.test_batch_events import U1, events


def test_batch_event_topic_is_in_the_units_partition_and_parses_back() -> None:
    topics = Topics("ct", 8)
    topic = topics.batch_events("s", "a", "l", "u1")
    k = partition_of("s.a.l.u1", 8)
    assert topic == f"ct/v1/batch-events/p{k}/s/a/l/u1"
    assert topic.startswith(topics.batch_events_filter(k)[:-1])
    assert topic.replace("batch-events", "values") == topics.values("s", "a", "l", "u1")
    assert topics.parse_values(topic, kind="batch-events") == (k, "s.a.l.u1")


def test_a_units_batch_events_round_trip() -> None:
    mine = events().filter(
        (events()["site"] + "." + events()["area"] + "." + events()["line"] + "." + events()["unit"]) == U1)
    mine = mine.with_columns(product=mine["batch_id"] + " product")
    back = decode_batch_events(encode_batch_events(mine), U1)
    assert back.schema == BATCH_EVENT_SCHEMA
    assert back.equals(mine), back


@pytest.mark.parametrize("payload", [b"{}", b"[1]", b'[{"ts": 1}]', b"not json", b'[{"ts": "x", "transition": "t"}]'])
def test_a_bad_batch_events_payload_is_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError, match="batch-events message"):
        decode_batch_events(payload, U1)


def test_the_publisher_queues_one_message_per_unit() -> None:
    publisher = UnsPublisher(UnsConfig(enabled=True, url="mqtt://127.0.0.1:1", partitions=4), client_id="t")
    publisher.publish_batch_events(events())
    topics = sorted(m.topic for m in publisher._queue)
    assert topics == [publisher.topics.batch_events("s", "a", "l", u) for u in ("u1", "u2")]
    assert publisher.stats.published_batch_events == events().height
