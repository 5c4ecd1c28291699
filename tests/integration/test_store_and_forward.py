"""Store and forward against real parts: InfluxDB 1.6.7 goes away under a steady stream from the
project's simulator (over Mosquitto); batches pile up in the on-disk spool and are forwarded,
each exactly once, when it is back. Then the hard case, with real processes: the collector is
`kill -9`ed while InfluxDB is down, InfluxDB and the collector start again, and every sample
that was in the spool at the kill ends up in InfluxDB exactly once."""

from __future__ import annotations

import asyncio
import contextlib
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
from simulators.plant import Plant
from tests.conftest import REPO, free_port
from tests.integration.conftest import start_influxdb_v1, stop_process, wait_until
from tests.integration.figures import compare, record

CONTROLTOWER = [sys.executable, "-m", "controltower.cli", "--log-level", "INFO"]
MQTT_SITE = REPO / "config" / "mqtt-site.yaml"
# How long InfluxDB stays down (at least): short in CI; bench/reliability.py sets minutes.
OUTAGE_S = float(os.environ.get("CONTROLTOWER_OUTAGE_S", "0"))
TICK_MS = 100


async def test_outage_spools_to_disk_then_forwards_each_batch_once(mosquitto, tmp_path: Path) -> None:
    from simulators.service import SimulatorService

    influx = start_influxdb_v1(tmp_path / "influx")
    site = point_sources_at(load_site_config(MQTT_SITE), opcua_url="opc.tcp://unused", mqtt_url=mosquitto.url)
    site = site.model_copy(update={
        "historian": InfluxDbHistorianConfig(kind="influxdb", url=influx.url, api="v1", token_env=None),
        "simulation": site.simulation.model_copy(update={"tick_ms": TICK_MS, "faults": []}),
        "spool": StoreAndForwardConfig(max_bytes="64MiB", segment_bytes="64KiB"),
    })
    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=None, mqtt_url=mosquitto.url)
    await simulator.start()
    tower = ControlTower(site, data_dir=tmp_path / "tower")
    spool_dir = tmp_path / "tower" / "spool"
    started = datetime.now(UTC) - timedelta(seconds=5)
    tower_task = asyncio.create_task(tower.run(None))
    # The plant starts once the collector has subscribed: every tick it publishes is then owed.
    await wait_until(lambda: all(s.health.connected for s in tower.sources), 30, "the collector to subscribe")
    sim_task = asyncio.create_task(simulator.run(None))
    streaming_since = time.monotonic()
    restarted = None
    try:
        await wait_until(lambda: tower.pipeline.samples_stored > 30, 20, "first samples stored")
        stop_process(influx.proc)
        down_at = time.monotonic()
        await wait_until(lambda: not tower.pipeline.historian_ok, 20, "the outage to be noticed")
        await wait_until(lambda: tower.pipeline.spool_batches >= 6, 30, "batches to pile up in the spool")
        # They are on disk, not only in memory: another reader sees them in the segment files.
        _, on_disk = read_spool(spool_dir)
        assert on_disk.height >= tower.pipeline.spool.pending_samples - 100 > 0
        health = tower.pipeline.spool_health()
        assert health["pending_bytes"] > 0 and health["oldest_pending_age_s"] > 0.5
        assert health["dropped_batches"] == 0
        assert tower.live.latest().height == len(tower.tags)  # detection goes on meanwhile
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

        restarted = start_influxdb_v1(tmp_path / "influx")
        back_at, stored_at_back = time.monotonic(), tower.pipeline.samples_stored
        outage_s = back_at - down_at
        await wait_until(lambda: tower.pipeline.samples_stored > stored_at_back, 40, "a first batch stored again")
        recovery_s = time.monotonic() - back_at
        await wait_until(lambda: tower.pipeline.spool_batches == 0 and tower.pipeline.historian_ok,
                         40 + OUTAGE_S, "the spool to drain")
        drained_s = time.monotonic() - back_at
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)
        streamed_s = time.monotonic() - streaming_since
        owed = simulator.ticks * len(tower.tags)
        # The tail of the stream reaches the collector before it stops (bounded: the check below says).
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: sum(s.health.samples_in for s in tower.sources) >= owed, 10, "the last ticks")
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
        # The simulator as the source of truth: every tick it published, replayed from its seed.
        plant = simulator.plant
        emitted = Plant(site, seed=simulator.seed, start=plant.start).run(simulator.ticks * TICK_MS / 1000, TICK_MS / 1000)
        figures = compare(emitted, stored)
        record("InfluxDB outage under a steady stream (MQTT, in-process collector)", **figures, recovery_s=recovery_s,
               promise="no loss, no duplicate (on-disk spool, forwarded once)",
               notes=f"InfluxDB down {outage_s:.0f} s under a stream of {figures['emitted'] / streamed_s:.0f} values/s "
                     f"({1000 // TICK_MS * len(tower.tags)} nominal: the simulator skips ticks when the machine is "
                     "busy); "
                     f"spool drained {drained_s:.1f} s after InfluxDB was back; recovery = InfluxDB back to first batch stored",
               outage_s=round(outage_s, 1))
        assert figures["lost"] == 0 and figures["duplicates"] == 0, figures
    finally:
        tower.close()
        if restarted is not None:
            stop_process(restarted.proc)


def _site_file(tmp_path: Path, mqtt_url: str, influx_url: str) -> Path:
    doc = yaml.safe_load(MQTT_SITE.read_text())
    doc["sources"][0]["url"] = mqtt_url
    doc["historian"] = {"kind": "influxdb", "url": influx_url, "api": "v1", "bucket": "controltower", "token_env": None}
    doc["simulation"].update(mqtt_url=mqtt_url, tick_ms=TICK_MS)
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
        back_at = time.monotonic()
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
        recovery_s = time.monotonic() - back_at
        _wait(lambda: read_spool(spool_dir)[1].height == 0, 20, "the spool to drain", [restarted], log)
        # Figures over the whole run, across the kill: what the restarted collector stored since the
        # first spooled tick, against the simulator's ticks in that span (one every TICK_MS, each tag).
        time.sleep(2.0)
        everything = reader.read(tags, window[0], datetime.now(UTC) + timedelta(minutes=1))
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
    ticks = round((everything["ts"].max() - everything["ts"].min()).total_seconds() * 1000 / TICK_MS) + 1
    distinct = everything.select(keys).n_unique()
    record("collector kill -9 during an InfluxDB outage (processes)", emitted=ticks * len(tags),
           stored=everything.height, lost=ticks * len(tags) - distinct, duplicates=everything.height - distinct,
           recovery_s=recovery_s, promise="no loss of what was spooled or acknowledged; at-least-once",
           notes=f"{spooled.height} samples in the spool at the kill; emitted = simulator ticks x tags from the "
                 "first spooled tick to the last stored; recovery = collector and InfluxDB restarted to the "
                 "spooled samples all in InfluxDB")
