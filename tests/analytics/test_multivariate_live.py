"""Stored multivariate models on simulator data: calibrated PCA limits hold their nominal
false-alarm rate on fresh normal data, and the live engine raises a unit alert whose
root-cause hint names the faulted tag."""

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from analytics.engine import DetectionEngine
from analytics.models import ModelStore, fit_unit_model
from analytics.monitors import RowMonitor, on_delay
from analytics.multivariate import PCADetector, QuantileThreshold, held_out_scores
from analytics.multivariate.rows import wide_rows
from controltower.runtime import load_unit_monitors
from controltower.site import parse_site_config
from simulators.plant import Plant
from tests.analytics.simulated_unit import UNIT, batch_seconds, batches, bioreactor_site, simulate

SITE = bioreactor_site()
BATCH_S = batch_seconds(SITE)
PH = f"{UNIT}.ph"
FAULT_AT = 2 * BATCH_S + 1500.0  # into the growth phase of batch 3

# --- the false-alarm rate on fresh normal data ---------------------------------------------------

FILLER_TAGS = {
    "fill_weight": {"alarm_low": 1.9, "warning_low": 1.95, "warning_high": 2.05, "alarm_high": 2.1},
    "speed": {"warning_low": 200.0, "warning_high": 350.0},
    "room_dp": {"warning_low": 10.0, "warning_high": 30.0},
}


def filler_rows(seed: int, hours: float, units: int) -> list[pl.DataFrame]:
    """Wide rows (5 s) of `units` simulated vial fillers of one plant: independent replicas
    (each unit draws from its own generator), columns named by the short tag ids."""
    config = [{"id": f"filler{i}", "kind": "filling_line",
               "tags": [{"id": t, "limits": lim, "opcua": {"node_id": f"ns=2;s=f{i}.{t}"}}
                        for t, lim in FILLER_TAGS.items()]} for i in range(units)]
    site = parse_site_config({"enterprise": "Test", "sites": [{"id": "lyon", "areas": [
        {"id": "ff", "lines": [{"id": "fill1", "units": config}]}]}]})
    frame = Plant(site, seed=seed, start=datetime(2024, 1, 1, tzinfo=UTC)).run(hours * 3600, 5.0)
    out = []
    for i in range(units):
        rows = wide_rows(frame, tuple(f"lyon.ff.fill1.filler{i}.{t}" for t in FILLER_TAGS)).drop("ts")
        out.append(rows.rename(dict(zip(rows.columns, FILLER_TAGS))))
    return out


def design_effect(alarms: np.ndarray, max_lag: int = 60) -> float:
    """1 + 2 sum of the autocorrelations of a 0/1 series up to `max_lag` rows (5 min): how many
    rows count as one independent row, since alarms on a real (simulated) process cluster."""
    x = alarms - alarms.mean()
    var = float((x * x).mean())
    if var == 0:
        return 1.0
    rho = [float((x[:-k] * x[k:]).mean()) / var for k in range(1, max_lag + 1)]
    return max(1.0, 1.0 + 2.0 * sum(rho))


def test_calibrated_pca_limits_hold_alpha_on_fresh_simulator_data():
    """alpha = 0.01. Training: plant seed 100, 4 fillers x 6 h; fresh: plant seed 200, 4 other
    fillers x 6 h (17,280 rows each). The observed rate of each limit (T², SPE, and the combined
    score's calibrated threshold) must be within 3 binomial standard deviations of 1 %, with
    the fresh and the calibration samples each counted at their effective size (rows / design
    effect, the clustering of alarms measured on the fresh data; about 3-6 here), i.e. a
    tolerance of about +-0.7 %. The textbook SPE limit (Jackson-Mudholkar) alarms on about
    2.5 % of these rows: outside it (asserted, so the test is known to have the power to fail)."""
    alpha = 0.01
    train = pl.concat(filler_rows(100, 6, 4))
    fresh = filler_rows(200, 6, 4)
    detector = PCADetector(alpha=alpha).fit(train)
    threshold = QuantileThreshold(alpha).fit(held_out_scores(PCADetector(alpha=alpha), train))
    alarms = {"t2": [], "spe": [], "score": []}
    for rows in fresh:
        t2, spe = detector.statistics(rows)
        alarms["t2"].append((t2 > detector.t2_limit_).astype(float))
        alarms["spe"].append((spe > detector.spe_limit_).astype(float))
        alarms["score"].append(threshold.predict(detector.score_samples(rows)).astype(float))
    n_fresh = sum(r.height for r in fresh)
    for name, per_unit in alarms.items():
        rate = float(np.concatenate(per_unit).mean())
        deff = float(np.mean([design_effect(a) for a in per_unit]))
        tolerance = 3 * np.sqrt(alpha * (1 - alpha) * (deff / n_fresh + deff / train.height))
        assert abs(rate - alpha) < tolerance, f"{name}: rate {rate:.4f}, tolerance {tolerance:.4f}, deff {deff:.1f}"
        assert tolerance < 0.01  # the test can tell 1 % from 2 %
    # ... and does: the textbook SPE limit (Jackson-Mudholkar) fails it.
    textbook = PCADetector(alpha=alpha, limits="textbook").fit(train)
    rate = float(np.concatenate([textbook.statistics(r)[1] > textbook.spe_limit_ for r in fresh]).mean())
    assert rate > alpha + tolerance


@pytest.fixture(scope="module")
def short_run() -> pl.DataFrame:
    return simulate(SITE, seed=41, seconds=1.5 * BATCH_S)


@pytest.fixture(scope="module")
def good() -> pl.DataFrame:
    return batches(simulate(SITE, seed=31, seconds=7.2 * BATCH_S), 2, 7)


@pytest.fixture(scope="module")
def faulted() -> pl.DataFrame:
    return simulate(SITE, seed=32, seconds=3 * BATCH_S, faults=[(FAULT_AT, "ph", "bias", 1200.0, 0.1)])


@pytest.mark.parametrize("kind", ["pca", "dpca", "iforest"])
def test_row_monitor_scores_a_stream_as_one_frame(kind: str, short_run: pl.DataFrame):
    """The live path scores micro-batches exactly as the whole recording at once: the forward fill
    and dynamic PCA's lags carry across micro-batch boundaries."""
    run = short_run
    tags = tuple(t.tag_id for t in SITE.tag_table())
    params = {"n_estimators": 50} if kind == "iforest" else None
    fitted = fit_unit_model(kind, batches(run, 1, 1), unit=UNIT, variables=tags, params=params)
    # Drop some samples so the forward fill has work to do.
    live = batches(run, 2, 2).filter((pl.col("ts").dt.epoch("s") % 35 != 0) | (pl.col("tag_id") != tags[0]))
    whole = RowMonitor(fitted).score(live)
    monitor = RowMonitor(fitted)
    chunks = live.with_columns((pl.col("ts").dt.epoch("s") // 45).alias("_c")).partition_by("_c", maintain_order=True)
    streamed = pl.concat([monitor.score(c.drop("_c")) for c in chunks])
    assert streamed.height == whole.height > 300
    assert np.allclose(streamed["score"].to_numpy(), whole["score"].to_numpy(), rtol=1e-12, atol=1e-12)
    assert streamed["contributors"].to_list() == whole["contributors"].to_list()


def test_on_delay_counts_across_calls():
    active, run = on_delay(np.array([True, True, False, True, True, True]), 0, 3)
    assert active.tolist() == [False, False, False, False, False, True] and run == 3
    active, run = on_delay(np.array([True, False]), 2, 3)
    assert active.tolist() == [True, False] and run == 0


# --- the live engine ---------------------------------------------------------------------------


def stream(engine: DetectionEngine, frame: pl.DataFrame, step_s: float = 60.0) -> list:
    """Feed `frame` to the engine in micro-batches of `step_s` seconds; the alerts raised."""
    raised = []
    chunks = frame.with_columns((pl.col("ts").dt.epoch("s") // int(step_s)).alias("_chunk"))
    for _, chunk in chunks.group_by("_chunk", maintain_order=True):
        raised.extend(engine.process(chunk.drop("_chunk")))
    return raised


@pytest.mark.parametrize("kind", ["pca", "golden"])
def test_live_engine_raises_a_unit_alert_naming_the_faulted_tag(kind: str, tmp_path, good: pl.DataFrame,
                                                               faulted: pl.DataFrame):
    # alpha per row: 1 % alarms cluster into a false alert every few hours on a batch unit, so
    # live models are fitted at 0.1 % (the `model fit` default).
    fitted = fit_unit_model(kind, good, unit=UNIT, variables=tuple(t.tag_id for t in SITE.tag_table()), alpha=0.001)
    ModelStore(tmp_path / "models").save(fitted)
    monitors = load_unit_monitors(SITE, tmp_path)
    assert [(m.unit, m.name, m.version) for m in monitors] == [(UNIT, kind, 1)]
    # A model reading a tag the site no longer has is not loaded (and says why in the log).
    fewer = SITE.model_copy(deep=True)
    fewer.sites[0].areas[0].lines[0].units[0].tags.pop()
    assert load_unit_monitors(fewer, tmp_path) == []
    # The univariate detectors are off here: this is about the models (and keeps the test fast).
    config = SITE.detectors.model_copy(update={name: sub.model_copy(update={"enabled": False})
                                               for name, sub in SITE.detectors if name != "models"})
    engine = DetectionEngine(SITE.tag_table(), config, monitors=monitors)
    assert not engine.detectors
    fault_at = FAULT_AT
    live = faulted
    start = live["ts"].min()
    # From the end of batch 1 (which starts from the settled plant, unlike the batches learnt):
    # the golden monitor sees batch 2 start, and scores batches 2 and 3.
    live = live.filter(pl.col("ts") >= batches(live, 2, 2)["ts"].min() - pl.duration(minutes=5))
    before = stream(engine, live.filter(pl.col("ts") < start + pl.duration(seconds=fault_at)))
    assert not [a for a in before if a.detector == kind], [(a.raised_at, a.message) for a in before]
    after = stream(engine, live.filter(pl.col("ts") >= start + pl.duration(seconds=fault_at)))
    mine = [a for a in after if a.detector == kind]
    assert len(mine) >= 1
    alert = mine[0]
    assert alert.tag_id == UNIT and alert.unit == "br101" and alert.contributors[0] == PH
    assert alert.limit == 1.0 and alert.value > 1.0 and "top tags: " + PH in alert.message
    assert alert.to_dict()["contributors"][0] == PH
    assert (alert.raised_at - start).total_seconds() < fault_at + 600  # within 10 minutes
