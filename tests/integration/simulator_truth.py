"""The project's simulator as the publisher and the source of truth of an MQTT fault test.

What the simulator emitted is replayed from its seed (`Plant(site, seed, start)` stepped as many
ticks as it ran reproduces every value it published); `BrokerAcks` records, per tick, whether the
broker acknowledged it (PUBACK of the tick's last QoS 1 message: the broker acknowledges in
order), which tells a tick the edge never got to the broker (the simulator's publisher does not
resend across a reconnect) from one the collector lost. `check_values` then compares the
collector's samples with the replay, value by value.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import paho.mqtt.client as mqtt
import polars as pl
import pytest

import simulators.mqtt_publisher as publisher
from simulators.plant import Plant
from simulators.service import SimulatorService
from tests.integration.conftest import wait_until

KEYS = ["tag_id", "ts"]


class BrokerAcks:
    """Wraps the simulator's `_publish_tick` (it still publishes exactly as before) to keep each
    tick's timestamp with the MQTTMessageInfo of its last message."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.sent: list[tuple[datetime, mqtt.MQTTMessageInfo | None]] = []
        original = publisher._publish_tick

        def publish_tick(client, messages):
            at = next((json.loads(p)["ts"] for t, p, _, _ in messages if not t.endswith("/_batch")), None)
            try:
                info = original(client, messages)
            except Exception:
                info = None  # refused while disconnected: never reached the broker
                raise
            finally:
                if at is not None:
                    self.sent.append((datetime.fromisoformat(at), info))
            return info

        monkeypatch.setattr(publisher, "_publish_tick", publish_tick)

    def acked_ticks(self) -> set[datetime]:
        return {at for at, info in self.sent if info is not None and info.is_published()}

    def all_acknowledged(self, edge: publisher.PlantMqttPublisher) -> bool:
        """Nothing queued and the last tick sent acknowledged (and so, in order, every one before it)."""
        last = self.sent[-1][1] if self.sent else None
        return all(c.queue.empty() for c in edge.connections) and last is not None and last.is_published()

    async def stop_ticking(self, simulator: SimulatorService, task: asyncio.Task) -> None:
        """Stop the simulator's ticks and wait until the broker has acknowledged every tick sent (the
        simulator's own stop would drop a backlog)."""
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await wait_until(lambda: self.all_acknowledged(simulator.mqtt), 30, "the simulator's last tick to be acknowledged")

    def unacked_ticks(self) -> list[datetime]:
        acked = self.acked_ticks()
        return sorted({at for at, _ in self.sent} - acked)


def emitted(simulator: SimulatorService) -> pl.DataFrame:
    """Every sample the simulator published (tag_id, ts to the microsecond as on the wire, value),
    replayed from its seed."""
    plant = simulator.plant
    frame = Plant(simulator.site, seed=simulator.seed, start=plant.start).run(
        simulator.ticks * simulator.tick_s * simulator.speed, simulator.tick_s * simulator.speed
    )
    return _normal(frame)


def _normal(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("tag_id").cast(pl.String),
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
        pl.col("value").cast(pl.Float64),
    )


def check_values(truth: pl.DataFrame, stored: pl.DataFrame) -> dict[str, int]:
    """emitted, stored (rows), lost (emitted (tag, ts) not stored), duplicates (stored rows beyond
    the distinct (tag, ts)), wrong_values (stored (tag, ts) whose value differs from the emitted
    one; a value the simulator sent as null, not finite, must come back null)."""
    stored = _normal(stored)
    distinct = stored.unique(KEYS, keep="first")
    both = truth.join(distinct, on=KEYS, how="inner", suffix="_stored")
    sent = pl.when(pl.col("value").is_finite()).then(pl.col("value"))
    wrong = both.filter(~sent.eq_missing(pl.col("value_stored"))).height
    lost = truth.join(distinct, on=KEYS, how="anti").height
    return {"emitted": truth.height, "stored": stored.height, "lost": lost,
            "duplicates": stored.height - distinct.height, "wrong_values": wrong}

