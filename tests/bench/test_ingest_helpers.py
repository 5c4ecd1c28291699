"""The ingest bench's own logic: the load generator's pre-encoded payloads are what the collector's
decoders read (every value, the send time as the sample time), and the latency histogram and the
soak's slope compute what they claim."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np
import pytest

from collector.sources.mqtt import MqttSource
from controltower.site import parse_site_config
from tests.conftest import REPO

sys.path.append(str(REPO / "bench"))

from _loadgen import Stream, site_config
from ingest import LatencyHistogram, slope_per_hour

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("fmt", ["batched_json", "json", "sparkplug_b"])
def test_generated_payloads_decode_to_every_value_at_the_send_time(fmt: str) -> None:
    site = parse_site_config(site_config(fmt, "mqtt://127.0.0.1:1883", units=3, tags=4))
    source = MqttSource(site.sources[0], site.tag_table())
    stream = Stream(fmt, units=3, tags=4)
    sent_at = NOW.timestamp() + 0.25
    for topic, payload in stream.births(sent_at):
        source.handle_message(topic, payload, NOW)
    births = source.take_batch()
    for i in range(30):  # past the variants and, for Sparkplug, several seq numbers
        source.handle_message(*stream.data(i, sent_at), NOW)
    batch = source.take_batch()
    assert source.health.rejected == {}
    assert batch.height == 30 * 4
    assert batch["tag_id"].n_unique() == 12 and batch["value"].null_count() == 0
    assert batch["ts"].dt.epoch("ms").unique().to_list() == [int(sent_at * 1000)]
    if fmt == "sparkplug_b":
        assert births.height == 12 and source.decoder.stats.get("sequence_gaps", 0) == 0


def test_latency_percentiles_and_slope() -> None:
    hist = LatencyHistogram()
    committed = 10_000_000_000
    hist.add(np.array([committed - ms * 1_000_000 for ms in range(1, 101)], dtype=np.int64), committed)
    assert hist.percentile(50) == pytest.approx(50, abs=1)
    assert hist.percentile(99) == pytest.approx(99, abs=1)
    samples = [{"t_s": t, "rss_mb": 100 + t / 3600 * 12} for t in range(0, 3600, 60)]
    assert slope_per_hour(samples, "rss_mb") == pytest.approx(12)
