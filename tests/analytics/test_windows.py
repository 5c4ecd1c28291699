"""`analytics.multivariate.windows`: window features by hand, and the fault they exist for."""

import numpy as np
import polars as pl
import pytest

from analytics.multivariate import PCADetector, QuantileThreshold, held_out_scores
from analytics.multivariate.windows import WindowKnnDetector, WindowPCADetector, window_features

WINDOW_DETECTORS = {"pca": WindowPCADetector, "knn": WindowKnnDetector}


def test_window_features_by_hand():
    X = pl.DataFrame({"a": [1.0, 3.0, 5.0, 11.0], "b": [2.0, 2.0, 2.0, 2.0]})
    F = window_features(X, 3)
    assert F.columns == ["a", "b", "a~spread", "b~spread"]
    assert F["a"].to_list() == pytest.approx([1.0, 2.0, 3.0, 19 / 3])  # trailing mean, fewer rows at the start
    # population std of [1], [1, 3], [1, 3, 5], [3, 5, 11]
    assert F["a~spread"].to_list() == pytest.approx([0.0, 1.0, np.sqrt(8 / 3), np.std([3.0, 5.0, 11.0])])
    assert F["b~spread"].to_list() == [0.0] * 4


def test_window_features_equal_polars_rolling_on_a_drifting_signal():
    """The running sums are centred on the column's mean, so a signal far from zero (a level of
    1e4) that drifts by 100x its noise keeps its digits: spreads within 1e-5 of the noise.
    (The error grows with the square of how far the signal wanders from its mean.)"""
    rng = np.random.default_rng(4)
    t = np.arange(20_000)
    noise = 0.01
    x = 1e4 + 100 * noise * np.sin(t / 3000) + rng.normal(0, noise, t.size)
    X = pl.DataFrame({"x": x})
    for window in (2, 10, 60, 30_000):
        F = window_features(X, window)
        ref = X.select(pl.col("x").rolling_mean(window, min_samples=1).alias("m"),
                       pl.col("x").rolling_std(window, min_samples=1, ddof=0).fill_null(0.0).alias("s"))
        assert np.allclose(F["x"].to_numpy(), ref["m"].to_numpy(), rtol=1e-12, atol=1e-9), window
        assert np.abs(F["x~spread"].to_numpy() - ref["s"].to_numpy()).max() < 1e-5 * noise, window


def plant(n: int, seed: int, noise: float = 0.3) -> pl.DataFrame:
    """Two flows driven by one load; `noise` is the sensor / process noise of flow b."""
    rng = np.random.default_rng(seed)
    load = np.cumsum(rng.normal(0, 0.05, n))
    return pl.DataFrame({"a": 10 + load + rng.normal(0, 0.3, n), "b": 20 - load + rng.normal(0, noise, n)})


@pytest.mark.parametrize("inner", ["pca", "knn"])
def test_catches_a_noise_change_that_row_pca_misses(inner: str):
    """Cavitation-like fault: b's noise triples, its level does not move. Each row still looks
    normal to a row-wise PCA; the window spread of b does not."""
    train = plant(600, 1)
    test = pl.concat([plant(300, 2), plant(300, 3, noise=0.9)])
    fault = np.r_[np.zeros(300, bool), np.ones(300, bool)]

    def alarms(detector) -> np.ndarray:
        threshold = QuantileThreshold(0.01).fit(held_out_scores(detector, train, 5))
        return threshold.predict(detector.fit(train).score_samples(test)) > 0

    window = alarms(WINDOW_DETECTORS[inner](window=20))
    rows = alarms(PCADetector())
    assert window[fault][20:].mean() > 0.8 and window[~fault].mean() < 0.1
    assert rows[fault].mean() < 0.5  # most faulty rows pass a row-wise PCA
    top = WINDOW_DETECTORS[inner](window=20).fit(train).contributions(test[320:])
    assert top.columns == ["a", "b"] and (top["b"] > top["a"]).mean() > 0.8


def test_bad_parameters_and_columns():
    X = plant(100, 1)
    with pytest.raises(ValueError, match="window"):
        WindowPCADetector(window=1).fit(X)
    det = WindowKnnDetector(window=5).fit(X)
    assert det.context_rows == 4 and det.process_variables_ == ("a", "b") and len(det.variables_) == 4
    with pytest.raises(ValueError):
        det.score_samples(X.rename({"b": "c"}))
    with pytest.raises(ValueError, match="b"):
        det.score_samples(X.with_columns(pl.lit(float("nan")).alias("b")))
