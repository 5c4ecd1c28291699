"""Rate of change, robust (median / MAD) z-score and stale data, by hand; stale data through the engine."""

import itertools
from datetime import timedelta

import polars as pl

from analytics.detectors import RateOfChangeDetector, RobustZScore, StaleDataDetector
from analytics.engine import DetectionEngine
from controltower.site import DetectorsConfig, StaleConfig
from tests.analytics.helpers import T0, assert_close, batch, make_tag

TAG = make_tag(rate_of_change=1.0)
TID = TAG.tag_id


def test_rate_of_change_by_hand_and_across_batches():
    det = RateOfChangeDetector([TAG, make_tag("s.a.l.u.no_limit")])
    first = det.score(pl.concat([batch(TID, [1.0, 1.5, 3.0, None]), batch("s.a.l.u.no_limit", [0.0, 100.0])]))
    assert_close(first["score"].to_list(), [None, 0.5, 1.5, None, None, None])
    assert first["level"].to_list() == [0, 0, 1, 1, 0, 0]  # the null sample carries the level
    assert first["reason"][2] == "rising 1.5/s, limit 1.0/s"
    # Next batch: compared with the last usable sample (3.0 at t=2), 2 s earlier.
    second = det.score(batch(TID, [1.0, 1.1], start=4))
    assert_close(second["score"].to_list(), [1.0, 0.1])
    assert second["level"].to_list() == [0, 0]  # exactly the limit is not above it


def test_robust_zscore_by_hand_and_not_fooled_by_an_earlier_spike():
    tag = make_tag("s.a.l.u.r")
    det = RobustZScore([tag], window=3, threshold=5.0, warmup=3, min_std_fraction=0.0)
    # Moving medians (previous 3) from sample 3: 2, 2, 3, 2, 3, 2; deviations 1, 1, 1, 18, 1, 18.
    # MAD from sample 6 (3 previous deviations): median(1,1,1) = 1, median(1,1,18) = 1, median(1,18,1) = 1.
    out = det.score(batch(tag.tag_id, [0.0, 2.0, 4.0, 1.0, 3.0, 2.0, 20.0, 2.0, 20.0]))
    assert_close(out["score"].to_list(), [None] * 6 + [18 / 1.4826, 1 / 1.4826, 18 / 1.4826])
    assert out["level"].to_list() == [0] * 6 + [1, 0, 1]  # the second spike is seen despite the first
    assert out["reason"][6] == "robust z=12.1 over 3 samples"
    # Across batches: the same.
    det = RobustZScore([tag], window=3, threshold=5.0, warmup=3, min_std_fraction=0.0)
    values = [0.0, 2.0, 4.0, 1.0, 3.0, 2.0, 20.0, 2.0, 20.0]
    parts = pl.concat(det.score(batch(tag.tag_id, values[i:i + 2], start=i)) for i in range(0, 9, 2))
    assert parts["level"].to_list() == out["level"].to_list()


def test_stale_check_by_hand():
    a, b = make_tag("s.a.l.u.a", stale_after_s=5.0), make_tag("s.a.l.u.b")
    det = StaleDataDetector([a, b], after_s=10.0)
    scored = det.score(pl.concat([batch(a.tag_id, [1.0, 2.0]), batch(b.tag_id, [3.0], start=1)]))
    assert scored["level"].to_list() == [0, 0, 0]  # a sample arriving is never stale
    early = det.check(T0 + timedelta(seconds=5))
    assert early["level"].to_list() == [0, 0]  # a: 4 s old, not above 5 s
    later = det.check(T0 + timedelta(seconds=8))
    assert later["level"].to_list() == [1, 0] and later["reason"][0] == "no sample for 7 s (stale after 5.0 s)"
    assert later["value"][0] == 2.0 and later["limit"][0] == 5.0
    assert det.check(T0 + timedelta(seconds=20))["level"].to_list() == [1, 1]


def test_stale_through_the_engine_with_the_batch_clock():
    a, b = make_tag("s.a.l.u.a", stale_after_s=5.0), make_tag("s.a.l.u.b", stale_after_s=5.0)
    engine = DetectionEngine([a, b], DetectorsConfig(stale=StaleConfig(after_s=60.0)))
    assert engine.process(pl.concat([batch(a.tag_id, [1.0] * 3), batch(b.tag_id, [1.0] * 3)])) == []
    # b stops; a goes on: the batch clock moves with a, and b goes stale.
    (raised,) = engine.process(batch(a.tag_id, [1.0] * 6, start=3))
    assert raised.tag_id == b.tag_id and raised.detector == "stale" and raised.severity == "warning"
    # b comes back: its sample clears the condition.
    assert engine.process(batch(b.tag_id, [1.0], start=9)) == []
    assert [x.detector for x in engine.book.active()] == []
    # No batch at all: the wall clock passed to check() finds both stale.
    raised = engine.check(T0 + timedelta(seconds=30))
    assert sorted(x.tag_id for x in raised) == [a.tag_id, b.tag_id]


def random_wide_series(seed: int, n_steps: int = 700) -> pl.DataFrame:
    """Tags sharing timestamps (one unknown to the detector, one without limits so its spread
    floor is 0), with spikes, a step and a stuck stretch (tied values), missing cells, a tag absent
    for a long stretch, null, NaN and bad-quality samples; rows in time order, tags interleaved."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = ["s.a.l.u.a", "s.a.l.u.b", "s.a.l.u.c", "s.a.l.u.d", "s.a.l.u.stranger"]
    x = 37.0 + rng.normal(0.0, 0.3, (n_steps, len(ids)))
    x[rng.random(x.shape) < 0.02] += rng.choice([-4.0, 4.0])
    x[300:, 1] += 2.0
    x[100:160, 2] = x[100, 2]
    steps = pl.datetime_range(T0, T0 + timedelta(seconds=n_steps - 1), "1s", time_unit="ns", eager=True)
    frame = pl.DataFrame({"ts": steps.gather(np.repeat(np.arange(n_steps), len(ids))), "tag_id": ids * n_steps,
                          "value": x.reshape(-1),
                          "quality": rng.choice(["good", "bad", "uncertain"], x.size, p=[0.9, 0.05, 0.05])})
    u = rng.random(x.size)
    absent = (pl.col("tag_id") == ids[3]) & pl.col("ts").is_between(T0 + timedelta(seconds=200), T0 + timedelta(seconds=330))
    return (
        frame.with_columns(pl.when(pl.Series(u < 0.04)).then(None)
                           .when(pl.Series(u > 0.98)).then(float("nan")).otherwise(pl.col("value")).alias("value"))
        .filter(pl.Series(rng.random(x.size) > 0.08) & ~absent)
    )


def test_robust_zscore_wide_equals_long_across_random_batches():
    """Differential: random wide batches (holes, bad quality, nulls, NaN, an unknown tag) cut at
    random times and scored long, wide, and wide or long at random by one detector: the same
    scores, levels, limits and reasons, batch by batch (the streaming state is shared)."""
    import numpy as np

    from analytics.detectors.wide import pivot
    from tests.analytics.helpers import TEMPERATURE

    tags = [make_tag(f"s.a.l.u.{n}", **TEMPERATURE) for n in "abc"] + [make_tag("s.a.l.u.d")]
    for seed, (window, warmup, threshold) in enumerate([(20, 6, 3.5), (7, 7, 3.0), (120, 30, 3.0)]):
        series = random_wide_series(seed)
        rng = np.random.default_rng(100 + seed)
        cuts = np.unique(rng.integers(1, 700, size=14))
        seconds = (series["ts"] - series["ts"].min()).dt.total_seconds().to_numpy()
        bounds = [0, *cuts.tolist(), 701]
        long_det, wide_det, mixed_det = (RobustZScore(tags, window=window, threshold=threshold, warmup=warmup)
                                         for _ in range(3))
        flagged = 0
        for a, b in itertools.pairwise(bounds):
            part = series.filter(pl.Series((seconds >= a) & (seconds < b))).sample(fraction=1.0, shuffle=True, seed=a)
            want = long_det.score(part)
            wide = pivot(part)
            assert wide is not None and wide.present is not None  # holes: the general pivot
            for got in (wide_det.score_wide(wide).to_long(),
                        mixed_det.score_wide(pivot(part)).to_long() if rng.random() < 0.5 else mixed_det.score(part)):
                assert got.drop("score", "limit").equals(want.drop("score", "limit"))
                assert_close(got["score"].to_list(), want["score"].to_list(), rel=1e-9)
                assert_close(got["limit"].to_list(), want["limit"].to_list(), rel=1e-9)
            flagged += int((want["level"] > 0).sum())
        assert flagged > 5
        assert wide_det._tail.sort("tag_id", maintain_order=True).equals(long_det._tail.sort("tag_id", maintain_order=True))


def test_robust_zscore_through_the_engine_wide_equals_long():
    """The live engine scores wide batches with `score_wide` (limits and reasons built only for
    the events): the same events and alerts as the long path."""
    import numpy as np
    from polars.testing import assert_frame_equal

    from analytics.detectors.wide import pivot
    from controltower.site import RobustZScoreConfig
    from tests.analytics.helpers import TEMPERATURE

    tags = [make_tag(f"s.a.l.u.{n}", **TEMPERATURE) for n in "abc"] + [make_tag("s.a.l.u.d")]
    config = DetectorsConfig(robust_zscore=RobustZScoreConfig(enabled=True, window=20, threshold=3.5))
    engines = [DetectionEngine(tags, config, wide=w) for w in (True, False)]
    series = random_wide_series(3)
    seconds = (series["ts"] - series["ts"].min()).dt.total_seconds().to_numpy()
    events = 0
    for a, b in itertools.pairwise([0, 60, 61, 200, 333, 480, 701]):
        part = series.filter(pl.Series((seconds >= a) & (seconds < b)))
        assert pivot(part) is not None  # the wide engine takes the wide path
        alerts = [e.process(part) for e in engines]
        assert [(x.tag_id, x.detector, x.severity, x.message) for x in alerts[0]] == \
               [(x.tag_id, x.detector, x.severity, x.message) for x in alerts[1]]
        got, want = (e.last_events.filter(pl.col("detector") == "robust_zscore") for e in engines)
        assert_frame_equal(got.drop("score", "limit"), want.drop("score", "limit"))
        assert np.allclose(got["limit"].to_numpy(), want["limit"].to_numpy(), rtol=1e-9, equal_nan=True)
        events += got.height
    assert events > 5
