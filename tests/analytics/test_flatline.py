import polars as pl

from analytics.detectors import FlatlineDetector
from analytics.engine import DetectionEngine
from controltower.site import DetectorsConfig
from tests.analytics.helpers import TEMPERATURE, batch, make_tag

TAG = make_tag(**TEMPERATURE)
TID = TAG.tag_id


def test_a_repeated_value_raises_from_the_min_run_th_sample_and_clears_when_it_moves():
    values = [37.0, 37.1] + [37.2] * 5 + [37.3]
    out = FlatlineDetector([TAG], min_run=4).score(batch(TID, values))
    # runs: 1, 1, then 1..5 of 37.2, then 1
    assert out["level"].to_list() == [0, 0, 0, 0, 0, 1, 1, 0]
    assert out["score"].to_list() == [0.25, 0.25, 0.25, 0.5, 0.75, 1.0, 1.25, 0.25]
    assert out["reason"][5] == "same value for 4 samples" and out["limit"][5] == 37.2


def test_a_run_spans_batch_boundaries():
    det = FlatlineDetector([TAG], min_run=5)
    first = det.score(batch(TID, [36.9, 37.0, 37.0, 37.0]))
    second = det.score(batch(TID, [37.0, 37.0, 37.5], start=4))
    assert first["level"].to_list() == [0, 0, 0, 0]
    assert second["level"].to_list() == [0, 1, 0]  # the 5th equal value is the second one here


def test_bad_quality_neither_extends_nor_breaks_a_run_and_carries_the_level():
    values = [37.0, 37.0, 37.0, None, 37.0, 99.0, 37.5]
    quality = ["good", "good", "good", "bad", "good", "bad", "good"]
    out = FlatlineDetector([TAG], min_run=3).score(batch(TID, values, quality=quality))
    assert out["level"].to_list() == [0, 0, 1, 1, 1, 1, 0]
    assert out["score"].to_list()[3] is None and out["score"].to_list()[5] is None


def test_tolerance_and_unknown_tags():
    other = "lyon.usp.bio1.br101.unknown"
    det = FlatlineDetector([TAG], min_run=3, tolerance=0.01)
    out = det.score(pl.concat([batch(TID, [37.0, 37.005, 36.996]), batch(other, [1.0, 1.0, 1.0])]))
    assert out.filter(pl.col("tag_id") == TID)["level"].to_list() == [0, 0, 1]
    assert out.filter(pl.col("tag_id") == other)["level"].to_list() == [0, 0, 0]


def test_the_engine_raises_one_alert_for_a_stuck_sensor():
    engine = DetectionEngine([TAG], DetectorsConfig.model_validate({"flatline": {"min_run": 10}, "zscore": {"enabled": False}}))
    raised = engine.process(batch(TID, [37.0 + 0.01 * (i % 3) for i in range(20)] + [37.3] * 30))
    assert [(a.detector, a.severity) for a in raised] == [("flatline", "warning")]
