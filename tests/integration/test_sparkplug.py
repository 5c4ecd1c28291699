"""Sparkplug B through a real Mosquitto: an edge node built in the test (paho-mqtt and the same
protobuf schema) publishes NBIRTH, DBIRTH and DDATA by alias; a sequence gap makes the collector
publish an NCMD rebirth request, which the test receives; when the node's connection drops, the
broker publishes its Last Will NDEATH and the node's tags become bad-quality nulls."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiomqtt
import paho.mqtt.client as paho
import polars as pl

from collector.deadletter import DeadLetterFile
from collector.sources.mqtt import MqttSource
from collector.sources.sparkplug_b_proto import DataType, Metric, Payload
from controltower.site import parse_site_config

GROUP, NODE, DEVICE = "lyon", "ff-fill1", "filler1"


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")


def payload(seq: int | None, metrics: list) -> bytes:
    p = Payload(timestamp=int(datetime.now(UTC).timestamp() * 1000), metrics=metrics)
    if seq is not None:
        p.seq = seq
    return p.SerializeToString()


def bd_seq(n: int) -> Metric:
    return Metric(name="bdSeq", datatype=DataType.INT64, long_value=n)


async def until(check, timeout: float = 10.0, what=lambda: "") -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out: {what()}")


async def test_sparkplug_births_aliases_rebirth_and_last_will(mosquitto, tmp_path) -> None:
    site = parse_site_config({
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": [
                {"id": "fill_weight", "mqtt": {}},
                {"id": "speed", "mqtt": {"sparkplug": {"metric": "Filler/Speed"}}},
                {"id": "cabinet_temp", "mqtt": {"sparkplug": {"device": "", "metric": "Cabinet/Temperature"}}},
            ]},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "spb", "url": mosquitto.url, "payload": "sparkplug_b",
                     "client_id": "ct-host", "flush_interval_ms": 50}],
    })
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    source = MqttSource(site.sources[0], site.tag_table(), dead_letter=dead)
    batches: list[pl.DataFrame] = []

    async def emit(batch: pl.DataFrame) -> None:
        batches.append(batch)

    def rows() -> pl.DataFrame:
        return pl.concat(batches) if batches else pl.DataFrame()

    commands: list[aiomqtt.Message] = []
    task = asyncio.create_task(source.run(emit))
    edge = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="edge-ff-fill1")
    edge.will_set(topic("NDEATH"), payload(None, [bd_seq(0)]), qos=1)
    try:
        await until(lambda: source.health.connected, what=lambda: source.health.last_error)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
            await watcher.subscribe(topic("NCMD"), qos=1)
            edge.connect("127.0.0.1", mosquitto.port)
            edge.loop_start()

            def send(kind: str, data: bytes, device: str | None = None) -> None:
                edge.publish(topic(kind, device), data, qos=1).wait_for_publish(5)

            await asyncio.to_thread(send, "NBIRTH", payload(0, [
                bd_seq(0),
                Metric(name="Node Control/Rebirth", datatype=DataType.BOOLEAN, boolean_value=False),
                Metric(name="Cabinet/Temperature", alias=10, datatype=DataType.FLOAT, float_value=24.5),
            ]))
            await asyncio.to_thread(send, "DBIRTH", payload(1, [
                Metric(name="fill_weight", alias=1, datatype=DataType.DOUBLE, double_value=2.0),
                Metric(name="Filler/Speed", alias=2, datatype=DataType.INT32, int_value=300),
            ]), DEVICE)
            await asyncio.to_thread(send, "DDATA", payload(2, [
                Metric(alias=1, double_value=2.004), Metric(alias=2, int_value=301)]), DEVICE)
            await asyncio.to_thread(send, "DDATA", b"\x0a\xff\xff not a protobuf", DEVICE)
            await until(lambda: rows().height >= 5, what=lambda: f"{rows().height} samples")
            assert source.decoder.commands == [] and source.decoder.stats["sequence_gaps"] == 0

            # Messages 3 and 4 are lost: the collector asks the node to rebirth.
            await asyncio.to_thread(send, "DDATA", payload(5, [Metric(alias=1, double_value=2.01)]), DEVICE)
            command = await asyncio.wait_for(anext(aiter(watcher.messages)), timeout=5)
            commands.append(command)

        [metric] = Payload.FromString(commands[0].payload).metrics
        assert (metric.name, metric.boolean_value) == ("Node Control/Rebirth", True)
        assert source.decoder.stats["sequence_gaps"] == 1 and source.decoder.stats["rebirths_requested"] == 1
        await until(lambda: rows().height >= 6)

        # The node's connection drops without a DISCONNECT: the broker publishes its Last Will.
        edge.loop_stop()
        edge.socket().close()
        await until(lambda: rows().filter(pl.col("quality") == "bad").height >= 3, what=lambda: str(rows()))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    frame = rows()
    short = frame.with_columns(pl.col("tag_id").str.split(".").list.last().alias("tag"))
    good = short.filter(pl.col("quality") == "good")
    assert sorted(zip(good["tag"], good["value"])) == sorted([
        ("cabinet_temp", 24.5), ("fill_weight", 2.0), ("speed", 300.0),  # births
        ("fill_weight", 2.004), ("speed", 301.0),  # data by alias
        ("fill_weight", 2.01),  # the message after the gap is still kept
    ])
    stale = short.filter(pl.col("quality") == "bad")
    assert sorted(stale["tag"]) == ["cabinet_temp", "fill_weight", "speed"]
    assert stale["value"].null_count() == 3
    assert source.health.rejected == {"invalid_sparkplug": 1}
    assert [d["reason"] for d in dead.read()] == ["invalid_sparkplug"]
    # The same counts reach /api/health and /metrics through the source's health.
    events = source.health.as_dict()["events"]
    assert (events["births"], events["sequence_gaps"], events["rebirths_requested"], events["deaths"]) == (2, 1, 1, 1)
