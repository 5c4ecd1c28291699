from analytics.detectors import BadQualityDetector
from analytics.engine import DetectionEngine
from controltower.site import DetectorsConfig
from tests.analytics.helpers import TEMPERATURE, batch, make_tag

TAG = make_tag(**TEMPERATURE)
TID = TAG.tag_id


def test_a_dropout_raises_after_min_run_bad_samples_and_clears_on_a_good_one():
    values = [37.0, None, None, None, 37.1, None]
    quality = ["good", "bad", "bad", "bad", "good", "good"]
    out = BadQualityDetector([TAG], min_run=3).score(batch(TID, values, quality=quality))
    # a null value counts as unusable even with good quality
    assert out["level"].to_list() == [0, 0, 0, 1, 0, 0]
    assert out["reason"][3] == "bad quality for 3 samples"
    assert out["score"].to_list() == [0.0, 1 / 3, 2 / 3, 1.0, 0.0, 1 / 3]


def test_a_run_spans_batch_boundaries():
    det = BadQualityDetector([TAG], min_run=4)
    first = det.score(batch(TID, [37.0, None, None], quality=["good", "bad", "bad"]))
    second = det.score(batch(TID, [None, None, 37.2], start=3, quality=["bad", "bad", "good"]))
    assert first["level"].to_list() == [0, 0, 0]
    assert second["level"].to_list() == [0, 1, 0]


def test_unknown_tags_score_null_at_level_0():
    out = BadQualityDetector([TAG], min_run=1).score(batch("lyon.x.y.z.w", [None, None], quality=["bad", "bad"]))
    assert out["level"].to_list() == [0, 0] and out["score"].to_list() == [None, None]


def test_the_engine_raises_one_alert_for_a_dropout():
    engine = DetectionEngine([TAG], DetectorsConfig.model_validate(
        {"zscore": {"enabled": False}, "flatline": {"enabled": False}, "quality": {"min_run": 5}}))
    raised = engine.process(batch(TID, [37.0] * 5 + [None] * 20, quality=["good"] * 5 + ["bad"] * 20))
    assert [(a.detector, a.severity) for a in raised] == [("quality", "warning")]
