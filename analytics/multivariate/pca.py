"""PCA monitoring: Hotelling T², SPE (Q) and a combined score, with per-variable contributions.

Catches changes in the correlation structure (SPE: a row leaves the plane of normal operation)
and unusually large moves inside it (T²: e.g. a mean shift along a normal direction of
variation). Fit on normal rows only.

Model (on variables standardised with the training mean and standard deviation, z):
    t = P z               scores on the k retained components (k: the fewest whose eigenvalues
                          explain `variance` of the total)
    T² = sum_i t_i² / λ_i
    SPE = |z - Pᵀ t|²     squared distance to the PCA plane

Limits (`t2_limit_`, `spe_limit_`, each at the nominal false-alarm rate `alpha`):
    limits="calibrated" (default): the (1 - alpha) empirical quantile of the statistic on held-out
        normal rows, obtained by blocked cross-fitting on the training rows (`n_folds`
        contiguous blocks; each block is scored by a model fitted on the other blocks). Held-out
        rows carry the drift and the estimation error that in-sample rows hide, which is why the
        textbook limits below are usually too tight on real plants.
    limits="textbook": T² from the F distribution, SPE from Jackson–Mudholkar (`spe="jm"`) or
        Box's scaled chi² (`spe="box"`).

Score (`score_samples`), unitless, 1 = at a limit:
    combine="max" (default): max(T² / t2_limit_, SPE / spe_limit_)
    combine="sum": T² / t2_limit_ + SPE / spe_limit_ (Yue & Qin's combined index)

Contributions (non-negative, per original variable, in the score's units):
    SPE: the squared residual of each variable, (z_j - (Pᵀ t)_j)², which sums to SPE.
    T²: the complete decomposition (Alcala & Qin 2009), ((D^½ z)_j)² with D = Pᵀ Λ⁻¹ P, which sums
        to T².
    combine="sum": T²-contribution / t2_limit_ + SPE-contribution / spe_limit_ (sums to the
    score); combine="max": the contributions of whichever statistic is the larger, over its limit.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl
from scipy import stats
from sklearn.base import BaseEstimator
from threadpoolctl import ThreadpoolController

from analytics.multivariate.base import as_columns, as_matrix, frame_of, non_finite_columns, non_finite_error


def t2_limit_f(n: int, k: int, alpha: float) -> float:
    """Textbook T² limit for a new observation, PCA with k components fitted on n rows:
    k (n² - 1) / (n (n - k)) · F_{1-alpha}(k, n - k)."""
    return float(k * (n * n - 1) / (n * (n - k)) * stats.f.ppf(1 - alpha, k, n - k))


def spe_limit_jackson_mudholkar(residual_eigenvalues: np.ndarray, alpha: float) -> float:
    """Jackson & Mudholkar (1979) SPE limit from the eigenvalues of the discarded components."""
    lam = np.asarray(residual_eigenvalues, dtype=np.float64)
    if lam.size == 0 or lam.sum() <= 0:
        return 0.0
    t1, t2, t3 = (float((lam**i).sum()) for i in (1, 2, 3))
    h0 = 1 - 2 * t1 * t3 / (3 * t2 * t2)
    c = stats.norm.ppf(1 - alpha)
    inner = c * np.sqrt(2 * t2 * h0 * h0) / t1 + 1 + t2 * h0 * (h0 - 1) / (t1 * t1)
    return float(t1 * max(inner, 0.0) ** (1 / h0))


def spe_limit_box(residual_eigenvalues: np.ndarray, alpha: float) -> float:
    """Box (1954) SPE limit g·χ²_{1-alpha}(h), g = θ2/θ1, h = θ1²/θ2."""
    lam = np.asarray(residual_eigenvalues, dtype=np.float64)
    if lam.size == 0 or lam.sum() <= 0:
        return 0.0
    t1, t2 = float(lam.sum()), float((lam**2).sum())
    return float(t2 / t1 * stats.chi2.ppf(1 - alpha, t1 * t1 / t2))


# Rows per scoring chunk: 4,096 rows x 50 variables x 8 bytes = 1.6 MB, within a 2 MB L2 cache.
CHUNK_ROWS = 4096


_BLAS: ThreadpoolController | None = None


def _one_blas_thread():
    """A context in which BLAS runs on the calling thread only. A chunk's products are small
    (4,096 x 50 x 25): with 2 OpenBLAS threads on a busy 2-core machine, waking and joining the
    second thread per product made scoring 3-10x slower in wall time than one thread. The
    controller is built once (scanning the loaded libraries costs ~2 ms; limiting then ~10 us)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def blocks(n: int, n_folds: int) -> list[np.ndarray]:
    """Row indices of `n_folds` contiguous, near-equal blocks of range(n)."""
    return [b for b in np.array_split(np.arange(n), n_folds) if b.size]


class _Pca:
    """A fitted PCA model on an (n, m) matrix: standardisation, loadings, eigenvalues."""

    def __init__(self, M: np.ndarray, variance: float):
        n, m = M.shape
        self.mean = M.mean(axis=0)
        std = M.std(axis=0, ddof=1) if n > 1 else np.ones(m)
        self.scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(self.mean)), std, 1.0)
        Z = (M - self.mean) / self.scale
        _, s, vt = np.linalg.svd(Z, full_matrices=False)
        eig = np.zeros(m)
        eig[: s.size] = s**2 / max(n - 1, 1)
        self.all_eigenvalues = eig
        ratio = np.cumsum(eig) / eig.sum() if eig.sum() > 0 else np.ones(m)
        k = int(np.searchsorted(ratio, variance - 1e-12) + 1)
        k = max(1, min(k, m - 1 if m > 1 else 1, s.size))
        self.k = k
        self.components = np.ascontiguousarray(vt[:k])  # (k, m)
        self.eigenvalues = np.maximum(eig[:k], 1e-12 * max(eig[0], 1e-300))

    def standardise(self, M: np.ndarray) -> np.ndarray:
        return (M - self.mean) / self.scale

    def statistics(self, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T², SPE), each (n,), of the rows of M (n, m)."""
        t2, spe, _ = self.statistics_of(list(M.T), M.shape[0])
        return t2, spe

    @np.errstate(invalid="ignore", over="ignore")  # non-finite input is reported through `all finite`
    def statistics_of(self, columns: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(T², SPE, all finite) of n rows given as m columns (1-D arrays or views, length n each).

        The rows go through in chunks of `CHUNK_ROWS` that stay in the L2 cache: each chunk is
        standardised in place into one reused buffer (column by column, so the (n, m) matrix is
        never built), projected with one BLAS call, and squared in place; a second small product
        with [1/λ, 1] gives T² and |t|² together. SPE = |z|² - |t|² (the rows of P are
        orthonormal), clipped at 0 against rounding. `all finite` is False when some chunk had a
        non-finite |z|² (a null, NaN or infinite input, or an overflow): the caller names the
        column."""
        m, k = len(columns), self.components.shape[0]
        t2, spe = np.empty(n), np.empty(n)
        if n == 0:
            return t2, spe, True
        rows = min(CHUNK_ROWS, n)
        mean, inv_scale = self.mean, 1.0 / self.scale
        loadings = np.ascontiguousarray(self.components.T)  # (m, k)
        weights = np.ascontiguousarray(np.stack([1.0 / self.eigenvalues, np.ones(k)], axis=1))  # (k, 2)
        Z = np.empty((rows, m), order="F")  # column-major: each column's chunk is one contiguous copy
        T, sums = np.empty((rows, k)), np.empty((rows, 2))
        finite = True
        with _one_blas_thread():
            for a in range(0, n, rows):
                b = min(a + rows, n)
                z, t, both = Z[: b - a], T[: b - a], sums[: b - a]
                for j, column in enumerate(columns):
                    np.subtract(column[a:b], mean[j], out=z[:, j])
                z *= inv_scale
                np.matmul(z, loadings, out=t)
                t *= t
                np.matmul(t, weights, out=both)
                z *= z
                zz = z.sum(axis=1)
                finite = finite and bool(np.isfinite(zz).all())
                t2[a:b] = both[:, 0]
                np.subtract(zz, both[:, 1], out=spe[a:b])
        np.maximum(spe, 0.0, out=spe)
        return t2, spe, finite

    def contributions(self, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-column (T², SPE) contributions, each (n, m); rows sum to the statistics."""
        Z = self.standardise(M)
        P = self.components
        T = Z @ P.T
        half = (P.T * (1.0 / np.sqrt(self.eigenvalues))) @ P  # D^½, symmetric (m, m)
        return (Z @ half) ** 2, (Z - T @ P) ** 2


class PCADetector(BaseEstimator):
    """PCA T² / SPE monitor on a wide frame; see the module doc for the statistics.

    Parameters: `variance` explained by the retained components (0-1), `alpha` the nominal
    false-alarm rate of each statistic's limit, `limits` "calibrated" | "textbook", `spe` "jm" |
    "box" (textbook SPE limit), `combine` "max" | "sum", `n_folds` for the calibration.

    Learned: `variables_`, `mean_`, `scale_`, `components_` (k, p), `eigenvalues_` (k,),
    `n_components_`, `t2_limit_`, `spe_limit_`, `n_train_`.
    """

    def __init__(self, *, variance: float = 0.9, alpha: float = 0.01, limits: str = "calibrated",
                 spe: str = "jm", combine: str = "max", n_folds: int = 5):
        self.variance = variance
        self.alpha = alpha
        self.limits = limits
        self.spe = spe
        self.combine = combine
        self.n_folds = n_folds

    # Hooks for DynamicPCADetector: the matrix the PCA sees, and how its columns fold back.
    def _train_matrix(self, A: np.ndarray) -> np.ndarray:
        return A

    def _score_matrix(self, A: np.ndarray) -> np.ndarray:
        return A

    def _score_columns(self, columns: list[np.ndarray]) -> list[np.ndarray]:
        """The columns of `_score_matrix`, as 1-D arrays (views where possible)."""
        return columns

    def _fold(self, C: np.ndarray) -> np.ndarray:
        return C

    def _min_rows(self, p: int) -> int:
        return max(2 * p, 2 * self.n_folds, 10)

    def fit(self, X: pl.DataFrame) -> Self:
        """Fit on normal rows X (n, p). Raises ValueError on too few rows or bad parameters."""
        if not 0 < self.variance <= 1 or not 0 < self.alpha < 1:
            raise ValueError(f"variance must be in (0, 1] and alpha in (0, 1); got {self.variance}, {self.alpha}")
        if self.limits not in ("calibrated", "textbook") or self.combine not in ("max", "sum") \
                or self.spe not in ("jm", "box"):
            raise ValueError(f"bad limits/combine/spe: {self.limits!r}, {self.combine!r}, {self.spe!r}")
        A = as_matrix(X)
        if A.shape[0] < self._min_rows(A.shape[1]):
            raise ValueError(f"too few rows to fit: {A.shape[0]} < {self._min_rows(A.shape[1])}")
        M = self._train_matrix(A)
        model = _Pca(M, self.variance)
        self.variables_ = tuple(X.columns)
        self.n_train_ = A.shape[0]
        self.mean_, self.scale_ = model.mean, model.scale
        self.components_, self.eigenvalues_ = model.components, model.eigenvalues
        self.all_eigenvalues_ = model.all_eigenvalues
        self.n_components_ = model.k
        if self.limits == "textbook":
            residual = model.all_eigenvalues[model.k:]
            spe_limit = spe_limit_box if self.spe == "box" else spe_limit_jackson_mudholkar
            self.t2_limit_ = t2_limit_f(M.shape[0], model.k, self.alpha)
            self.spe_limit_ = spe_limit(residual, self.alpha)
        else:
            t2s, spes = [], []
            for held in blocks(M.shape[0], self.n_folds):
                rest = np.ones(M.shape[0], bool)
                rest[held] = False
                t2, spe = _Pca(M[rest], self.variance).statistics(M[held])
                t2s.append(t2)
                spes.append(spe)
            q = 1 - self.alpha
            self.t2_limit_ = float(np.quantile(np.concatenate(t2s), q, method="higher"))
            self.spe_limit_ = float(np.quantile(np.concatenate(spes), q, method="higher"))
        # A zero limit (SPE with no discarded variance) would divide by zero; such a statistic is 0.
        self.t2_limit_ = max(self.t2_limit_, 1e-12)
        self.spe_limit_ = max(self.spe_limit_, 1e-12)
        return self

    def _model(self) -> _Pca:
        model = _Pca.__new__(_Pca)
        model.mean, model.scale = self.mean_, self.scale_
        model.components, model.eigenvalues = self.components_, self.eigenvalues_
        return model

    def statistics(self, X: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(T², SPE) of each row of X, each (n,) float64. Raises ValueError on other variables
        than the fitted ones or on a null, NaN or infinite value."""
        columns = as_columns(X, self.variables_)
        t2, spe, finite = self._model().statistics_of(self._score_columns(columns), X.height)
        if not finite:
            bad = non_finite_columns(columns, self.variables_)
            if bad:
                raise non_finite_error(bad)
        return t2, spe

    def score_samples(self, X: pl.DataFrame) -> np.ndarray:
        """Combined score (n,): 1 means at the limit of the dominating statistic (see module doc)."""
        t2, spe = self.statistics(X)
        t2 *= 1.0 / self.t2_limit_
        spe *= 1.0 / self.spe_limit_
        return np.add(t2, spe, out=t2) if self.combine == "sum" else np.maximum(t2, spe, out=t2)

    def contributions(self, X: pl.DataFrame) -> pl.DataFrame:
        """Per-variable contributions (n, p), non-negative, in score units (see module doc)."""
        M = self._score_matrix(as_matrix(X, self.variables_))
        ct2, cspe = self._model().contributions(M)
        ct2, cspe = ct2 / self.t2_limit_, cspe / self.spe_limit_
        if self.combine == "sum":
            out = ct2 + cspe
        else:
            use_t2 = ct2.sum(axis=1) >= cspe.sum(axis=1)
            out = np.where(use_t2[:, None], ct2, cspe)
        return frame_of(self._fold(out), self.variables_)
