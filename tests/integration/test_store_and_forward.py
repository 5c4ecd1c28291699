"""Store and forward against real parts: InfluxDB 1.6.7 goes away under a steady stream from the
project's simulator (over Mosquitto); batches pile up in the on-disk spool and are forwarded,
each exactly once, when it is back. Then the hard case, with real processes: the collector is
`kill -9`ed while InfluxDB is down, InfluxDB and the collector start again, and every sample
that was in the spool at the kill ends up in InfluxDB exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import yaml

from collector.sinks import HistorianError
from collector.sinks.influxdb import InfluxDbHistorian
from collector.spool import read_spool
from controltower.demo import point_sources_at
from controltower.runtime import ControlTower
from controltower.site import InfluxDbHistorianConfig, StoreAndForwardConfig, load_site_config
from tests.conftest import REPO, free_port
from tests.integration.conftest import start_influxdb_v1, stop_process, wait_until

CONTROLTOWER = [sys.executable, "-m", "controltower.cli", "--log-level", "INFO"]
MQTT_SITE = REPO / "config" / "mqtt-site.yaml"


async def test_outage_spools_to_disk_then_forwards_each_batch_once(mosquitto, tmp_path: Path) -> None:
    from simulators.service import SimulatorService

    influx = start_influxdb_v1(tmp_path / "influx")
    site = point_sources_at(load_site_config(MQTT_SITE), opcua_url="opc.tcp://unused", mqtt_url=mosquitto.url)
    site = site.model_copy(update={
        "historian": InfluxDbHistorianConfig(kind="influxdb", url=influx.url, api="v1", token_env=None),
        "simulation": site.simulation.model_copy(update={"tick_ms": 100, "faults": []}),
        "spool": StoreAndForwardConfig(max_bytes="64MiB", segment_bytes="64KiB"),
    })
    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=None, mqtt_url=mosquitto.url)
    await simulator.start()
    tower = ControlTower(site, data_dir=tmp_path / "tower")
    spool_dir = tmp_path / "tower" / "spool"
    started = datetime.now(UTC) - timedelta(seconds=5)
    sim_task = asyncio.create_task(simulator.run(None))
    tower_task = asyncio.create_task(tower.run(None))
    restarted = None
    try:
        await wait_until(lambda: tower.pipeline.samples_stored > 30, 20, "first samples stored")
        stop_process(influx.proc)
        await wait_until(lambda: not tower.pipeline.historian_ok, 20, "the outage to be noticed")
        await wait_until(lambda: tower.pipeline.spool_batches >= 6, 30, "batches to pile up in the spool")
        # They are on disk, not only in memory: another reader sees them in the segment files.
        _, on_disk = read_spool(spool_dir)
        assert on_disk.height >= tower.pipeline.spool.pending_samples - 100 > 0
        health = tower.pipeline.spool_health()
        assert health["pending_bytes"] > 0 and health["oldest_pending_age_s"] > 0.5
        assert health["dropped_batches"] == 0
        assert tower.live.latest().height == len(tower.tags)  # detection goes on meanwhile

        restarted = start_influxdb_v1(tmp_path / "influx")
        await wait_until(lambda: tower.pipeline.spool_batches == 0 and tower.pipeline.historian_ok, 40, "the spool to drain")
    finally:
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)
        tower_task.cancel()
        await asyncio.gather(tower_task, return_exceptions=True)
        await simulator.stop()

    try:
        collected = sum(s.health.samples_in for s in tower.sources)
        assert tower.pipeline.samples_stored == collected
        assert tower.pipeline.spool_batches == 0 and read_spool(spool_dir)[1].height == 0
        stored = tower.historian.read([t.tag_id for t in tower.tags], started, datetime.now(UTC) + timedelta(minutes=1))
        assert stored.height == collected, f"{collected} samples collected, {stored.height} in InfluxDB"
        assert stored.select("tag_id", "ts").n_unique() == stored.height
    finally:
        tower.close()
        if restarted is not None:
            stop_process(restarted.proc)


def _site_file(tmp_path: Path, mqtt_url: str, influx_url: str) -> Path:
    doc = yaml.safe_load(MQTT_SITE.read_text())
    doc["sources"][0]["url"] = mqtt_url
    doc["historian"] = {"kind": "influxdb", "url": influx_url, "api": "v1", "bucket": "controltower", "token_env": None}
    doc["simulation"].update(mqtt_url=mqtt_url, tick_ms=100)
    doc["spool"] = {"max_bytes": "64MiB", "segment_bytes": "64KiB", "overflow": "drop_oldest"}
    doc["data_dir"] = str(tmp_path / "collector")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(args: list[str], log: Path) -> subprocess.Popen:
    out = log.open("ab")
    return subprocess.Popen([*CONTROLTOWER, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _wait(condition, timeout_s: float, what: str, procs: list[subprocess.Popen], log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[3:5]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_kill_9_while_influxdb_is_down_then_every_spooled_sample_is_stored_once(mosquitto, tmp_path: Path) -> None:
    influx = start_influxdb_v1(tmp_path / "influx")  # creates the database, fixes the port...
    stop_process(influx.proc)  # ...and is down from the collector's first batch on
    config = _site_file(tmp_path, mosquitto.url, influx.url)
    spool_dir = tmp_path / "collector" / "spool"
    log = tmp_path / "processes.log"
    run = ["run", "--config", str(config), "--port", str(free_port())]
    simulator = _start(["simulate", "--config", str(config), "--data-dir", str(tmp_path / "sim")], log)
    collector = _start(run, log)
    restarted_influx = restarted = None
    try:
        _wait(lambda: read_spool(spool_dir)[1].height >= 150 if spool_dir.exists() else False,
              45, "the collector to spool samples", [simulator, collector], log)
        os.kill(collector.pid, signal.SIGKILL)
        collector.wait(timeout=10)
        acked, spooled = read_spool(spool_dir)
        assert acked == 0 and spooled.height >= 150
        assert spooled.select("tag_id", "ts").n_unique() == spooled.height

        restarted_influx = start_influxdb_v1(tmp_path / "influx")
        assert restarted_influx.port == influx.port
        restarted = _start(run, log)
        reader = InfluxDbHistorian(url=influx.url, api="v1", bucket="controltower", max_attempts=1)
        tags = spooled["tag_id"].unique().to_list()
        window = (spooled["ts"].min(), spooled["ts"].max() + timedelta(microseconds=1))

        def stored_window() -> pl.DataFrame | None:
            try:
                stored = reader.read(tags, *window)
            except HistorianError:
                return None
            return stored if stored.height >= spooled.height else None

        stored = _wait(stored_window, 40, "the spooled samples in InfluxDB", [simulator, restarted], log)
        _wait(lambda: read_spool(spool_dir)[1].height == 0, 20, "the spool to drain", [restarted], log)
        reader.close()
    finally:
        for proc in (restarted, simulator):
            if proc is not None:
                stop_process(proc)
        if collector.poll() is None:
            collector.kill()
        if restarted_influx is not None:
            stop_process(restarted_influx.proc)

    # Every sample in the spool at the kill is in InfluxDB, with its value, exactly once; nothing else
    # is in that time window (the restarted collector only adds samples measured after the kill).
    keys = ["tag_id", "ts"]
    assert stored.select(keys).n_unique() == stored.height == spooled.height
    joined = spooled.join(stored, on=keys, how="left", suffix="_stored")
    assert joined["value_stored"].null_count() == 0, "spooled samples missing from InfluxDB"
    assert joined.filter(pl.col("value") != pl.col("value_stored")).height == 0
    assert "pending from an earlier run" in log.read_text()
