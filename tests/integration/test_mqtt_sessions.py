"""MQTT sessions and subscriptions against a real Mosquitto: a persistent session (client id,
clean start off, QoS 1) gets every message published while the collector was stopped, exactly
once; two collectors in one shared-subscription group split a stream without overlap; topic
templates and batched JSON payloads arrive as samples."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import aiomqtt
import polars as pl
import pytest

from collector.sources.mqtt import MqttSource
from controltower.site import parse_site_config

TOPIC = "plant/lyon/ff/fill1/filler1"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def site_with(**source):
    return parse_site_config({
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": [{"id": "fill_weight", "mqtt": {}}, {"id": "speed", "mqtt": {}}]},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "m", "topic_template": "{prefix}/{site}/{area}/{line}/{unit}",
                     "topic_prefix": "plant", "flush_interval_ms": 50, **source}],
    })


class Running:
    """A source running in a task, its batches collected."""

    def __init__(self, source: MqttSource):
        self.source = source
        self.batches: list[pl.DataFrame] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Self:
        async def emit(batch: pl.DataFrame) -> None:
            self.batches.append(batch)

        self.task = asyncio.create_task(self.source.run(emit))
        await until(lambda: self.source.health.connected, what=lambda: self.source.health.last_error)
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def rows(self) -> int:
        return sum(b.height for b in self.batches)

    def frame(self) -> pl.DataFrame:
        return pl.concat(self.batches) if self.batches else pl.DataFrame()


async def until(check, timeout: float = 10.0, what=lambda: "") -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out: {what()}")


def message(i: int) -> bytes:
    return json.dumps({"ts": (T0 + timedelta(milliseconds=i)).isoformat(), "fill_weight": 2.0 + i * 1e-4}).encode()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_persistent_session_delivers_what_was_published_while_stopped(mosquitto, protocol: str) -> None:
    site = site_with(url=mosquitto.url, protocol=protocol, client_id=f"ct-persistent-{protocol}", qos=1)
    config = site.sources[0]
    assert config.persistent_session
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        async with Running(MqttSource(config, site.tag_table())) as first:
            await pub.publish(TOPIC, message(0), qos=1)
            await until(lambda: first.rows == 1)
        # The collector is down: these wait in its session on the broker.
        for i in range(1, 101):
            await pub.publish(TOPIC, message(i), qos=1)
        async with Running(MqttSource(config, site.tag_table())) as second:
            await until(lambda: second.rows >= 100, what=lambda: f"{second.rows} of 100")
            await asyncio.sleep(0.3)  # nothing more may come
    frame = second.frame()
    assert frame.height == 100
    assert frame.select("tag_id", "ts").is_duplicated().sum() == 0
    assert frame["ts"].sort().to_list() == [T0 + timedelta(milliseconds=i) for i in range(1, 101)]


async def test_clean_session_misses_what_was_published_while_stopped(mosquitto) -> None:
    site = site_with(url=mosquitto.url, client_id="ct-clean", clean_start=True)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        async with Running(MqttSource(site.sources[0], site.tag_table())):
            pass
        await pub.publish(TOPIC, message(1), qos=1)
        async with Running(MqttSource(site.sources[0], site.tag_table())) as again:
            await asyncio.sleep(0.3)
    assert again.rows == 0


async def test_shared_subscription_splits_the_stream(mosquitto) -> None:
    a = site_with(url=mosquitto.url, shared_group="collectors", client_id="ct-a", clean_start=True)
    b = site_with(url=mosquitto.url, shared_group="collectors", client_id="ct-b", clean_start=True)
    n = 200
    async with Running(MqttSource(a.sources[0], a.tag_table())) as one, \
            Running(MqttSource(b.sources[0], b.tag_table())) as two:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            for i in range(n):
                await pub.publish(TOPIC, message(i), qos=1)
        await until(lambda: one.rows + two.rows >= n, what=lambda: f"{one.rows} + {two.rows} of {n}")
        await asyncio.sleep(0.2)
    ts_one, ts_two = set(one.frame()["ts"].to_list()), set(two.frame()["ts"].to_list())
    assert ts_one and ts_two, "each collector of the group gets a share"
    assert not ts_one & ts_two, "no message goes to both"
    assert len(ts_one | ts_two) == n


async def test_topic_template_with_batched_json(mosquitto, tmp_path: Path) -> None:
    site = site_with(url=mosquitto.url, payload="batched_json")
    async with Running(MqttSource(site.sources[0], site.tag_table())) as running:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            samples = [{"tag": tag, "ts": (T0 + timedelta(seconds=i)).timestamp(), "value": float(i)}
                       for i in range(500) for tag in ("fill_weight", "speed")]
            await pub.publish(TOPIC, json.dumps({"batch_id": "F1-0009", "samples": samples}).encode(), qos=1)
            await pub.publish("plant/lyon/ff/fill1/other", b'{"samples": []}', qos=1)  # not subscribed
        await until(lambda: running.rows >= 1000)
    frame = running.frame()
    assert frame.height == 1000 and set(frame["batch_id"]) == {"F1-0009"}
    assert frame.group_by("tag_id").len().sort("tag_id")["len"].to_list() == [500, 500]
    assert set(frame["unit"]) == {"filler1"}
    assert running.source.health.rejected == {}
