"""SPC centre lines per ISA-88 phase: `controltower model fit --kind spc` on a DuckDB historian
holding simulated bioreactor batches and the batch events the simulator announces fits one
centre and sigma per (tag, phase) beside the whole-range ones; the live engine follows the
announced phases, swapping the Nelson/EWMA/CUSUM centres and restarting the moved tags' charts
at each phase change."""

from __future__ import annotations

import json
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analytics.detectors.cusum import CusumChart
from analytics.detectors.ewma import EwmaChart
from analytics.detectors.nelson import NelsonRules
from analytics.detectors.spc import D2, PHASE_CENTRES_SCHEMA, SpcCentres, StoredCentres
from analytics.engine import DetectionEngine
from analytics.models import ModelStore, fingerprint, fit_unit_model
from collector.sinks.duckdb import DuckDbHistorian
from controltower.cli import main
from controltower.runtime import load_unit_monitors
from controltower.site import load_site_config
from tests.analytics.helpers import batch, make_tag
from tests.analytics.simulated_unit import (
    START,
    UNIT,
    announced_events,
    batch_seconds,
    bioreactor_site,
    historian_site_file,
    simulate,
)

SITE = bioreactor_site()
SEED = 5
DT_S = 5.0
TRAINING = [f"BR101-000{n}" for n in range(1, 5)]
LIVE = "BR101-0005"
DO = f"{UNIT}.dissolved_oxygen"
CHARTS = ("nelson", "ewma", "cusum")


@pytest.fixture(scope="module")
def plant_run() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Five simulated batches (samples every 5 s) and the batch events announced with them."""
    seconds = 5.2 * batch_seconds(SITE)
    return simulate(SITE, seed=SEED, seconds=seconds, dt_s=DT_S), announced_events(SITE, SEED, seconds, DT_S)


@pytest.fixture(scope="module")
def fitted_site(plant_run, tmp_path_factory) -> Path:
    """The site file (Nelson, EWMA, CUSUM on) over the historian, and the spc model fitted on
    batches 1-4 by `controltower model fit`."""
    samples, events = plant_run
    root = tmp_path_factory.mktemp("site")
    path = historian_site_file(root, SITE, samples, events, detectors={c: {"enabled": True} for c in CHARTS})
    assert main(["model", "fit", "--config", str(path), "--unit", UNIT, "--kind", "spc",
                 "--batches", ",".join(TRAINING)]) == 0
    return path


def hand_spans(events: pl.DataFrame) -> list[tuple[str, str, object, object]]:
    """(batch_id, phase, start, end) of each phase: from an event (not a batch end) to the next."""
    rows = events.sort("ts", maintain_order=True).rows(named=True)
    return [(e["batch_id"], e["phase"], e["ts"], nxt["ts"]) for e, nxt in pairwise(rows)
            if e["transition"] != "batch_end"]


def test_model_fit_spc_learns_a_centre_per_phase(plant_run, fitted_site: Path, capsys) -> None:
    samples, events = plant_run
    manifest = ModelStore(fitted_site.parent / "data" / "models").manifest(UNIT, "spc")
    historian = DuckDbHistorian(fitted_site.parent / "data" / "historian.duckdb")
    try:
        read = historian.read(sorted(samples["tag_id"].unique()), START, None)
    finally:
        historian.close()
    training = read.filter(pl.col("batch_id").is_in(TRAINING))
    # As before: the fingerprint of the samples read and the whole-range centre over all of them.
    assert manifest["fingerprint"] == fingerprint(training)
    assert manifest["limits"]["centres"][DO]["centre"] == pytest.approx(
        training.filter(pl.col("tag_id") == DO)["value"].mean(), rel=1e-12)
    assert manifest["training"]["phases"] == ["growth", "harvest", "inoculation", "production"]
    phases = manifest["limits"]["phases"]
    assert set(phases) == set(samples["tag_id"].unique())
    # Each (tag, phase): the mean of the samples inside that phase's spans, by hand; sigma the
    # mean moving range within each span over d2.
    spans = [s for s in hand_spans(events) if s[0] in TRAINING]
    assert len(spans) == 4 * 4 - 1  # the simulator announces no start for the batch it starts in
    for tag, by_phase in phases.items():
        values = training.filter(pl.col("tag_id") == tag).sort("ts")
        ts, x = values["ts"].to_list(), values["value"].to_numpy()
        for phase, fitted in by_phase.items():
            inside = [x[[start <= t < end for t in ts]] for b, p, start, end in spans if p == phase]
            assert fitted["centre"] == pytest.approx(np.concatenate(inside).mean(), rel=1e-9), (tag, phase)
            mr = np.concatenate([np.abs(np.diff(v)) for v in inside])
            assert fitted["sigma"] == pytest.approx(mr.mean() / D2, rel=1e-9), (tag, phase)
            batches = {b for b, p, _, _ in spans if p == phase}
            assert (fitted["n"], fitted["batches"]) == (sum(v.size for v in inside), len(batches))
    # The growth phase's DO sits some sigma under the whole-range centre: not where the chart looked.
    whole = manifest["limits"]["centres"][DO]
    assert (whole["centre"] - phases[DO]["growth"]["centre"]) / phases[DO]["growth"]["sigma"] > 5
    # One batch is not enough for a phase centre (>= 2 batches): only the whole-range ones.
    assert main(["model", "fit", "--config", str(fitted_site), "--unit", UNIT, "--kind", "spc", "--batches",
                 TRAINING[0], "--out", str(fitted_site.parent / "one-batch")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["limits"]["phases"] == {} and one["training"]["phases"] == [] and DO in one["limits"]["centres"]


def test_an_spc_model_stored_before_phase_centres_still_loads(tmp_path: Path, monkeypatch) -> None:
    # What an older version stored: the whole-range arrays only, `min_samples` its one parameter.
    values = 37.0 + np.random.default_rng(1).normal(0, 0.05, 100)
    samples = batch(f"{UNIT}.temperature", values.tolist()).with_columns(pl.lit("B1").alias("batch_id"))
    fitted = fit_unit_model("spc", samples, unit=UNIT, variables=(f"{UNIT}.temperature",))
    for name in [n for n in vars(fitted.model) if n.startswith("phase_")]:
        delattr(fitted.model, name)
    monkeypatch.setattr(SpcCentres, "get_params", lambda self: {"min_samples": self.min_samples})
    manifest = ModelStore(tmp_path).save(fitted)
    assert set(manifest["state"]) == {"tag_ids_", "centre_", "sigma_", "n_"}
    monkeypatch.undo()
    loaded = ModelStore(tmp_path).load(UNIT, "spc").model
    assert loaded.phase_centres().is_empty()
    assert loaded.centres()["centre"][0] == pytest.approx(values.mean(), rel=1e-12)


def test_a_phase_change_moves_the_centres_and_restarts_the_moved_tags(tmp_path: Path) -> None:
    a, b = make_tag("s.a.l.u.a"), make_tag("s.a.l.u.b")
    for chart in (NelsonRules([a, b]), EwmaChart([a, b]), CusumChart([a, b], given={"s.a.l.u.b": (5.0, 1.0)})):
        chart.use_stored(pl.DataFrame({"tag_id": ["s.a.l.u.a", "s.a.l.u.b"], "centre": [0.0, 5.0],
                                       "sigma": [1.0, 1.0]}))
        # 20 samples 2 sigma over the centre: a run, an EWMA and a CUSUM built up on tag a.
        chart.score(pl.concat([batch("s.a.l.u.a", [2.0] * 20), batch("s.a.l.u.b", [5.0] * 20)]))
        state = chart._tail if isinstance(chart, NelsonRules) else chart._state
        assert set(state["tag_id"]) == {"s.a.l.u.a", "s.a.l.u.b"}
        # The next phase's centre is where tag a now runs: the chart starts it afresh, no alarm.
        new = pl.DataFrame({"tag_id": ["s.a.l.u.a", "s.a.l.u.b"], "centre": [2.0, 9.0], "sigma": [1.0, 1.0]})
        moved = chart.move_centres(["s.a.l.u.a", "s.a.l.u.b"], new)
        pinned = isinstance(chart, CusumChart)  # b's centre is pinned there: it stays, and keeps its state
        assert moved == (["s.a.l.u.a"] if pinned else ["s.a.l.u.a", "s.a.l.u.b"])
        state = chart._tail if isinstance(chart, NelsonRules) else chart._state
        assert set(state["tag_id"]) == ({"s.a.l.u.b"} if pinned else set())
        assert chart.centres_.filter(pl.col("tag_id") == "s.a.l.u.b")["centre"][0] == (5.0 if pinned else 9.0)
        scores = chart.score(batch("s.a.l.u.a", [2.0, 2.1, 1.9, 2.0, 2.05], start=20))
        assert (scores["level"] == 0).all(), (chart.name, scores)
        # Moving to the same centres again moves nothing and keeps the state.
        assert chart.move_centres(["s.a.l.u.a"], new) == []


def live_scores(engine: DetectionEngine, run: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Feed `run` to the engine minute by minute, the events announced in each minute first;
    (ts, tag_id, chart, score, level) of the charts' samples (those of the last part of a
    minute cut at a phase change only)."""
    out = []
    for start in run["ts"].dt.truncate("1m").unique().sort().to_list():
        minute = (pl.col("ts") >= start) & (pl.col("ts") < start + timedelta(minutes=1))
        engine.batch_events(events.filter(minute))
        engine.process(run.filter(minute))
        out += [engine.last_scores[c].with_columns(chart=pl.lit(c)) for c in CHARTS]
    return pl.concat(out).select("ts", "tag_id", "chart", "score", "level")


def span_of(events: pl.DataFrame, phase: str) -> tuple[object, object]:
    """(start, end) of the live batch's `phase`."""
    [span] = [(s, e) for b, p, s, e in hand_spans(events) if b == LIVE and p == phase]
    return span


def engines(fitted_site: Path) -> tuple[DetectionEngine, DetectionEngine]:
    """The engine as `controltower run` builds it (stored centres per phase), and one given only
    the same model's whole-range centres."""
    site = load_site_config(fitted_site)
    stored = load_unit_monitors(site, fitted_site.parent / "data")
    [centres] = [s for s in stored if isinstance(s, StoredCentres)]
    assert not centres.phases.is_empty()
    by_phase = DetectionEngine(site.tag_table(), site.detectors, monitors=stored)
    assert by_phase.running_phases is not None and by_phase.follows_phases
    whole = DetectionEngine(site.tag_table(), site.detectors, monitors=[StoredCentres(UNIT, 1, centres.centres)])
    assert whole.running_phases is None
    return by_phase, whole


def test_the_live_charts_follow_the_running_phase(plant_run, fitted_site: Path) -> None:
    samples, events = plant_run
    # The end of batch 4 (its harvest) and batch 5 up to its harvest, live.
    harvest4 = next(s for b, p, s, _ in hand_spans(events) if b == TRAINING[-1] and p == "harvest")
    harvest5, _ = span_of(events, "harvest")
    run = samples.filter((pl.col("ts") >= harvest4) & (pl.col("ts") < harvest5))
    by_phase, whole = engines(fitted_site)
    phased, flat = live_scores(by_phase, run, events), live_scores(whole, run, events)
    do = (pl.col("tag_id") == DO)

    def within(scores: pl.DataFrame, phase: str, skip_s: float = 30.0) -> pl.DataFrame:
        start, end = span_of(events, phase)
        return scores.filter(do & (pl.col("ts") >= start + timedelta(seconds=skip_s)) & (pl.col("ts") < end))

    # Inoculation (the batch start moved the centres and restarted the charts): the DO runs at
    # its phase's centre; against the whole-range centre every chart alarms throughout.
    for chart in CHARTS:
        mine, theirs = (within(s, "inoculation").filter(pl.col("chart") == chart) for s in (phased, flat))
        assert mine.height >= 40
        assert (mine["level"] > 0).mean() < 0.15, (chart, mine)
        assert (theirs["level"] > 0).mean() > 0.9, (chart, theirs)
    # Production, a later phase: its DO is held at a setpoint the whole-range centre misses by
    # ~12 sigma. The loop's slow wander still trips the charts at times (MR-bar sigma is the
    # sample-to-sample noise), but each chart scores the phase an order of magnitude lower.
    for chart in CHARTS:
        mine, theirs = (within(s, "production").filter(pl.col("chart") == chart) for s in (phased, flat))
        assert mine["score"].median() < 0.2 * theirs["score"].median(), (chart, mine["score"].median(),
                                                                          theirs["score"].median())
        assert (theirs["level"] > 0).mean() > 0.95


def test_a_fault_within_a_phase_is_still_caught(plant_run, fitted_site: Path) -> None:
    samples, events = plant_run
    inoculation, growth = span_of(events, "inoculation")
    # A +1.5 %sat DO transmitter bias (about 6 sigma) from 2 minutes into the inoculation.
    fault_at = inoculation + timedelta(minutes=2)
    faulty = simulate(SITE, seed=SEED, seconds=5.2 * batch_seconds(SITE), dt_s=DT_S,
                      faults=[((fault_at - START).total_seconds(), "dissolved_oxygen", "bias", 600.0, 1.5)])
    window = (pl.col("ts") >= fault_at + timedelta(seconds=30)) & (pl.col("ts") < growth) & (pl.col("tag_id") == DO)
    for run, caught in ((samples, False), (faulty, True)):
        by_phase, _ = engines(fitted_site)
        live = run.filter((pl.col("ts") >= inoculation - timedelta(minutes=5)) & (pl.col("ts") < growth))
        scores = live_scores(by_phase, live, events).filter(window)
        for chart in CHARTS:
            on = (scores.filter(pl.col("chart") == chart)["level"] > 0).mean()
            assert (on > 0.9) if caught else (on < 0.15), (chart, caught, on)


def test_a_micro_batch_straddling_a_phase_change_is_scored_in_two_parts() -> None:
    from analytics.detectors.base import SCORE_SCHEMA
    from controltower.batch_events import batch_events_frame
    from controltower.site import DetectorsConfig
    from tests.analytics.helpers import T0

    tag = make_tag(f"{UNIT}.temperature")
    config = DetectorsConfig.model_validate({c: {"enabled": True} for c in CHARTS})
    stored = StoredCentres(UNIT, 1, pl.DataFrame({"tag_id": [tag.tag_id], "centre": [37.0], "sigma": [0.05]}),
                           pl.DataFrame({"tag_id": [tag.tag_id], "phase": ["growth"], "centre": [38.0],
                                         "sigma": [0.05]}, schema=PHASE_CENTRES_SCHEMA))
    noise = np.random.default_rng(2).normal(0, 0.05, 40)
    # One micro-batch: 20 s at the whole-range centre, then (from the phase change on) 20 s at growth's.
    samples = batch(tag.tag_id, (np.r_[np.full(20, 37.0), np.full(20, 38.0)] + noise).tolist())
    growth = batch_events_frame([{"ts": T0 + timedelta(seconds=20), "unit_id": UNIT, "batch_id": "B1",
                                  "phase": "growth", "transition": "phase_change"}])
    for announced in (True, False):
        engine = DetectionEngine([tag], config, monitors=[stored])
        scored: list[int] = []
        score_part = engine._process

        def counted(part, now, score_part=score_part, scored=scored):
            scored.append(part.height)
            return score_part(part, now)

        engine._process = counted
        if announced:
            engine.batch_events(growth)
        raised = engine.process(samples)
        assert scored == ([20, 20] if announced else [40])
        # Unannounced, the growth samples are 20 sigma over the whole-range centre: every chart alarms.
        assert {a.detector for a in raised} == (set() if announced else set(CHARTS)), raised
        assert engine.last_scores["nelson"].schema == SCORE_SCHEMA


async def test_a_restarted_tower_resumes_the_running_phase_from_the_historian(plant_run, fitted_site: Path) -> None:
    """`controltower run` starts by reading each unit's last stored batch event, so the charts
    hold the running phase's centres from the first micro-batch, not from the unit's next event."""
    from controltower.runtime import ControlTower

    _, events = plant_run
    last = events.sort("ts", maintain_order=True).row(-1, named=True)
    expected = None if last["transition"] == "batch_end" else last["phase"]
    assert expected is not None  # 5.2 batches: the run stops inside the sixth
    tower = ControlTower(load_site_config(fitted_site))
    try:
        running = tower.engine.running_phases
        after = int(last["ts"].timestamp() * 1e9) + 1
        assert running.phase_at(UNIT, after) is None  # nothing announced yet
        assert await tower.resume_phases() >= 1
        assert running.phase_at(UNIT, after) == expected
    finally:
        tower.close()


async def test_a_tower_with_charts_but_no_phase_centres_yet_still_resumes_the_phases(fitted_site: Path) -> None:
    """SPC charts on, no stored centres at start (models off here): the running phases are read
    all the same, for a version with phase centres that a hot reload may bring later."""
    from controltower.runtime import ControlTower

    site = load_site_config(fitted_site)
    detectors = site.detectors.model_copy(update={"models": site.detectors.models.model_copy(update={"enabled": False})})
    tower = ControlTower(site.model_copy(update={"detectors": detectors}))
    try:
        assert tower.engine.running_phases is None  # nothing per phase to follow yet
        assert tower.engine.follows_phases
        assert await tower.resume_phases() >= 1
    finally:
        tower.close()
