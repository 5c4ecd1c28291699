"""A Mosquitto restart, with real processes: QoS 1 messages the broker acknowledged are
delivered to the collector even when the broker restarts in between, as long as the broker
persists its sessions (Mosquitto: `persistence true`, written on shutdown) and the collector
uses a persistent session (a client id, clean start off).

Two cases: messages queued for a stopped collector across a broker restart (a paho publisher:
the session semantics); and a steady stream from the project's simulator through a broker
restart while the collector runs, the simulator's values (replayed from its seed) the truth. A
message the broker never acknowledged (PUBACK) is the publisher's to resend, not a loss of the
collector: the test tells the two apart.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import paho.mqtt.client as mqtt
import polars as pl

from collector.sources.mqtt import MqttSource
from controltower.demo import point_sources_at
from controltower.site import load_site_config
from simulators.service import SimulatorService
from tests.conftest import REPO
from tests.integration.conftest import MosquittoServer, start_mosquitto, stop_process, wait_until
from tests.integration.figures import record
from tests.integration.simulator_truth import BrokerAcks, check_values, emitted
from tests.integration.test_mqtt_sessions import TOPIC, Running, site_with, until

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MQTT_SITE = REPO / "config" / "mqtt-site.yaml"
TICK_MS = 100


def start_persistent_mosquitto(tmp: Path) -> MosquittoServer:
    """Mosquitto with on-disk persistence in `tmp`; called again with the same `tmp`, it restarts
    on its port and on the sessions and queued messages it saved when it was stopped."""
    return start_mosquitto(tmp, persistent=True)


def message(i: int) -> bytes:
    return json.dumps({"ts": (T0 + timedelta(milliseconds=i)).isoformat(), "fill_weight": 2.0 + i * 1e-4}).encode()


class Publisher:
    """A paho publisher in its own thread: sends message i = 0, 1, ... at QoS 1, each until the
    broker acknowledges it (resending across a broker restart), and records which were acked."""

    def __init__(self, port: int, rate_hz: float):
        self.port, self.period = port, 1.0 / rate_hz
        self.acked: list[int] = []
        self.resends = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="restart-publisher", clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.5)

    def __enter__(self) -> Self:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.loop_stop()
        self.client.disconnect()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            info = self.client.publish(TOPIC, message(i), qos=1)
            try:
                info.wait_for_publish(timeout=2.0)
                acked = info.is_published()
            except RuntimeError:  # refused while disconnected: send it again
                acked = False
            if acked:
                self.acked.append(i)
                i += 1
                time.sleep(self.period)
            else:
                self.resends += 1
                time.sleep(0.1)


def received_indexes(frame: pl.DataFrame) -> list[int]:
    return sorted(round((ts - T0).total_seconds() * 1000) for ts in frame["ts"].to_list())


async def test_messages_queued_for_a_stopped_collector_survive_a_broker_restart(tmp_path: Path) -> None:
    broker = start_persistent_mosquitto(tmp_path / "broker")
    site = site_with(url=broker.url, client_id="ct-restart-queued", qos=1)
    config = site.sources[0]
    try:
        async with Running(MqttSource(config, site.tag_table())):
            pass  # the session (and its subscription) now exists on the broker
        with Publisher(broker.port, rate_hz=2000) as pub:
            await until(lambda: len(pub.acked) >= 300, what=lambda: f"{len(pub.acked)} acked")
        before = list(pub.acked)
        stop_process(broker.proc)  # SIGTERM: Mosquitto saves sessions and queued messages
        broker = start_persistent_mosquitto(tmp_path / "broker")
        async with Running(MqttSource(config, site.tag_table())) as collector:
            await until(lambda: collector.rows >= len(before), what=lambda: f"{collector.rows} of {len(before)}")
            await asyncio.sleep(0.3)  # nothing more may come
        assert received_indexes(collector.frame()) == before, "every acked message, exactly once"
    finally:
        stop_process(broker.proc)


async def test_a_steady_stream_through_a_broker_restart_loses_no_acked_message(tmp_path: Path, monkeypatch) -> None:
    """The project's simulator publishes the plant (config/mqtt-site.yaml, 3 tags, a tick every
    100 ms, QoS 1) through a Mosquitto restart; the collector's source, on a persistent session,
    must receive every value of every tick the broker acknowledged, equal to the simulator's own
    (replayed from its seed)."""
    broker = start_persistent_mosquitto(tmp_path / "broker")
    site = point_sources_at(load_site_config(MQTT_SITE), opcua_url="opc.tcp://unused", mqtt_url=broker.url)
    site = site.model_copy(update={"simulation": site.simulation.model_copy(update={"tick_ms": TICK_MS, "faults": []})})
    config = site.sources[0].model_copy(update={"client_id": "ct-restart-steady", "flush_interval_ms": 50})
    assert config.persistent_session and config.qos == 1
    acks = BrokerAcks(monkeypatch)
    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=None, mqtt_url=broker.url)
    sim_task = None
    try:
        async with Running(MqttSource(config, site.tag_table())) as collector:
            await simulator.start()
            edge = simulator.mqtt
            await wait_until(edge.connected.is_set, 30, "the simulator to connect")
            sim_task = asyncio.create_task(simulator.run(None))
            await wait_until(lambda: collector.rows >= 60, 30, "a first stream of values")
            stop_process(broker.proc)
            down_at = time.monotonic()
            await wait_until(lambda: not collector.source.health.connected, 20, "the collector to see the loss")
            await asyncio.sleep(1.0)  # the simulator keeps ticking meanwhile, its ticks queued
            broker = start_persistent_mosquitto(tmp_path / "broker")
            back_at, rows_at_restart = time.monotonic(), collector.rows
            down_s = back_at - down_at
            await wait_until(lambda: collector.rows > rows_at_restart, 30, "a first value after the restart")
            first_after_s = time.monotonic() - back_at
            ticks_back = simulator.ticks
            await wait_until(lambda: simulator.ticks >= ticks_back + 20 and edge.connected.is_set(), 30,
                             "the stream to resume")
            recovered_s = time.monotonic() - down_at
            await acks.stop_ticking(simulator, sim_task)
            truth = emitted(simulator)
            await wait_until(lambda: check_values(truth, collector.frame())["lost"] == 0, 30,
                             "every value at the collector")
            received = collector.frame()
    finally:
        if sim_task is not None:
            sim_task.cancel()
            await asyncio.gather(sim_task, return_exceptions=True)
        await simulator.stop()
        stop_process(broker.proc)
    assert edge.stats.dropped == 0 and edge.stats.connects >= 2
    # Every tick went out, in order, and is one of the simulator's (the replay is the truth); only
    # the tick(s) the broker had not acknowledged when it stopped went out a second time.
    sent_ticks = [at for at, _ in acks.sent]
    first_sends = list(dict.fromkeys(sent_ticks))
    assert first_sends == sorted(first_sends)
    assert set(sent_ticks) == set(truth["ts"].to_list()) and len(set(sent_ticks)) == simulator.ticks
    resent = sorted({at for at in sent_ticks if sent_ticks.count(at) > 1})
    assert len(resent) <= 2, resent
    assert not acks.unacked_ticks(), "every tick acknowledged in the end"
    figures = check_values(truth, received)
    assert figures["lost"] == 0 and figures["wrong_values"] == 0, figures
    assert collector.source.health.reconnects >= 1
    # QoS 1 is at least once: a message in flight at the restart may come twice, never more
    # than the messages in flight (the collector's receive window).
    assert figures["duplicates"] <= 100, figures
    record("MQTT broker restart under a steady stream (Mosquitto, persistence on)", **figures, recovery_s=first_after_s,
           promise="no loss: the broker keeps what it acknowledged, the simulator resends what it did not; "
                   "duplicates bounded (at-least-once)",
           notes=f"the simulator as the edge (mqtt-site, {len(site.tag_table())} tags, a tick every {TICK_MS} ms, "
                 f"QoS 1), emitted = its values replayed from its seed, every stored value equal to it "
                 f"({figures['wrong_values']} differ); broker down {down_s:.1f} s; {len(resent)} tick(s) in flight "
                 "at the stop, never acknowledged, sent again by the simulator after the reconnect; "
                 "stored = received by the collector's MQTT source; recovery = broker back to first value received",
           resent_ticks=len(resent))
    print(f"broker restart: {figures}, {len(resent)} tick(s) sent again, stream back {recovered_s:.1f}s after the stop")
