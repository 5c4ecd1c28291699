"""The generated enterprise: ISA-95 names, a mix of line types and protocols, limits that hold
the models' normal operation (same promise as the demo site), and a plant fast enough for it."""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import pytest

from controltower.site import SiteConfig
from simulators.enterprise import build_enterprise
from simulators.plant import Plant
from simulators.units import MODELS
from tests.simulators.conftest import START
from tests.simulators.test_normal_operation import THRESHOLD, max_rolling_z, std_floor

TICK_S = 0.5
HOURS = 2.0


def test_three_sites_of_22_lines_have_over_a_thousand_tags_in_isa95_names():
    site = build_enterprise(3, 22, seed=7)
    table = site.tag_table()
    assert len(table) == 1764
    assert [s.id for s in site.sites] == ["lyon", "basel", "cork"]
    assert all(len([ln for a in s.areas for ln in a.lines]) == 22 for s in site.sites)
    ids = [t.tag_id for t in table]
    assert len(set(ids)) == len(ids)
    assert "lyon.usp.bio1.br102.dissolved_oxygen" in ids
    assert "cork.ff.lyo4.fd42.chamber_pressure_pirani" in ids
    assert "basel.util.wfi3.loop2.toc" in ids
    kinds = Counter(u.kind for s in site.sites for a in s.areas for ln in a.lines for u in ln.units)
    assert set(kinds) == set(MODELS)
    sources = Counter(t.source for t in table)
    assert set(sources) == {"plant-opcua", "plant-mqtt"} and min(sources.values()) > 300
    assert site.simulation is not None and site.simulation.seed == 7


def test_the_structure_depends_on_the_counts_not_the_seed():
    a, b = build_enterprise(2, 7, seed=1), build_enterprise(2, 7, seed=2)
    assert [t.tag_id for t in a.tag_table()] == [t.tag_id for t in b.tag_table()]
    assert a.simulation.seed != b.simulation.seed


@pytest.mark.parametrize(("sites", "lines", "name"), [(0, 3, "sites"), (1, -2, "lines"), (1, 2.5, "lines")])
def test_bad_counts_are_refused_by_name(sites, lines, name):
    with pytest.raises(ValueError, match=f"enterprise {name}"):
        build_enterprise(sites, lines, seed=1)


def test_every_known_tag_runs_on_its_process_model(caplog):
    """No limit is too tight for its model's normal band (which would fall back to generic)."""
    with caplog.at_level(logging.WARNING, logger="simulators.units"):
        Plant(build_enterprise(1, 6, seed=1), seed=1, start=START)
    assert [r.message for r in caplog.records] == []


@pytest.fixture(scope="module", params=[7, 2024])
def normal_run(request) -> tuple[SiteConfig, dict[str, np.ndarray]]:
    site = build_enterprise(1, 6, seed=request.param)  # one line of each type
    frame = Plant(site, seed=request.param, start=START).run(HOURS * 3600, TICK_S)
    series = {
        key[0]: part["value"].to_numpy() for key, part in frame.partition_by("tag_id", as_dict=True).items()
    }
    return site, series


def test_normal_operation_stays_inside_warning_limits(normal_run):
    site, series = normal_run
    crossings = []
    for info in site.tag_table():
        values, lim = series[info.tag_id], info.tag.limits
        if lim.warning_low is not None and values.min() <= lim.warning_low:
            crossings.append((info.tag_id, float(values.min()), lim.warning_low))
        if lim.warning_high is not None and values.max() >= lim.warning_high:
            crossings.append((info.tag_id, float(values.max()), lim.warning_high))
    assert crossings == []


def test_normal_operation_never_fires_the_rolling_z_score_or_repeats_a_value(normal_run):
    site, series = normal_run
    firing, stuck = {}, {}
    for info in site.tag_table():
        values = series[info.tag_id]
        z = max_rolling_z(values, std_floor(info.tag.limits))
        if z >= THRESHOLD:
            firing[info.tag_id] = z
        moved = np.flatnonzero(np.diff(values) != 0)
        longest = int(np.max(np.diff(np.concatenate([[-1], moved, [len(values) - 1]]))))
        if longest >= 30:
            stuck[info.tag_id] = longest
    assert firing == {}
    assert stuck == {}


def test_freeze_dryer_gauges_agree_only_once_the_ice_is_gone(normal_run):
    """Primary drying: Pirani over-reads (water vapour); at its end it comes down to the manometer,
    while the product temperature rises to the shelf."""
    _, series = normal_run
    unit = "lyon.ff.lyo1.fd11"
    pirani, cm = series[f"{unit}.chamber_pressure_pirani"], series[f"{unit}.chamber_pressure_cm"]
    shelf, product = series[f"{unit}.shelf_temperature"], series[f"{unit}.product_temperature"]
    at = lambda s: int(s / TICK_S) - 1
    mid_primary, late_primary = at(1500 + 1200), at(1500 + 2650)
    assert pirani[mid_primary] / cm[mid_primary] > 1.4
    assert shelf[mid_primary] - product[mid_primary] > 8.0
    assert pirani[late_primary] / cm[late_primary] < 1.15
    assert shelf[late_primary] - product[late_primary] < 3.0
    assert shelf[at(1400)] < -43.0 and shelf[at(5600)] > 28.0  # frozen, then dried warm


def test_plant_steps_the_3x22_enterprise_faster_than_real_time():
    plant = Plant(build_enterprise(3, 22, seed=7), seed=7, start=START)
    began = time.perf_counter()
    for _ in range(20):
        frame = plant.step(1.0)
    per_step = (time.perf_counter() - began) / 20
    assert frame.height == 1764 and frame["value"].is_finite().all()
    assert per_step < 0.25, f"{per_step * 1000:.1f} ms per 1 s tick"  # measured ~7 ms; slack for CI
