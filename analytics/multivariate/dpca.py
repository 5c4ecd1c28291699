"""Dynamic PCA (Ku, Storer & Georgakis 1995): PCA on each row augmented with its `lags` previous
rows, so autocorrelation and cross-correlation in time become part of the normal plane. Catches
what static PCA catches plus changes in the dynamics (e.g. a loop that starts to oscillate).

Rows are taken in frame order, one per time step. Scoring pads the start of a frame by repeating
its first row, so the first `lags` scores of a frame use an incomplete history (the padded
differences are zero: those rows look calmer than they are). Statistics, limits, scores and
contributions are as in `PCADetector`; a variable's contribution is the sum over its lagged copies.
"""

from __future__ import annotations

import numpy as np

from analytics.multivariate.pca import PCADetector


def lagged(A: np.ndarray, lags: int, pad: bool) -> np.ndarray:
    """[x_t, x_{t-1}, ..., x_{t-lags}] per row: (n - lags, p (lags + 1)), or (n, ...) with the
    first row repeated in front when `pad`."""
    if lags == 0:
        return A
    if pad:
        A = np.concatenate([np.repeat(A[:1], lags, axis=0), A]) if A.shape[0] else A
    n = A.shape[0] - lags
    if n <= 0:
        return np.empty((0, A.shape[1] * (lags + 1)))
    return np.ascontiguousarray(np.hstack([A[lags - i: lags - i + n] for i in range(lags + 1)]))


class DynamicPCADetector(PCADetector):
    """PCA T² / SPE on lagged variables. Parameters as `PCADetector`, plus `lags` (>= 0)."""

    def __init__(self, *, lags: int = 2, variance: float = 0.9, alpha: float = 0.01,
                 limits: str = "calibrated", spe: str = "jm", combine: str = "max", n_folds: int = 5):
        super().__init__(variance=variance, alpha=alpha, limits=limits, spe=spe, combine=combine,
                         n_folds=n_folds)
        self.lags = lags

    @property
    def context_rows(self) -> int:
        """Rows before a row that its score depends on."""
        return int(self.lags)

    def _min_rows(self, p: int) -> int:
        return self.lags + max(2 * p * (self.lags + 1), 2 * self.n_folds, 10)

    def _train_matrix(self, A: np.ndarray) -> np.ndarray:
        if self.lags < 0:
            raise ValueError(f"lags must be >= 0, got {self.lags}")
        return lagged(A, self.lags, pad=False)

    def _score_matrix(self, A: np.ndarray) -> np.ndarray:
        return lagged(A, self.lags, pad=True)

    def _score_columns(self, columns: list[np.ndarray]) -> list[np.ndarray]:
        """The columns of `lagged(..., pad=True)` as views of one padded copy per variable."""
        if self.lags == 0 or not columns or columns[0].size == 0:
            return columns if self.lags == 0 or not columns else columns * (self.lags + 1)
        n, lags = columns[0].size, self.lags
        padded = [np.concatenate([np.repeat(c[:1], lags), c]) for c in columns]
        return [c[lags - i: lags - i + n] for i in range(lags + 1) for c in padded]

    def _fold(self, C: np.ndarray) -> np.ndarray:
        p = C.shape[1] // (self.lags + 1)
        return C.reshape(C.shape[0], self.lags + 1, p).sum(axis=1)
