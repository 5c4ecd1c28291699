"""Batch events end to end, with real parts: the project's simulator runs the demo plant fast
(100 simulated seconds a second) over OPC-UA (the bioreactor and the tablet press: batch id and
phase variables) and MQTT (the filler: `.../_batch` messages) into a real Mosquitto; the control
tower collects both into DuckDB. The phase spans read back from the historian must equal the
ones the simulator's own batch schedule gives, unit by unit, over the time both saw."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import polars as pl

from controltower.batch_events import batch_events_frame, phase_spans, read_phase_spans
from controltower.demo import point_sources_at
from controltower.runtime import ControlTower
from controltower.site import load_site_config
from tests.conftest import REPO, free_port

UNITS = {"lyon.usp.bio1.br101": "opcua", "lyon.osd.tab1.press1": "opcua", "lyon.ff.fill1.filler1": "mqtt"}
RUN_S = 20.0
SPEED = 100.0


def simulator_events(simulator) -> pl.DataFrame:
    return batch_events_frame([
        {"ts": e.at, "unit_id": e.unit, "batch_id": e.batch_id, "phase": e.phase, "transition": e.transition}
        for e in simulator.batch_events
    ])


async def test_phase_spans_in_the_historian_equal_the_simulators_batch_schedule(mosquitto, tmp_path: Path) -> None:
    from simulators.service import SimulatorService

    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    site = point_sources_at(load_site_config(REPO / "config" / "demo-site.yaml"), opcua_url=opcua_url,
                            mqtt_url=mosquitto.url)
    simulator = SimulatorService(site, data_dir=tmp_path / "sim", opcua_url=opcua_url, mqtt_url=mosquitto.url,
                                 seed=5, speed=SPEED)
    await simulator.start()
    tower = ControlTower(site, data_dir=tmp_path / "tower")
    tower_task = asyncio.create_task(tower.run(None))
    await asyncio.sleep(3.0)  # the collectors connect and subscribe before the plant starts ticking
    sim_task = asyncio.create_task(simulator.run(None))
    try:
        await asyncio.sleep(RUN_S)
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)
        await asyncio.sleep(4.0)  # the last events reach the historian
    finally:
        for task in (tower_task, sim_task):
            task.cancel()
        await asyncio.gather(tower_task, sim_task, return_exceptions=True)
        stored = tower.historian.read_batch_events("lyon", simulator.plant.now - timedelta(days=1))
        tower.close()
        await simulator.stop()

    expected_events = simulator_events(simulator)
    assert expected_events.height >= 10, f"the simulator announced too few batch events: {expected_events}"
    last_tick = simulator.plant.now
    for unit, path in UNITS.items():
        mine = stored.filter(pl.concat_str("site", "area", "line", "unit", separator=".") == unit)
        announced = expected_events.filter(pl.concat_str("site", "area", "line", "unit", separator=".") == unit)
        assert announced.height >= 2, f"{unit}: the simulator announced {announced.height} event(s)"
        assert mine.height, f"{unit} ({path}): no batch event stored"
        # Over the time both saw: from the collector's first event of the unit to the last tick.
        since = mine["ts"].min()
        window = (pl.col("ts") > since) & (pl.col("ts") <= last_tick)
        got = phase_spans(mine.filter(window & (pl.col("transition") != "observed")))
        want = phase_spans(announced.filter(window))
        assert want.height >= 2, f"{unit}: too few phases in the window: {want}"
        assert got.to_dicts() == want.to_dicts(), f"{unit} ({path}):\nstored {got}\nannounced {want}"
        if path == "opcua":
            # The phase running when the collector first looked is stored as observed, then the changes.
            assert mine["transition"][0] == "observed", mine
    # The historian query: the line's phase spans over a range, the last one still open.
    historian = _reopen(tmp_path)
    try:
        spans = read_phase_spans(historian, "lyon.ff.fill1", stored["ts"].min(), last_tick + timedelta(seconds=1))
    finally:
        historian.close()
    assert spans.height >= 2 and spans["unit_id"].unique().to_list() == ["lyon.ff.fill1.filler1"]
    assert spans["end"][-1] is None
    assert spans["phase"].is_in(["start_up", "filling", "wind_down"]).all()


def _reopen(tmp_path: Path):
    from collector.sinks.duckdb import DuckDbHistorian

    return DuckDbHistorian(tmp_path / "tower" / "historian.duckdb")


async def test_influxdb_v1_stores_batch_events_and_answers_phase_spans(influxdb_v1) -> None:
    from collector.sinks.influxdb import InfluxDbHistorian
    from tests.collector.test_batch_events import U1, at, events, spans_as_tuples

    historian = InfluxDbHistorian(url=influxdb_v1.url, api="v1", bucket="controltower")
    try:
        odd = events().with_columns(line=pl.lit("l 1,x"), product=pl.lit('mAb "101"'))  # escaping round trip
        await historian.write_batch_events(odd)
        await historian.write_batch_events(odd)  # a replay overwrites itself
        stored = historian.read_batch_events("s", at(-1))
        assert stored.height == odd.height
        assert stored.sort("unit", "ts", "transition").equals(
            odd.sort("unit", "ts", "transition")), stored
        u1 = U1.replace(".l.", ".l 1,x.")
        assert spans_as_tuples(read_phase_spans(historian, "s.a.l 1,x.u1", at(12), at(30))) == [
            (u1, "B1", "heat", at(10), at(20)), (u1, "B2", "fill", at(20), None)]
        # A window inside a span: the events before and after it give its start and end.
        assert spans_as_tuples(read_phase_spans(historian, "s.a.l 1,x", at(16), at(18))) == [
            (u1, "B1", "heat", at(10), at(20))]
        assert read_phase_spans(historian, "s.a.other", at(0)).is_empty()
    finally:
        historian.close()
