"""Process faults act on the process and show through the physics and the loops; each one is in
the ground truth (CSV and Parquet) with the tags it moves; bad targets are refused by name."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from controltower.site import (
    PROCESS_FAULT_UNIT_KINDS,
    FaultConfig,
    SiteConfig,
    SiteConfigError,
    parse_site_config,
)
from simulators.enterprise import build_enterprise
from simulators.evaluate import evaluate, parse_scenario
from simulators.faults import GROUND_TRUTH_COLUMNS, PROCESS_KINDS, read_ground_truth
from simulators.mqtt_publisher import InjectCommand, PlantMqttPublisher
from simulators.plant import Plant
from simulators.units import MODELS
from simulators.units.bioreactor import Bioreactor
from tests.conftest import REPO
from tests.simulators.conftest import START

BR = "lyon.usp.bio1.br101"
FILL = "lyon.ff.fill1.filler1.fill_weight"
FD = "lyon.ff.lyo1.fd11"


def with_faults(site: SiteConfig, faults: list[FaultConfig]) -> SiteConfig:
    assert site.simulation is not None
    return site.model_copy(update={"simulation": site.simulation.model_copy(update={"faults": faults})})


def run(plant: Plant, seconds: int, tick: float = 1.0) -> dict[str, np.ndarray]:
    """Readings of every tag, one row per tick, by tag id."""
    values = np.array([plant.advance(tick) for _ in range(int(seconds / tick))])
    return {t: values[:, i] for i, t in enumerate(plant.tag_ids)}


def faulty_and_clean(
    site: SiteConfig, target: str, kind: str, at_s: int, duration_s: int, after_s: int = 0, **kw
):
    """The same plant twice, with and without the fault injected at `at_s`: readings from `at_s` on."""
    clean, faulty = Plant(site, seed=7, start=START, **kw), Plant(site, seed=7, start=START)
    run(clean, at_s), run(faulty, at_s)
    faulty.inject(target, kind, duration_s, 1.0 if kind != "vacuum_leak" else 0.6)
    return run(faulty, duration_s + after_s), run(clean, duration_s + after_s), faulty


# --- what each model declares -------------------------------------------------------------------


def test_the_models_have_exactly_the_process_faults_the_site_config_allows():
    declared = {(kind, m.KIND) for m in MODELS.values() for kind in getattr(m, "PROCESS_FAULTS", {})}
    allowed = {(kind, unit_kind) for kind, kinds in PROCESS_FAULT_UNIT_KINDS.items() for unit_kind in kinds}
    assert declared == allowed
    assert {k.value for k in PROCESS_KINDS} == set(PROCESS_FAULT_UNIT_KINDS)
    for m in MODELS.values():
        for tags in getattr(m, "PROCESS_FAULTS", {}).values():
            assert tags and set(tags) <= set(m.KNOWN_TAGS)


# --- physics sanity -----------------------------------------------------------------------------


def test_cooling_failure_heats_the_broth_past_its_normal_band_and_saturates_the_loop(quiet_site: SiteConfig):
    faulty, clean, plant = faulty_and_clean(quiet_site, BR, "cooling_failure", 1200, 600)
    temp = faulty[f"{BR}.temperature"]
    high = Bioreactor.ENVELOPE["temperature"][1]
    assert clean[f"{BR}.temperature"].max() < high
    assert temp[-60:].mean() > 38.0  # past the warning limit within 10 simulated minutes
    assert np.argmax(temp > high) < 300  # out of the normal band within 5
    model = plant.process_model(BR)
    assert model.jacket_cmd == model._temp_pi.low  # the controller asks for all the cooling there is
    assert model.jacket > model.temperature - 1.5  # and does not get it


def test_feed_pump_failure_starves_the_culture(quiet_site: SiteConfig):
    faulty, clean, _ = faulty_and_clean(quiet_site, BR, "feed_pump_failure", 1200, 900)
    assert np.abs(faulty[f"{BR}.feed_rate"][30:-1]).max() < 0.15  # stopped until the fault ends
    assert clean[f"{BR}.feed_rate"].min() > 3.0
    do, do_clean = faulty[f"{BR}.dissolved_oxygen"], clean[f"{BR}.dissolved_oxygen"]
    assert do.max() > do_clean.max() + 4.0  # the DO spike of substrate depletion
    agitation, agitation_clean = faulty[f"{BR}.agitation"], clean[f"{BR}.agitation"]
    assert agitation[-300:].mean() < agitation_clean[-300:].mean() - 60.0  # uptake fell, stirring backs off
    biomass, biomass_clean = faulty[f"{BR}.biomass"], clean[f"{BR}.biomass"]
    assert biomass[-1] - biomass[300] < 0.3 < biomass_clean[-1] - biomass_clean[300]  # growth stalls


def test_contamination_pulls_do_down_saturates_the_cascade_and_drives_base(quiet_site: SiteConfig):
    faulty, clean, _ = faulty_and_clean(quiet_site, BR, "contamination", 1200, 1200)
    assert faulty[f"{BR}.dissolved_oxygen"].min() < 15.0 < clean[f"{BR}.dissolved_oxygen"].min()
    assert faulty[f"{BR}.agitation"].max() > 295.0 > clean[f"{BR}.agitation"].max()
    assert faulty[f"{BR}.air_flow"].max() > 90.0
    assert clean[f"{BR}.air_flow"].max() < 25.0  # at its minimum while agitation alone copes
    assert faulty[f"{BR}.base_flow"].max() > 200.0 > 3 * clean[f"{BR}.base_flow"].max()
    assert faulty[f"{BR}.ph"].min() < clean[f"{BR}.ph"].min() - 0.1  # the base pump cannot keep up


def test_vacuum_leak_raises_both_gauges_and_warms_the_product():
    site = build_enterprise(1, 4, seed=3)
    # Primary drying starts about 25 minutes into the first batch.
    faulty, clean, _ = faulty_and_clean(site, FD, "vacuum_leak", 1800, 600)
    for gauge in ("chamber_pressure_cm", "chamber_pressure_pirani"):
        rise = faulty[f"{FD}.{gauge}"][-120:].mean() - clean[f"{FD}.{gauge}"][-120:].mean()
        assert rise > 80.0, gauge  # 200 ubar x 0.6, less what the bleed absorbs
    assert (
        faulty[f"{FD}.product_temperature"][-60:].mean()
        > clean[f"{FD}.product_temperature"][-60:].mean() + 2.0
    )
    assert np.array_equal(
        faulty[f"{FD}.shelf_temperature"], clean[f"{FD}.shelf_temperature"]
    )  # not the shelf


def test_a_process_fault_leaves_the_other_units_alone(quiet_site: SiteConfig):
    faulty, clean, _ = faulty_and_clean(quiet_site, BR, "contamination", 600, 300)
    for tag in faulty:
        if not tag.startswith(BR):
            assert np.array_equal(faulty[tag], clean[tag]), tag


def test_the_unit_recovers_when_the_fault_ends(quiet_site: SiteConfig):
    faulty, clean, _ = faulty_and_clean(quiet_site, BR, "feed_pump_failure", 1200, 300, after_s=600)
    assert abs(faulty[f"{BR}.feed_rate"][-60:].mean() - clean[f"{BR}.feed_rate"][-60:].mean()) < 0.5


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_data_with_process_faults(quiet_site: SiteConfig):
    faults = [
        FaultConfig(unit=BR, kind="contamination", start_s=300, duration_s=600, magnitude=0.8),
        FaultConfig(unit=BR, kind="cooling_failure", start_s=500, duration_s=200, magnitude=0.5),
        FaultConfig(tag=FILL, kind="noise", start_s=100, duration_s=100, magnitude=0.01),
    ]
    site = with_faults(quiet_site, faults)
    one = Plant(site, seed=11, start=START).run(1200, 1.0)
    two = Plant(site, seed=11, start=START).run(1200, 1.0)
    other = Plant(site, seed=12, start=START).run(1200, 1.0)
    assert one.equals(two)
    assert not one.equals(other)


# --- ground truth -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gt.csv", "gt.parquet"])
def test_ground_truth_round_trip(quiet_site: SiteConfig, tmp_path: Path, name: str):
    site = with_faults(
        quiet_site, [FaultConfig(unit=BR, kind="feed_pump_failure", start_s=5, duration_s=60, magnitude=0.5)]
    )
    path = tmp_path / name
    plant = Plant(site, seed=1, start=START, ground_truth=path)
    run(plant, 10)
    injected = [
        plant.inject(BR, "cooling_failure", 120.0, 1.0),
        plant.inject(FILL, "spike", 5.0, 0.25),
        plant.inject("br101", "contamination", 30.0, 0.75),  # a bare unit id, when unambiguous
    ]
    expected = [
        (
            "",
            "feed_pump_failure",
            START + timedelta(seconds=5),
            START + timedelta(seconds=65),
            0.5,
            BR,
            ";".join(f"{BR}.{t}" for t in Bioreactor.PROCESS_FAULTS["feed_pump_failure"]),
        ),
    ] + [(f.tag_id, f.kind.value, f.start, f.end, f.magnitude, f.target, ";".join(f.tags)) for f in injected]
    assert injected[2].target == BR and injected[0].tags == tuple(
        f"{BR}.{t}" for t in Bioreactor.PROCESS_FAULTS["cooling_failure"]
    )
    csv_path = path.with_suffix(".csv")
    for frame in [read_ground_truth(csv_path)] + (
        [read_ground_truth(path)] if name.endswith(".parquet") else []
    ):
        assert frame.columns == list(GROUND_TRUTH_COLUMNS)
        assert [tuple(r) for r in frame.iter_rows()] == expected
    with csv_path.open(newline="") as f:
        assert next(csv.reader(f)) == list(GROUND_TRUTH_COLUMNS)
    # A second plant appends to the same files.
    again = Plant(quiet_site, seed=1, start=START, ground_truth=path)
    again.inject(BR, "cooling_failure", 10.0, 0.2)
    assert read_ground_truth(path).height == len(expected) + 1
    assert read_ground_truth(csv_path).height == len(expected) + 1


def test_an_old_five_column_ground_truth_is_read_and_upgraded(quiet_site: SiteConfig, tmp_path: Path):
    path = tmp_path / "gt.csv"
    path.write_text(
        "tag_id,kind,start,end,magnitude\n"
        f"{FILL},spike,2024-05-01T06:00:02.000000Z,2024-05-01T06:00:03.000000Z,0.5\n"
    )
    old = read_ground_truth(path)
    assert old["target"].to_list() == [FILL] and old["tags"].to_list() == [FILL]
    Plant(quiet_site, seed=1, start=START, ground_truth=path).inject(BR, "contamination", 10.0, 1.0)
    frame = read_ground_truth(path)
    assert frame["kind"].to_list() == ["spike", "contamination"]
    assert frame["target"].to_list() == [FILL, BR]
    assert frame.filter(pl.col("kind") == "spike").row(0) == old.row(0)


# --- bad targets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            {"tag": f"{BR}.temperature", "kind": "cooling_failure"},
            "'unit': cooling_failure is a process fault",
        ),
        ({"unit": BR, "kind": "spike"}, "'tag': spike is a sensor fault"),
        ({"unit": BR, "tag": FILL, "kind": "spike"}, "not both"),
        ({"unit": BR, "kind": "contamination", "magnitude": 0.0}, "'magnitude'"),
        ({"unit": BR, "kind": "contamination", "magnitude": 1.5}, "'magnitude'"),
    ],
)
def test_a_fault_whose_kind_does_not_fit_its_target_is_refused_naming_the_key(fault, message):
    with pytest.raises(ValueError, match=message):
        FaultConfig.model_validate({"start_s": 0, "duration_s": 10, "magnitude": 1.0} | fault)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            {"unit": "lyon.ff.fill1.filler1", "kind": "cooling_failure"},
            (
                "simulation.faults[0].kind: unit 'lyon.ff.fill1.filler1' is of kind 'filling_line', "
                "which has no cooling_failure process fault (units of kind bioreactor have it)"
            ),
        ),
        ({"unit": "lyon.usp.bio1.br999", "kind": "contamination"}, "simulation.faults[0].unit: "),
        ({"unit": BR, "kind": "vacuum_leak"}, "units of kind freeze_dryer have it"),
    ],
)
def test_a_site_file_with_a_process_fault_on_the_wrong_unit_is_refused(
    quiet_site: SiteConfig, fault, message
):
    data = quiet_site.model_dump(mode="json", exclude_none=True)
    data["simulation"]["faults"] = [{"start_s": 0, "duration_s": 10, "magnitude": 1.0} | fault]
    with pytest.raises(SiteConfigError) as err:
        parse_site_config(data)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("target", "kind", "message"),
    [
        (f"{BR}.temperature", "cooling_failure", "its target is a unit"),
        (BR, "spike", "a sensor fault's target is a tag"),
        ("lyon.ff.fill1.filler1", "contamination", "has no contamination process fault"),
        ("lyon.nope.x.y", "feed_pump_failure", "unknown unit"),
    ],
)
def test_bad_process_fault_injections_are_refused_by_name(
    quiet_site: SiteConfig, tmp_path: Path, target, kind, message
):
    truth = tmp_path / "gt.csv"
    plant = Plant(quiet_site, seed=1, start=START, ground_truth=truth)
    with pytest.raises(ValueError, match=message):
        plant.inject(target, kind, 10.0, 1.0)
    assert not truth.exists()


# --- scored and injected at run time ------------------------------------------------------------


def test_evaluate_scores_process_faults_on_the_tags_they_move(tmp_path: Path):
    scenario = parse_scenario(
        {
            "name": "process-faults",
            "site": "demo-site.yaml",
            "seed": 7,
            "duration_s": 1800,
            "faults": [
                {"unit": BR, "kind": "cooling_failure", "start_s": 600, "duration_s": 600, "magnitude": 1.0},
                {"tag": FILL, "kind": "spike", "start_s": 300, "duration_s": 30, "magnitude": 0.12},
            ],
        },
        "process-faults.yaml",
        REPO / "config",
    )
    truth = tmp_path / "gt.parquet"
    card = evaluate(scenario, ground_truth=truth)
    cooling = next(e for e in card.events if e.event.kind == "cooling_failure")
    assert cooling.detected and cooling.event.target == BR
    assert cooling.event.tags == (f"{BR}.temperature",)
    assert 0.0 < cooling.delay_s < 600.0
    text = card.to_text()
    assert text.splitlines()[3].endswith("grace 60 s after a fault ends, 300 s after a process fault")
    assert [line.split()[:4] for line in text.splitlines() if line.startswith("cooling_failure")] == [
        ["cooling_failure", "1", "1", "1.00"]
    ]
    assert any(line.split()[1:3] == ["cooling_failure", BR] for line in text.splitlines())
    # What was scored is what the plant wrote.
    written = read_ground_truth(truth)
    assert written["kind"].to_list() == ["spike", "cooling_failure"]
    assert card.to_dict()["events"][1]["tags"] == [f"{BR}.temperature"]


def test_an_injection_command_may_target_a_unit(quiet_site: SiteConfig, tmp_path: Path):
    plant = Plant(quiet_site, seed=1, start=START, ground_truth=tmp_path / "gt.csv")
    received: list[InjectCommand] = []

    def inject(command: InjectCommand) -> None:
        received.append(command)
        plant.inject(command.target, command.kind, command.duration_s, command.magnitude)

    publisher = PlantMqttPublisher(
        url="mqtt://127.0.0.1:1", topic_prefix="plant", units=plant.units, on_inject=inject
    )
    ok = json.dumps({"unit": BR, "kind": "contamination", "duration_s": 60, "magnitude": 0.5})
    assert publisher.handle_command(ok.encode())
    both = json.dumps({"unit": BR, "tag_id": FILL, "kind": "spike", "duration_s": 60})
    wrong = json.dumps(
        {"unit": "lyon.ff.fill1.filler1", "kind": "contamination", "duration_s": 60, "magnitude": 1}
    )
    assert not publisher.handle_command(both.encode()) and not publisher.handle_command(wrong.encode())
    assert publisher.stats.commands_accepted == 1 and publisher.stats.commands_rejected == 2
    assert read_ground_truth(tmp_path / "gt.csv")["target"].to_list() == [BR]
