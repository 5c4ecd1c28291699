import polars as pl
import pytest

from analytics.detectors import LimitDetector
from tests.analytics.helpers import TEMPERATURE, assert_close, batch, make_tag, mixed_batches
from tests.analytics.reference import reference_limits

TAG = make_tag(**TEMPERATURE)
TID = TAG.tag_id


def levels(frame: pl.DataFrame) -> list[int]:
    return frame["level"].to_list()


def test_hysteresis_across_batch_boundaries():
    det = LimitDetector([TAG])
    first = det.score(batch(TID, [37.0, 38.1, 39.3], start=0))
    assert levels(first) == [0, 1, 2]
    assert first["reason"].to_list() == [None, "above warning high 38.0", "above alarm high 39.0"]
    assert first["limit"].to_list() == [None, 38.0, 39.0]
    # Back inside the alarm limit but within its deadband (0.2): still alarm; then warning only.
    second = det.score(batch(TID, [38.9, 38.85, 38.7], start=3))
    assert levels(second) == [2, 2, 1]
    # Below warning high but inside its deadband: warning stays; clears at 37.8 and below.
    third = det.score(batch(TID, [37.9, 37.85, 37.8, 37.0], start=6))
    assert levels(third) == [1, 1, 0, 0]


def test_low_side_and_score():
    det = LimitDetector([TAG])
    out = det.score(batch(TID, [37.0, 35.5, 34.0, 35.1, 35.3, 36.1, 36.2]))
    assert levels(out) == [0, 1, 2, 2, 1, 1, 0]
    assert out["reason"][2] == "below alarm low 35.0"
    # Score: distance outside the innermost limit over the alarm span (4.0).
    assert out["score"].to_list()[:3] == pytest.approx([0.0, 0.125, 0.5])


def test_deadband_zero_clears_at_the_limit():
    tag = make_tag(warning_high=10.0, alarm_high=20.0)
    out = LimitDetector([tag]).score(batch(tag.tag_id, [10.0, 10.5, 10.0, 25.0, 20.0]))
    assert levels(out) == [0, 1, 0, 2, 1]


def test_missing_limits():
    only_high = make_tag("s.a.l.u.agitation", warning_high=380.0, alarm_high=420.0, deadband=5.0)
    no_limits = make_tag("s.a.l.u.flow")
    det = LimitDetector([only_high, no_limits])
    out = det.score(pl.concat([
        batch(only_high.tag_id, [0.0, 390.0, 430.0, 416.0, 414.0]),
        batch(no_limits.tag_id, [-1e9, 0.0, 1e9]),
    ]))
    agit = out.filter(pl.col("tag_id") == only_high.tag_id)
    assert levels(agit) == [0, 1, 2, 2, 1]
    assert agit["score"][2] == pytest.approx((430.0 - 380.0) / 40.0)  # span: the one side's gap
    flow = out.filter(pl.col("tag_id") == no_limits.tag_id)
    assert levels(flow) == [0, 0, 0] and flow["score"].to_list() == [0.0, 0.0, 0.0]


def test_unknown_tag_is_not_scored():
    out = LimitDetector([TAG]).score(batch("x.y.z.u.other", [1e9]))
    assert levels(out) == [0] and out["score"].to_list() == [None]


def test_bad_quality_and_null_values_neither_raise_nor_clear():
    det = LimitDetector([TAG])
    out = det.score(batch(TID, [37.0, 45.0, 39.5, 37.0, None, 30.0],
                          quality=["good", "bad", "good", "bad", "good", "bad"]))
    assert levels(out) == [0, 0, 2, 2, 2, 2]
    assert out["score"].to_list()[3:] == [None, None, None]
    # The carried state survives into the next batch and clears on a good sample.
    assert levels(det.score(batch(TID, [None, 37.0], start=6, quality=["good", "good"]))) == [2, 0]


def test_matches_per_sample_reference():
    tags = [make_tag(**TEMPERATURE), make_tag("s.a.l.u.p", warning_high=1.0, alarm_high=2.0, deadband=0.5),
            make_tag("s.a.l.u.q", alarm_low=-3.0, deadband=0.1)]
    batches = mixed_batches(tags, n_batches=3, per_tag=80, seed=3)
    det = LimitDetector(tags)
    for got, want in zip((det.score(b) for b in batches), reference_limits(tags, batches)):
        assert got["level"].to_list() == want["level"].to_list()
        assert got["limit"].to_list() == want["limit"].to_list()
        assert_close(got["score"].to_list(), want["score"].to_list())
    levels_seen = set(pl.concat(reference_limits(tags, batches))["level"].to_list())
    assert levels_seen == {0, 1, 2}
