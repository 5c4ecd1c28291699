"""The wide path (`analytics.detectors.wide`): every univariate detector scores a pivoted batch
exactly as its long path does and as its per-sample loop in tests/analytics/reference.py,
across micro-batch boundaries, with bad, null and NaN samples, missing cells, and batches that
switch between the wide and the long path."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analytics.detectors.wide import pivot
from tests.analytics.helpers import assert_close
from tests.analytics.test_univariate_streaming import FACTORIES, REFERENCES, drifting_series, micro_batches

WIDE = sorted(name for name, make in FACTORIES.items() if hasattr(make(), "score_wide"))


@pytest.fixture(scope="module")
def series() -> pl.DataFrame:
    """The streaming tests' series (3 tags and an unknown one sharing timestamps, bad, null,
    shifted and spiking stretches) with some NaN values too."""
    frame = drifting_series()
    # A few NaN values (not null): skipped like nulls, kept as NaN in the output.
    return frame.with_columns(pl.when(pl.int_range(pl.len()) % 97 == 5).then(float("nan"))
                              .otherwise(pl.col("value")).alias("value"))


def assert_same(got: pl.DataFrame, want: pl.DataFrame, name: str) -> None:
    assert_frame_equal(got.drop("score", "limit", "reason"), want.drop("score", "limit", "reason"))
    assert_close(got["score"].to_list(), want["score"].to_list(), rel=1e-9)
    assert_close(got["limit"].to_list(), want["limit"].to_list(), rel=1e-9)
    if name != "cusum":  # CUSUM's reason shows the sum rounded to 0.01: a last-digit tie may round apart
        assert got["reason"].to_list() == want["reason"].to_list()


def test_pivot_shape(series: pl.DataFrame):
    wide = pivot(series)
    assert wide is not None
    assert wide.tag_ids == sorted(series["tag_id"].unique().to_list())
    assert (np.diff(wide.ts) > 0).all()
    assert wide.present is not None  # the stranger tag has fewer timestamps
    assert int(wide.present.sum()) == series.height
    assert int(wide.usable.sum()) == series.filter(
        pl.col("value").is_not_null() & ~pl.col("value").is_nan() & (pl.col("quality") != "bad")).height
    twice = pl.concat([series.head(5), series.head(5)])
    assert pivot(twice) is None  # a tag twice at one timestamp: the long path keeps the tie order
    sparse = series.with_columns(pl.col("ts") + pl.duration(nanoseconds=pl.int_range(pl.len())))
    assert pivot(sparse) is None  # no shared timestamps


@pytest.mark.parametrize("name", WIDE)
def test_wide_equals_long(name: str, series: pl.DataFrame):
    wide_det, long_det = FACTORIES[name](), FACTORIES[name]()
    for i, b in enumerate(micro_batches(series, 4)):
        want = long_det.score(b)
        wide = pivot(b)
        if wide is None or i % 5 == 3:  # every fifth batch goes the long way: shared state
            got = wide_det.score(b)
        else:
            got = wide_det.score_wide(wide).to_long()
        assert_same(got, want, name)


@pytest.mark.parametrize("name", WIDE)
def test_wide_matches_per_sample_loop(name: str, series: pl.DataFrame):
    det, ref = FACTORIES[name](), REFERENCES[name]()
    flagged = 0
    for b in micro_batches(series, 3):
        wide = pivot(b)
        got = det.score_wide(wide).to_long() if wide is not None else det.score(b)
        want = ref.score(b)
        assert got["tag_id"].to_list() == want["tag_id"].to_list()
        assert got["level"].to_list() == want["level"].to_list()
        assert_close(got["score"].to_list(), want["score"].to_list(), rel=1e-9)
        flagged += int((got["level"] > 0).sum())
    assert flagged > 0  # the series exercises the detector


@pytest.mark.parametrize("name", WIDE)
def test_single_time_step_batches(name: str, series: pl.DataFrame):
    head = series.sort("ts").head(150)
    whole = FACTORIES[name]().score(head)
    det = FACTORIES[name]()
    parts = [det.score_wide(pivot(part)).to_long() for part in head.partition_by("ts", maintain_order=True)]
    assert_same(pl.concat(parts).sort("tag_id", "ts", maintain_order=True), whole, name)


def test_engine_wide_equals_long(series: pl.DataFrame):
    """The live engine pivots batches whose tags share timestamps: the same condition events and
    alerts as the long path, with the long path taking the batches that are not wide."""
    from analytics.engine import DetectionEngine
    from controltower.site import CusumConfig, DetectorsConfig, EwmaConfig, NelsonConfig
    from tests.analytics.test_univariate_streaming import TAGS

    config = DetectorsConfig(nelson=NelsonConfig(enabled=True), ewma=EwmaConfig(enabled=True),
                             cusum=CusumConfig(enabled=True))
    history = series.sort("ts").head(300)
    engines = [DetectionEngine(TAGS, config, wide=w).fit(history) for w in (True, False)]
    assert engines[0].wide and not engines[1].wide
    batches = micro_batches(series, 5)[:24]
    batches.insert(3, pl.concat([batches[3], batches[3].head(2)]))  # a duplicate: not wide
    counts = []
    for b in batches:
        alerts = [e.process(b) for e in engines]
        assert [(a.tag_id, a.detector, a.severity, a.value, a.message, a.raised_at) for a in alerts[0]] == \
               [(a.tag_id, a.detector, a.severity, a.value, a.message, a.raised_at) for a in alerts[1]]
        got, want = (e.last_events.drop("score", "limit", "reason") for e in engines)
        assert_frame_equal(got, want)
        assert_close(engines[0].last_events["score"].to_list(), engines[1].last_events["score"].to_list())
        counts.append(engines[0].last_events.height)
    assert sum(counts) > 0
    for name in ("limits", "nelson", "ewma"):
        assert_same(engines[0].last_scores[name], engines[1].last_scores[name], name)


def test_tiled_batches(series: pl.DataFrame):
    """Time-major batches with the tags in one fixed (unsorted) order at every timestamp, as
    batched MQTT and the simulator publish them, take the pivot's fast path; scores are the same."""
    from analytics.detectors import LimitDetector
    from analytics.detectors.wide import _tiled
    from tests.analytics.helpers import TEMPERATURE, make_tag
    from tests.analytics.test_univariate_streaming import TAGS

    order = {t.tag_id: i for i, t in enumerate(sorted(TAGS, key=lambda t: t.tag_id, reverse=True))}
    frame = (series.filter(pl.col("tag_id").is_in(list(order)))
             .with_columns(pl.col("tag_id").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
             .sort("ts", "_order").drop("_order"))
    batches = [frame.slice(i, 3 * 23) for i in range(0, frame.height, 3 * 23)]
    assert len(batches) > 5 and all(_tiled(b, None) is not None for b in batches)
    plain = [make_tag("s.a.l.u.r", **TEMPERATURE), make_tag("s.a.l.u.q", warning_high=20.5)]
    factories = {**FACTORIES, "limits_no_delays": lambda: LimitDetector(plain)}
    for name in [*WIDE, "limits_no_delays"]:
        wide_det, long_det = factories[name](), factories[name]()
        for b in batches:
            wide = pivot(b)
            assert wide is not None and wide.present is None
            assert wide.tag_ids == sorted(order)
            assert_same(wide_det.score_wide(wide).to_long(), long_det.score(b), name)


def test_simulator_batches_go_wide():
    """The project's simulator publishes all tags of a unit at each step: its batches pivot (on the
    fast tiled path), and the engine's events on them equal the long path's."""
    from analytics.detectors.wide import _tiled
    from analytics.engine import DetectionEngine
    from controltower.site import CusumConfig, DetectorsConfig, EwmaConfig, NelsonConfig
    from tests.analytics.simulated_unit import bioreactor_site, simulate

    site = bioreactor_site()
    frame = simulate(site, seed=3, seconds=3600.0, dt_s=5.0,
                     faults=[(1200.0, "temperature", "spike", 60.0, 4.0), (2400.0, "ph", "stuck", 600.0, 0.0)])
    tags = site.tag_table()
    config = DetectorsConfig(nelson=NelsonConfig(enabled=True), ewma=EwmaConfig(enabled=True),
                             cusum=CusumConfig(enabled=True))
    history, live = frame.head(frame.height // 3), frame.slice(frame.height // 3)
    engines = [DetectionEngine(tags, config, wide=w).fit(history) for w in (True, False)]
    per_batch = 5 * 60  # 60 steps of 5 tags
    events = 0
    for start in range(0, live.height, per_batch):
        b = live.slice(start, per_batch)
        assert _tiled(b, None) is not None
        for e in engines:
            e.process(b)
        assert_frame_equal(engines[0].last_events.drop("score"), engines[1].last_events.drop("score"))
        events += engines[0].last_events.height
    assert events > 0
