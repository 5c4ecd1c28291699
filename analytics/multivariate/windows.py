"""Window features: model what each variable did over the last `window` rows, not its last value.

Every row becomes, per variable, the mean and the standard deviation of the `window` rows ending
at it (trailing, so causal; the first rows of a frame use the rows they have, which is what a
monitor that just started sees). A PCA T²/SPE monitor (`WindowPCADetector`) or the
nearest-neighbour residual (`WindowKnnDetector`) then models those 2p features. Why: a single row
mixes the process state with sensor noise. The window mean is the state, with the noise averaged
out; the window spread catches faults that change the noise, not the level: cavitation, a loose
rotor, two-phase flow. This is the reconstruction-of-a-window idea of SKAB's convolutional
autoencoder, with linear or nearest-neighbour models instead of a trained network; on SKAB it is
what `controltower detect --method auto` uses (docs/benchmarks.md).

The classes are the PCA and nearest-neighbour detectors fitted on the features, so their learned
state stays plain arrays (the model store keeps no nested objects). `process_variables_` are the
columns they take; `variables_` are the feature columns. Contributions: a variable's mean and
spread contributions, summed, so the columns are the process variables again. A live monitor
carries the last `context_rows` rows across micro-batches, as for dynamic PCA's lags.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl

from analytics.multivariate.base import as_matrix, frame_of
from analytics.multivariate.knn import NearestNeighbourDetector
from analytics.multivariate.pca import PCADetector

SPREAD = "~spread"  # suffix of a variable's spread feature


def window_features(X: pl.DataFrame, window: int) -> pl.DataFrame:
    """(n, 2p): each column's trailing mean (same name) and population standard deviation
    (`<name>~spread`) over `window` rows, over fewer rows at the start of the frame.

    Running sums, one column at a time (NumPy passes over the rows, not a loop per row): about
    2x faster than Polars' rolling_std. The column is centred on its mean first, so the sums of
    squares stay small and the variance (sum of squares - square of sum) keeps its digits."""
    n = X.height
    head = min(window, n)  # the first rows' windows start at row 0
    counts = np.minimum(np.arange(1, n + 1, dtype=np.float64), window)
    means, spreads = [], []
    for name in X.columns:
        x = X.get_column(name).cast(pl.Float64).to_numpy()
        centre = float(x.mean()) if n else 0.0
        c = x - centre
        sums = []
        for v in (c, np.square(c, out=c.copy())):
            total = np.cumsum(v)
            total[head:] -= total[: n - head]  # minus the running sum up to the window's start
            sums.append(total)
        mean = np.divide(sums[0], counts, out=sums[0])
        var = np.divide(sums[1], counts, out=sums[1])
        var -= mean * mean
        mean += centre
        means.append(pl.Series(name, mean))
        spreads.append(pl.Series(f"{name}{SPREAD}", np.sqrt(np.maximum(var, 0.0, out=var), out=var)))
    return pl.DataFrame(means + spreads)


class _WindowFeatures:
    """Fit and score the detector it is mixed into on `window_features`; see the module doc."""

    window: int

    @property
    def context_rows(self) -> int:
        """Rows before a row that its score depends on."""
        return int(self.window) - 1

    def fit(self, X: pl.DataFrame) -> Self:
        """Fit on normal rows X (n, p). Raises ValueError on a bad `window` or bad values."""
        if int(self.window) != self.window or self.window < 2:
            raise ValueError(f"window must be a whole number of rows >= 2, got {self.window}")
        as_matrix(X)  # the same checks and errors as every detector (finite Float64 columns)
        self.process_variables_ = tuple(X.columns)
        return super().fit(window_features(X, int(self.window)))

    def _features(self, X: pl.DataFrame) -> pl.DataFrame:
        as_matrix(X, self.process_variables_)  # raises on other columns or non-finite values
        return window_features(X.select(self.process_variables_), int(self.window))

    def score_samples(self, X: pl.DataFrame) -> np.ndarray:
        """The detector's score of each row's window features (n,)."""
        return super().score_samples(self._features(X))

    def contributions(self, X: pl.DataFrame) -> pl.DataFrame:
        """(n, p): per process variable, the contributions of its mean and its spread, summed."""
        C = super().contributions(self._features(X)).to_numpy()
        p = len(self.process_variables_)
        return frame_of(C[:, :p] + C[:, p:], self.process_variables_)


class WindowPCADetector(_WindowFeatures, PCADetector):
    """PCA T² / SPE of window features. Parameters as `PCADetector`, plus `window` (rows, >= 2)."""

    def __init__(self, *, window: int = 10, variance: float = 0.9, alpha: float = 0.01, limits: str = "calibrated",
                 spe: str = "jm", combine: str = "max", n_folds: int = 5):
        super().__init__(variance=variance, alpha=alpha, limits=limits, spe=spe, combine=combine, n_folds=n_folds)
        self.window = window


class WindowKnnDetector(_WindowFeatures, NearestNeighbourDetector):
    """Nearest-neighbour residual of window features. Parameters as `NearestNeighbourDetector`,
    plus `window` (rows, >= 2)."""

    def __init__(self, *, window: int = 10, n_neighbors: int = 5, max_memory: int | None = None):
        super().__init__(n_neighbors=n_neighbors, max_memory=max_memory)
        self.window = window
