"""Decisions apart from scores: a threshold calibrated to a nominal false-alarm rate.

`QuantileThreshold(alpha).fit(normal_scores)` learns `threshold_`, the (1 - alpha) empirical
quantile of scores of normal rows the detector did NOT see in fit (see `held_out_scores`);
`predict(scores)` is 1 where score > threshold_. On new normal data from the same process the
alarm rate is then about alpha (exactly alpha in expectation for exchangeable scores, up to the
quantile's resolution 1 / n_calibration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

import numpy as np
import polars as pl
from sklearn.base import clone

from analytics.multivariate.pca import blocks


class QuantileThreshold:
    """Parameters: `alpha`, the nominal false-alarm rate. Learned: `threshold_`, `n_calibration_`."""

    def __init__(self, alpha: float = 0.01):
        self.alpha = alpha

    def fit(self, scores: np.ndarray) -> Self:
        """Calibrate on scores (n,) of held-out normal rows."""
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if s.size == 0:
            raise ValueError("no finite calibration scores")
        self.threshold_ = float(np.quantile(s, 1 - self.alpha, method="higher"))
        self.n_calibration_ = int(s.size)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """0/1 alarms (n,) uint8: 1 where score > threshold_."""
        return (np.asarray(scores) > self.threshold_).astype(np.uint8)


def held_out_scores(detector, X: pl.DataFrame, n_folds: int = 5,
                    post: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Scores (n,) of every row of X by a clone of `detector` fitted on the other rows.

    X is cut into `n_folds` contiguous blocks (time order is kept, so each block is scored as
    new data after drift, not interleaved with its neighbours). `post` (e.g. a smoother from
    `postprocess`) is applied to each block's scores, as it will be to new data.
    """
    out = []
    for held in blocks(X.height, n_folds):
        rest = np.ones(X.height, bool)
        rest[held] = False
        model = clone(detector).fit(X.filter(pl.Series(rest)))
        s = model.score_samples(X[int(held[0]): int(held[-1]) + 1])
        out.append(post(s) if post is not None else s)
    return np.concatenate(out) if out else np.empty(0)
