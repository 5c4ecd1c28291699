"""One contract check run over every detector (like scikit-learn's parametrize_with_checks)."""

import copy
import pickle

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analytics import detectors
from analytics.detectors import (
    SCORE_SCHEMA,
    BadQualityDetector,
    CusumChart,
    Detector,
    EwmaChart,
    FlatlineDetector,
    LimitDetector,
    NelsonRules,
    RateOfChangeDetector,
    RobustZScore,
    RollingZScore,
    StaleDataDetector,
)
from controltower.samples import empty_samples
from tests.analytics.helpers import TEMPERATURE, make_tag, mixed_batches

TAGS = [make_tag(**TEMPERATURE, on_delay_samples=2, off_delay_s=1.0),
        make_tag("s.a.l.u.p", warning_high=1.0, alarm_high=2.0, deadband=0.5, rate_of_change=2.0),
        make_tag("s.a.l.u.q")]
FACTORIES = {
    "limits": lambda: LimitDetector(TAGS),
    "zscore": lambda: RollingZScore(TAGS, window=30, threshold=4.0, warmup=10),
    "flatline": lambda: FlatlineDetector(TAGS, min_run=3, tolerance=0.3),
    "quality": lambda: BadQualityDetector(TAGS, min_run=1),
    "rate_of_change": lambda: RateOfChangeDetector(TAGS),
    "nelson": lambda: NelsonRules(TAGS),
    "ewma": lambda: EwmaChart(TAGS, lam=0.3, L=2.0),
    "cusum": lambda: CusumChart(TAGS, k=0.5, h=2.0),
    "robust_zscore": lambda: RobustZScore(TAGS, window=30, threshold=4.0, warmup=10),
    "stale": lambda: StaleDataDetector(TAGS, after_s=5.0),
}
# Detectors whose conditions come from `check(now)`, not from scoring samples.
CLOCK_ONLY = {"stale"}


def test_every_detector_is_checked():
    classes = {obj for obj in vars(detectors).values() if isinstance(obj, type) and obj is not Detector
               and callable(getattr(obj, "score", None))}
    assert {type(f()) for f in FACTORIES.values()} == classes


@pytest.fixture(scope="module")
def batches() -> list[pl.DataFrame]:
    # Shuffled, interleaved tags, with bad and null samples, plus a tag no detector knows.
    out = mixed_batches(TAGS, n_batches=3, per_tag=40, seed=11)
    stranger = mixed_batches([make_tag("x.y.z.u.stranger")], n_batches=3, per_tag=5, seed=12)
    return [pl.concat([b, s]) for b, s in zip(out, stranger)]


def learned(det) -> dict:
    return {k: v for k, v in vars(det).items() if k.endswith("_") and not k.startswith("_")}


def same_state(a: dict, b: dict) -> bool:
    """Equal learned attributes (data frames compared by content)."""
    return a.keys() == b.keys() and all(
        v.equals(b[k]) if isinstance(v, pl.DataFrame) else v == b[k] for k, v in a.items()
    )


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_detector_contract(name: str, batches: list[pl.DataFrame]):
    det = FACTORIES[name]()
    assert isinstance(det, Detector) and det.name == name
    assert det.fit(pl.concat(batches)) is det
    state = copy.deepcopy(learned(det))

    results = [det.score(b) for b in batches]
    for batch, out in zip(batches, results):
        assert out.schema == pl.Schema(SCORE_SCHEMA)
        assert out.height == batch.height
        assert out.select("tag_id", "ts").equals(batch.sort("tag_id", "ts").select("tag_id", "ts"))
        assert set(out["level"].unique().to_list()) <= {0, 1, 2}
        assert (out["score"].drop_nulls() >= 0).all()
        assert out.filter(pl.col("level") == 0)["reason"].null_count() == out.filter(pl.col("level") == 0).height
        assert out.filter(pl.col("level") > 0)["reason"].null_count() == 0
    if name not in CLOCK_ONLY:
        assert sum(int(r["level"].max()) for r in results) > 0  # the batches do exercise conditions
    assert same_state(learned(det), state)  # scoring learns nothing

    # Deterministic, and an unsorted batch scores like the same batch sorted.
    again = FACTORIES[name]().fit(pl.concat(batches))
    in_order = FACTORIES[name]().fit(pl.concat(batches))
    for batch, out in zip(batches, results):
        assert_frame_equal(again.score(batch), out)
        assert_frame_equal(in_order.score(batch.sort("tag_id", "ts")), out)

    # Picklable with its streaming state: the copy continues exactly like the original.
    fresh = FACTORIES[name]()
    fresh.score(batches[0])
    clone = pickle.loads(pickle.dumps(fresh))
    assert_frame_equal(clone.score(batches[1]), fresh.score(batches[1]))

    # An empty batch is fine.
    empty = det.score(empty_samples())
    assert empty.height == 0 and empty.schema == pl.Schema(SCORE_SCHEMA)
