"""The nearest-neighbour (MSET-like) model as a stored kind: `controltower model fit --kind knn`
from a DuckDB historian of simulated batches, stored as plain arrays, loaded back to the same
scores, streamed by the live engine as the whole recording would be scored, and flagging a
simulated fault with the faulted tag first."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analytics.engine import DetectionEngine
from analytics.model_command import read_training
from analytics.models import KNN_MEMORY, ModelStore, fingerprint, fit_unit_model
from analytics.monitors import RowMonitor
from analytics.multivariate import NearestNeighbourDetector
from analytics.multivariate.postprocess import ewma
from analytics.multivariate.rows import wide_rows
from analytics.offline import HALFLIFE
from controltower.cli import main
from controltower.runtime import load_unit_monitors
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
from tests.analytics.test_multivariate_live import stream

FAULT_AT = 2 * BATCH_S + 1500.0  # into the growth phase of batch 3
GOOD = "BR101-0002,BR101-0003,BR101-0004,BR101-0005,BR101-0006,BR101-0007"


@pytest.fixture(scope="module")
def fitted_site(tmp_path_factory) -> Path:
    """A site file over a DuckDB historian of 7 simulated batches, with a knn model fitted on
    batches 2-7 by `controltower model fit` (the CLI)."""
    root = tmp_path_factory.mktemp("knn-site")
    path = historian_site_file(root, SITE, simulate(SITE, seed=31, seconds=7.2 * BATCH_S))
    assert main(["model", "fit", "--config", str(path), "--unit", UNIT, "--kind", "knn", "--batches", GOOD]) == 0
    return path


def test_model_fit_knn_stores_plain_arrays_that_score_the_same(fitted_site: Path):
    store = ModelStore(fitted_site.parent / "data" / "models")
    assert store.versions(UNIT, "knn") == [1]
    version = fitted_site.parent / "data" / "models" / UNIT / "knn" / "v0001"
    assert sorted(p.name for p in version.iterdir()) == ["arrays.npz", "manifest.json"]
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["class"] == "NearestNeighbourDetector"
    assert manifest["parameters"] == {"n_neighbors": 5, "max_memory": KNN_MEMORY}
    assert manifest["limits"]["halflife"] == HALFLIFE["knn"] and manifest["limits"]["threshold"] > 0
    assert set(manifest["state"]) == {"variables_", "mean_", "scale_", "memory_"}
    # Plain .npy members of numeric dtypes: no pickle anywhere (np.load refuses objects here).
    with zipfile.ZipFile(version / "arrays.npz") as z:
        assert sorted(z.namelist()) == ["mean_.npy", "memory_.npy", "scale_.npy"]
        for name in z.namelist():
            array = np.load(io.BytesIO(z.read(name)), allow_pickle=False)
            assert array.dtype == np.float64, name
    loaded = store.load(UNIT, "knn")
    assert loaded.model.memory_.shape == (min(KNN_MEMORY, manifest["training"]["rows"]), len(TAGS))

    # The same training samples fitted in this process: the same model, bit for bit.
    site = load_site_config(fitted_site)
    samples = read_training(site, fitted_site.parent / "data", UNIT, None, None, GOOD.split(","))
    assert fingerprint(samples) == manifest["fingerprint"]
    here = fit_unit_model("knn", samples, unit=UNIT, variables=TAGS, alpha=0.001)
    assert here.limits == loaded.limits
    X = wide_rows(batches(samples, 4, 4), TAGS).drop("ts")
    assert np.array_equal(here.model.score_samples(X), loaded.model.score_samples(X))
    assert here.model.contributions(X).equals(loaded.model.contributions(X))


def test_knn_monitor_streams_as_the_whole_recording(fitted_site: Path):
    """Micro-batches scored one by one give the scores of the whole recording smoothed at once
    (the EWMA and the forward fill carry across batches), contributors included."""
    fitted = ModelStore(fitted_site.parent / "data" / "models").load(UNIT, "knn")
    live = batches(simulate(SITE, seed=41, seconds=1.5 * BATCH_S), 1, 1)
    live = live.filter((pl.col("ts").dt.epoch("s") % 35 != 0) | (pl.col("tag_id") != TAGS[0]))
    whole = RowMonitor(fitted).score(live)
    X = wide_rows(live, TAGS).drop("ts")
    expected = ewma(fitted.model.score_samples(X), fitted.halflife) / fitted.threshold
    assert np.allclose(whole["score"].to_numpy(), expected, rtol=1e-12, atol=0)
    monitor = RowMonitor(fitted)
    chunks = live.with_columns((pl.col("ts").dt.epoch("s") // 45).alias("_c")).partition_by("_c", maintain_order=True)
    streamed = pl.concat([monitor.score(c.drop("_c")) for c in chunks])
    assert streamed.height == whole.height > 300
    assert np.allclose(streamed["score"].to_numpy(), whole["score"].to_numpy(), rtol=1e-9, atol=0)
    assert streamed["contributors"].to_list() == whole["contributors"].to_list()


def test_live_engine_flags_a_fault_with_the_stored_knn_model(fitted_site: Path):
    """The tower's loader picks the CLI-fitted knn model up; on a fresh run (another seed) with
    a 0.1 pH bias injected in batch 3's growth phase, no knn alert before the fault, one within
    10 minutes after it, pH its first contributor."""
    site = load_site_config(fitted_site)
    monitors = load_unit_monitors(site, fitted_site.parent / "data")
    assert [(m.unit, m.name, m.version) for m in monitors] == [(UNIT, "knn", 1)]
    before, after, start = alerts_around_a_ph_bias(site, monitors, "knn")
    assert not before, [(a.raised_at, a.message) for a in before]
    assert after
    alert = after[0]
    assert alert.tag_id == UNIT and alert.contributors[0] == PH and "knn score" in alert.message
    assert alert.limit == 1.0 and alert.value > 1.0
    assert (alert.raised_at - start).total_seconds() < FAULT_AT + 600


def alerts_around_a_ph_bias(site, monitors, detector: str) -> tuple[list, list, object]:
    """`detector`'s alerts (before, after, the run's start) on a fresh simulated run (seed 32) with
    a 0.1 pH bias injected at FAULT_AT, streamed through an engine with only `monitors` on."""
    config = site.detectors.model_copy(update={name: sub.model_copy(update={"enabled": False})
                                               for name, sub in site.detectors if name != "models"})
    engine = DetectionEngine(site.tag_table(), config, monitors=monitors)
    faulted = simulate(SITE, seed=32, seconds=3 * BATCH_S, faults=[(FAULT_AT, "ph", "bias", 1200.0, 0.1)])
    start = faulted["ts"].min()
    live = faulted.filter(pl.col("ts") >= batches(faulted, 2, 2)["ts"].min() - pl.duration(minutes=5))
    fault = start + pl.duration(seconds=FAULT_AT)
    before = [a for a in stream(engine, live.filter(pl.col("ts") < fault)) if a.detector == detector]
    after = [a for a in stream(engine, live.filter(pl.col("ts") >= fault)) if a.detector == detector]
    return before, after, start


def test_memory_cap_keeps_the_envelope_edges():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(1000, 3))
    frame = pl.DataFrame(A, schema=["a", "b", "c"], orient="row")
    det = NearestNeighbourDetector(n_neighbors=5, max_memory=100).fit(frame)
    assert det.memory_.shape[0] == 100
    Z = (A - det.mean_) / det.scale_
    for j in range(3):  # each variable's extremes are remembered
        assert np.isclose(det.memory_[:, j].max(), Z[:, j].max()) and np.isclose(det.memory_[:, j].min(), Z[:, j].min())
    assert NearestNeighbourDetector(n_neighbors=5).fit(frame).memory_.shape[0] == 1000  # no cap by default
    with pytest.raises(ValueError, match="max_memory"):
        NearestNeighbourDetector(n_neighbors=5, max_memory=5).fit(frame)
