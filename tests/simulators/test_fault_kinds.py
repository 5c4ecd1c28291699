"""The sensor faults beyond spike/drift/stuck: bias, noise, dropout, oscillation. Each changes the
reading as specified, only on its tag and only in its window, deterministically, and reaches the
ground truth like the others."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from controltower.site import FaultConfig, SiteConfig
from simulators.plant import Plant
from tests.simulators.conftest import START

PH = "lyon.usp.bio1.br101.ph"
DP = "lyon.ff.fill1.filler1.room_dp"
PRESSURE = "lyon.usp.bio1.br101.pressure"
SPEED = "lyon.osd.tab1.press1.speed"


def readings(plant: Plant, steps: int, dt: float = 0.5) -> np.ndarray:
    """(steps, tags) readings, NaN where a dropout took the value."""
    return np.array([plant.advance(dt) for _ in range(steps)])


def pair(site: SiteConfig, seed: int = 5) -> tuple[Plant, Plant]:
    return Plant(site, seed=seed, start=START), Plant(site, seed=seed, start=START)


def column(plant: Plant, tag: str) -> int:
    return plant.tag_ids.index(tag)


def test_bias_adds_a_constant_step_for_its_duration_only(quiet_site: SiteConfig):
    clean, faulty = pair(quiet_site)
    faulty.inject(PH, "bias", 10.0, -0.25)
    diff = readings(faulty, 24) - readings(clean, 24)
    i = column(faulty, PH)
    np.testing.assert_allclose(diff[:19, i], -0.25, atol=1e-12)  # t = 0.5 .. 9.5 s of [0, 10)
    np.testing.assert_allclose(diff[20:, i], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.delete(diff, i, axis=1), 0.0, atol=0)  # no other tag moves


def test_oscillation_adds_a_sine_of_its_amplitude_and_period(quiet_site: SiteConfig):
    clean, faulty = pair(quiet_site)
    faulty.inject(SPEED, "oscillation", 40.0, 12.0, period_s=20.0)
    diff = (readings(faulty, 80) - readings(clean, 80))[:, column(faulty, SPEED)]
    t = 0.5 * np.arange(1, 80)
    np.testing.assert_allclose(diff[:79], 12.0 * np.sin(2 * np.pi * t / 20.0), atol=1e-9)


def test_noise_adds_gaussian_noise_of_its_sigma_the_same_on_replay(quiet_site: SiteConfig):
    clean, faulty = pair(quiet_site)
    replay = Plant(quiet_site, seed=5, start=START)
    faulty.inject(DP, "noise", 600.0, 3.0)
    replay.inject(DP, "noise", 600.0, 3.0)
    i = column(faulty, DP)
    diff = (readings(faulty, 1000) - readings(clean, 1000))[:, i]
    assert 2.7 < diff.std() < 3.3 and abs(diff.mean()) < 0.3
    assert np.array_equal(
        readings(replay, 1000)[:, i] - readings(Plant(quiet_site, seed=5, start=START), 1000)[:, i], diff
    )


def test_dropout_gives_null_values_with_bad_quality_then_recovers(quiet_site: SiteConfig):
    plant = Plant(quiet_site, seed=5, start=START)
    plant.step(0.5)
    plant.inject(PRESSURE, "dropout", 2.0)
    frame = plant.run(4.0, 0.5)
    mine = frame.filter(pl.col("tag_id") == PRESSURE)
    assert mine["value"].is_null().to_list() == [True] * 3 + [False] * 5  # [0.5, 2.5): 1.0, 1.5, 2.0
    assert mine["quality"].to_list() == ["bad"] * 3 + ["good"] * 5
    others = frame.filter(pl.col("tag_id") != PRESSURE)
    assert others["quality"].unique().to_list() == ["good"] and others["value"].is_finite().all()
    step = plant.step(0.5)  # a single step of a healthy plant: good again
    assert step["quality"].unique().to_list() == ["good"]


def test_a_stuck_sensor_after_a_dropout_holds_a_real_value(quiet_site: SiteConfig):
    plant = Plant(quiet_site, seed=5, start=START)
    plant.inject(PRESSURE, "dropout", 1.0)
    readings(plant, 2)
    plant.inject(PRESSURE, "stuck", 5.0)
    held = readings(plant, 6)[:, column(plant, PRESSURE)]
    assert np.isfinite(held).all() and np.ptp(held) == 0.0


def test_new_kinds_scheduled_from_the_config_reach_the_ground_truth(quiet_site: SiteConfig, tmp_path: Path):
    faults = [
        FaultConfig(tag=PH, kind="bias", start_s=1.0, duration_s=2.0, magnitude=0.3),
        FaultConfig(tag=DP, kind="noise", start_s=1.0, duration_s=2.0, magnitude=2.0),
        FaultConfig(tag=PRESSURE, kind="dropout", start_s=1.5, duration_s=1.0),
        FaultConfig(tag=SPEED, kind="oscillation", start_s=2.0, duration_s=5.0, magnitude=5.0, period_s=10.0),
    ]
    site = quiet_site.model_copy(
        update={"simulation": quiet_site.simulation.model_copy(update={"faults": faults})}
    )
    truth = tmp_path / "gt.csv"
    plant = Plant(site, seed=5, start=START, ground_truth=truth)
    frame = plant.run(4.0, 0.5)
    assert frame.filter(pl.col("tag_id") == PRESSURE)["quality"].to_list().count("bad") == 2
    with truth.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["tag_id"], r["kind"]) for r in rows] == [
        (PH, "bias"),
        (DP, "noise"),
        (PRESSURE, "dropout"),
        (SPEED, "oscillation"),
    ]


@pytest.mark.parametrize(
    ("kind", "magnitude", "period", "message"),
    [
        ("noise", -1.0, 60.0, "standard deviation"),
        ("oscillation", 1.0, 0.0, "period_s"),
        ("wobble", 1.0, 60.0, "oscillation"),
    ],
)
def test_bad_new_fault_requests_are_refused_by_name(quiet_site: SiteConfig, kind, magnitude, period, message):
    plant = Plant(quiet_site, seed=1, start=START)
    with pytest.raises(ValueError, match=message):
        plant.inject(DP, kind, 10.0, magnitude, period_s=period)
