"""The moving median kernel (`analytics.detectors.moving_median`) against the definition: the
median of the non-NaN values of each window, window by window, on awkward columns."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from analytics.detectors.moving_median import moving_median


def by_definition(a: np.ndarray, window: int, min_count: int) -> np.ndarray:
    out = np.full(a.shape, np.nan)
    for k in range(a.shape[1]):
        for i in range(a.shape[0]):
            v = a[max(0, i - window + 1):i + 1, k]
            v = v[~np.isnan(v)]
            if v.size >= min_count:
                out[i, k] = np.median(v)
    return out


def awkward_column(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    """Noise, ties, values a few ulps apart (their sort keys tie), mixed signs and zeros, runs of
    NaN, infinities."""
    if kind == 0:
        x = rng.normal(size=n)
    elif kind == 1:
        x = np.round(rng.normal(size=n), 1)  # many exact ties
    elif kind == 2:
        x = np.nextafter(37.0, 38.0) + rng.integers(-300, 300, n) * np.spacing(37.0)  # ulps apart
    elif kind == 3:
        x = rng.choice([-2.5, -0.0, 0.0, 1e-300, -1e-300, 3.0], n)
    else:
        x = rng.normal(size=n)
        x[rng.random(n) < 0.05] = rng.choice([np.inf, -np.inf])
    x[rng.random(n) < rng.random() * 0.4] = np.nan
    if rng.random() < 0.3:  # a NaN stretch: the windows empty and fill again
        a = int(rng.integers(0, n))
        x[a:a + int(rng.integers(1, 80))] = np.nan
    return x


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_definition(seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        n, window = int(rng.integers(1, 300)), int(rng.integers(1, 70))
        min_count = int(rng.integers(1, window + 1))
        a = np.asfortranarray(np.column_stack([awkward_column(rng, n, kind) for kind in range(5)]))
        got = moving_median(a, window, min_count)
        want = by_definition(a, window, min_count)
        np.testing.assert_array_equal(got, want, err_msg=f"n={n} window={window} min_count={min_count}")


def test_equals_polars_rolling_median():
    """What the robust z-score's long path computes, on a long column (many blocks) with nulls."""
    rng = np.random.default_rng(9)
    a = 37.0 + rng.normal(0, 0.3, (5000, 2))
    a[rng.random(a.shape) < 0.02] = np.nan
    got = moving_median(a, 120, 30)
    for k in range(2):
        want = pl.Series(a[:, k]).fill_nan(None).rolling_median(120, min_samples=30).to_numpy()
        np.testing.assert_allclose(got[:, k], want, rtol=1e-12)


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="min_count"):
        moving_median(np.zeros((3, 1)), 2, 3)
    with pytest.raises(ValueError, match="window"):
        moving_median(np.zeros((3, 1)), 0, 1)
