"""The service loop without servers: ticking in wall-clock time at a speed, config defaults,
`simulate` as the CLI calls it (duration, cancellation, overrides)."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import pytest

from controltower.site import SiteConfig
from simulators.service import SimulatorService, simulate


async def test_simulate_runs_fast_forward_and_logs_scheduled_faults(demo_site: SiteConfig, tmp_path: Path):
    started = time.monotonic()
    # None overrides mean "not given" (the CLI passes them so); "none"/"off" disable a server.
    await simulate(
        demo_site, data_dir=tmp_path, duration_s=1.2, opcua_url="none", mqtt_url="off", speed=100.0, seed=None
    )
    assert time.monotonic() - started < 3.0
    with (tmp_path / "ground_truth.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 ticks x 0.5 s x 100 = 100 simulated seconds: the demo's fill-weight spike (at 40 s) and
    # temperature drift (at 90 s) have started; the stuck force (at 150 s) has not.
    assert [r["kind"] for r in rows] == ["spike", "drift"]


async def test_simulate_stops_cleanly_when_cancelled(demo_site: SiteConfig, tmp_path: Path):
    task = asyncio.create_task(
        simulate(demo_site, data_dir=tmp_path, duration_s=None, opcua_url="off", mqtt_url="off")
    )
    await asyncio.sleep(0.7)
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0


async def test_service_defaults_and_speed(demo_site: SiteConfig, tmp_path: Path):
    site = demo_site.model_copy(update={"simulation": None})
    svc = SimulatorService(site, data_dir=tmp_path, opcua_url=None, mqtt_url=None, speed=4.0, seed=9)
    assert svc.tick_s == 0.5 and svc.ground_truth_path == tmp_path / "ground_truth.csv"
    await svc.run(1.1)
    await svc.stop()
    assert svc.ticks == 2
    assert (svc.plant.now - svc.plant.start).total_seconds() == pytest.approx(4.0)
    fault = svc.inject("lyon.osd.tab1.press1.speed", "spike", 5.0, 3.0)
    assert fault.start == svc.plant.now
    with pytest.raises(ValueError, match="bogus"):
        svc.inject("lyon.osd.tab1.press1.speed", "bogus", 5.0, 3.0)


def test_unknown_simulate_override_is_an_error(demo_site: SiteConfig, tmp_path: Path):
    with pytest.raises(TypeError, match="colour"):
        asyncio.run(simulate(demo_site, data_dir=tmp_path, duration_s=0.1, colour="red"))
