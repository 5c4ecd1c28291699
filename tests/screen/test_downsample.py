"""LTTB: the vectorised implementation picks exactly the points of the textbook one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from controltower.screen.downsample import lttb, lttb_indices, lttb_reference


@pytest.mark.parametrize(("n", "n_out", "seed"), [(1000, 100, 1), (997, 53, 2), (5000, 600, 3), (10, 3, 4), (64, 63, 5)])
def test_vectorised_lttb_matches_the_reference(n: int, n_out: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.uniform(0.5, 1.5, n))
    y = np.cumsum(rng.normal(0, 1, n)) + 5 * (rng.uniform(size=n) > 0.99)
    got = lttb_indices(x, y, n_out)
    assert got.tolist() == lttb_reference(x.tolist(), y.tolist(), n_out)
    assert len(got) == n_out and got[0] == 0 and got[-1] == n - 1


def test_short_series_are_kept_whole() -> None:
    x = np.arange(5.0)
    assert lttb_indices(x, x, 10).tolist() == [0, 1, 2, 3, 4]
    assert lttb_indices(x, x, 2).tolist() == [0, 1, 2, 3, 4]


def test_a_single_spike_survives() -> None:
    x = np.arange(10_000.0)
    y = np.zeros(10_000)
    y[7_321] = 50.0
    assert 7_321 in lttb_indices(x, y, 200)


def test_frame_is_downsampled_per_tag_like_each_series_alone() -> None:
    rng = np.random.default_rng(9)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    parts = []
    for tag, n in (("b", 3000), ("a", 2500), ("c", 40)):
        ts = [t0 + timedelta(seconds=float(s)) for s in np.cumsum(rng.uniform(0.5, 1.5, n))]
        parts.append(pl.DataFrame({"tag_id": [tag] * n, "ts": ts, "value": rng.normal(0, 1, n).cumsum()}))
    frame = pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=1)  # any order in
    out = lttb(frame, 300)
    assert out["tag_id"].unique(maintain_order=True).to_list() == ["a", "b", "c"]
    for tag, n in (("a", 2500), ("b", 3000), ("c", 40)):
        alone = frame.filter(pl.col("tag_id") == tag).sort("ts")
        x = (alone["ts"].dt.epoch("us").cast(pl.Float64).to_numpy() - 0) / 1e6
        expected = alone[lttb_reference(x.tolist(), alone["value"].to_list(), 300)]
        got = out.filter(pl.col("tag_id") == tag)
        assert got.height == min(n, 300)
        assert got["ts"].to_list() == expected["ts"].to_list()


def test_nulls_are_dropped_and_empty_frames_pass() -> None:
    frame = pl.DataFrame({"tag_id": ["a"] * 4, "ts": [1.0, 2.0, 3.0, 4.0], "value": [1.0, None, 3.0, 4.0]})
    assert lttb(frame, 3, x="ts")["value"].to_list() == [1.0, 3.0, 4.0]
    assert lttb(frame.clear(), 3, x="ts").is_empty()
