"""Disk full under the store-and-forward queue, with real processes: the collector (`controltower
run`, its own process) stores into InfluxDB 1.6.7, which is down, so every batch goes to the
on-disk spool; then the disk refuses writes. The stated policy (collector/pipeline.py): the
source is held and the append retried, never a batch dropped silently; the error shows in
/api/health; the MQTT broker keeps what the held collector has not acknowledged (persistent
session, QoS 1). When space is back and InfluxDB returns, every value the simulator published
is in InfluxDB exactly once.

"The disk is full" is the kernel refusing writes: the collector runs under a file-size limit
(RLIMIT_FSIZE) below the size its spool segment reaches, so its writes fail with EFBIG as they
would with ENOSPC (same code path: an OSError from write); "space freed" is raising that limit
on the running process (prlimit). A real full filesystem would need a mount, which CI machines
may not allow.

The source of truth is the simulator, run in this process: which ticks it published and,
replayed from the same seed, which values.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import polars as pl
import yaml

from collector.sinks import HistorianError
from collector.sinks.influxdb import InfluxDbHistorian
from controltower.site import load_site_config
from simulators.plant import Plant
from simulators.service import SimulatorService
from tests.conftest import REPO, free_port
from tests.integration.conftest import start_influxdb_v1, stop_process, wait_until
from tests.integration.figures import compare, record

MQTT_SITE = REPO / "config" / "mqtt-site.yaml"
# Below the spool segment size: the segment's growth is refused. CPython ignores SIGXFSZ, so a
# write past the limit fails with EFBIG instead of killing the process.
FILE_SIZE_LIMIT = 48 * 1024
TICK_MS = 100


def _site_file(tmp_path: Path, mqtt_url: str, influx_url: str) -> Path:
    doc = yaml.safe_load(MQTT_SITE.read_text())
    doc["sources"][0].update(url=mqtt_url, client_id="ct-disk-full", flush_interval_ms=200)
    doc["historian"] = {"kind": "influxdb", "url": influx_url, "api": "v1", "bucket": "controltower", "token_env": None}
    doc["simulation"].update(mqtt_url=mqtt_url, opcua_url=None, tick_ms=TICK_MS, faults=[])
    doc["spool"] = {"max_bytes": "64MiB", "segment_bytes": "1MiB", "overflow": "drop_oldest"}
    doc["detectors"] = {"zscore": {"enabled": False}}
    doc["data_dir"] = str(tmp_path / "collector")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _health(port: int) -> dict | None:
    """/api/health of the collector; it answers 503 (with the same body) while degraded."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        return json.load(exc)
    except OSError:
        return None


async def test_disk_full_holds_the_source_then_everything_is_stored_once(mosquitto, tmp_path: Path) -> None:
    influx = start_influxdb_v1(tmp_path / "influx")  # creates the database and fixes the port...
    stop_process(influx.proc)  # ...then it is down: every batch stays in the spool
    config = _site_file(tmp_path, mosquitto.url, influx.url)
    site = load_site_config(config)
    port = free_port()
    # The log goes through a pipe (to this process): the collector's own file writes are the
    # ones the limit is about.
    collector = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything runs)
        [sys.executable, "-m", "controltower.cli", "--log-level", "INFO", "run", "--config", str(config),
         "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    # Set at once, seconds before the collector has started up and opened its spool.
    resource.prlimit(collector.pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.RLIM_INFINITY))
    log_lines: list[bytes] = []
    pump = asyncio.get_running_loop().run_in_executor(None, lambda: log_lines.extend(collector.stdout))
    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=None, mqtt_url=mosquitto.url)
    restarted = None
    try:
        def sources_connected() -> bool:
            health = _health(port)
            return bool(health) and all(s["connected"] for s in health["sources"])

        await wait_until(sources_connected, 90, "the collector to subscribe")
        await simulator.start()
        await wait_until(lambda: simulator.mqtt.connected.is_set(), 10, "the simulator to connect")
        sim_task = asyncio.create_task(simulator.run(None))

        def spool_error() -> str | None:
            health = _health(port) or {}
            return (health.get("spool") or {}).get("last_error")

        try:
            await wait_until(lambda: spool_error() is not None, 40, "the spool to hit the disk limit")
        except AssertionError:
            spool_files = sorted((p.name, p.stat().st_size) for p in (tmp_path / "collector" / "spool").glob("*"))
            raise AssertionError(f"no spool error: health {_health(port)}, spool files {spool_files}, "
                                 f"log {b''.join(log_lines)[-2000:]!r}") from None
        assert "File too large" in spool_error(), spool_error()
        full_at_ticks = simulator.ticks
        await asyncio.sleep(3.0)  # the disk stays full while the plant goes on publishing
        assert collector.poll() is None, "the collector survives a full disk"
        assert spool_error() is not None

        # Space is back, then InfluxDB.
        resource.prlimit(collector.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        freed_at = time.monotonic()
        await wait_until(lambda: spool_error() is None, 30, "appends to work again")
        recovery_s = time.monotonic() - freed_at
        restarted = start_influxdb_v1(tmp_path / "influx")
        await asyncio.sleep(2.0)
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)
        await simulator.stop()
        ticks = simulator.ticks
        assert ticks > full_at_ticks + 20

        plant = simulator.plant
        dt = timedelta(milliseconds=TICK_MS)
        first, last = plant.start + dt, plant.start + ticks * dt
        tags = list(plant.tag_ids)
        reader = InfluxDbHistorian(url=influx.url, api="v1", bucket="controltower", max_attempts=1)

        def stored_everything() -> pl.DataFrame | None:
            try:
                stored = reader.read(tags, first, last + dt)
            except HistorianError:
                return None
            return stored if stored.height >= ticks * len(tags) else None

        try:
            await wait_until(lambda: stored_everything() is not None, 60, "every published value in InfluxDB")
            await asyncio.sleep(1.0)
            stored = stored_everything()
        finally:
            reader.close()
        health = _health(port)
    finally:
        stop_process(collector)
        await asyncio.wait_for(pump, timeout=10)  # the pipe closes with the process
        if restarted is not None:
            stop_process(restarted.proc)
        await simulator.stop()

    log_text = b"".join(log_lines).decode(errors="replace")
    assert "cannot write to the spool" in log_text
    assert health["spool"]["dropped_batches"] == 0, "a full disk is not an overflow: nothing dropped"

    # Exactly once: one row per (tag, tick), every tick of the run.
    assert stored.select("tag_id", "ts").n_unique() == stored.height == ticks * len(tags)
    # And the values are the plant's: the same seed replayed gives the same readings.
    replay = Plant(site, seed=simulator.seed, start=plant.start).run(ticks * TICK_MS / 1000, TICK_MS / 1000)
    joined = replay.select("tag_id", "ts", "value").join(
        stored.select("tag_id", "ts", pl.col("value").alias("stored")), on=["tag_id", "ts"], how="left"
    )
    assert joined["stored"].null_count() == 0
    assert (joined["stored"] - joined["value"]).abs().max() < 1e-9
    record("spool disk full (collector process under RLIMIT_FSIZE, InfluxDB down)", **compare(replay, stored),
           recovery_s=recovery_s, promise="policy: source held, append retried, error in /api/health; no loss",
           notes=f"disk full for >= 3 s, {ticks - full_at_ticks} ticks published after the first refused write; "
                 "recovery = space freed to the first successful append; dropped_batches "
                 f"{health['spool']['dropped_batches']}")
