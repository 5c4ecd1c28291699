"""Batch events survive a collector crash while the historian is down, with real parts: a
collector process (`controltower run`, MQTT source on a real Mosquitto, InfluxDB 1.6.7 historian
that is not running) takes QoS 1 batch events from a unit's `_batch` topic, is `kill -9`ed, and
is restarted once InfluxDB is back. Every event must be in InfluxDB, once, and the journal empty."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

from collector.event_journal import JOURNAL_DIR, read_journal
from tests.conftest import REPO, free_port
from tests.integration.conftest import start_influxdb_v1, stop_process
from tests.integration.test_mqtt_no_loss import get_json, start_collector

TOPIC = "acme/cork/ff/fill2/filler2/_batch"
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def events(count: int) -> list[dict]:
    """A batch start, then phase changes: one a minute."""
    out = []
    for i in range(count):
        transition = "batch_start" if i == 0 else "phase_change"
        out.append({"ts": (T0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"), "transition": transition,
                    "batch_id": "F2-0001", "phase": f"phase_{i:02d}", "sequence": i})
    return out


def publish(port: int, payloads: list[dict]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-batch-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(TOPIC, json.dumps(payload), qos=1).wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def site_file(tmp_path: Path, mqtt_url: str, influx_url: str) -> Path:
    doc = yaml.safe_load((REPO / "config" / "mqtt-site.yaml").read_text())
    source = doc["sources"][0]
    source.update(url=mqtt_url, batch_event_topic="acme/{site}/{area}/{line}/{unit}/_batch",
                  client_id="controltower-durable-events")
    doc.pop("simulation", None)
    doc["historian"] = {"kind": "influxdb", "url": influx_url, "api": "v1", "bucket": "controltower", "token_env": None,
                        "timeout_s": 2.0}
    doc["data_dir"] = str(tmp_path / "cork")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def poll(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def stored_events(historian) -> list[dict]:
    frame = historian.read_batch_events("cork", T0 - timedelta(hours=1))
    return frame.select("ts", "phase", "transition").to_dicts()


def test_batch_events_taken_while_the_historian_is_down_survive_kill_9(mosquitto, tmp_path: Path) -> None:
    from collector.sinks.influxdb import InfluxDbHistorian

    influx = start_influxdb_v1(tmp_path / "influxdb")  # for its port; down while the events arrive
    stop_process(influx.proc)
    config = site_file(tmp_path, mosquitto.url, influx.url)
    journal = tmp_path / "cork" / "spool" / JOURNAL_DIR
    sent = events(12)
    port = free_port()
    collector = start_collector(config, port)
    try:
        publish(mosquitto.port, sent[:8])
        # On disk before they were acknowledged to the broker: all eight are in the journal.
        poll(lambda: read_journal(journal).height == 8, timeout=30, what="8 events in the journal")
        assert get_json(f"http://127.0.0.1:{port}/api/health")["spool"]["batch_events_pending"] == 8
        os.kill(collector.pid, signal.SIGKILL)
        collector.wait(timeout=10)
        publish(mosquitto.port, sent[8:])  # queued by the broker for the collector's persistent session
        collector = start_collector(config, port)
        poll(lambda: read_journal(journal).height == 12, timeout=30, what="12 events in the journal")
        os.kill(collector.pid, signal.SIGKILL)  # a second crash, the historian still down
        collector.wait(timeout=10)
        influx = start_influxdb_v1(tmp_path / "influxdb")
        collector = start_collector(config, port)
        poll(lambda: read_journal(journal).height == 0, timeout=60, what="the journal replayed and emptied")
    finally:
        stop_process(collector)
        stop_process(influx.proc)
    influx = start_influxdb_v1(tmp_path / "influxdb")
    historian = InfluxDbHistorian(url=influx.url, api="v1", bucket="controltower")
    try:
        stored = stored_events(historian)
    finally:
        historian.close()
        stop_process(influx.proc)
    assert [e["phase"] for e in stored] == [e["phase"] for e in sent], stored
    assert [e["ts"] for e in stored] == [T0 + timedelta(minutes=i) for i in range(len(sent))]
    assert stored[0]["transition"] == "batch_start"
