"""Isolation forest (Liu, Ting & Zhou 2008) via scikit-learn: rows that random axis-aligned splits
isolate quickly are anomalous. Makes no linearity or Gaussian assumption; weak on slow drifts
and on changes of correlation between variables that stay within their ranges; a row far
off in one variable only is isolated just by the splits on that variable (about 1 / p of them),
so it may score no higher than ordinary rows.

Score: minus scikit-learn's `score_samples`, i.e. the anomaly score 2^(-E[h(x)]/c(n)) in (0, 1]
(about 0.5 for ordinary rows, towards 1 for isolated ones).

Contributions: each variable's deviation from its training median in robust z units,
|x_j - median_j| / (1.4826 · MAD_j) (falling back to the standard deviation when the MAD is 0).
They rank variables; they do not sum to the score (the forest has no additive decomposition).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest

from analytics.multivariate.base import as_matrix, frame_of, robust_scale


class IsolationForestDetector(BaseEstimator):
    """Parameters: `n_estimators`, `max_samples` (as scikit-learn), `random_state` (fixed: scores
    are reproducible). Learned: `variables_`, `forest_`, `median_`, `scale_`."""

    def __init__(self, *, n_estimators: int = 200, max_samples: int | str = "auto", random_state: int = 0):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X: pl.DataFrame) -> Self:
        A = as_matrix(X)
        if A.shape[0] < 10:
            raise ValueError(f"too few rows to fit: {A.shape[0]} < 10")
        self.variables_ = tuple(X.columns)
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                       random_state=self.random_state, n_jobs=1).fit(A)
        self.median_, self.scale_ = robust_scale(A)
        return self

    def score_samples(self, X: pl.DataFrame) -> np.ndarray:
        A = as_matrix(X, self.variables_)
        if A.shape[0] == 0:
            return np.empty(0)
        return -self.forest_.score_samples(A)

    def contributions(self, X: pl.DataFrame) -> pl.DataFrame:
        A = as_matrix(X, self.variables_)
        return frame_of(np.abs(A - self.median_) / self.scale_, self.variables_)
