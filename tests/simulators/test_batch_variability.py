"""Batches differ from one another, a little and within bounds, the same way for the same seed:
enough for a golden-batch envelope to have something to learn, never enough to leave it. The
bioreactor's new tags stay inside their normal band for any seed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from controltower.site import SiteConfig
from simulators.batches import SPREAD, BatchClock
from simulators.plant import Plant
from simulators.units.bioreactor import _BATCH_SPREAD, Bioreactor
from tests.simulators.conftest import START

BR = "lyon.usp.bio1.br101"


def test_phase_durations_vary_per_batch_within_the_spread_and_replay_per_seed():
    spread = SPREAD["bioreactor"]
    clock = BatchClock("br101", Bioreactor.recipe, seed=(7, 0), spread=spread)
    nominal = np.array([p.duration_s for p in Bioreactor.recipe])
    batches = np.array([clock.phase_durations(n) for n in range(1, 21)])
    assert np.all(np.abs(batches / nominal - 1.0) <= spread + 1e-12)
    assert len({tuple(b) for b in batches}) == 20  # every batch its own
    assert np.std(batches.sum(axis=1)) > 10.0  # whole batches differ by more than rounding
    again = BatchClock("br101", Bioreactor.recipe, seed=(7, 0), spread=spread)
    assert [again.phase_durations(n) for n in (20, 3, 1)] == [tuple(batches[n - 1]) for n in (20, 3, 1)]
    other = BatchClock("br101", Bioreactor.recipe, seed=(8, 0), spread=spread)
    assert other.phase_durations(1) != tuple(batches[0])


def test_the_clock_follows_the_drawn_durations():
    clock = BatchClock("br101", Bioreactor.recipe, seed=(1, 2), spread=0.04)
    first, second = sum(clock.phase_durations(1)), sum(clock.phase_durations(2))
    assert clock.at(first - 0.01).batch_id == "BR101-0001" and clock.at(first - 0.01).phase == "harvest"
    assert clock.at(first + 0.01).batch_id == "BR101-0002" and clock.at(first + 0.01).phase == "inoculation"
    growth_end = first + sum(clock.phase_durations(2)[:2])
    assert clock.at(growth_end - 0.01).phase == "growth" and clock.at(growth_end + 0.01).phase == "production"
    assert clock.at(first + second + 1).number == 3
    assert clock.at(10 * 3900).number == clock.at(10 * 3900).number  # looking back and forth is stable


def test_without_a_seed_every_batch_runs_the_recipe():
    clock = BatchClock("br101", Bioreactor.recipe)
    assert clock.phase_durations(5) == tuple(p.duration_s for p in Bioreactor.recipe)
    with pytest.raises(ValueError, match="spread"):
        BatchClock("br101", Bioreactor.recipe, seed=1, spread=0.5)


def test_bioreactor_batches_differ_but_stay_bounded(quiet_site: SiteConfig):
    plant = Plant(quiet_site, seed=7, start=START)
    frame = plant.run(3 * 3900 * 1.05, 2.0).filter(pl.col("tag_id") == f"{BR}.biomass")
    complete = ["BR101-0001", "BR101-0002", "BR101-0003"]
    peaks = (
        frame.filter(pl.col("batch_id").is_in(complete))
        .group_by("batch_id")
        .agg(pl.col("value").max())
        .sort("batch_id")["value"]
        .to_numpy()
    )
    assert len(peaks) == 3
    assert np.ptp(peaks) > 0.05  # not one batch replayed
    assert np.ptp(peaks) < 0.15 * peaks.mean()  # but no batch far off the others
    params = plant.process_model(BR).batch_parameters
    for key, value in params.items():
        assert abs(value - 1.0) <= _BATCH_SPREAD[key] + 1e-12


@pytest.mark.parametrize("seed", [1, 5, 99])
def test_every_bioreactor_tag_stays_in_its_normal_band(seed: int):
    model = Bioreactor(Bioreactor.KNOWN_TAGS, np.random.default_rng(seed))
    clock = BatchClock("br", model.recipe, seed=(seed, 0), spread=SPREAD["bioreactor"])
    values = np.array([model.step(1.0, clock.at(t)) for t in np.arange(1.0, 2.2 * 3900, 1.0)])
    for i, tag in enumerate(model.tags):
        low, high = Bioreactor.ENVELOPE[tag]
        assert low <= values[:, i].min() and values[:, i].max() <= high, (
            tag,
            values[:, i].min(),
            values[:, i].max(),
        )
    foam = values[:, model.tags.index("foam_level")]
    assert foam.max() > 15.0  # foam events happen, and antifoam clears them
    assert np.mean(foam < 5.0) > 0.8
