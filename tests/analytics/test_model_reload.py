"""Hot reload of stored models: a running control tower (real pipeline, DuckDB historian, model
store on disk) swaps in a version that `controltower model fit` stores while it runs, within
the check interval and between micro-batches, audits it, refuses an altered version (the old
one keeps scoring and still flags a simulated fault), and leaves a pinned version alone."""

import asyncio
import json
import logging
import shutil
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from analytics.engine import DetectionEngine
from analytics.model_reload import ModelReloader
from analytics.models import ModelStore, fit_unit_model
from analytics.monitors import load_monitors
from collector.sinks.duckdb import DuckDbHistorian
from collector.sources import SourceHealth
from controltower.cli import main
from controltower.runtime import ControlTower
from controltower.site import load_site_config
from tests.analytics.simulated_unit import (
    BATCH_S,
    PH,
    SITE,
    TAGS,
    UNIT,
    batches,
    historian_site_file,
    simulate,
)
from tests.integration.conftest import wait_until

FAULT_AT = 2 * BATCH_S + 1500.0
RELOAD_S = 0.5
UNIVARIATE = ("limits", "zscore", "flatline", "quality", "rate_of_change", "nelson", "ewma", "cusum",
              "robust_zscore", "stale")


class ReplaySource:
    """A source that emits the frames put in its queue (the pipeline takes it like any other)."""

    name = "replay"

    def __init__(self):
        self.health = SourceHealth(self.name, "replay", connected=True)
        self.queue: asyncio.Queue[pl.DataFrame] = asyncio.Queue()

    async def run(self, emit) -> None:
        while True:
            await emit(await self.queue.get())


@pytest.fixture(scope="module")
def site_file(tmp_path_factory) -> Path:
    """A site file (models reloaded every RELOAD_S, univariate detectors off) over a DuckDB
    historian of 7 simulated batches."""
    root = tmp_path_factory.mktemp("reload-site")
    detectors = {name: {"enabled": False} for name in UNIVARIATE} | {"models": {"reload_s": RELOAD_S}}
    return historian_site_file(root, SITE, simulate(SITE, seed=31, seconds=7.2 * BATCH_S), detectors=detectors)


def fit(site_file: Path, batch_ids: str, *extra: str) -> None:
    assert main(["model", "fit", "--config", str(site_file), "--unit", UNIT, "--kind", "knn",
                 "--batches", batch_ids, *extra]) == 0


async def feed(tower: ControlTower, source: ReplaySource, frame: pl.DataFrame, step_s: int = 60) -> list:
    """`frame` through the pipeline in micro-batches of `step_s`; waits until the engine scored
    the last one. The alerts raised meanwhile and still active."""
    before = {a.id for a in tower.alerts.active()}
    chunks = frame.with_columns((pl.col("ts").dt.epoch("s") // step_s).alias("_c")).partition_by("_c",
                                                                                                 maintain_order=True)
    for chunk in chunks:
        await source.queue.put(chunk.drop("_c"))
    newest = frame["ts"].max()
    await wait_until(lambda: tower.engine.clock is not None and tower.engine.clock >= newest, 60,
                     "the engine to score the replayed samples")
    return [a for a in tower.alerts.active() if a.id not in before]


async def altered_version_is_refused(fit_elsewhere, tmp_path: Path, models: Path, kind: str, caplog) -> None:
    """A version fitted elsewhere (`fit_elsewhere(out_dir)`) with one byte of its arrays flipped
    appears in the store `models` as version 3 of the unit's `kind`: waits until the running
    tower refuses it, logged as an error naming the altered file, version 2 keeping on scoring."""
    other = tmp_path / "elsewhere"
    await asyncio.to_thread(fit_elsewhere, other)
    arrays = other / UNIT / kind / "v0001" / "arrays.npz"
    payload = bytearray(arrays.read_bytes())
    payload[-100] ^= 1
    arrays.write_bytes(bytes(payload))
    shutil.move(other / UNIT / kind / "v0001", models / UNIT / kind / "v0003")
    await wait_until(lambda: any("v3" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records),
                     30, "version 3 to be refused")
    refusal = next(r for r in caplog.records if "refused" in r.getMessage())
    assert refusal.levelno == logging.ERROR and "v2 keeps scoring" in refusal.getMessage()
    assert f"{kind}/v0003/arrays.npz: the file was altered" in refusal.getMessage()


def assert_reloads_audited(data: Path, kind: str, v1: dict, v2: dict) -> None:
    """The tower's audit trail under `data` holds, as the only model records of actor `system`,
    the load of version 2 of the unit's `kind` (old and new fingerprints: those of the `v1` and
    `v2` manifests) and the refusal of version 3."""
    trail = [json.loads(line) for line in (data / "audit.jsonl").read_text().splitlines()]
    tower = [r for r in trail if r["actor"] == "system" and r["action"].startswith("model.")]
    assert [(r["action"], r["target"], r["details"]["version"]) for r in tower] == [
        ("model.load", f"{UNIT} {kind}", 2), ("model.refuse", f"{UNIT} {kind}", 3)]
    assert (tower[0]["old"], tower[0]["new"]) == (v1["fingerprint"], v2["fingerprint"])


async def test_running_tower_swaps_in_a_new_version_and_refuses_an_altered_one(site_file: Path, tmp_path: Path,
                                                                               caplog):
    caplog.set_level(logging.INFO)
    data = site_file.parent / "data"
    fit(site_file, "BR101-0002,BR101-0003")
    site = load_site_config(site_file)
    # The tower stores into a historian of its own: the CLI fits read the site's meanwhile (the
    # embedded DuckDB file is locked by the process that writes it; fit from a copy).
    tower = ControlTower(site, data_dir=data, historian=DuckDbHistorian(tmp_path / "live.duckdb"))
    source = ReplaySource()
    tower.pipeline.sources.append(source)
    assert tower.engine.model_versions() == {(UNIT, "knn"): 1}
    live = simulate(SITE, seed=32, seconds=3 * BATCH_S, faults=[(FAULT_AT, "ph", "bias", 1200.0, 0.1)])
    fault = live["ts"].min() + timedelta(seconds=FAULT_AT)
    batch2 = batches(live, 2, 2)["ts"].min()
    live = live.filter(pl.col("ts") >= batch2 - timedelta(minutes=5))
    cuts = [batch2 + timedelta(minutes=20), fault - timedelta(minutes=5)]
    parts = [live.filter(pl.col("ts") < cuts[0]),
             live.filter((pl.col("ts") >= cuts[0]) & (pl.col("ts") < cuts[1])),
             live.filter((pl.col("ts") >= cuts[1]) & (pl.col("ts") < fault + timedelta(minutes=10)))]  # fault on
    running = asyncio.create_task(tower.run())
    try:
        await feed(tower, source, parts[0])
        assert [m.version for m in tower.engine.monitors] == [1]

        # A new version fitted while the tower runs: swapped in within the check interval.
        await asyncio.to_thread(fit, site_file, "BR101-0004,BR101-0005,BR101-0006,BR101-0007")
        fitted_at = time.monotonic()
        await wait_until(lambda: tower.engine.model_versions()[(UNIT, "knn")] == 2, 30, "version 2 to be staged")
        picked_up_s = time.monotonic() - fitted_at
        assert [m.version for m in tower.engine.monitors] == [1]  # staged: swapped at the next micro-batch
        await feed(tower, source, parts[1])
        assert [(m.unit, m.name, m.version) for m in tower.engine.monitors] == [(UNIT, "knn", 2)]
        assert tower.engine.last_scores[f"knn:{UNIT}"]["ts"].max() >= parts[1]["ts"].max() - timedelta(seconds=5)
        assert any("knn model v2 of lyon.usp.bio1.br101 replaces v1" in r.getMessage() for r in caplog.records)

        # An altered version 3 appears (fitted elsewhere, one byte of its arrays changed): refused.
        await altered_version_is_refused(lambda out: fit(site_file, "BR101-0003,BR101-0004", "--out", str(out)),
                                         tmp_path, data / "models", "knn", caplog)
        # ... and version 2 keeps scoring: it flags the fault, pH first.
        raised = [a for a in await feed(tower, source, parts[2]) if a.detector == "knn"]
        assert [m.version for m in tower.engine.monitors] == [2]
        assert raised and raised[0].contributors[0] == PH
        assert timedelta(0) <= raised[0].raised_at - fault < timedelta(minutes=10)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        tower.close()
    assert picked_up_s < 2 * RELOAD_S + 10  # one check interval, plus loading it on a loaded machine

    # The audit trail: the load and the refusal (by the tower), beside the fits' model.change (by the CLI).
    store = ModelStore(data / "models")
    assert_reloads_audited(data, "knn", store.manifest(UNIT, "knn", 1), store.manifest(UNIT, "knn", 2))


def test_a_pinned_version_is_not_reloaded(tmp_path: Path):
    samples = batches(simulate(SITE, seed=5, seconds=3.2 * BATCH_S), 2, 3)
    store = ModelStore(tmp_path)
    fitted = fit_unit_model("pca", samples, unit=UNIT, variables=TAGS)
    store.save(fitted)
    engine = DetectionEngine(SITE.tag_table(), SITE.detectors, monitors=load_monitors(tmp_path, [UNIT], pin={UNIT: {"pca": 1}}))
    pinned = ModelReloader(engine, tmp_path, [UNIT], pin={UNIT: {"pca": 1}})
    free = ModelReloader(DetectionEngine(SITE.tag_table(), SITE.detectors, monitors=load_monitors(tmp_path, [UNIT])),
                         tmp_path, [UNIT])
    assert pinned.poll() == [] and free.poll() == []  # nothing new yet
    store.save(fitted)
    assert pinned.poll() == [] and engine.model_versions() == {(UNIT, "pca"): 1}
    changes = free.poll()
    assert [(c.kind, c.old_version, c.new_version, c.error) for c in changes] == [("pca", 1, 2, None)]
    assert free.engine.model_versions() == {(UNIT, "pca"): 2} and free.poll() == []


def test_a_kind_fitted_for_the_first_time_joins_and_unknown_tags_are_refused(tmp_path: Path):
    samples = simulate(SITE, seed=5, seconds=3.2 * BATCH_S)
    config = SITE.detectors.model_copy(update={name: getattr(SITE.detectors, name).model_copy(update={"enabled": False})
                                               for name in UNIVARIATE})
    engine = DetectionEngine(SITE.tag_table(), config, monitors=[])
    reloader = ModelReloader(engine, tmp_path, [UNIT], known_tags=set(TAGS))
    narrow = ModelReloader(DetectionEngine(SITE.tag_table(), config, monitors=[]), tmp_path, [UNIT],
                           known_tags=set(TAGS[:-1]))  # a site that lost a tag
    assert reloader.poll() == [] and narrow.poll() == []
    ModelStore(tmp_path).save(fit_unit_model("pca", batches(samples, 2, 2), unit=UNIT, variables=TAGS))
    assert [(c.kind, c.old_version, c.new_version, c.error) for c in reloader.poll()] == [("pca", None, 1, None)]
    refused = narrow.poll()
    assert len(refused) == 1 and "reads tags the site does not have: " + TAGS[-1] in refused[0].error
    assert narrow.engine.model_versions() == {} and narrow.poll() == []  # refused once, not retried
    assert engine.monitors == []  # staged until the next micro-batch
    engine.process(batches(samples, 3, 3).head(1000))
    assert [(m.name, m.version) for m in engine.monitors] == [("pca", 1)] and f"pca:{UNIT}" in engine.last_scores
