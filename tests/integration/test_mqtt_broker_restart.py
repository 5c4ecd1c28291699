"""A Mosquitto restart, with real processes: QoS 1 messages the broker acknowledged are
delivered to the collector even when the broker restarts in between, as long as the broker
persists its sessions (Mosquitto: `persistence true`, written on shutdown) and the collector
uses a persistent session (a client id, clean start off).

Two cases: messages queued for a stopped collector across a broker restart; and a steady
stream through a broker restart while the collector runs. What counts as emitted is what the
broker acknowledged (PUBACK) to the publisher: a message the broker never took is the
publisher's to resend, not a loss of the collector.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import paho.mqtt.client as mqtt
import polars as pl

from collector.sources.mqtt import MqttSource
from tests.conftest import free_port, require_binary
from tests.integration.conftest import MosquittoServer, stop_process, wait_for_port
from tests.integration.figures import record
from tests.integration.test_mqtt_sessions import TOPIC, Running, site_with, until

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def start_persistent_mosquitto(tmp: Path, port: int | None = None) -> MosquittoServer:
    """Mosquitto with on-disk persistence in `tmp`; called again with the same `tmp` and port,
    it restarts on the sessions and queued messages it saved when it was stopped."""
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
    tmp.mkdir(parents=True, exist_ok=True)
    conf, log = tmp / "mosquitto.conf", tmp / "mosquitto.log"
    if port is None:
        port = free_port()
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {tmp}/\n"
            "autosave_interval 0\n"  # save on shutdown only: the restart, not a timer, is what is tested
            f"log_dest file {log}\n"
            "max_queued_messages 100000\n"
            # Started as root, Mosquitto drops to user "mosquitto", which cannot write in the
            # test's private directory: keep root (a non-root user stays itself anyway).
            + ("user root\n" if os.geteuid() == 0 else "")
        )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_port(port, proc, what="mosquitto")
    return MosquittoServer(port, proc, log)


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
        broker = start_persistent_mosquitto(tmp_path / "broker", port=broker.port)
        async with Running(MqttSource(config, site.tag_table())) as collector:
            await until(lambda: collector.rows >= len(before), what=lambda: f"{collector.rows} of {len(before)}")
            await asyncio.sleep(0.3)  # nothing more may come
        assert received_indexes(collector.frame()) == before, "every acked message, exactly once"
    finally:
        stop_process(broker.proc)


async def test_a_steady_stream_through_a_broker_restart_loses_no_acked_message(tmp_path: Path) -> None:
    broker = start_persistent_mosquitto(tmp_path / "broker")
    site = site_with(url=broker.url, client_id="ct-restart-steady", qos=1)
    config = site.sources[0]
    try:
        async with Running(MqttSource(config, site.tag_table())) as collector:
            with Publisher(broker.port, rate_hz=200) as pub:
                await until(lambda: collector.rows >= 100, what=lambda: f"{collector.rows} received")
                stop_process(broker.proc)
                down_at = time.monotonic()
                await until(lambda: not collector.source.health.connected, what=lambda: "the loss to be seen")
                await asyncio.sleep(1.0)  # the publisher keeps trying meanwhile
                broker = start_persistent_mosquitto(tmp_path / "broker", port=broker.port)
                back_at, rows_at_restart = time.monotonic(), collector.rows
                down_s = back_at - down_at
                await until(lambda: collector.rows > rows_at_restart, 20, lambda: "a first message after the restart")
                first_after_s = time.monotonic() - back_at
                acked_at_restart = len(pub.acked)
                await until(lambda: len(pub.acked) >= acked_at_restart + 100, 20, lambda: "the stream to resume")
                recovered_s = time.monotonic() - down_at
            acked = list(pub.acked)
            await until(lambda: set(received_indexes(collector.frame())) >= set(acked), 20,
                        lambda: f"{len(set(acked) - set(received_indexes(collector.frame())))} acked not received")
        got = received_indexes(collector.frame())
        assert not set(acked) - set(got), "no acked message lost"
        assert collector.source.health.reconnects >= 1
        duplicates = len(got) - len(set(got))
        # QoS 1 is at least once: a message in flight at the restart may come twice, never more
        # than the messages in flight (the collector's receive window).
        assert duplicates <= 100, f"{duplicates} duplicates"
        record("MQTT broker restart under a steady stream (Mosquitto, persistence on)", emitted=len(acked),
               stored=len(got), lost=len(set(acked) - set(got)), duplicates=duplicates, recovery_s=first_after_s,
               promise="no loss of a broker-acknowledged QoS 1 message; duplicates bounded (at-least-once)",
               notes=f"paho publisher as the edge at 200 msg/s (emitted = acknowledged by the broker; "
                     f"{pub.resends} resends); broker down {down_s:.1f} s; stored = received by the "
                     "collector's MQTT source; recovery = broker back to first message received")
        print(f"broker restart: {len(acked)} acked, {len(set(got))} received, 0 lost, "
              f"{duplicates} duplicate(s) ({pub.resends} publisher resends), stream back {recovered_s:.1f}s after the broker stopped")
    finally:
        stop_process(broker.proc)
