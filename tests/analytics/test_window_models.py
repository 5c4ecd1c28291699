"""Window-feature models (wpca, wknn) as stored kinds: `controltower model fit --kind wpca|wknn`
from a DuckDB historian of simulated batches, stored as plain arrays, loaded back to the same
scores, streamed by the live engine as the whole recording would be scored (the window's earlier
rows carried across micro-batches), and flagging a simulated fault with the faulted tag first."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analytics.models import ModelStore
from analytics.monitors import RowMonitor
from analytics.multivariate.postprocess import ewma
from analytics.multivariate.rows import wide_rows
from analytics.offline import HALFLIFE, WINDOW
from controltower.cli import main
from controltower.runtime import load_unit_monitors
from controltower.site import load_site_config
from tests.analytics.simulated_unit import UNIT, batches, historian_site_file, simulate
from tests.analytics.test_knn_model import BATCH_S, FAULT_AT, GOOD, PH, SITE, TAGS, alerts_around_a_ph_bias

KINDS = ("wpca", "wknn")


@pytest.fixture(scope="module")
def fitted_site(tmp_path_factory) -> Path:
    """A site file over a DuckDB historian of 7 simulated batches, with wpca and wknn models fitted
    on batches 2-7 by `controltower model fit` (the CLI)."""
    root = tmp_path_factory.mktemp("window-site")
    path = historian_site_file(root, SITE, simulate(SITE, seed=31, seconds=7.2 * BATCH_S))
    for kind in KINDS:
        assert main(["model", "fit", "--config", str(path), "--unit", UNIT, "--kind", kind, "--batches", GOOD]) == 0
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_model_fit_stores_plain_arrays_that_score_the_same(fitted_site: Path, kind: str):
    store = ModelStore(fitted_site.parent / "data" / "models")
    version = fitted_site.parent / "data" / "models" / UNIT / kind / "v0001"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["class"] == {"wpca": "WindowPCADetector", "wknn": "WindowKnnDetector"}[kind]
    assert manifest["parameters"]["window"] == WINDOW
    assert manifest["limits"]["halflife"] == HALFLIFE[kind] and manifest["limits"]["threshold"] > 0
    assert "process_variables_" in manifest["state"] and manifest["variables"] == list(TAGS)
    with zipfile.ZipFile(version / "arrays.npz") as z:  # numeric arrays only: nothing pickled
        for name in z.namelist():
            assert np.load(io.BytesIO(z.read(name)), allow_pickle=False).dtype.kind in "fiu", name
    loaded = store.load(UNIT, kind)
    assert loaded.model.process_variables_ == TAGS and len(loaded.model.variables_) == 2 * len(TAGS)
    X = wide_rows(simulate(SITE, seed=5, seconds=0.3 * BATCH_S), TAGS).drop("ts")
    assert np.isfinite(loaded.model.score_samples(X)).all()
    assert loaded.model.contributions(X).columns == list(TAGS)


@pytest.mark.parametrize("kind", KINDS)
def test_monitor_streams_as_the_whole_recording(fitted_site: Path, kind: str):
    """Micro-batches scored one by one give the scores of the whole recording at once: the
    monitor carries the window's earlier rows and the EWMA across batches."""
    fitted = ModelStore(fitted_site.parent / "data" / "models").load(UNIT, kind)
    live = batches(simulate(SITE, seed=41, seconds=1.5 * BATCH_S), 1, 1)
    whole = RowMonitor(fitted).score(live)
    X = wide_rows(live, TAGS).drop("ts")
    expected = ewma(fitted.model.score_samples(X), fitted.halflife) / fitted.threshold
    assert np.allclose(whole["score"].to_numpy(), expected, rtol=1e-12, atol=0)
    monitor = RowMonitor(fitted)
    assert monitor.lags == WINDOW - 1
    chunks = live.with_columns((pl.col("ts").dt.epoch("s") // 7).alias("_c")).partition_by("_c", maintain_order=True)
    streamed = pl.concat([monitor.score(c.drop("_c")) for c in chunks])  # 7-row batches, shorter than a window
    assert streamed.height == whole.height > 300
    assert np.allclose(streamed["score"].to_numpy(), whole["score"].to_numpy(), rtol=1e-9, atol=1e-12)
    assert streamed["contributors"].to_list() == whole["contributors"].to_list()


def test_live_engine_flags_a_fault_with_the_stored_wpca_model(fitted_site: Path):
    """The tower's loader picks both models up; on a fresh run with a 0.1 pH bias in batch 3's
    growth phase, no wpca alert before the fault, one within 10 minutes after it, pH first."""
    site = load_site_config(fitted_site)
    monitors = load_unit_monitors(site, fitted_site.parent / "data")
    assert sorted((m.unit, m.name, m.version) for m in monitors) == [(UNIT, "wknn", 1), (UNIT, "wpca", 1)]
    before, after, start = alerts_around_a_ph_bias(site, [m for m in monitors if m.name == "wpca"], "wpca")
    assert not before, [(a.raised_at, a.message) for a in before]
    assert after
    alert = after[0]
    assert alert.tag_id == UNIT and alert.contributors[0] == PH and "wpca score" in alert.message
    assert (alert.raised_at - start).total_seconds() < FAULT_AT + 600
