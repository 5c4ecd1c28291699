"""The tower runs the clock-driven detectors (stale data) on a timer, against the plant's clock:
a silent source raises stale alerts with no batch arriving, a live one does not, and a plant
whose clock is far from the wall clock (simulated time, an offset clock) is not stale for that."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from controltower.runtime import ControlTower
from simulators.plant import Plant
from tests.analytics.simulated_unit import START, bioreactor_site


def tower(tmp_path: Path) -> ControlTower:
    site = bioreactor_site(str(tmp_path))
    detectors = site.detectors.model_copy(update={"stale": site.detectors.stale.model_copy(update={"after_s": 0.6})})
    return ControlTower(site.model_copy(update={"detectors": detectors}), data_dir=tmp_path)


def stale_tags(t: ControlTower) -> set[str]:
    return {a.tag_id for a in t.alerts.active() if a.detector == "stale"}


async def test_a_silent_source_goes_stale_on_the_timer_and_a_live_one_does_not(tmp_path: Path) -> None:
    t = tower(tmp_path)
    plant = Plant(t.site, seed=1, start=START)  # a plant clock two years behind the wall clock
    try:
        checks = asyncio.create_task(t.check_clock(period_s=0.1))
        for _ in range(12):  # live: a batch every 0.1 s of wall time, 0.1 s of plant time apart
            t._detect(plant.step(0.1))
            await asyncio.sleep(0.1)
        assert stale_tags(t) == set(), "a live plant, whatever its clock, is not stale"
        await asyncio.sleep(1.5)  # silent: no batch at all
        assert stale_tags(t) == {i.tag_id for i in t.tags}
        t._detect(plant.step(0.1))  # back: the condition clears
        assert stale_tags(t) == set()
        checks.cancel()
        await asyncio.gather(checks, return_exceptions=True)
    finally:
        t.close()


def test_the_plant_clock_is_the_newest_sample_advanced_by_wall_time(tmp_path: Path) -> None:
    t = tower(tmp_path)
    try:
        before = t.data_now()
        assert abs((before - t.started_at).total_seconds()) < 60  # the wall clock before any sample
        ts = START + timedelta(hours=1)
        t._detect(Plant(t.site, seed=1, start=ts).step(0.5))
        assert timedelta(0) <= t.data_now() - (ts + timedelta(seconds=0.5)) < timedelta(seconds=5)
    finally:
        t.close()
