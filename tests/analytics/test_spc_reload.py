"""Hot reload of stored SPC centre lines: a running control tower (real pipeline, DuckDB
historian, model store on disk) takes a new `spc` version that `controltower model fit` stores
while it runs, within the check interval and between micro-batches: the Nelson, EWMA and CUSUM
charts score against its centres (those of the phase the unit runs), audited; an altered
version is refused and the running one keeps scoring. The engine restarts the chart state of
the tags whose centre moved and leaves a centre pinned in the site file alone."""

import asyncio
import logging
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analytics.detectors.spc import PHASE_CENTRES_SCHEMA, StoredCentres
from analytics.engine import DetectionEngine
from analytics.models import ModelStore
from collector.sinks.duckdb import DuckDbHistorian
from controltower.cli import main
from controltower.runtime import ControlTower
from controltower.site import DetectorsConfig, SpcCentre, load_site_config
from tests.analytics.helpers import batch, make_tag
from tests.analytics.simulated_unit import (
    UNIT,
    announced_events,
    batch_seconds,
    batches,
    bioreactor_site,
    historian_site_file,
    simulate,
)
from tests.analytics.test_model_reload import (
    RELOAD_S,
    UNIVARIATE,
    ReplaySource,
    altered_version_is_refused,
    assert_reloads_audited,
    feed,
)
from tests.integration.conftest import wait_until

SITE = bioreactor_site()
BATCH_S = batch_seconds(SITE)
CHARTS = ("nelson", "ewma", "cusum")
LIVE_SEED = 33


@pytest.fixture(scope="module")
def site_file(tmp_path_factory) -> Path:
    """A site file (spc models reloaded every RELOAD_S, only the SPC charts on) over a DuckDB
    historian of 4 simulated batches and the batch events announced with them."""
    root = tmp_path_factory.mktemp("spc-reload-site")
    seconds = 4.2 * BATCH_S
    detectors = {name: {"enabled": name in CHARTS} for name in UNIVARIATE} | {"models": {"reload_s": RELOAD_S}}
    return historian_site_file(root, SITE, simulate(SITE, seed=21, seconds=seconds),
                               announced_events(SITE, 21, seconds), detectors=detectors)


def fit(site_file: Path, batch_ids: str, *extra: str) -> None:
    assert main(["model", "fit", "--config", str(site_file), "--unit", UNIT, "--kind", "spc",
                 "--batches", batch_ids, *extra]) == 0


def phase_at(events: pl.DataFrame, ts) -> str | None:
    """The phase the unit runs at `ts` by its batch events (None outside a batch)."""
    before = events.filter(pl.col("ts") <= ts).sort("ts", maintain_order=True)
    last = before.row(-1, named=True) if before.height else None
    return None if last is None or last["transition"] == "batch_end" else last["phase"]


def expected_centres(manifest: dict, phase: str | None) -> dict[str, tuple[float, float]]:
    """tag -> (centre, sigma) the charts should hold in `phase` by a stored spc model's manifest."""
    limits = manifest["limits"]
    out = {t: (c["centre"], c["sigma"]) for t, c in limits["centres"].items()}
    for tag, by_phase in limits["phases"].items():
        if phase in by_phase:
            out[tag] = (by_phase[phase]["centre"], by_phase[phase]["sigma"])
    return out


def held_centres(tower: ControlTower) -> dict[str, dict[str, tuple[float, float]]]:
    """chart -> tag -> (centre, sigma) each SPC chart of the tower holds."""
    return {d.name: {r["tag_id"]: (r["centre"], r["sigma"]) for r in d.centres_.iter_rows(named=True)}
            for d in tower.engine.detectors if d.name in CHARTS}


def assert_holds(tower: ControlTower, want: dict[str, tuple[float, float]]) -> None:
    for chart, held in held_centres(tower).items():
        assert held.keys() == want.keys(), chart
        for tag, (centre, sigma) in want.items():
            assert held[tag] == pytest.approx((centre, sigma), rel=1e-12), (chart, tag)


async def test_running_tower_takes_a_new_spc_version_and_refuses_an_altered_one(site_file: Path, tmp_path: Path,
                                                                                caplog):
    caplog.set_level(logging.INFO)
    data = site_file.parent / "data"
    store = ModelStore(data / "models")
    fit(site_file, "BR101-0001,BR101-0002")
    v1 = store.manifest(UNIT, "spc", 1)
    assert v1["training"]["phases"]  # the historian's batch events give it centres per phase
    site = load_site_config(site_file)
    tower = ControlTower(site, data_dir=data, historian=DuckDbHistorian(tmp_path / "live.duckdb"))
    source = ReplaySource()
    tower.pipeline.sources.append(source)
    assert tower.engine.model_versions() == {(UNIT, "spc"): 1} and tower.engine.running_phases is not None
    seconds = 3 * BATCH_S
    live = batches(simulate(SITE, seed=LIVE_SEED, seconds=seconds), 2, 3)
    events = announced_events(SITE, LIVE_SEED, seconds)
    tower.engine.batch_events(events)  # what the collector announces, before the samples
    start = live["ts"].min()
    cuts = [start + timedelta(minutes=m) for m in (25, 50, 75)]
    parts = [live.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi)) for lo, hi in zip([start, *cuts], cuts)]
    running = asyncio.create_task(tower.run())
    try:
        await feed(tower, source, parts[0])
        assert_holds(tower, expected_centres(v1, phase_at(events, tower.engine.clock)))

        # A new version fitted on other batches while the tower runs: its centres within the check interval.
        await asyncio.to_thread(fit, site_file, "BR101-0003,BR101-0004")
        fitted_at = time.monotonic()
        await wait_until(lambda: tower.engine.model_versions()[(UNIT, "spc")] == 2, 30, "version 2 to be staged")
        picked_up_s = time.monotonic() - fitted_at
        v2 = store.manifest(UNIT, "spc", 2)
        assert v2["limits"]["centres"] != v1["limits"]["centres"]
        await feed(tower, source, parts[1])
        phase = phase_at(events, tower.engine.clock)
        assert phase is not None and phase in v2["training"]["phases"]
        want = expected_centres(v2, phase)
        assert all(want[t] != c for t, c in expected_centres(v1, phase).items())  # every centre moved
        assert_holds(tower, want)
        assert tower.engine.running_phases.phase_at(UNIT, tower.engine.clock.timestamp() * 1e9) == phase
        assert any("spc model v2 of lyon.usp.bio1.br101 replaces v1" in r.getMessage() for r in caplog.records)

        # An altered version 3 appears (fitted elsewhere, one byte of its arrays changed): refused.
        await altered_version_is_refused(lambda out: fit(site_file, "BR101-0002,BR101-0003", "--out", str(out)),
                                         tmp_path, data / "models", "spc", caplog)
        # ... and version 2 keeps scoring: the charts score the next samples against its centres.
        await feed(tower, source, parts[2])
        assert tower.engine.model_versions() == {(UNIT, "spc"): 2}
        assert_holds(tower, expected_centres(v2, phase_at(events, tower.engine.clock)))
        for chart in CHARTS:
            scores = tower.engine.last_scores[chart]
            assert scores["ts"].max() >= parts[2]["ts"].max() - timedelta(seconds=5)
            assert scores["score"].is_not_null().any()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        tower.close()
    assert picked_up_s < 2 * RELOAD_S + 10  # one check interval, plus loading it on a loaded machine

    # The audit trail: the load and the refusal of the spc versions (by the tower).
    assert_reloads_audited(data, "spc", v1, v2)


def test_a_new_version_restarts_the_moved_tags_and_a_pinned_centre_wins() -> None:
    a = make_tag("s.a.l.u.a")
    pinned = make_tag("s.a.l.u.b")
    pinned = pinned.model_copy(update={"tag": pinned.tag.model_copy(update={"spc": SpcCentre(centre=5.0, sigma=1.0)})})
    config = DetectorsConfig.model_validate({c: {"enabled": c in CHARTS} for c in UNIVARIATE})
    v1 = StoredCentres("s.a.l.u", 1, pl.DataFrame({"tag_id": ["s.a.l.u.a", "s.a.l.u.b"], "centre": [0.0, 0.0],
                                                   "sigma": [1.0, 1.0]}))
    v2 = StoredCentres("s.a.l.u", 2, pl.DataFrame({"tag_id": ["s.a.l.u.a"], "centre": [3.0], "sigma": [1.0]}),
                       pl.DataFrame({"tag_id": ["s.a.l.u.b"], "phase": ["growth"], "centre": [9.0], "sigma": [1.0]},
                                    schema=PHASE_CENTRES_SCHEMA))
    noise = np.random.default_rng(4).normal(0, 1.0, 60)  # sigma
    engine = DetectionEngine([a, pinned], config, monitors=[v1])
    assert engine.model_versions() == {("s.a.l.u", "spc"): 1} and engine.running_phases is None
    # 30 samples 3 sigma over v1's centre on tag a (runs, EWMA and CUSUM build up and alarm);
    # tag b 3 sigma over its pinned centre.
    first = pl.concat([batch("s.a.l.u.a", (3.0 + noise[:30]).tolist()), batch("s.a.l.u.b", (8.0 + noise[:30]).tolist())])
    raised = engine.process(first)
    assert {(x.detector, x.tag_id) for x in raised} >= {("ewma", "s.a.l.u.a"), ("cusum", "s.a.l.u.a"),
                                                        ("cusum", "s.a.l.u.b")}
    engine.stage_monitor(v2)
    assert engine.model_versions() == {("s.a.l.u", "spc"): 2}
    second = pl.concat([batch("s.a.l.u.a", (3.0 + noise[30:]).tolist(), start=30),
                        batch("s.a.l.u.b", (8.0 + noise[30:]).tolist(), start=30)])
    engine.process(second)
    assert engine.running_phases is not None and engine.running_phases.units == ["s.a.l.u"]
    for chart in (d for d in engine.detectors if d.name in CHARTS):
        held = {r["tag_id"]: r["centre"] for r in chart.centres_.iter_rows(named=True)}
        assert held == {"s.a.l.u.a": 3.0, "s.a.l.u.b": 5.0}, chart.name  # the pinned centre wins
        scores = engine.last_scores[chart.name]
        # Tag a now runs at its centre: restarted, no chart carries the old run, EWMA or CUSUM.
        assert (scores.filter(pl.col("tag_id") == "s.a.l.u.a")["level"] == 0).all(), chart.name
    # Tag b's centre did not move (pinned): its CUSUM carried on, still alarming.
    cusum = engine.last_scores["cusum"].filter(pl.col("tag_id") == "s.a.l.u.b")
    assert (cusum["level"] > 0).all()
