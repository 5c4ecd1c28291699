"""The InfluxDB historian against real servers: InfluxDB 1.6 (api v1, write and InfluxQL read),
VictoriaMetrics (api v2 through influxdb-client, read back with its export API), an unreachable
server (bounded retries), and the token kept out of every error and log line."""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
import urllib3

from collector.sinks import HistorianError
from collector.sinks.influxdb import InfluxDbHistorian
from controltower.samples import SAMPLE_SCHEMA, samples_frame
from tests.conftest import free_port

pytestmark = pytest.mark.integration

SECRET = "tok-7f3a9c1e-never-shown"
PATHS = pl.DataFrame(
    {
        "tag_id": ["basel.gran.l1.gr1.temp", "basel.gran.l1.gr1.speed", "basel.coat.l 2.c1.temp"],
        "site": ["basel", "basel", "basel"],
        "area": ["gran", "gran", "coat"],
        "line": ["l1", "l1", "l 2"],
        "unit": ["gr1", "gr=1", "c,1"],
    }
)
TAGS = PATHS["tag_id"].to_list()


def _batch(start_ns: int, n: int, step_ns: int) -> pl.DataFrame:
    rows = [(start_ns + i * step_ns, tag, i * 1.25 + k / 3) for i in range(n) for k, tag in enumerate(TAGS)]
    ts, tags, values = zip(*rows)
    qualities = ["good", "uncertain", "bad"]
    return samples_frame(
        ts=list(ts),
        tag_id=list(tags),
        value=list(values),
        quality=[qualities[i % 3] for i in range(len(rows))],
        server_ts=[t + 250_001 if i % 2 else None for i, t in enumerate(ts)],
        batch_id=[f'B-{i % 5} "x"' if i % 3 else None for i in range(len(rows))],
        tag_paths=PATHS,
    )


def _now_ns(offset_s: float = -600) -> int:
    # Whole milliseconds, in the past: VictoriaMetrics keeps ms and hides the future.
    return (int(time.time() + offset_s) * 1000) * 1_000_000


async def test_v1_write_batches_then_read_back_exactly(influxdb_v1):
    h = InfluxDbHistorian(url=influxdb_v1.url, api="v1", bucket="controltower", max_lines=100)
    try:
        t0 = 1_718_006_400_123_456_789  # odd ns: the round trip must keep them
        batches = [_batch(t0 + j * 10**12, 60, step_ns=1_000_000_007) for j in range(3)]
        for batch in batches:  # 180 lines each: two requests per batch
            await h.write(batch)
        # A special batch: NaN, infinities, no value, no path.
        special = samples_frame(
            ts=[t0 + k for k in range(4)],
            tag_id=["odd tag"] * 4,
            value=[math.nan, math.inf, -math.inf, None],
            quality=["bad"] * 4,
        )
        await h.write(special)

        start = datetime.fromtimestamp(t0 // 10**9, UTC)
        back = h.read([*TAGS, "odd tag"], start)
        assert back.schema == pl.Schema(SAMPLE_SCHEMA)
        expected = pl.concat([*batches, special]).sort("tag_id", "ts")
        assert back.equals(expected)

        # start <= ts < end, to the nanosecond.
        first = batches[1]["ts"].min()
        end = first + timedelta(seconds=10)
        window = h.read(TAGS[:1], first, end)
        assert window.height == 10
        assert window["ts"].min() == first and window["ts"].max() < end
        assert h.read(["no.such.tag"], start).height == 0
    finally:
        h.close()


async def test_v2_write_to_victoria_metrics_then_export(victoria_metrics):
    h = InfluxDbHistorian(
        url=victoria_metrics.url, api="v2", org="pharma", bucket="controltower", token=SECRET
    )
    try:
        t0 = _now_ns()
        # VictoriaMetrics keeps about 12 significant digits: values with fewer come back exactly.
        batch = _batch(t0, 20, step_ns=1_000_000_000).with_columns(pl.col("value").round(3))
        await h.write(batch)
    finally:
        h.close()

    http = urllib3.PoolManager()
    assert http.request("GET", f"{victoria_metrics.url}/internal/force_flush").status == 200
    answer = http.request(
        "POST",
        f"{victoria_metrics.url}/api/v1/export",
        fields={"match[]": '{__name__="process_values_value"}'},
        encode_multipart=False,
    )
    assert answer.status == 200
    series = [json.loads(line) for line in answer.data.decode().splitlines() if line.strip()]
    exported = pl.DataFrame(
        [
            {
                "tag_id": s["metric"]["tag_id"],
                "quality": s["metric"]["quality"],
                "unit": s["metric"].get("unit"),
                "ts_ms": t,
                "value": v,
            }
            for s in series
            for t, v in zip(s["timestamps"], s["values"])
        ]
    ).sort("tag_id", "ts_ms")
    expected = batch.sort("tag_id", "ts").select(
        "tag_id",
        pl.col("quality").cast(pl.String),
        "unit",
        (pl.col("ts").dt.epoch("ns") // 1_000_000).alias("ts_ms"),
        "value",
    )
    assert exported.equals(expected)


async def test_v2_against_a_v1_only_server_is_a_clear_4xx(influxdb_v1):
    h = InfluxDbHistorian(url=influxdb_v1.url, api="v2", bucket="controltower", token=SECRET, backoff_s=5)
    try:
        started = time.monotonic()
        with pytest.raises(HistorianError, match="HTTP 404") as info:
            await h.write(_batch(_now_ns(), 1, 1))
        assert time.monotonic() - started < 3  # a 4xx is not retried
        assert SECRET not in str(info.value)
    finally:
        h.close()


async def test_v1_missing_database_gives_the_server_message_without_the_token(influxdb_v1, caplog):
    # The database is named after the token, so the server's own message contains it.
    h = InfluxDbHistorian(url=influxdb_v1.url, api="v1", bucket=SECRET, token=f"operator:{SECRET}")
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(HistorianError, match="database not found") as info:
                await h.write(_batch(_now_ns(), 1, 1))
            with pytest.raises(HistorianError) as read_info:
                h.read(TAGS, datetime(2024, 1, 1, tzinfo=UTC))
        tracebacks = ["".join(traceback.format_exception(e.value)) for e in (info, read_info)]
        for text in (*tracebacks, caplog.text, repr(h)):
            assert SECRET not in text
    finally:
        h.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_an_unreachable_server_fails_after_bounded_retries(api, caplog):
    port = free_port()  # nothing listens there
    h = InfluxDbHistorian(
        url=f"http://127.0.0.1:{port}", api=api, token=SECRET, max_attempts=3, backoff_s=0.05, timeout_s=2
    )
    try:
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(HistorianError, match="after 3 attempts") as info:
                await h.write(_batch(_now_ns(), 2, 1))
        elapsed = time.monotonic() - started
        assert 0.05 <= elapsed < 5  # two backoffs (>= 0.025 + 0.05 s), then give up
        assert f"127.0.0.1:{port}" in str(info.value)
        assert len([r for r in caplog.records if "retry in" in r.getMessage()]) == 2
        assert SECRET not in str(info.value) and SECRET not in caplog.text
    finally:
        h.close()
