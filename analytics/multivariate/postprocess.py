"""Optional steps around a detector: smoothing scores before the threshold, persistence after.

Both are causal (a row depends only on the rows before it), so they behave the same offline and
on a live stream. Smoothing must be applied to the calibration scores too, so the threshold is
calibrated on what it will see (`threshold.held_out_scores(..., post=...)`).
"""

from __future__ import annotations

import numpy as np
import polars as pl


def ewma(scores: np.ndarray, halflife: float) -> np.ndarray:
    """Exponentially weighted moving average (n,), half-life in rows; halflife <= 0 returns a copy."""
    s = np.asarray(scores, dtype=np.float64)
    if halflife <= 0 or s.size == 0:
        return s.copy()
    return pl.Series(s).ewm_mean(half_life=halflife, adjust=True).to_numpy().astype(np.float64)


class StreamingEwma:
    """`ewma` over a stream cut in pieces: `update(piece)` on consecutive pieces returns what
    `ewma` returns on the whole series (to rounding). A piece is (n,) or (n, p), columns smoothed
    apart (the same p each call). State: the weighted sum and the sum of weights so far (the
    adjusted EWMA is their ratio); each piece is smoothed by Polars, then the carried part
    is added, decayed by (1 - a)^(i + 1) at its row i. Nothing carried at the start."""

    def __init__(self, halflife: float):
        self.halflife = float(halflife)
        self._sum: np.ndarray | None = None
        self._weight = 0.0

    def update(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if self.halflife <= 0 or v.shape[0] == 0:
            return v.copy()
        wide = v.reshape(v.shape[0], -1)
        smoothed = pl.DataFrame(wide, orient="row").select(
            pl.all().ewm_mean(half_life=self.halflife, adjust=True)).to_numpy().astype(np.float64)
        keep = 1.0 - np.exp(-np.log(2.0) / self.halflife)  # Polars' alpha from the half-life
        decay = (1.0 - keep) ** np.arange(1, wide.shape[0] + 1, dtype=np.float64)[:, None]
        weight = (1.0 - decay) / keep  # sum of this piece's weights at each row
        total = smoothed * weight
        if self._sum is not None:
            total += decay * self._sum
            weight = weight + decay * self._weight
        self._sum, self._weight = total[-1].copy(), float(weight[-1, 0])
        return (total / weight).reshape(v.shape)


def rolling_median(scores: np.ndarray, window: int) -> np.ndarray:
    """Trailing median over the last `window` rows (fewer at the start), (n,)."""
    s = np.asarray(scores, dtype=np.float64)
    if window <= 1 or s.size == 0:
        return s.copy()
    return pl.Series(s).rolling_median(window, min_samples=1).to_numpy().astype(np.float64)


def persist(alarms: np.ndarray, k: int) -> np.ndarray:
    """On-delay: 1 only from the k-th consecutive raw alarm of a run on (n,) uint8; k <= 1 is a no-op."""
    a = np.asarray(alarms).astype(bool)
    if k <= 1 or a.size == 0:
        return a.astype(np.uint8)
    idx = np.arange(a.size)
    last_off = np.maximum.accumulate(np.where(a, -1, idx))
    return ((idx - last_off) >= k).astype(np.uint8)
