"""The multivariate detector contract, on wide frames.

A wide frame has one row per time step and one Float64 column per process variable (no time
column: the caller selects the variables, see `analytics.offline`). Detectors follow
scikit-learn's shape:

    fit(X: pl.DataFrame) -> Self            learn from normal operation; learned state ends in `_`
    score_samples(X) -> np.ndarray (n,)     float64, higher = more anomalous; never learns
    contributions(X) -> pl.DataFrame (n, p) each variable's share of the score, same columns as X;
                                            larger = more responsible (see each detector's doc)

`variables_` (tuple of column names) is set by `fit`; scoring a frame with other columns raises
ValueError. Scores are not decisions: `threshold.QuantileThreshold` turns them into 0/1 alarms at
a nominal false-alarm rate calibrated on held-out normal data, and `postprocess` holds the
optional smoothing and alarm-persistence steps. The classes derive from scikit-learn's
`BaseEstimator` only for `get_params` / `clone` / `repr`.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import numpy as np
import polars as pl


@runtime_checkable
class MultivariateDetector(Protocol):
    def fit(self, X: pl.DataFrame) -> Self:
        """Learn from normal rows (n, p); return self."""
        ...

    def score_samples(self, X: pl.DataFrame) -> np.ndarray:
        """One float64 score per row of X (n,); higher = more anomalous."""
        ...

    def contributions(self, X: pl.DataFrame) -> pl.DataFrame:
        """Per-variable contribution to each row's score: (n, p), the columns of X."""
        ...


def _selected(X: pl.DataFrame, variables: tuple[str, ...] | None) -> pl.DataFrame:
    """X with its columns in `variables` order; ValueError when they differ from `variables`."""
    if not isinstance(X, pl.DataFrame):
        raise TypeError(f"expected a polars DataFrame, got {type(X).__name__}")
    if variables is not None:
        missing = [v for v in variables if v not in X.columns]
        extra = [c for c in X.columns if c not in variables]
        if missing or extra:
            raise ValueError(f"variables differ from the fitted ones: missing {missing}, unexpected {extra}")
        X = X.select(variables)
    if X.width == 0:
        raise ValueError("no variables (the frame has no columns)")
    return X


def non_finite_error(names: list[str]) -> ValueError:
    return ValueError(f"null, NaN or infinite values in {names}; impute them first")


def as_matrix(X: pl.DataFrame, variables: tuple[str, ...] | None = None) -> np.ndarray:
    """X as a C-contiguous float64 array (n, p), columns in `variables` order when given.

    Raises ValueError when a variable is missing, X has extra columns, or a value is null/NaN."""
    X = _selected(X, variables)
    A = np.ascontiguousarray(X.cast(pl.Float64).to_numpy(), dtype=np.float64)
    if A.size and not np.isfinite(A).all():
        raise non_finite_error([X.columns[j] for j in np.flatnonzero(~np.isfinite(A).all(axis=0))])
    return A


def as_columns(X: pl.DataFrame, variables: tuple[str, ...]) -> list[np.ndarray]:
    """The `variables` of X as 1-D float64 arrays (n,) each, in that order: no (n, p) copy, and no
    copy at all for a Float64 column without nulls held in one chunk (Polars hands out its buffer,
    read-only). Nulls become NaN; unlike `as_matrix` the values are NOT checked for NaN here (the
    scoring kernel checks each chunk it computes, see `pca._Pca.statistics_of`).

    Raises ValueError when a variable is missing or X has extra columns."""
    X = _selected(X, variables)
    return [s.cast(pl.Float64).to_numpy() for s in X.iter_columns()]


def non_finite_columns(columns: list[np.ndarray], names: tuple[str, ...]) -> list[str]:
    """The names of the columns holding a null, NaN or infinite value (a slow, full check)."""
    return [name for name, c in zip(names, columns) if not np.isfinite(c).all()]


def robust_scale(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column medians and scales (1.4826 * MAD, falling back to the std, then to 1) of A (n, p)."""
    median = np.median(A, axis=0)
    scale = 1.4826 * np.median(np.abs(A - median), axis=0)
    std = A.std(axis=0)
    scale = np.where(scale > 1e-12, scale, std)
    return median, np.where(scale > 1e-12, scale, 1.0)


def frame_of(values: np.ndarray, columns: tuple[str, ...]) -> pl.DataFrame:
    """A wide Float64 frame from an (n, p) array."""
    return pl.DataFrame(values, schema=list(columns), orient="row") if values.size else \
        pl.DataFrame(schema={c: pl.Float64 for c in columns})
