"""Window features: model what each variable did over the last `window` rows, not its last value.

Every row becomes, per variable, the mean and the standard deviation of the `window` rows ending
at it (trailing, so causal; the first rows of a frame use the rows they have, which is what a
monitor that just started sees). A PCA T²/SPE monitor or the nearest-neighbour residual then
models those 2p features. Why: a single row mixes the process state with sensor noise. The
window mean is the state, with the noise averaged out; the window spread catches faults that
change the noise, not the level: cavitation, a loose rotor, two-phase flow. This is the
reconstruction-of-a-window idea of SKAB's convolutional autoencoder, with linear or
nearest-neighbour models instead of a trained network.

Contributions: the inner detector's contributions of a variable's mean and spread features,
summed, so the columns are the process variables again.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator

from analytics.multivariate.base import as_matrix, frame_of
from analytics.multivariate.knn import NearestNeighbourDetector
from analytics.multivariate.pca import PCADetector

INNER = ("pca", "knn")


def window_features(X: pl.DataFrame, window: int) -> pl.DataFrame:
    """(n, 2p): each column's trailing mean (`<name>`) and population standard deviation
    (`<name>~spread`) over `window` rows, over fewer rows at the start of the frame."""
    return X.select(
        *(pl.col(c).rolling_mean(window, min_samples=1).alias(c) for c in X.columns),
        *(pl.col(c).rolling_std(window, min_samples=1, ddof=0).fill_nan(0.0).fill_null(0.0).alias(f"{c}~spread")
          for c in X.columns),
    )


class WindowFeatureDetector(BaseEstimator):
    """PCA or nearest-neighbour monitor of window features; see the module doc.

    Parameters: `inner` "pca" | "knn", `window` rows (>= 2), `alpha` and `variance` for the PCA,
    `n_neighbors` for the nearest-neighbour residual.
    Learned: `variables_`, `model_` (the inner detector, fitted on the features).
    """

    def __init__(self, *, inner: str = "pca", window: int = 30, alpha: float = 0.01, variance: float = 0.9,
                 n_neighbors: int = 5):
        self.inner = inner
        self.window = window
        self.alpha = alpha
        self.variance = variance
        self.n_neighbors = n_neighbors

    def fit(self, X: pl.DataFrame) -> Self:
        """Fit on normal rows X (n, p). Raises ValueError on a bad `inner` or `window`."""
        if self.inner not in INNER:
            raise ValueError(f"inner must be one of {', '.join(INNER)}, got {self.inner!r}")
        if int(self.window) != self.window or self.window < 2:
            raise ValueError(f"window must be a whole number of rows >= 2, got {self.window}")
        as_matrix(X)  # the same checks and errors as every detector (finite Float64 columns)
        self.variables_ = tuple(X.columns)
        self.model_ = (PCADetector(variance=self.variance, alpha=self.alpha) if self.inner == "pca"
                       else NearestNeighbourDetector(n_neighbors=self.n_neighbors))
        self.model_.fit(window_features(X, int(self.window)))
        return self

    def _features(self, X: pl.DataFrame) -> pl.DataFrame:
        as_matrix(X, self.variables_)  # raises on other columns or non-finite values
        return window_features(X.select(self.variables_), int(self.window))

    def score_samples(self, X: pl.DataFrame) -> np.ndarray:
        """The inner detector's score of each row's window features (n,)."""
        return self.model_.score_samples(self._features(X))

    def contributions(self, X: pl.DataFrame) -> pl.DataFrame:
        """(n, p): per variable, the contributions of its mean and its spread, summed."""
        C = self.model_.contributions(self._features(X)).to_numpy()
        p = len(self.variables_)
        return frame_of(C[:, :p] + C[:, p:], self.variables_)
