import numpy as np
import polars as pl
import pytest

from analytics.detectors import RollingZScore
from tests.analytics.helpers import TEMPERATURE, assert_close, batch, make_tag, mixed_batches
from tests.analytics.reference import reference_zscore

TAG = make_tag(**TEMPERATURE)  # alarm span 4.0: std floor 0.04 with min_std_fraction 0.01
TID = TAG.tag_id


def test_current_sample_is_not_in_its_own_window():
    det = RollingZScore([TAG], window=4, warmup=4, threshold=3.0, min_std_fraction=0.0)
    out = det.score(batch(TID, [1.0, 2.0, 3.0, 4.0, 10.0]))
    prev = np.array([1.0, 2.0, 3.0, 4.0])
    expected = abs(10.0 - prev.mean()) / prev.std(ddof=1)
    assert out["score"][4] == pytest.approx(expected)
    assert out["level"][4] == 1
    assert out["reason"][4] == f"z={round(expected, 1)} over 4 samples"
    assert out["limit"][4] == pytest.approx(prev.mean() + 3.0 * prev.std(ddof=1))


def test_warmup_respected():
    # The 5th sample has only 4 previous ones: not scored, even though it is a spike.
    early = RollingZScore([TAG], window=10, warmup=5).score(batch(TID, [37.0] * 4 + [45.0]))
    assert early["score"].to_list() == [None] * 5
    assert early["level"].to_list() == [0] * 5
    ready = RollingZScore([TAG], window=10, warmup=5).score(batch(TID, [37.0] * 5 + [45.0]))
    assert ready["score"].to_list()[:5] == [None] * 5
    assert ready["level"].to_list() == [0, 0, 0, 0, 0, 1]


def test_window_carries_across_batches():
    values = (37.0 + 0.1 * np.sin(np.arange(50))).tolist()
    whole = RollingZScore([TAG], window=20, warmup=10).score(batch(TID, values))
    det = RollingZScore([TAG], window=20, warmup=10)
    parts = [det.score(batch(TID, values[a:b], start=a)) for a, b in ((0, 7), (7, 8), (8, 31), (31, 50))]
    assert_close(pl.concat(parts)["score"].to_list(), whole["score"].to_list())
    assert det._window.height == 20  # only the last `window` samples are kept


def test_spike_raises_and_slow_noise_with_floor_does_not():
    rng = np.random.default_rng(1)
    # A quiet, slowly wandering signal: its raw std (~0.003) is far below the floor (0.04).
    quiet = (37.0 + np.cumsum(rng.normal(0, 0.0005, 300)) + rng.normal(0, 0.003, 300)).tolist()
    det = RollingZScore([TAG], window=120, threshold=8.0)
    assert det.score(batch(TID, quiet))["level"].max() == 0
    spike = det.score(batch(TID, [quiet[-1] + 1.0, quiet[-1]], start=300))
    assert spike["level"].to_list() == [1, 0]
    assert spike["score"][0] > 8.0
    # Without the floor the same quiet signal would alert on its last decimals.
    bare = RollingZScore([TAG], window=120, threshold=8.0, min_std_fraction=0.0)
    noisy = bare.score(batch(TID, (np.array(quiet) + np.repeat([0, 0.05], 150)).tolist()))
    assert noisy["level"].max() == 1


def test_bad_quality_skipped_and_level_carried():
    det = RollingZScore([TAG], window=5, warmup=3, min_std_fraction=0.0)
    out = det.score(batch(TID, [1.0, 2.0, 1.0, 50.0, 999.0, None, 1.5],
                          quality=["good", "good", "good", "good", "bad", "good", "good"]))
    assert out["level"].to_list() == [0, 0, 0, 1, 1, 1, 0]
    assert out["score"].to_list()[4:6] == [None, None]
    # The bad 999.0 is not in the window of the last sample: window = 1, 2, 1, 50.
    prev = np.array([1.0, 2.0, 1.0, 50.0])
    assert out["score"][6] == pytest.approx(abs(1.5 - prev.mean()) / prev.std(ddof=1))


def test_matches_per_sample_reference():
    tags = [make_tag(**TEMPERATURE), make_tag("s.a.l.u.p", warning_high=1.0, alarm_high=2.0),
            make_tag("s.a.l.u.q")]
    batches = mixed_batches(tags, n_batches=4, per_tag=50, seed=5)
    det = RollingZScore(tags, window=40, warmup=10, threshold=4.0)
    want = reference_zscore(tags, batches, window=40, warmup=10, threshold=4.0)
    for got, ref in zip((det.score(b) for b in batches), want):
        assert got["level"].to_list() == ref["level"].to_list()
        assert_close(got["score"].to_list(), ref["score"].to_list(), rel=1e-6)
    assert sum(int(f["level"].sum()) for f in want) > 0
