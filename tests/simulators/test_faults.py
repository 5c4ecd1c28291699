"""Faults change the sensor readings as specified and every one lands in the ground truth."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from controltower.site import FaultConfig, SiteConfig
from simulators.faults import GROUND_TRUTH_COLUMNS
from simulators.plant import Plant
from tests.simulators.conftest import START

FILL = "lyon.ff.fill1.filler1.fill_weight"
TEMP = "lyon.usp.bio1.br101.temperature"
FORCE = "lyon.osd.tab1.press1.compression_force"


def series(plant: Plant, steps: int, tag: str) -> np.ndarray:
    return np.array([plant.step(0.5).filter(pl.col("tag_id") == tag)["value"].item() for _ in range(steps)])


def read_truth(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_spike_adds_its_magnitude_for_its_duration(quiet_site: SiteConfig, tmp_path: Path):
    clean, faulty = (
        Plant(quiet_site, seed=5, start=START),
        Plant(quiet_site, seed=5, start=START, ground_truth=tmp_path / "gt.csv"),
    )
    series(clean, 4, FILL), series(faulty, 4, FILL)
    faulty.inject(FILL, "spike", 5.0, 0.12)
    diff = series(faulty, 14, FILL) - series(clean, 14, FILL)
    np.testing.assert_allclose(diff[:9], 0.12, atol=1e-12)  # t = 2.5 .. 6.5 s, the fault covers [2, 7)
    np.testing.assert_allclose(diff[10:], 0.0, atol=1e-12)


def test_drift_ramps_from_zero_to_its_magnitude(quiet_site: SiteConfig):
    clean, faulty = Plant(quiet_site, seed=5, start=START), Plant(quiet_site, seed=5, start=START)
    faulty.inject(TEMP, "drift", 10.0, 3.0)
    diff = series(faulty, 24, TEMP) - series(clean, 24, TEMP)
    np.testing.assert_allclose(diff[:19], 3.0 * np.arange(1, 20) * 0.5 / 10.0, atol=1e-9)
    np.testing.assert_allclose(diff[20:], 0.0, atol=1e-12)


def test_stuck_holds_the_last_reading(quiet_site: SiteConfig):
    plant = Plant(quiet_site, seed=5, start=START)
    before = series(plant, 3, FORCE)[-1]
    plant.inject(FORCE, "stuck", 4.0)
    held = series(plant, 10, FORCE)
    assert np.all(held[:7] == before)
    assert held[-1] != before


def test_scheduled_faults_from_the_config_are_applied_and_logged(quiet_site: SiteConfig, tmp_path: Path):
    sim = quiet_site.simulation.model_copy(
        update={"faults": [FaultConfig(tag=FILL, kind="spike", start_s=2.0, duration_s=1.0, magnitude=0.5)]}
    )
    site = quiet_site.model_copy(update={"simulation": sim})
    truth = tmp_path / "gt.csv"
    plant = Plant(site, seed=5, start=START, ground_truth=truth)
    values = series(plant, 3, FILL)
    assert not truth.exists()  # not started yet: not yet in the ground truth
    values = np.concatenate([values, series(plant, 4, FILL)])
    assert values[3] > 2.3 and values[4] > 2.3 and values[6] < 2.1  # active at 2.0 and 2.5 s, gone at 3.5 s
    rows = read_truth(truth)
    assert rows == [
        {
            "tag_id": FILL,
            "kind": "spike",
            "start": "2024-05-01T06:00:02.000000Z",
            "end": "2024-05-01T06:00:03.000000Z",
            "magnitude": "0.5",
            "target": FILL,
            "tags": FILL,
        }
    ]


def test_injection_is_in_the_ground_truth_at_once(quiet_site: SiteConfig, tmp_path: Path):
    truth = tmp_path / "sub" / "gt.csv"
    plant = Plant(quiet_site, seed=1, start=START, ground_truth=truth)
    plant.step(10.0)
    fault = plant.inject(TEMP, "drift", 60.0, 2.5)
    assert fault.start == START + timedelta(seconds=10)
    with truth.open(newline="") as f:
        assert next(csv.reader(f)) == list(GROUND_TRUTH_COLUMNS)
    plant.inject(FILL, "stuck", 5.0)
    rows = read_truth(truth)
    assert [(r["tag_id"], r["kind"], r["start"], r["end"], float(r["magnitude"])) for r in rows] == [
        (TEMP, "drift", "2024-05-01T06:00:10.000000Z", "2024-05-01T06:01:10.000000Z", 2.5),
        (FILL, "stuck", "2024-05-01T06:00:10.000000Z", "2024-05-01T06:00:15.000000Z", 0.0),
    ]


@pytest.mark.parametrize(
    ("tag", "kind", "duration", "message"),
    [
        ("lyon.nope.x.y.z", "spike", 1.0, "lyon.nope.x.y.z"),
        (FILL, "flatline", 1.0, "flatline"),
        (FILL, "spike", 0.0, "duration_s"),
    ],
)
def test_bad_injections_are_refused_by_name(
    quiet_site: SiteConfig, tmp_path: Path, tag, kind, duration, message
):
    truth = tmp_path / "gt.csv"
    plant = Plant(quiet_site, seed=1, start=START, ground_truth=truth)
    with pytest.raises(ValueError, match=message):
        plant.inject(tag, kind, duration, 1.0)
    assert not truth.exists()
