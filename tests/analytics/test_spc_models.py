"""SPC centre lines as a stored model kind (`spc`): fitted by `controltower model fit --kind spc`
from a DuckDB historian holding simulator data, stored with version, training range and
fingerprint, audited, and loaded by the live engine (`runtime.load_unit_monitors`), under the
centres pinned in the site file."""

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analytics.detectors.spc import D2, StoredCentres, moving_range_centres
from analytics.engine import DetectionEngine
from analytics.models import ModelStore, fingerprint, fit_unit_model
from collector.sinks.duckdb import DuckDbHistorian
from controltower.cli import main
from controltower.runtime import ControlTower, load_unit_monitors
from controltower.site import parse_site_config
from tests.analytics.simulated_unit import (
    START,
    UNIT,
    batch_seconds,
    bioreactor_site,
    historian_site_file,
    simulate,
)

SITE = bioreactor_site()
TAGS = tuple(t.tag_id for t in SITE.tag_table())
TEMPERATURE = f"{UNIT}.temperature"
SIGMA = 0.05


def noise(centre: float, n: int, seed: int, start_s: float = 0.0, batch: str = "B1") -> pl.DataFrame:
    """`n` independent N(centre, SIGMA) temperature samples a second apart."""
    values = np.random.default_rng(seed).normal(centre, SIGMA, n)
    return pl.DataFrame({
        "ts": pl.datetime_range(START + timedelta(seconds=start_s), START + timedelta(seconds=start_s + n - 1),
                                "1s", eager=True, time_zone="UTC").cast(pl.Datetime("ns", "UTC")),
        "tag_id": [TEMPERATURE] * n, "value": values, "quality": ["good"] * n, "batch_id": [batch] * n,
    })


def test_moving_range_sigma_is_the_short_term_noise():
    # Two batches 1 degC apart: the overall std sees the step, MR-bar / d2 only the noise
    # (the moving range is not taken across the batch boundary).
    samples = pl.concat([noise(37.0, 2000, 1), noise(38.0, 2000, 2, start_s=3000, batch="B2")])
    found = moving_range_centres(samples, [TEMPERATURE, f"{UNIT}.ph"])
    assert found["tag_id"].to_list() == [TEMPERATURE]  # no pH samples: left out
    assert found["centre"][0] == pytest.approx(37.5, abs=0.01)
    assert found["sigma"][0] == pytest.approx(SIGMA, rel=0.05)
    assert samples["value"].std() > 5 * SIGMA
    # The estimate is MR-bar / 1.128 exactly.
    values = samples.filter(pl.col("batch_id") == "B1")["value"].to_numpy()
    one = moving_range_centres(samples.filter(pl.col("batch_id") == "B1"), [TEMPERATURE])
    assert one["sigma"][0] == pytest.approx(np.abs(np.diff(values)).mean() / D2, rel=1e-12)


@pytest.fixture(scope="module")
def historian_site(tmp_path_factory) -> Path:
    """A site file (EWMA and CUSUM on) whose DuckDB historian holds two simulated batches."""
    root = tmp_path_factory.mktemp("site")
    samples = simulate(SITE, seed=7, seconds=2.2 * batch_seconds(SITE))
    return historian_site_file(root, SITE, samples, detectors={"ewma": {"enabled": True}, "cusum": {"enabled": True}})


def test_model_fit_spc_from_the_historian(historian_site: Path, capsys):
    site = ["--config", str(historian_site), "--unit", UNIT, "--kind", "spc"]
    t0, t1 = START.isoformat(), (START + timedelta(hours=1)).isoformat()
    assert main(["model", "fit", *site, "--from", t0, "--to", t1]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["kind"] == "spc" and manifest["version"] == 1 and manifest["class"] == "SpcCentres"
    assert manifest["training"]["from"].startswith("2024-05-01T00:00:00")
    assert manifest["training"]["to"].startswith("2024-05-01T01:00:00")
    # The fingerprint is that of the samples read from the historian over the range.
    historian = DuckDbHistorian(historian_site.parent / "data" / "historian.duckdb")
    try:
        read = historian.read(list(TAGS), START, START + timedelta(hours=1))
    finally:
        historian.close()
    assert manifest["fingerprint"] == fingerprint(read) and manifest["training"]["samples"] == read.height
    centres = manifest["limits"]["centres"]
    assert TEMPERATURE in centres and all(c["sigma"] > 0 for c in centres.values())
    temperature = read.filter(pl.col("tag_id") == TEMPERATURE)["value"]
    assert centres[TEMPERATURE]["centre"] == pytest.approx(temperature.mean(), rel=1e-12)
    assert centres[TEMPERATURE]["sigma"] < temperature.std()  # short-term noise, not the batch's trend
    # Stored where the live engine looks, verified on load.
    store = ModelStore(historian_site.parent / "data" / "models")
    loaded = store.load(UNIT, "spc")
    assert loaded.model.centres().filter(pl.col("tag_id") == TEMPERATURE)["centre"][0] == pytest.approx(
        centres[TEMPERATURE]["centre"], rel=1e-15)
    # A second fit (good batches) is version 2 and a model change in the audit trail.
    assert main(["model", "fit", *site, "--batches", "BR101-0001"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["version"] == 2 and second["training"]["batches"] == ["BR101-0001"]
    trail = historian_site.parent / "data" / "audit.jsonl"
    changes = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [(c["action"], c["target"], c["old"], c["new"]) for c in changes[-2:]] == [
        ("model.change", f"{UNIT} spc", None, manifest["fingerprint"]),
        ("model.change", f"{UNIT} spc", manifest["fingerprint"], second["fingerprint"]),
    ]
    assert main(["model", "list", "--config", str(historian_site)]) == 0
    assert f"{UNIT} spc v2" in capsys.readouterr().out
    # The live engine (the tower, and a worker's partition through `units`) takes the newest.
    from controltower.site import load_site_config

    config = load_site_config(historian_site)
    data_dir = historian_site.parent / "data"
    [stored] = load_unit_monitors(config, data_dir, units=[UNIT])
    assert isinstance(stored, StoredCentres) and stored.version == 2
    tower = ControlTower(config, data_dir=data_dir, historian=DuckDbHistorian(data_dir / "run.duckdb"))
    try:
        assert not tower.engine.monitors
        for chart in (d for d in tower.engine.detectors if d.name in ("ewma", "cusum")):
            assert chart.centres_.sort("tag_id").equals(stored.centres.sort("tag_id"))
    finally:
        tower.close()


def spc_site(tmp_path: Path, pinned: tuple[float, float] | None = None, version: int | None = None):
    """The bioreactor site with EWMA and CUSUM on, its data dir under tmp_path; `pinned`: the
    temperature's `spc:` (centre, sigma) in the site file; `version`: the spc model version pinned."""
    config = bioreactor_site().model_dump(mode="json", exclude_defaults=True)
    config["data_dir"] = str(tmp_path)
    config["detectors"] = {"ewma": {"enabled": True}, "cusum": {"enabled": True}}
    if version is not None:
        config["detectors"]["models"] = {"pin": {UNIT: {"spc": version}}}
    if pinned is not None:
        tag = config["sites"][0]["areas"][0]["lines"][0]["units"][0]["tags"][0]
        assert tag["id"] == "temperature"
        tag["spc"] = {"centre": pinned[0], "sigma": pinned[1]}
    return parse_site_config(config)


def store_centres(tmp_path: Path, training: pl.DataFrame) -> None:
    fitted = fit_unit_model("spc", training, unit=UNIT, variables=TAGS, training={"from": None, "to": None})
    ModelStore(tmp_path / "models").save(fitted)


def chart_alerts(site, tmp_path: Path, live: pl.DataFrame) -> set[str]:
    """The charts that raise an alert on the temperature of `live`; the wide and the long path agree."""
    found = []
    for wide in (True, False):
        engine = DetectionEngine(site.tag_table(), site.detectors, monitors=load_unit_monitors(site, tmp_path),
                                 wide=wide)
        found.append({a.detector for a in engine.process(live) if a.tag_id == TEMPERATURE})
    assert found[0] == found[1]
    return found[0]


def test_a_shift_from_the_stored_centre_raises_ewma_and_cusum(tmp_path: Path):
    # Live: the temperature 2 sigma above where the training said it runs.
    live = noise(37.0 + 2 * SIGMA, 300, seed=11, start_s=10_000)
    site = spc_site(tmp_path)
    # Nothing stored, nothing pinned: the charts have no centre and score nothing (as before).
    assert chart_alerts(site, tmp_path, live) == set()
    store_centres(tmp_path, noise(37.0, 1000, seed=3))
    assert chart_alerts(site, tmp_path, live) == {"ewma", "cusum"}
    # A centre fitted where the process runs now (the "wrong" one for a shift) sees nothing.
    store_centres(tmp_path, noise(37.0 + 2 * SIGMA, 1000, seed=4))
    assert chart_alerts(site, tmp_path, live) == set()
    # ... unless a version is pinned (detectors.models.pin): version 1 again.
    assert chart_alerts(spc_site(tmp_path, version=1), tmp_path, live) == {"ewma", "cusum"}


def test_centres_pinned_in_the_site_file_win_over_the_stored_ones(tmp_path: Path):
    live = noise(37.0 + 2 * SIGMA, 300, seed=11, start_s=10_000)
    ph = noise(7.0, 1000, seed=5).with_columns(pl.lit(f"{UNIT}.ph").alias("tag_id"))
    store_centres(tmp_path, pl.concat([noise(37.0, 1000, seed=3), ph]))  # would alarm on the shift
    site = spc_site(tmp_path, pinned=(37.0 + 2 * SIGMA, SIGMA))
    engine = DetectionEngine(site.tag_table(), site.detectors, monitors=load_unit_monitors(site, tmp_path))
    cusum = next(d for d in engine.detectors if d.name == "cusum")
    row = cusum.centres_.filter(pl.col("tag_id") == TEMPERATURE).row(0, named=True)
    assert (row["centre"], row["sigma"]) == (37.0 + 2 * SIGMA, SIGMA)
    # The other tags keep their stored centres.
    assert cusum.centres_["tag_id"].to_list() == [f"{UNIT}.ph", TEMPERATURE]
    assert cusum.centres_["centre"][0] == pytest.approx(7.0, abs=0.01)
    assert not {a.detector for a in engine.process(live) if a.tag_id == TEMPERATURE}
    # A pinned sigma must be positive: the site file is refused, naming the key.
    with pytest.raises(Exception, match="sigma"):
        spc_site(tmp_path, pinned=(37.0, 0.0))
