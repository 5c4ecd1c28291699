"""End to end, from the publisher's count: a collector is `kill -9`ed while QoS 1 messages keep
arriving, and restarted. Messages it had received but not yet put in its spool are not lost,
because it acknowledges them to the broker only after they are on disk (manual acks on a
persistent MQTT session): every published sample ends up in the historian."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import paho.mqtt.client as paho

from tests.conftest import REPO, free_port
from tests.integration.figures import record

TOPIC = "acme/cork/ff/fill2/filler2"
TAG = "cork.ff.fill2.filler2.fill_weight"
N = 600


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def start_collector(config: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "controltower.cli", "--log-level", "WARNING", "run", "--config",
                             str(config), "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        try:
            if all(s["connected"] for s in get_json(f"http://127.0.0.1:{port}/api/health")["sources"]):
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the collector did not connect")


def publish(port: int, start: datetime, done: threading.Event) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for i in range(N):
            ts = (start + timedelta(milliseconds=10 * i)).isoformat().replace("+00:00", "Z")
            client.publish(TOPIC, json.dumps({"ts": ts, "fill_weight": 1.0 + i * 1e-5}), qos=1).wait_for_publish(5)
            time.sleep(0.005)
    finally:
        client.loop_stop()
        client.disconnect()
        done.set()


def test_kill_9_mid_stream_loses_no_published_sample(mosquitto, tmp_path: Path) -> None:
    port = free_port()
    text = (REPO / "config" / "mqtt-site.yaml").read_text()
    text = text.replace("mqtt://127.0.0.1:1884", mosquitto.url).replace("data_dir: data/cork", f"data_dir: {tmp_path / 'cork'}")
    # The API read without a login (this test is about the collector; auth has its own tests).
    text = text.replace("port: 8052", "port: 8052\n  auth: {enabled: false}")
    config = tmp_path / "site.yaml"
    config.write_text(text)

    collector = start_collector(config, port)
    start = datetime.now(UTC).replace(microsecond=0)
    done = threading.Event()
    publisher = threading.Thread(target=publish, args=(mosquitto.port, start, done), daemon=True)
    publisher.start()
    time.sleep(1.5)  # mid-stream: some messages stored, some received but not yet flushed
    os.kill(collector.pid, signal.SIGKILL)
    collector.wait(10)
    killed_at = time.monotonic()
    collector = start_collector(config, port)
    reconnected_s = time.monotonic() - killed_at
    try:
        assert done.wait(60), "the publisher did not finish"
        query = urlencode({"since": start.isoformat(), "until": (start + timedelta(minutes=5)).isoformat()})
        url = f"http://127.0.0.1:{port}/api/tags/{TAG}/history?{query}"
        rows: list = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = get_json(url)
            if len({r["ts"] for r in rows}) >= N:
                break
            time.sleep(0.5)
    finally:
        collector.terminate()
        collector.communicate(timeout=30)
    stored = {r["ts"] for r in rows}
    record("collector kill -9 mid-stream (process, QoS 1, persistent session)", emitted=N, stored=len(rows),
           lost=N - len(stored), duplicates=len(rows) - len(stored), recovery_s=reconnected_s,
           promise="no loss (acks after the spool write); duplicates bounded by one flush",
           notes="paho publisher at ~100 msg/s, 1 value each, read back through /api/tags/<tag>/history; "
                 "recovery = kill to the restarted collector subscribed (the broker held the rest)")
    assert len(stored) == N, f"{N - len(stored)} of {N} published samples are missing after the kill -9"
    # At-least-once: a batch spooled just before the kill but not yet acknowledged to the broker
    # may come again; what is stored twice is the exception, bounded by one flush.
    assert len(rows) - len(stored) <= 100, f"{len(rows) - len(stored)} samples stored twice"
