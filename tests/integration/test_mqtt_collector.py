"""The MQTT source against a real Mosquitto: JSON payloads become columnar batches; malformed
payloads are counted, written to the dead-letter file with their topic and error, and never
stop the source."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import polars as pl

from collector.deadletter import DeadLetterFile
from collector.sources.mqtt import MqttSource
from controltower.samples import SAMPLE_SCHEMA
from controltower.site import MqttSourceConfig, load_site_config
from tests.conftest import REPO
from tests.integration.conftest import start_mosquitto, stop_process

TOPIC = "plant/lyon/ff/fill1/filler1"


async def test_mqtt_source_decodes_and_sets_aside_malformed(mosquitto, tmp_path: Path) -> None:
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    config = MqttSourceConfig(kind="mqtt", name="plant-mqtt", url=mosquitto.url, flush_interval_ms=100)
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    source = MqttSource(config, site.tag_table(), dead_letter=dead)
    batches: list[pl.DataFrame] = []

    async def emit(batch: pl.DataFrame) -> None:
        batches.append(batch)

    task = asyncio.create_task(source.run(emit))
    try:
        for _ in range(100):
            if source.health.connected:
                break
            await asyncio.sleep(0.05)
        assert source.health.connected, source.health.last_error
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            messages = [
                {"ts": "2026-11-29T10:00:00.000Z", "batch_id": "F1-0001", "fill_weight": 2.001, "speed": 300.5, "room_dp": 15.2},
                b"{not json",
                [1, 2, 3],
                {"ts": "not a time", "fill_weight": 2.0},
                {"ts": "2026-11-29T10:00:00.500Z", "batch_id": "F1-0001", "fill_weight": 1.999,
                 "speed": None, "quality": {"room_dp": "uncertain"}, "room_dp": 15.1},
            ]
            for m in messages:
                payload = m if isinstance(m, bytes) else json.dumps(m).encode()
                await pub.publish(TOPIC, payload, qos=1)
        for _ in range(100):
            if sum(b.height for b in batches) >= 6 and sum(source.health.rejected.values()) >= 3:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    frame = pl.concat(batches).sort("ts", "tag_id")
    assert frame.schema == pl.Schema(SAMPLE_SCHEMA)
    assert frame.height == 6
    first = frame.filter(pl.col("tag_id") == "lyon.ff.fill1.filler1.fill_weight")
    assert first["value"].to_list() == [2.001, 1.999]
    assert first["batch_id"].to_list() == ["F1-0001", "F1-0001"]
    assert set(frame["line"].to_list()) == {"fill1"} and set(frame["unit"].to_list()) == {"filler1"}
    speed = frame.filter(pl.col("tag_id") == "lyon.ff.fill1.filler1.speed")
    assert speed["value"].to_list() == [300.5, None]
    assert speed["quality"].cast(str).to_list() == ["good", "bad"]  # a null value is bad quality
    room = frame.filter(pl.col("tag_id") == "lyon.ff.fill1.filler1.room_dp")
    assert room["quality"].cast(str).to_list() == ["good", "uncertain"]

    assert source.health.rejected == {"invalid_json": 1, "not_an_object": 1, "bad_timestamp": 1}
    letters = dead.read()
    assert [(d["topic"], d["reason"]) for d in letters] == [
        (TOPIC, "invalid_json"), (TOPIC, "not_an_object"), (TOPIC, "bad_timestamp")
    ]
    assert letters[0]["payload"] == "{not json"


async def test_mqtt_source_reconnects_after_broker_restart(tmp_path: Path) -> None:
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    broker = start_mosquitto(tmp_path / "m1")
    config = MqttSourceConfig(kind="mqtt", name="plant-mqtt", url=broker.url, flush_interval_ms=100)
    source = MqttSource(config, site.tag_table())
    got: list[pl.DataFrame] = []

    async def emit(batch: pl.DataFrame) -> None:
        got.append(batch)

    task = asyncio.create_task(source.run(emit))
    try:
        for _ in range(100):
            if source.health.connected:
                break
            await asyncio.sleep(0.05)
        stop_process(broker.proc)
        for _ in range(100):
            if not source.health.connected:
                break
            await asyncio.sleep(0.05)
        assert not source.health.connected
        assert source.health.last_error

        # Same port again: the source must find it by itself.
        broker2 = start_mosquitto(tmp_path / "m1")
        try:
            for _ in range(300):
                if source.health.connected:
                    break
                await asyncio.sleep(0.05)
            assert source.health.connected and source.health.reconnects >= 1
            async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
                await pub.publish(TOPIC, json.dumps({"fill_weight": 2.0}).encode(), qos=1)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got and got[0]["value"].to_list() == [2.0]
        finally:
            stop_process(broker2.proc)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
