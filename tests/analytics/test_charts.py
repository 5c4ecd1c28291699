"""EWMA and tabular CUSUM charts: hand-computed cases, and the vectorised CUSUM identity
(cumulative sum minus running minimum) against the textbook loop on long random series."""

import math

import numpy as np
import polars as pl
import pytest

from analytics.detectors import CusumChart, EwmaChart
from analytics.detectors.cusum import cusum
from tests.analytics.helpers import assert_close, batch, make_tag
from tests.analytics.reference import ReferenceCusum

TAG = make_tag()
TID = TAG.tag_id


def test_ewma_by_hand_asymptotic_and_exact_limits():
    # lam 0.5 from centre 0: e = 0.5, 0.75, 0.375; asymptotic sigma_e = sqrt(0.5 / 1.5).
    det = EwmaChart([TAG], lam=0.5, L=1.0, exact_limits=False, given={TID: (0.0, 1.0)})
    out = det.score(batch(TID, [1.0, 1.0, 0.0]))
    s = math.sqrt(1 / 3)
    assert_close(out["score"].to_list(), [0.5 / s, 0.75 / s, 0.375 / s])
    assert out["level"].to_list() == [0, 1, 0]
    assert out["limit"][1] == pytest.approx(s) and out["reason"][1].startswith("EWMA 0.75 above")
    # Exact limits: sigma_e,t = sqrt(lam / (2 - lam) * (1 - (1 - lam)^(2t))) = 0.5, 0.5590, 0.5728.
    det = EwmaChart([TAG], lam=0.5, L=1.0, given={TID: (0.0, 1.0)})
    out = det.score(batch(TID, [1.0, 1.0, 0.0]))
    widths = [math.sqrt(1 / 3 * (1 - 0.25 ** t)) for t in (1, 2, 3)]
    assert_close(out["score"].to_list(), [0.5 / widths[0], 0.75 / widths[1], 0.375 / widths[2]])
    assert out["level"].to_list() == [0, 1, 0]  # 0.5 / 0.5 = 1 is not above L


def test_ewma_carries_its_value_and_count_across_batches():
    values = [0.3, 1.2, -0.4, 2.0, 2.2, 1.9, 2.4, None, 2.1]
    one = EwmaChart([TAG], lam=0.2, L=2.0, given={TID: (0.0, 1.0)}).score(batch(TID, values))
    det = EwmaChart([TAG], lam=0.2, L=2.0, given={TID: (0.0, 1.0)})
    split = pl.concat([det.score(batch(TID, values[:4])), det.score(batch(TID, values[4:], start=4))])
    assert split["level"].to_list() == one["level"].to_list()
    assert_close(split["score"].to_list(), one["score"].to_list())


def test_cusum_by_hand():
    # k 0.5, h 2: upper 0.5, 1.0, 1.5, 0, 0; lower 0, 0, 0, 2.5, 2.0.
    det = CusumChart([TAG], k=0.5, h=2.0, given={TID: (10.0, 2.0)})
    out = det.score(batch(TID, [12.0, 12.0, 12.0, 4.0, 10.0]))
    assert_close(out["score"].to_list(), [0.25, 0.5, 0.75, 1.25, 1.0])
    assert out["level"].to_list() == [0, 0, 0, 1, 0]  # 2.0 is not above h
    assert out["reason"][3] == "CUSUM lower 2.5 > h 2" and out["limit"][3] == 10.0 - 2.0 * 2.0


def test_cusum_identity_matches_the_recursion():
    rng = np.random.default_rng(0)
    u = rng.normal(-0.3, 1.0, 5000)
    for seed_sum in (0.0, 4.2):
        frame = pl.DataFrame({"_tag": np.zeros(u.size + 1, dtype=np.uint32), "u": [seed_sum, *u]})
        got = frame.select(cusum("u"))["u"].to_numpy()[1:]
        s, want = seed_sum, []
        for step in u:
            s = max(0.0, s + step)
            want.append(s)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_cusum_many_batches_match_the_loop():
    rng = np.random.default_rng(1)
    values = (10.0 + rng.normal(0, 2.0, 3000) + np.r_[np.zeros(1500), np.full(1500, 2.0)]).tolist()
    det, ref = CusumChart([TAG], given={TID: (10.0, 2.0)}), ReferenceCusum({TID: (10.0, 2.0)})
    start = 0
    for size in rng.integers(1, 200, 60):
        part = batch(TID, values[start:start + size], start=start)
        got, want = det.score(part), ref.score(part)
        assert got["level"].to_list() == want["level"].to_list()
        assert_close(got["score"].to_list(), want["score"].to_list(), rel=1e-9)
        start += size
    assert start > 1500 and det._state["up"][0] > 5.0  # the shift was found
