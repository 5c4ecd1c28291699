"""The model store (plain arrays + a verified manifest) and `controltower model fit|list` against a
DuckDB historian filled from the simulator."""

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analytics.models import KEY_ENV, ModelStore, ModelStoreError, fingerprint, fit_unit_model
from analytics.monitors import load_monitors
from analytics.multivariate.rows import wide_rows
from controltower.cli import main
from tests.analytics.simulated_unit import (
    BATCH_S,
    SITE,
    START,
    TAGS,
    UNIT,
    batches,
    historian_site_file,
    simulate,
)


@pytest.fixture(scope="module")
def samples() -> pl.DataFrame:
    return simulate(SITE, seed=5, seconds=5.5 * BATCH_S)


@pytest.mark.parametrize("kind", ["pca", "dpca", "iforest", "golden"])
def test_round_trip_scores_the_same(kind: str, samples: pl.DataFrame, tmp_path: Path):
    train = batches(samples, 2, 5) if kind == "golden" else batches(samples, 2, 3)
    fitted = fit_unit_model(kind, train, unit=UNIT, variables=TAGS, training={"from": None, "to": None})
    store = ModelStore(tmp_path)
    manifest = store.save(fitted)
    assert manifest["version"] == 1 and manifest["kind"] == kind and manifest["variables"] == list(TAGS)
    assert manifest["fingerprint"] == fingerprint(train) and manifest["training"]["samples"] == train.height
    loaded = store.load(UNIT, kind)
    assert loaded.limits == json.loads(json.dumps(fitted.limits)) and loaded.manifest == manifest
    test = batches(samples, 4, 4)
    if kind == "golden":
        a, b = fitted.model.score(test), loaded.model.score(test)
        assert a.rows.equals(b.rows) and a.batches.equals(b.batches)
    else:
        X = wide_rows(test, TAGS).drop("ts")
        # (a loaded isolation forest walks its arrays, the fitted one scikit-learn's trees: to rounding)
        assert np.allclose(fitted.model.score_samples(X), loaded.model.score_samples(X), rtol=1e-12, atol=0)
        assert fitted.model.contributions(X).equals(loaded.model.contributions(X))
    # Nothing is pickled: the arrays load with allow_pickle=False (np.load would refuse objects).
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.joblib"))


def test_fingerprint_versions_and_tampering(samples: pl.DataFrame, tmp_path: Path, monkeypatch):
    train = batches(samples, 2, 2)
    # The fingerprint depends on the data, not on row order or extra columns.
    shuffled = train.sample(fraction=1.0, shuffle=True, seed=3).drop("site")
    assert fingerprint(shuffled) == fingerprint(train)
    assert fingerprint(train.with_columns(pl.col("value") + 1e-9)) != fingerprint(train)
    store = ModelStore(tmp_path)
    fitted = fit_unit_model("pca", train, unit=UNIT, variables=TAGS)
    assert [store.save(fitted)["version"] for _ in range(3)] == [1, 2, 3]
    assert store.versions(UNIT, "pca") == [1, 2, 3] and store.load(UNIT, "pca").manifest["version"] == 3
    assert store.load(UNIT, "pca", 2).manifest["version"] == 2
    assert [m["version"] for m in store.list()] == [1, 2, 3]
    # The live engine takes the newest, or the version the site pins.
    assert [m.version for m in load_monitors(tmp_path, [UNIT])] == [3]
    assert [m.version for m in load_monitors(tmp_path, [UNIT], pin={UNIT: {"pca": 2}})] == [2]
    v1 = tmp_path / UNIT / "pca" / "v0001"
    # An altered array file is refused.
    payload = bytearray((v1 / "arrays.npz").read_bytes())
    payload[-100] ^= 1
    (v1 / "arrays.npz").write_bytes(bytes(payload))
    with pytest.raises(ModelStoreError, match="arrays.npz: the file was altered"):
        store.load(UNIT, "pca", 1)
    # A hand-edited limit in the manifest is refused.
    v2 = tmp_path / UNIT / "pca" / "v0002"
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest["limits"]["threshold"] *= 10
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="manifest was altered"):
        store.load(UNIT, "pca", 2)
    # With a key, an unsigned model (or one signed with another key) is refused; a signed one loads.
    monkeypatch.setenv(KEY_ENV, "site-secret")
    with pytest.raises(ModelStoreError, match="signature"):
        store.load(UNIT, "pca", 3)
    signed = store.save(fitted)
    assert store.load(UNIT, "pca").manifest["version"] == signed["version"] == 4
    monkeypatch.setenv(KEY_ENV, "another")
    with pytest.raises(ModelStoreError, match="signature"):
        store.load(UNIT, "pca", 4)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ModelStoreError, match="no version 9"):
        store.load(UNIT, "pca", 9)
    with pytest.raises(ModelStoreError, match="no stored golden model"):
        store.load(UNIT, "golden")


@pytest.fixture(scope="module")
def historian_site(samples: pl.DataFrame, tmp_path_factory) -> Path:
    """A site file whose DuckDB historian holds the simulated samples."""
    return historian_site_file(tmp_path_factory.mktemp("site"), SITE, samples)


def test_model_fit_command_end_to_end(historian_site: Path, capsys):
    site = ["--config", str(historian_site), "--unit", UNIT]
    t0, t1 = START.isoformat(), (START + timedelta(hours=2)).isoformat()
    assert main(["model", "fit", *site, "--kind", "pca", "--from", t0, "--to", t1]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["version"] == 1 and manifest["training"]["from"].startswith("2024-05-01T00:00:00")
    assert manifest["limits"]["threshold"] > 0 and len(manifest["fingerprint"]) == 64
    ids = "BR101-0002,BR101-0003,BR101-0004,BR101-0005"
    assert main(["model", "fit", *site, "--kind", "golden", "--batches", ids]) == 0
    golden = json.loads(capsys.readouterr().out)
    assert golden["training"]["batches"] == ids.split(",") and golden["limits"]["k"] > 2
    # Stored where the live engine looks: detectors.models.dir under the data dir.
    store = ModelStore(historian_site.parent / "data" / "models")
    assert store.versions(UNIT, "pca") == [1] and store.versions(UNIT, "golden") == [1]
    # Each new version is a model change in the tower's audit trail, which still verifies.
    from controltower.audit import verify_trail

    trail = historian_site.parent / "data" / "audit.jsonl"
    changes = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [(c["action"], c["target"], c["old"], c["new"]) for c in changes] == [
        ("model.change", f"{UNIT} pca", None, manifest["fingerprint"]),
        ("model.change", f"{UNIT} golden", None, golden["fingerprint"]),
    ]
    assert changes[0]["actor"].startswith("cli:") and verify_trail(trail).ok
    assert main(["model", "list", "--config", str(historian_site)]) == 0
    listed = capsys.readouterr().out
    assert f"{UNIT} pca v1" in listed and f"{UNIT} golden v1" in listed
    # Clear errors, exit code 2.
    cases = [
        (["--kind", "pca", "--from", "2020-01-01T00:00:00Z", "--to", "2020-01-02T00:00:00Z"], "no samples of unit"),
        (["--kind", "golden", "--batches", "BR101-0002,BR101-0099"], "BR101-0099"),
        (["--kind", "golden", "--batches", "BR101-0002,BR101-0003"], "too few batches"),
        (["--kind", "pca"], "give a training range"),
    ]
    for extra, message in cases:
        assert main(["model", "fit", *site, *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["model", "fit", "--config", str(historian_site), "--unit", "lyon.x.y.z", "--kind", "pca",
                 "--from", t0]) == 2
    assert "unknown unit 'lyon.x.y.z'; known units: lyon.usp.bio1.br101" in capsys.readouterr().err
