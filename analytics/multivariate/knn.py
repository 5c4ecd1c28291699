"""Nearest-neighbour residuals, in the spirit of MSET (Gross et al., similarity-based modelling):
the training rows are a memory of normal states; a new row's estimate is the mean of its
`n_neighbors` nearest remembered states, and the score is the squared distance between the row
and that estimate. Makes no linearity assumption (a curved or multi-mode operating envelope is
remembered as it is), catches a row that leaves every remembered state, whatever the direction;
blind to a row that moves from one normal state to another normal state, and a row beyond the
training range is estimated by the edge of the memory (its residual grows with the distance).

Model, on variables standardised with the training mean and standard deviation (z):
    estimate(z) = mean of the k rows of the memory nearest to z (Euclidean)
    score       = |z - estimate(z)|²

Contributions: the squared residual of each variable, (z_j - estimate_j)², which sums to the
score. The memory is plain data (`memory_`, the standardised training rows): nearest neighbours
are found by brute force in row chunks (|a|² + |b|² - 2 a·b), fast for memories of a few
thousand rows, which is what a detector fitted on a recording of normal operation holds.
`max_memory` caps it for long recordings (days of 1 s rows would make every scored row compare
with hundreds of thousands): the rows holding each variable's minimum and maximum (the edges of
the envelope, as MSET's min-max selection keeps) plus rows evenly spaced in time.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator

from analytics.multivariate.base import as_matrix, frame_of

# Rows scored per chunk: the (rows, memory) distance block stays around 8 MB for a 2,000-row memory.
CHUNK_ROWS = 512


class NearestNeighbourDetector(BaseEstimator):
    """MSET-like nearest-neighbour residual monitor; see the module doc.

    Parameters: `n_neighbors` (>= 1) averaged into the estimate; `max_memory` (None: no cap)
    rows remembered, > n_neighbors and >= 2 p (module doc).
    Learned: `variables_`, `mean_`, `scale_`, `memory_` (m, p) standardised training rows.
    """

    def __init__(self, *, n_neighbors: int = 5, max_memory: int | None = None):
        self.n_neighbors = n_neighbors
        self.max_memory = max_memory

    def fit(self, X: pl.DataFrame) -> Self:
        """Remember the normal rows X (n, p); n must exceed `n_neighbors`."""
        if self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {self.n_neighbors}")
        A = as_matrix(X)
        if A.shape[0] <= self.n_neighbors:
            raise ValueError(f"too few rows to fit: {A.shape[0]} <= n_neighbors {self.n_neighbors}")
        self.variables_ = tuple(X.columns)
        self.mean_ = A.mean(axis=0)
        std = A.std(axis=0, ddof=1)
        self.scale_ = np.where(std > 1e-12 * np.maximum(1.0, np.abs(self.mean_)), std, 1.0)
        self.memory_ = np.ascontiguousarray((A[self._remembered(A)] - self.mean_) / self.scale_)
        return self

    def _remembered(self, A: np.ndarray) -> np.ndarray | slice:
        """The rows of A (n, p) kept in the memory: all, or at most `max_memory` (module doc)."""
        n, p = A.shape
        if self.max_memory is None or n <= self.max_memory:
            return slice(None)
        if self.max_memory <= max(self.n_neighbors, 2 * p - 1):
            raise ValueError(f"max_memory must exceed n_neighbors {self.n_neighbors} and be >= 2 x "
                             f"{p} variables, got {self.max_memory}")
        edges = np.unique(np.concatenate([A.argmin(axis=0), A.argmax(axis=0)]))
        rest = np.setdiff1d(np.arange(n), edges)  # more rows than wanted: the picks below are distinct
        spaced = rest[np.linspace(0, rest.size - 1, self.max_memory - edges.size).round().astype(np.int64)]
        return np.union1d(edges, spaced)  # `max_memory` rows in time order

    def _residuals(self, X: pl.DataFrame) -> np.ndarray:
        """z - estimate(z), (n, p)."""
        Z = (as_matrix(X, self.variables_) - self.mean_) / self.scale_
        M, k = self.memory_, self.n_neighbors
        norms = np.einsum("ij,ij->i", M, M)
        out = np.empty_like(Z)
        for a in range(0, Z.shape[0], CHUNK_ROWS):
            z = Z[a: a + CHUNK_ROWS]
            d2 = norms[None, :] - 2.0 * (z @ M.T)  # |z|² is the same for every neighbour of a row
            nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
            out[a: a + CHUNK_ROWS] = z - M[nearest].mean(axis=1)
        return out

    def score_samples(self, X: pl.DataFrame) -> np.ndarray:
        """|z - estimate(z)|² per row (n,); 0 for a row equal to the mean of k remembered rows."""
        R = self._residuals(X)
        return np.einsum("ij,ij->i", R, R)

    def contributions(self, X: pl.DataFrame) -> pl.DataFrame:
        """Squared residual per variable (n, p); rows sum to the score."""
        R = self._residuals(X)
        return frame_of(R * R, self.variables_)
