"""The simulator's promise to the detectors: in normal operation (no fault), for the demo site
and any seed, no reading crosses a warning limit and the rolling z-score detector (window
120, threshold 8, std floored at 1% of the alarm span) never fires, across batch and phase
changes, and no sensor repeats one value long enough to look stuck."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from controltower.site import Limits, SiteConfig
from simulators.plant import Plant
from tests.simulators.conftest import START

TICK_S = 0.5
HOURS = 2.0
WINDOW, THRESHOLD, MIN_STD_FRACTION = 120, 8.0, 0.01


def std_floor(limits: Limits) -> float:
    """1% of the alarm span, else of the warning span; no floor when neither span exists."""
    if limits.alarm_low is not None and limits.alarm_high is not None:
        return MIN_STD_FRACTION * (limits.alarm_high - limits.alarm_low)
    if limits.warning_low is not None and limits.warning_high is not None:
        return MIN_STD_FRACTION * (limits.warning_high - limits.warning_low)
    return 1e-12


def max_rolling_z(values: np.ndarray, floor: float) -> float:
    """Largest |x_i - mean| / max(std, floor) over the 120 samples before each x_i (ddof=1)."""
    windows = np.lib.stride_tricks.sliding_window_view(values[:-1], WINDOW)
    mean = windows.mean(axis=1)
    std = np.maximum(windows.std(axis=1, ddof=1), floor)
    return float(np.max(np.abs(values[WINDOW:] - mean) / std))


@pytest.fixture(scope="module", params=[7, 2024])
def normal_run(request, quiet_site: SiteConfig) -> tuple[SiteConfig, pl.DataFrame]:
    plant = Plant(quiet_site, seed=request.param, start=START)
    return quiet_site, plant.run(HOURS * 3600, TICK_S)


def test_the_run_spans_several_batches_and_phases(normal_run):
    _, frame = normal_run
    assert frame["batch_id"].n_unique() >= 3 + 3  # every unit runs at least two batches in 2 h
    assert frame.filter(pl.col("unit") == "br101")["batch_id"].unique().sort().to_list() == [
        "BR101-0001",
        "BR101-0002",
    ]


def test_no_reading_crosses_a_warning_limit(normal_run):
    site, frame = normal_run
    crossings = []
    for info in site.tag_table():
        values = frame.filter(pl.col("tag_id") == info.tag_id)["value"].to_numpy()
        assert len(values) == HOURS * 3600 / TICK_S
        lim = info.tag.limits
        if lim.warning_low is not None and values.min() <= lim.warning_low:
            crossings.append((info.tag_id, "low", float(values.min()), lim.warning_low))
        if lim.warning_high is not None and values.max() >= lim.warning_high:
            crossings.append((info.tag_id, "high", float(values.max()), lim.warning_high))
    assert crossings == []


def test_the_rolling_z_score_never_fires(normal_run):
    site, frame = normal_run
    firing = {}
    for info in site.tag_table():
        values = frame.filter(pl.col("tag_id") == info.tag_id)["value"].to_numpy()
        z = max_rolling_z(values, std_floor(info.tag.limits))
        if z >= THRESHOLD:
            firing[info.tag_id] = z
    assert firing == {}


def test_no_sensor_looks_stuck(normal_run):
    """The flatline detector's premise: a healthy signal never repeats one value 30 times running."""
    _, frame = normal_run
    runs = (
        frame.sort("tag_id", "ts")
        .with_columns((pl.col("value") != pl.col("value").shift(1)).over("tag_id").fill_null(True).alias("moved"))
        .with_columns(pl.col("moved").cum_sum().over("tag_id").alias("run"))
        .group_by("tag_id", "run")
        .len()
    )
    longest = runs.group_by("tag_id").agg(pl.col("len").max()).sort("len", descending=True)
    assert longest["len"].max() < 30, longest.head(3)
