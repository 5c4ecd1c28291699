"""Process models: signals move like the process (loops, lags, correlations), not like
independent random numbers; unknown kinds and unknown tags get the generic model."""

from __future__ import annotations

import numpy as np
import pytest

from controltower.site import Limits, Tag, Unit
from simulators.batches import BatchClock, batch_prefix
from simulators.units import build_unit_model
from simulators.units.bioreactor import Bioreactor
from simulators.units.filling_line import FillingLine
from simulators.units.generic import GenericUnit, operating_band
from simulators.units.tablet_press import TabletPress


def run_model(model, seconds: float, dt: float = 0.5, unit_id: str = "u1") -> np.ndarray:
    clock = BatchClock(unit_id, model.recipe)
    out, t = [], 0.0
    for _ in range(int(seconds / dt)):
        t += dt
        out.append(model.step(dt, clock.at(t)))
    return np.array(out)


def opcua_tag(tag_id: str, **limits: float) -> Tag:
    return Tag(id=tag_id, limits=Limits(**limits), opcua={"node_id": f"ns=2;s={tag_id}"})


def test_bioreactor_agitation_rises_to_hold_dissolved_oxygen_as_the_culture_grows():
    model = Bioreactor(Bioreactor.KNOWN_TAGS, np.random.default_rng(3))
    values = run_model(model, 3000.0)  # inoculation (300 s) + growth (1500 s) + most of production
    agitation, do = values[:, 3], values[:, 2]
    early, late = slice(0, 600), slice(len(values) - 600, None)
    assert agitation[late].mean() > agitation[early].mean() + 60  # oxygen demand up, stirring up
    assert abs(do[late].mean() - 40.0) < 2.0  # while DO is held at the growth/production setpoint
    assert model.biomass > 4.0


def test_bioreactor_temperature_ramps_to_the_production_setpoint():
    model = Bioreactor(("temperature",), np.random.default_rng(4))
    values = run_model(model, 3000.0)[:, 0]
    assert abs(values[:600].mean() - 37.0) < 0.05
    assert abs(values[-600:].mean() - 36.5) < 0.1
    # A ramp, not a step: no two consecutive readings differ by more than noise allows.
    assert np.max(np.abs(np.diff(values))) < 0.15


def test_tablet_force_follows_tablet_weight():
    model = TabletPress(TabletPress.KNOWN_TAGS, np.random.default_rng(5))
    values = run_model(model, 600.0)
    force, weight = values[:, 0], values[:, 1]
    assert np.corrcoef(force, weight)[0, 1] > 0.8  # speed (dwell time) explains the rest
    assert abs(weight.mean() - 250.0) < 1.0


def test_filler_needles_have_their_own_bias():
    model = FillingLine(("fill_weight",), np.random.default_rng(6))
    assert np.ptp(model.needle_bias) > 0.002
    values = run_model(model, 600.0)[:, 0]
    assert abs(values.mean() - 2.0) < 0.005
    assert 0.002 < values.std() < 0.01


def test_unknown_kind_gets_generic_signals_centred_between_warning_limits():
    unit = Unit(id="mixer-7", kind="mixer", tags=[opcua_tag("torque", warning_low=10.0, warning_high=30.0)])
    model = build_unit_model(unit, np.random.default_rng(1))
    assert isinstance(model, GenericUnit)
    values = run_model(model, 1800.0)[:, 0]
    assert abs(values.mean() - 20.0) < 1.5
    assert values.min() > 10.0 and values.max() < 30.0
    assert values.std() > 0.05  # it is a live signal
    # first-order: consecutive readings are correlated, unlike white noise
    assert np.corrcoef(values[:-1], values[1:])[0, 1] > 0.5


def test_known_kind_treats_tags_it_does_not_know_generically():
    unit = Unit(
        id="br202",
        kind="bioreactor",
        tags=[
            opcua_tag("temperature", warning_low=36.0, warning_high=38.0),
            opcua_tag("vessel_weight", warning_high=50.0),
        ],
    )
    model = build_unit_model(unit, np.random.default_rng(2))
    assert model.tags == ("temperature", "vessel_weight")
    values = run_model(model, 600.0)
    assert abs(values[:, 0].mean() - 37.0) < 0.1
    centre, half = operating_band(Limits(warning_high=50.0))
    assert values[:, 1].max() < 50.0 and abs(values[:, 1].mean() - centre) < half


def test_a_known_tag_whose_limits_cannot_hold_the_model_falls_back_to_generic():
    unit = Unit(
        id="br303", kind="bioreactor", tags=[opcua_tag("temperature", warning_low=30.0, warning_high=32.0)]
    )
    values = run_model(build_unit_model(unit, np.random.default_rng(2)), 600.0)[:, 0]
    assert 30.0 < values.min() and values.max() < 32.0


@pytest.mark.parametrize(
    ("limits", "centre"),
    [
        (Limits(warning_low=1, warning_high=3), 2.0),
        (Limits(alarm_low=0, warning_high=10), 5.0),
        (Limits(), 0.0),
    ],
)
def test_operating_band(limits, centre):
    assert operating_band(limits)[0] == centre


def test_batch_clock_ids_and_phases():
    clock = BatchClock("br101", Bioreactor.recipe)
    assert batch_prefix("filler-1") == "FILLER1"
    assert clock.at(0).batch_id == "BR101-0001" and clock.at(0).phase == "inoculation"
    assert clock.at(301).phase == "growth"
    end = clock.batch_duration_s
    assert clock.at(end - 1).phase == "harvest" and clock.at(end - 1).batch_id == "BR101-0001"
    assert clock.at(end + 1).batch_id == "BR101-0002" and clock.at(end + 1).phase == "inoculation"
    assert 1800 <= end <= 7200  # demo-friendly: an hour, not days


def test_each_needle_has_its_own_tag_and_the_check_weigher_mixes_them():
    model = FillingLine(FillingLine.KNOWN_TAGS, np.random.default_rng(6))
    values = run_model(model, 900.0)
    out = {t: values[:, i] for i, t in enumerate(model.tags)}
    needles = np.array([out[f"fill_weight_n{k}"].mean() for k in range(1, 9)])
    # Each needle keeps its own offset (its bias), and the vial-by-vial weight averages them.
    assert np.corrcoef(needles, model.needle_bias)[0, 1] > 0.95
    assert abs(out["fill_weight"].mean() - needles.mean()) < 0.002
    # A normal run: a few rejects a minute for other causes, a clean grade A zone.
    assert 0.0 < out["reject_rate"].mean() < 1.1
    assert out["particles_0_5um"].max() < 3520 / 3 and out["particles_5_0um"].max() < 29 / 2


def test_rejects_rise_when_the_fill_leaves_the_check_weighers_tolerance():
    model = FillingLine(FillingLine.KNOWN_TAGS, np.random.default_rng(6))
    run_model(model, 60.0)
    model.needle_bias[3] += 0.06  # needle 4 worn: its vials are heavy
    values = run_model(model, 120.0)
    out = {t: values[:, i] for i, t in enumerate(model.tags)}
    assert out["fill_weight_n4"][-60:].mean() > 2.05
    assert out["reject_rate"][-60:].mean() > 20.0  # about one vial in eight


def test_ejection_force_follows_the_compaction():
    model = TabletPress(TabletPress.KNOWN_TAGS, np.random.default_rng(5))
    before = run_model(model, 300.0)[:, 3].mean()
    model.overrides["target_weight"] = 270.0  # heavier tablets: more compaction, harder ejection
    after = run_model(model, 900.0)[-300:, 3].mean()
    assert 340 < before < 360 and after > 1.25 * before
