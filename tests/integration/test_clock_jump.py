"""Clock jumps on the plant side, with real parts: the project's simulator publishes over
Mosquitto to the control tower while its clock steps, as an edge device's clock does when NTP
steps it: back an hour, forward an hour (back to true time), back 2 s (a multiple of the tick, so
timestamps already published come again with other values), forward an hour (ahead of the
tower's wall clock), then back to true time (the ahead clock corrected).

The jump is made on the plant itself: `Plant.now` is `start + elapsed`, so moving `plant.start`
moves every timestamp the simulator publishes from the next tick on, while the process goes
on as before (what a stepped clock looks like from outside). The source of truth is the
simulator: every frame it steps is recorded as it is published.

What is measured (figures in docs/reliability.md):
  DuckDB historian: every published value is stored (it keeps two rows with the same tag and
    timestamp: nothing overwrites), no crash, the detectors' alerts per phase;
  InfluxDB 1.x: a point with the same series and timestamp would replace the earlier one; the
    historian gives the samples a step back dates at or before where the tag's clock had been a
    `clock_epoch` tag (collector/sinks/clocksteps.py), so every value is kept there too;
  the screen's freshness (controltower/screen/queries.line_states, the header's logic) on the
    latest sample *by arrival* (controltower/live.py): after a step back the line shows the new
    (old-dated) value and reads stale, an hour ahead its age is negative and the line is flagged
    future-dated (stale on the screen), and once the clock is corrected it is fresh at once (not
    frozen on the future value).
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from controltower.demo import point_sources_at
from controltower.runtime import ControlTower
from controltower.screen.queries import line_states
from controltower.site import DuckDbHistorianConfig, InfluxDbHistorianConfig, load_site_config
from tests.conftest import REPO
from tests.integration.conftest import start_influxdb_v1, stop_process, wait_until
from tests.integration.figures import record

MQTT_SITE = REPO / "config" / "mqtt-site.yaml"
TICK_MS = 100
PHASE_S = float(os.environ.get("CONTROLTOWER_CLOCK_PHASE_S", "2.5"))  # seconds of stream between jumps
STALE_AFTER_S = 1.5
# (label, step of the plant's clock) in order; the first phase runs on true time.
JUMPS = [("back 1 h", timedelta(hours=-1)), ("forward 1 h (true time again)", timedelta(hours=1)),
         ("back 2 s (timestamps repeat)", timedelta(seconds=-2)), ("forward 1 h (ahead)", timedelta(hours=1)),
         ("back 1 h less 2 s (corrected: true time)", timedelta(hours=-1, seconds=2))]


def alerts_raised(tower: ControlTower) -> int:
    return int(sum(s.value for metric in tower.metrics.alerts_raised.collect() for s in metric.samples
                   if s.name.endswith("_total")))


def screen_view(tower: ControlTower) -> dict:
    """The line's freshness as the screen computes it (header and tiles), now."""
    now = datetime.now(UTC)
    row = line_states(tower, now).row(0, named=True)
    future = bool(tower.live.line_freshness(now)["future"].any())
    return {"last_ts": row["last_ts"], "age_s": round(row["age_s"], 1), "stale": row["stale"], "future": future}


async def run_with_jumps(mosquitto, tmp_path: Path, historian) -> tuple[ControlTower, pl.DataFrame, list[dict]]:
    """Stream, stepping the plant's clock between phases; returns the tower (closed by the
    caller), every frame the simulator published, and per phase what the tower showed."""
    from simulators.service import SimulatorService

    site = point_sources_at(load_site_config(MQTT_SITE), opcua_url="opc.tcp://unused", mqtt_url=mosquitto.url)
    site = site.model_copy(update={
        "historian": historian,
        "simulation": site.simulation.model_copy(update={"tick_ms": TICK_MS, "faults": []}),
        "screen": site.screen.model_copy(update={"stale_after_s": STALE_AFTER_S}),
    })
    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=None, mqtt_url=mosquitto.url)
    await simulator.start()
    plant = simulator.plant
    published: list[pl.DataFrame] = []
    step = plant.step

    def recorded_step(dt_s: float) -> pl.DataFrame:
        frame = step(dt_s)
        published.append(frame.select("tag_id", "ts", "value"))
        return frame

    plant.step = recorded_step  # the source of truth: every frame, as the simulator publishes it
    tower = ControlTower(site, data_dir=tmp_path / "tower")
    tower_task = asyncio.create_task(tower.run(None))
    await wait_until(lambda: all(s.health.connected for s in tower.sources), 30, "the collector to subscribe")
    sim_task = asyncio.create_task(simulator.run(None))
    phases = []
    try:
        for label, jump in [("true time", None), *JUMPS]:
            if jump is not None:
                plant.start += jump
            at = datetime.now(UTC)
            alerts_before, rows_before = alerts_raised(tower), sum(f.height for f in published)
            received_before = sum(s.health.samples_in for s in tower.sources)
            await asyncio.sleep(PHASE_S)
            assert not tower_task.done(), f"the tower stopped during '{label}': {tower_task}"
            view = screen_view(tower)
            phases.append({
                "phase": label, "plant_offset_s": (plant.now - datetime.now(UTC)).total_seconds(),
                "published": sum(f.height for f in published) - rows_before,
                "received": sum(s.health.samples_in for s in tower.sources) - received_before,
                "alerts": alerts_raised(tower) - alerts_before, "screen_last_ts": view["last_ts"],
                "screen_age_s": view["age_s"], "screen_stale": view["stale"], "screen_future": view["future"],
                "started": at,
            })
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)
        owed = sum(f.height for f in published)
        await wait_until(lambda: sum(s.health.samples_in for s in tower.sources) >= owed, 20, "every published value")
    finally:
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)
        tower_task.cancel()  # drains what was collected into the historian
        await asyncio.gather(tower_task, return_exceptions=True)
        await simulator.stop()
    return tower, pl.concat(published), phases


def stored_rows(tower: ControlTower, emitted: pl.DataFrame) -> pl.DataFrame:
    start = emitted["ts"].min() - timedelta(seconds=1)
    return tower.historian.read([t.tag_id for t in tower.tags], start, emitted["ts"].max() + timedelta(seconds=1))


def lost_values(emitted: pl.DataFrame, stored: pl.DataFrame) -> int:
    """Published (tag, ts, value) with no stored row carrying that value (the values are floats
    from the plant model; a row stored is the value published, bit for bit)."""
    keys = ["tag_id", "ts", "value"]
    return emitted.select(keys).join(stored.select(keys), on=keys, how="anti", nulls_equal=True).height


def _phase_notes(phases: list[dict]) -> str:
    return "; ".join(f"{p['phase']}: {p['received']}/{p['published']} received, {p['alerts']} alerts, "
                     f"screen age {p['screen_age_s']} s{' STALE' if p['screen_stale'] else ''}"
                     f"{' FUTURE-DATED' if p['screen_future'] else ''}" for p in phases)


def assert_stored_once_each(emitted: pl.DataFrame, stored: pl.DataFrame) -> int:
    """Nothing lost, nothing stored twice: every (tag, ts, value) published is one row, including
    the repeated timestamps of the 2 s step back (two rows, two values, same tag and ts).
    Returns the (tag, ts) published twice."""
    keys = ["tag_id", "ts", "value"]
    assert lost_values(emitted, stored) == 0
    assert stored.height == emitted.height == stored.select(keys).n_unique()
    repeated = emitted.group_by("tag_id", "ts").len().filter(pl.col("len") > 1).height
    assert repeated > 0, "the 2 s step back repeats timestamps"
    return repeated


def assert_screen_follows_the_clock(by_phase: dict[str, dict]) -> None:
    """The screen shows the latest sample to arrive with its own time: an hour back reads stale
    (the plant says its data is an hour old), an hour ahead is flagged future-dated (and not shown
    as normal), and the corrected clock reads fresh at once."""
    back = by_phase["back 1 h"]
    assert back["screen_stale"] and back["screen_age_s"] > 3000
    assert back["screen_last_ts"] < back["started"] - timedelta(minutes=59), "the new, old-dated sample is shown"
    assert not by_phase["true time"]["screen_stale"] and not by_phase["true time"]["screen_future"]
    ahead = by_phase["forward 1 h (ahead)"]
    assert ahead["screen_age_s"] < -3000 and ahead["screen_future"] and ahead["screen_stale"]
    corrected = by_phase["back 1 h less 2 s (corrected: true time)"]
    assert not corrected["screen_future"] and -2 < corrected["screen_age_s"] < 60


async def test_clock_steps_lose_nothing_in_duckdb_and_show_on_the_screen(mosquitto, tmp_path: Path) -> None:
    historian = DuckDbHistorianConfig(kind="duckdb", path="historian.duckdb")
    tower, emitted, phases = await run_with_jumps(mosquitto, tmp_path, historian)
    try:
        stored = stored_rows(tower, emitted)
    finally:
        tower.close()
    by_phase = {p["phase"]: p for p in phases}
    repeated = assert_stored_once_each(emitted, stored)
    assert_screen_follows_the_clock(by_phase)

    spurious = sum(p["alerts"] for p in phases)
    record("clock jumps on the plant side, DuckDB historian", emitted=emitted.height, stored=stored.height,
           lost=0, duplicates=0,
           recovery_s=None, promise="no loss, no crash; the screen shows the step (stale / future-dated data)",
           notes=f"no outage (recovery n/a); steps -1 h, +1 h, -2 s, +1 h, -1 h+2 s, {PHASE_S} s apart at {1000 // TICK_MS * len(tower.tags)} values/s; "
                 f"{repeated} (tag, ts) published twice by the -2 s step, both values kept; {spurious} alerts "
                 f"raised in all (spurious: the plant ran normally); per phase: {_phase_notes(phases)}",
           phases=phases)


async def test_a_step_back_onto_published_timestamps_overwrites_nothing_in_influxdb(mosquitto, tmp_path: Path) -> None:
    influx = start_influxdb_v1(tmp_path / "influx")
    try:
        historian = InfluxDbHistorianConfig(kind="influxdb", url=influx.url, api="v1", token_env=None)
        tower, emitted, phases = await run_with_jumps(mosquitto, tmp_path, historian)
        try:
            stored = stored_rows(tower, emitted)
            epochs = tower.historian.query('SHOW TAG VALUES FROM "process_values" WITH KEY = "clock_epoch"')
            steps_back = tower.historian.clock_steps.steps_back
        finally:
            tower.close()
    finally:
        stop_process(influx.proc)

    # InfluxDB keeps one point per series and timestamp; the samples dated back onto timestamps
    # the tags had reached carry a clock_epoch tag (a series of their own), so both values stay.
    repeated = assert_stored_once_each(emitted, stored)
    assert b'"clock_epoch","1"' in epochs and b'"clock_epoch","2"' in epochs
    assert steps_back >= 3 * len(tower.tags), "the -1 h, -2 s and corrective steps, on every tag"
    assert_screen_follows_the_clock({p["phase"]: p for p in phases})
    record("clock jumps on the plant side, InfluxDB 1.x historian", emitted=emitted.height, stored=stored.height,
           lost=0, duplicates=0, recovery_s=None,
           promise="no loss: the samples a step back dates onto stored timestamps get a clock_epoch tag "
                   "(overwrite nothing)",
           notes=f"same steps; {repeated} (tag, ts) published twice by the -2 s step, both values kept; "
                 f"{steps_back} steps back detected (tag x step); "
                 f"{sum(p['alerts'] for p in phases)} alerts raised in all; per phase: {_phase_notes(phases)}",
           phases=phases)
