"""The collector's UNS publisher against a real Mosquitto that goes away and comes back: while
the broker is down its queue stays bounded (the oldest messages dropped and counted), and once
the broker is back it reconnects by itself and publishes what it kept, in order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import polars as pl

from controltower.site import UnsConfig
from controltower.uns import Topics, UnsPublisher, decode_values
from tests.integration.conftest import stop_process, wait_until
from tests.integration.test_mqtt_broker_restart import start_persistent_mosquitto
from tests.test_uns import batch


async def test_publisher_keeps_a_bounded_queue_while_the_broker_is_down(tmp_path: Path) -> None:
    broker = start_persistent_mosquitto(tmp_path / "broker")
    config = UnsConfig(enabled=True, url=f"mqtt://127.0.0.1:{broker.port}", queue_batches=5, keepalive_s=2)
    topics = Topics.of(config)
    received: list[tuple[str, pl.DataFrame]] = []

    async def subscribe() -> None:
        # A persistent session: the broker keeps (and saves) its subscription and what is
        # published for it while it reconnects after the restart.
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier="uns-reader", clean_session=False) as c:
                    await c.subscribe(f"{topics.base}/values/#", qos=1)
                    async for m in c.messages:
                        _, unit = topics.parse_values(m.topic.value)
                        received.append((unit, decode_values(m.payload, unit)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    reader = asyncio.create_task(subscribe())
    publisher = UnsPublisher(config, client_id="uns-publisher-test")
    running = asyncio.create_task(publisher.run())
    try:
        await wait_until(lambda: publisher.stats.connected, 10, "the publisher to connect")
        await asyncio.sleep(0.3)  # the reader's subscription is in place
        publisher.publish_batch(batch(["s.a.l.u0", "s.a.l.u1", "s.a.l.u2"], 4))
        await wait_until(lambda: len(received) == 3, 10, "the first batch, one message per unit")
        assert publisher.stats.published_messages == 3 and publisher.stats.published_samples == 12

        stop_process(broker.proc)
        await wait_until(lambda: not publisher.stats.connected, 10, "the publisher to see the broker gone")
        for i in range(4):  # 12 messages for a queue of 5
            publisher.publish_batch(batch([f"s.a.l.v{i}{k}" for k in range(3)], 2))
        assert publisher.pending == 5
        assert (publisher.stats.dropped_messages, publisher.stats.dropped_samples) == (7, 14)

        broker = start_persistent_mosquitto(tmp_path / "broker")
        await wait_until(lambda: publisher.pending == 0, 30, "the publisher to reconnect and send what it kept")
        await wait_until(lambda: len(received) == 8, 15, "the kept messages at the reader")
        await asyncio.sleep(0.3)
        assert len(received) == 8
        # The newest five, in order: v22 is the 8th of the 12, v32 the last.
        assert [unit for unit, _ in received[3:]] == ["s.a.l.v21", "s.a.l.v22", "s.a.l.v30", "s.a.l.v31", "s.a.l.v32"]
        assert all(frame.height == 2 for _, frame in received[3:])
        assert publisher.stats.published_messages == 8 and publisher.stats.reconnects >= 1
        assert json.dumps(publisher.stats.as_dict())  # what status.json shows
    finally:
        for task in (running, reader):
            task.cancel()
        await asyncio.gather(running, reader, return_exceptions=True)
        stop_process(broker.proc)
