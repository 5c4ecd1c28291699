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

After `fit` the trees are kept as plain arrays (`IsolationTrees`), the learned state: a fitted
detector is plain data (`analytics.models` saves it without pickle). A detector fitted in this
process scores with scikit-learn's compiled trees (a few times faster on large frames); a
loaded one walks the arrays with NumPy, level by level for all rows and trees at once. Both
give the same scores (to rounding, tested).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest

from analytics.multivariate.base import as_matrix, frame_of, robust_scale


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the mean path length of an unsuccessful search in a binary search tree of n keys."""
    n = np.asarray(n, dtype=np.float64)
    out = np.where(n == 2, 1.0, 0.0)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class IsolationTrees:
    """The fitted trees as flat arrays (every tree's nodes concatenated).

    left, right (nodes,) int64: absolute child indices, -1 at leaves; feature (nodes,) int64: the
    column of X tested; threshold (nodes,) float64: go left when x <= threshold (x as float32,
    as scikit-learn's trees compare); path (nodes,) float64: at a leaf, its depth plus c(samples
    in the leaf); roots (trees,) int64; depth: the deepest level; norm: trees x c(max_samples).
    """

    FIELDS = ("left", "right", "feature", "threshold", "path", "roots")

    def __init__(self, left, right, feature, threshold, path, roots, depth: int, norm: float):
        self.left, self.right, self.feature = left, right, feature
        self.threshold, self.path, self.roots = threshold, path, roots
        self.depth, self.norm = int(depth), float(norm)

    @classmethod
    def from_sklearn(cls, forest: IsolationForest) -> IsolationTrees:
        parts: dict[str, list[np.ndarray]] = {f: [] for f in cls.FIELDS}
        offset, depth = 0, 0
        for est, features in zip(forest.estimators_, forest.estimators_features_):
            t = est.tree_
            leaf = t.children_left == -1
            parts["left"].append(np.where(leaf, -1, t.children_left + offset))
            parts["right"].append(np.where(leaf, -1, t.children_right + offset))
            parts["feature"].append(np.where(leaf, 0, np.asarray(features)[np.maximum(t.feature, 0)]))
            parts["threshold"].append(t.threshold.astype(np.float64))
            # scikit-learn: node depth + c(n at node) - 1, where its node depths count from 1.
            parts["path"].append(t.compute_node_depths() + _average_path_length(t.n_node_samples) - 1.0)
            parts["roots"].append(np.array([offset]))
            offset += t.node_count
            depth = max(depth, int(t.max_depth))
        arrays = {f: np.concatenate(v) for f, v in parts.items()}
        norm = len(forest.estimators_) * float(_average_path_length(np.array([forest._max_samples]))[0])
        return cls(arrays["left"].astype(np.int64), arrays["right"].astype(np.int64),
                   arrays["feature"].astype(np.int64), arrays["threshold"], arrays["path"],
                   arrays["roots"].astype(np.int64), depth, norm)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in self.FIELDS}

    def _walk_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(children (2 nodes,): left then right of each node, feature, threshold) with every leaf
        its own child (threshold +inf), so a level of the walk needs no leaf test."""
        if getattr(self, "_walk", None) is None:
            own = np.arange(self.left.size, dtype=np.intp)
            leaf = self.left < 0
            children = np.column_stack([np.where(leaf, own, self.left), np.where(leaf, own, self.right)])
            self._walk = (children.astype(np.intp).ravel(), np.where(leaf, 0, self.feature).astype(np.intp),
                          np.where(leaf, np.inf, self.threshold))
        return self._walk

    def score(self, A: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Anomaly score 2^(-mean path / c(max_samples)) of each row of A (n, p), (n,)."""
        children, feature, threshold = self._walk_arrays()
        X = A.astype(np.float32).astype(np.float64)
        total = np.empty(X.shape[0])
        for lo in range(0, X.shape[0], chunk):  # chunks of rows stay in cache
            part = X[lo: lo + chunk]
            node = np.broadcast_to(self.roots.astype(np.intp), (part.shape[0], self.roots.size)).copy()
            flat = np.arange(part.shape[0], dtype=np.intp)[:, None] * part.shape[1]
            values = part.ravel()
            for _ in range(self.depth):
                node = children[2 * node + (values[flat + feature[node]] > threshold[node])]
            total[lo: lo + chunk] = self.path[node].sum(axis=1)
        return np.power(2.0, -total / self.norm) if self.norm else np.ones(X.shape[0])


class IsolationForestDetector(BaseEstimator):
    """Parameters: `n_estimators`, `max_samples` (as scikit-learn), `random_state` (fixed: scores
    are reproducible). Learned: `variables_`, `trees_` (`IsolationTrees`), `median_`, `scale_`."""

    def __init__(self, *, n_estimators: int = 200, max_samples: int | str = "auto", random_state: int = 0):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X: pl.DataFrame) -> Self:
        A = as_matrix(X)
        if A.shape[0] < 10:
            raise ValueError(f"too few rows to fit: {A.shape[0]} < 10")
        self.variables_ = tuple(X.columns)
        forest = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                 random_state=self.random_state, n_jobs=1).fit(A)
        self.trees_ = IsolationTrees.from_sklearn(forest)
        self._forest = forest  # a speed-up only, never saved (not learned state)
        self.median_, self.scale_ = robust_scale(A)
        return self

    def score_samples(self, X: pl.DataFrame) -> np.ndarray:
        A = as_matrix(X, self.variables_)
        if A.shape[0] == 0:
            return np.empty(0)
        forest = getattr(self, "_forest", None)
        return -forest.score_samples(A) if forest is not None else self.trees_.score(A)

    def contributions(self, X: pl.DataFrame) -> pl.DataFrame:
        A = as_matrix(X, self.variables_)
        return frame_of(np.abs(A - self.median_) / self.scale_, self.variables_)
