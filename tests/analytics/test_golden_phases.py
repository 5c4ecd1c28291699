"""`controltower model fit --kind golden` from a historian that holds batch events: the samples
are joined to the phase spans (as-of, by unit and time), so the golden model learns one envelope
per ISA-88 phase; without stored events it aligns whole batches, as before. The events are the
ones the simulator announces for the same plant (`simulators.batch_events.BatchTransitions`)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analytics.golden import WHOLE_BATCH
from analytics.models import ModelStore
from collector.sinks.duckdb import DuckDbHistorian
from controltower.cli import main
from simulators.plant import Plant
from tests.analytics.simulated_unit import (
    START,
    UNIT,
    batch_seconds,
    bioreactor_site,
    historian_site_file,
    simulate,
)
from tests.analytics.simulated_unit import announced_events as simulated_announced_events

SITE = bioreactor_site()
SEED = 5
DT_S = 5.0
PHASES = ["inoculation", "growth", "production", "harvest"]
GOOD = "BR101-0002,BR101-0003,BR101-0004,BR101-0005"


def announced_events(seconds: float) -> pl.DataFrame:
    """The batch events the simulator announces over `seconds` of the plant, tick by tick."""
    return simulated_announced_events(SITE, SEED, seconds, DT_S)


def site_file(root: Path, samples: pl.DataFrame, events: pl.DataFrame | None) -> Path:
    return historian_site_file(root, SITE, samples, events)


@pytest.fixture(scope="module")
def plant_run() -> tuple[pl.DataFrame, pl.DataFrame]:
    seconds = 5.5 * batch_seconds(SITE)
    return simulate(SITE, seed=SEED, seconds=seconds, dt_s=DT_S), announced_events(seconds)


def test_golden_fit_from_the_historian_learns_an_envelope_per_phase(plant_run, tmp_path: Path, capsys) -> None:
    samples, events = plant_run
    assert events["transition"].value_counts().sort("transition").rows() == [
        ("batch_end", 5), ("batch_start", 5), ("phase_change", 17)]
    path = site_file(tmp_path, samples, events)
    assert main(["model", "fit", "--config", str(path), "--unit", UNIT, "--kind", "golden", "--batches", GOOD]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["training"]["phases"] == PHASES
    model = ModelStore(tmp_path / "data" / "models").load(UNIT, "golden").model
    assert list(model.phases_) == PHASES
    # One envelope per phase, as long as the phase (at the model's resolution), give or take a point.
    clock = Plant(SITE, seed=SEED, start=START)._by_path[UNIT].clock
    for phase, points in zip(PHASES, model.points_, strict=True):
        longest = max(clock.phase_durations(n)[PHASES.index(phase)] for n in range(2, 6))
        assert abs(points - longest / model.resolution_s) <= 2, (phase, points, longest)
    # Each phase's envelope starts where that phase starts: inoculation and growth begin apart.
    offsets = np.concatenate([[0], np.cumsum(model.points_)])
    first_means = model.mean_[offsets[:-1]]
    assert not np.allclose(first_means[0], first_means[1])


def test_without_stored_phases_the_golden_fit_aligns_whole_batches(plant_run, tmp_path: Path, capsys) -> None:
    samples, _ = plant_run
    path = site_file(tmp_path, samples, None)
    assert main(["model", "fit", "--config", str(path), "--unit", UNIT, "--kind", "golden", "--batches", GOOD]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["phases"] == [WHOLE_BATCH]


def test_the_live_golden_monitor_follows_the_announced_phases(plant_run) -> None:
    from analytics.model_command import phased_samples
    from analytics.models import fit_unit_model
    from analytics.monitors import GoldenMonitor

    samples, events = plant_run
    fault_at = 4 * batch_seconds(SITE) + 1500.0  # batch 5, in its growth phase
    faulty = simulate(SITE, seed=SEED, seconds=5.5 * batch_seconds(SITE), dt_s=DT_S,
                      faults=[(fault_at, "ph", "bias", 900.0, 0.05)])
    historian = DuckDbHistorian(":memory:")
    try:
        historian.write_sync(samples)
        historian.write_batch_events_sync(events)
        good = samples.filter(pl.col("batch_id").is_in(GOOD.split(",")[:3]))
        fitted = fit_unit_model("golden", phased_samples(historian, UNIT, good), unit=UNIT,
                                variables=tuple(sorted(good["tag_id"].unique())))
    finally:
        historian.close()
    monitor = GoldenMonitor(fitted, on_delay_rows=3)
    assert monitor.by_phase
    run = faulty.filter(pl.col("batch_id") == "BR101-0005").sort("ts")
    announced = events.filter(pl.col("batch_id") == "BR101-0005")
    # Without its phase events the monitor cannot place the samples: nothing is scored.
    assert monitor.score(run.head(500)).is_empty()
    scores = []
    # Live: every minute of the batch, the events announced in it, then its samples.
    edges = run["ts"].dt.truncate("1m").unique().sort().to_list()
    for start in edges:
        end = start + timedelta(minutes=1)
        monitor.batch_events(announced.filter((pl.col("ts") >= start) & (pl.col("ts") < end)))
        scores.append(monitor.score(run.filter((pl.col("ts") >= start) & (pl.col("ts") < end))))
    scored = pl.concat(scores)
    assert scored.height > 0.9 * run["ts"].n_unique()
    fault = START + timedelta(seconds=fault_at)
    before = scored.filter(pl.col("ts") < fault)
    during = scored.filter((pl.col("ts") >= fault + timedelta(minutes=2)) & (pl.col("ts") < fault + timedelta(minutes=15)))
    assert (before["level"] > 0).mean() < 0.02, before.filter(pl.col("level") > 0)
    assert (during["level"] > 0).mean() > 0.8 and "ph" in during["contributors"].drop_nulls()[0]
