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
