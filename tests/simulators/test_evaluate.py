"""`controltower evaluate`: scenarios run offline through the real detection engine, scored
against the ground truth. On the demo site a spike, a drift and a stuck sensor are each caught
within bounded delays, and a healthy plant raises no alert for hours."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from controltower.site import SiteConfigError
from simulators.evaluate import (
    AlertSpan,
    RunResult,
    ScenarioError,
    TruthEvent,
    add_evaluate_arguments,
    evaluate,
    load_scenario,
    parse_scenario,
    run_evaluate,
    score,
)
from tests.conftest import REPO

SCENARIOS = REPO / "config" / "scenarios"
CONFIG = REPO / "config"


def scenario_data(**overrides):
    data = {
        "name": "three-faults",
        "site": "demo-site.yaml",
        "seed": 7,
        "duration_s": 1800,
        "faults": [
            {
                "tag": "lyon.ff.fill1.filler1.fill_weight",
                "kind": "spike",
                "start_s": 300,
                "duration_s": 30,
                "magnitude": 0.12,
            },
            {
                "tag": "lyon.usp.bio1.br101.temperature",
                "kind": "drift",
                "start_s": 600,
                "duration_s": 300,
                "magnitude": 3.0,
            },
            {
                "tag": "lyon.osd.tab1.press1.compression_force",
                "kind": "stuck",
                "start_s": 1200,
                "duration_s": 120,
            },
        ],
    }
    return {**data, **overrides}


@pytest.fixture(scope="module")
def three_faults():
    return evaluate(parse_scenario(scenario_data(), "three-faults.yaml", CONFIG))


def test_spike_drift_and_stuck_are_each_detected_within_bounded_delays(three_faults):
    by_kind = {e.event.kind: e for e in three_faults.events}
    assert {k: e.detected for k, e in by_kind.items()} == {"spike": True, "drift": True, "stuck": True}
    assert by_kind["spike"].delay_s <= 2.0 and by_kind["spike"].detector == "limits"
    # 3 degC in 300 s crosses the 38 degC warning limit (~1 degC above 37) after about 100 s.
    assert 60.0 <= by_kind["drift"].delay_s <= 150.0
    # flatline: 30 equal samples at 1 s ticks.
    assert 25.0 <= by_kind["stuck"].delay_s <= 35.0 and by_kind["stuck"].detector == "flatline"
    assert three_faults.false_alarms == []
    assert (three_faults.per_event.precision, three_faults.per_event.recall) == (1.0, 1.0)
    assert (three_faults.per_tag.tp, three_faults.per_tag.fp, three_faults.per_tag.fn) == (3, 0, 0)


def test_the_same_scenario_gives_the_same_scorecard(three_faults):
    again = evaluate(parse_scenario(scenario_data(), "three-faults.yaml", CONFIG))
    strip = lambda d: {k: v for k, v in d.items() if k != "wall_s"}
    assert strip(again.to_dict()) == strip(three_faults.to_dict())


def test_a_healthy_plant_raises_no_false_alarm_in_hours():
    card = evaluate(load_scenario(SCENARIOS / "demo-normal.yaml"))
    assert card.run.duration_s >= 3 * 3600
    assert card.run.alerts == [] and card.false_alarms_per_hour == 0.0
    assert card.per_event.precision is None  # nothing to divide by: printed as "-"
    assert "false alarms  0 (0.00 per simulated hour)" in card.to_text()


def test_scoring_rules_on_a_hand_made_run():
    """Detected inside [start, end + grace); alerts overlapping a window are true; others false."""
    events = [TruthEvent("a", "spike", 100.0, 130.0, 1.0), TruthEvent("b", "drift", 500.0, 600.0, 1.0)]
    alerts = [
        AlertSpan("a", "limits", "alarm", 101.0, 131.0),  # detects a, delay 1
        AlertSpan("a", "zscore", "warning", 95.0, 102.0),  # raised before, overlaps: true, not the detection
        AlertSpan("b", "limits", "warning", 700.0, 710.0),  # after b's grace (60 s): false alarm, b missed
        AlertSpan("c", "zscore", "warning", 50.0, None),  # clean tag: false alarm
    ]
    scenario = parse_scenario(scenario_data(faults=[]), "x.yaml", CONFIG)
    card = score(scenario, RunResult(events, alerts, duration_s=3600.0, samples=0, wall_s=1.0, tags=3))
    assert [(e.detected, e.delay_s, e.detector) for e in card.events] == [
        (True, 1.0, "limits"),
        (False, None, None),
    ]
    assert [(a.tag_id, a.raised_s) for a in card.false_alarms] == [("b", 700.0), ("c", 50.0)]
    assert card.false_alarms_per_hour == 2.0
    assert (card.per_event.tp, card.per_event.fp, card.per_event.fn) == (1, 2, 1)
    assert card.per_event.precision == pytest.approx(1 / 3) and card.per_event.recall == 0.5
    assert (card.per_tag.tp, card.per_tag.fp, card.per_tag.fn) == (1, 1, 1)


def test_text_layout_is_stable(three_faults):
    lines = three_faults.to_text().splitlines()
    assert lines[0] == "scenario    three-faults (three-faults.yaml)"
    assert lines[1] == "plant       Demo Pharma: 1 site(s), 3 line(s), 28 tags; seed 7"
    assert lines[2].startswith("simulated   0h30m00s (1800 s, 1 s ticks, micro-batches of 30 s) in ")
    assert lines[5] == "per fault kind"
    assert lines[6].split() == ["kind", "events", "detected", "recall", "delay_mean_s", "delay_max_s"]
    assert lines[7].split()[:4] == ["spike", "1", "1", "1.00"]
    assert lines[11] == "per event"
    assert lines[12].split() == [
        "#",
        "kind",
        "tag",
        "start_s",
        "duration_s",
        "magnitude",
        "detected",
        "delay_s",
        "first_detector",
    ]
    assert lines[-2].split() == ["per", "event", "3", "0", "0", "1.000", "1.000", "1.000"]


def test_cli_prints_json_and_text(tmp_path: Path, capsys):
    scenario = tmp_path / "s.yaml"
    data = scenario_data(site=str(CONFIG / "demo-site.yaml"), duration_s=420)
    scenario.write_text(json.dumps({**data, "faults": data["faults"][:1]}))  # JSON is YAML
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    truth = tmp_path / "gt.csv"
    assert (
        run_evaluate(parser.parse_args(["--scenario", str(scenario), "--json", "--ground-truth", str(truth)]))
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["scenario"] == "three-faults" and out["simulated_s"] == 420.0
    assert [e["kind"] for e in out["events"]] == ["spike"]
    assert out["events"][0]["detected"] is True and out["false_alarms"]["count"] == 0
    assert truth.read_text().splitlines()[1].startswith("lyon.ff.fill1.filler1.fill_weight,spike,")
    args = ["--scenario", str(SCENARIOS / "demo-normal.yaml"), "--duration", "600", "--seed", "3"]
    assert run_evaluate(parser.parse_args(args)) == 0
    text = capsys.readouterr().out
    assert "0h10m00s (600 s," in text and "seed 3" in text


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path):
    scenario = load_scenario(path)
    assert scenario.site.simulation.faults == scenario.config.faults


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"sitte": "x"}, "sitte", "unknown key"),
        ({"enterprise": {"sites": 1, "lines": 2}}, "", "exactly one of 'site'"),
        (
            {"faults": [{"tag": "lyon.x.y.z.t", "kind": "spike", "start_s": 1, "duration_s": 1}]},
            "faults[0].tag",
            "no tag",
        ),
        (
            {
                "faults": [
                    {
                        "tag": "lyon.ff.fill1.filler1.fill_weight",
                        "kind": "wobble",
                        "start_s": 1,
                        "duration_s": 1,
                    }
                ]
            },
            "faults[0].kind",
            "spike",
        ),
        (
            {
                "faults": [
                    {
                        "tag": "lyon.ff.fill1.filler1.fill_weight",
                        "kind": "spike",
                        "start_s": 5000,
                        "duration_s": 1,
                    }
                ]
            },
            "faults[0].start_s",
            "not before the scenario's end",
        ),
        ({"duration_s": -1}, "duration_s", "greater than 0"),
    ],
)
def test_bad_scenarios_are_refused_naming_file_key_and_reason(overrides, key, reason):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(scenario_data(**overrides), "bad.yaml", CONFIG)
    assert (f"bad.yaml: {key}: " if key else "bad.yaml: ") in str(err.value)
    assert reason in str(err.value)


def test_a_missing_site_file_names_it(tmp_path: Path):
    with pytest.raises(SiteConfigError, match="nope.yaml"):
        parse_scenario(scenario_data(site="nope.yaml"), "s.yaml", tmp_path)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "absent.yaml")
