"""Every univariate detector scores a series the same in one batch as in many micro-batches, and
the same as its per-sample loop in tests/analytics/reference.py."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analytics.detectors import (
    CusumChart,
    EwmaChart,
    FlatlineDetector,
    LimitDetector,
    NelsonRules,
    RateOfChangeDetector,
    RobustZScore,
)
from tests.analytics.helpers import TEMPERATURE, assert_close, make_tag, mixed_batches
from tests.analytics.reference import (
    ReferenceCusum,
    ReferenceEwma,
    ReferenceFlatline,
    ReferenceLimits,
    ReferenceNelson,
    ReferenceRateOfChange,
    ReferenceRobustZScore,
)

TAGS = [
    make_tag(**TEMPERATURE, on_delay_samples=3, off_delay_s=4.0, rate_of_change=3.0),
    make_tag("s.a.l.u.p", warning_high=1.0, alarm_high=2.0, deadband=0.5, on_delay_s=2.0, off_delay_samples=2,
             rate_of_change=1.5),
    make_tag("s.a.l.u.q"),
]
CENTRES = {TAGS[0].tag_id: (37.0, 0.4), TAGS[1].tag_id: (0.0, 0.5), TAGS[2].tag_id: (20.0, 0.3)}
FACTORIES = {
    "limits": lambda: LimitDetector(TAGS),
    "rate_of_change": lambda: RateOfChangeDetector(TAGS),
    "nelson": lambda: NelsonRules(TAGS, given=CENTRES),
    "western_electric": lambda: NelsonRules.western_electric(TAGS, given=CENTRES),
    "ewma": lambda: EwmaChart(TAGS, lam=0.3, L=2.5, given=CENTRES),
    "ewma_asymptotic": lambda: EwmaChart(TAGS, lam=0.1, L=2.0, exact_limits=False, given=CENTRES),
    "cusum": lambda: CusumChart(TAGS, k=0.5, h=3.0, given=CENTRES),
    "robust_zscore": lambda: RobustZScore(TAGS, window=20, threshold=4.0, warmup=8),
    "flatline": lambda: FlatlineDetector(TAGS, min_run=3, tolerance=0.3),
}
REFERENCES = {
    "limits": lambda: ReferenceLimits(TAGS),
    "rate_of_change": lambda: ReferenceRateOfChange(TAGS),
    "nelson": lambda: ReferenceNelson(CENTRES),
    "western_electric": lambda: ReferenceNelson(CENTRES, rules=(1, 2, 5, 6), same_side_run=8),
    "ewma": lambda: ReferenceEwma(CENTRES, lam=0.3, L=2.5),
    "ewma_asymptotic": lambda: ReferenceEwma(CENTRES, lam=0.1, L=2.0, exact=False),
    "cusum": lambda: ReferenceCusum(CENTRES, k=0.5, h=3.0),
    "robust_zscore": lambda: ReferenceRobustZScore(TAGS, window=20, threshold=4.0, warmup=8),
    "flatline": lambda: ReferenceFlatline(TAGS, min_run=3, tolerance=0.3),
}


@pytest.fixture(scope="module")
def series() -> pl.DataFrame:
    return drifting_series()


def drifting_series() -> pl.DataFrame:
    """~600 samples over 3 tags (plus an unknown one) in time order, with bad, null, shifted
    and spiking stretches, one batch per time step shuffled across tags."""
    frames = mixed_batches(TAGS, n_batches=4, per_tag=50, seed=5, excursion_rate=0.08)
    # A slow drift on the first tag so the charts and run rules have something to find.
    whole = pl.concat(frames).with_columns(
        pl.when(pl.col("tag_id") == TAGS[0].tag_id)
        .then(pl.col("value") + (pl.col("ts") - pl.col("ts").min()).dt.total_seconds() * 0.01)
        .otherwise(pl.col("value")).alias("value")
    )
    stranger = mixed_batches([make_tag("x.y.z.u.stranger")], n_batches=1, per_tag=20, seed=6)[0]
    return pl.concat([whole, stranger]).sample(fraction=1.0, shuffle=True, seed=7)


def micro_batches(frame: pl.DataFrame, seed: int) -> list[pl.DataFrame]:
    """Split by time at random cut points (sizes 1 to ~60 seconds), each batch shuffled."""
    rng = np.random.default_rng(seed)
    seconds = (frame["ts"] - frame["ts"].min()).dt.total_seconds()
    cuts = np.cumsum(rng.integers(1, 60, size=50))
    out, start = [], 0
    for cut in [*cuts[cuts < seconds.max()], seconds.max() + 1]:
        part = frame.filter((seconds >= start) & (seconds < cut))
        if part.height:
            out.append(part.sample(fraction=1.0, shuffle=True, seed=int(cut)))
        start = cut
    return out


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_one_batch_equals_many(name: str, series: pl.DataFrame):
    whole = FACTORIES[name]().score(series)
    assert whole["level"].max() > 0  # the series exercises the detector
    for seed in (1, 2):
        det = FACTORIES[name]()
        parts = pl.concat([det.score(b) for b in micro_batches(series, seed)]).sort("tag_id", "ts", maintain_order=True)
        assert_frame_equal(parts.drop("score", "reason"), whole.drop("score", "reason"))
        assert_close(parts["score"].to_list(), whole["score"].to_list(), rel=1e-9)
        if name != "cusum":  # CUSUM's reason shows the sum rounded to 0.01: a last-digit tie may round apart
            assert parts["reason"].to_list() == whole["reason"].to_list()


def test_single_sample_batches_equal_one_batch(series: pl.DataFrame):
    head = series.sort("ts").head(120)
    for name in ("limits", "nelson", "ewma", "cusum", "rate_of_change", "robust_zscore"):
        whole = FACTORIES[name]().score(head)
        det = FACTORIES[name]()
        one_by_one = pl.concat([det.score(head.slice(i, 1)) for i in range(head.height)])
        one_by_one = one_by_one.sort("tag_id", "ts", maintain_order=True)
        assert one_by_one["level"].to_list() == whole["level"].to_list(), name
        assert_close(one_by_one["score"].to_list(), whole["score"].to_list(), rel=1e-9)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_matches_per_sample_loop(name: str, series: pl.DataFrame):
    det, ref = FACTORIES[name](), REFERENCES[name]()
    for b in micro_batches(series, 3):
        got, want = det.score(b), ref.score(b)
        assert got["tag_id"].to_list() == want["tag_id"].to_list()
        assert got["level"].to_list() == want["level"].to_list()
        assert_close(got["score"].to_list(), want["score"].to_list(), rel=1e-9)
        if "reason" in want.columns and name in ("nelson", "western_electric"):
            # The rule named is the lowest-numbered that fires.
            prefix = got["reason"].str.extract(r"^(Nelson \d:)").to_list()
            assert prefix == want["reason"].to_list()
