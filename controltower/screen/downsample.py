"""Largest-Triangle-Three-Buckets (LTTB) downsampling for the trends, server-side.

LTTB (Steinarsson, "Downsampling Time Series for Visual Representation", 2013) keeps the first
and the last point, splits the rest into `n_out - 2` buckets and keeps from each bucket the
point that makes the largest triangle with the point kept from the previous bucket and the
average of the next bucket. Peaks and steps survive; a 15 000-point window becomes 300 points
that draw the same picture.

    keep = lttb_indices(x, y, 600)               # one series (NumPy), sorted by x
    small = lttb(frame, 600, by="tag_id")        # every tag of a frame at once (Polars)

The choice in a bucket depends on the choice in the previous one, so the buckets are walked in
order; but each step handles every series (tag) at once with NumPy over a padded matrix, and
the bucket averages are computed up front from cumulative sums. The cost is one NumPy step
per output point, never a Python step per sample. `tests/screen/test_downsample.py` checks the
result index for index against a plain reference implementation.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def lttb_indices(x: np.ndarray, y: np.ndarray, n_out: int) -> np.ndarray:
    """Indices (ascending) of the points LTTB keeps of one series of `len(x)` points sorted by
    x; all of them when `n_out >= len(x)` or `n_out < 3`."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return _lttb_grouped(x, y, np.array([0, len(x)], dtype=np.int64), n_out)


def lttb(frame: pl.DataFrame, n_out: int, *, x: str = "ts", y: str = "value", by: str | None = "tag_id") -> pl.DataFrame:
    """The rows LTTB keeps of each `by` group (at most `n_out` per group), sorted by group then
    `x`. Rows with a null `y` are dropped. `x` may be a datetime (its epoch is used) or a number."""
    frame = frame.drop_nulls(y)
    frame = frame.sort([by, x] if by else [x])
    if frame.is_empty():
        return frame
    xs = frame[x]
    if xs.dtype.is_temporal():
        xs = xs.dt.epoch("us")
    # Relative to the first point, in seconds for datetimes: keeps the areas well inside float64.
    xv = xs.cast(pl.Float64).to_numpy()
    xv = xv - xv[0]
    if frame[x].dtype.is_temporal():
        xv = xv / 1e6
    yv = frame[y].cast(pl.Float64).to_numpy()
    if by:
        sizes = frame.group_by(by, maintain_order=True).len()["len"].to_numpy()
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    else:
        offsets = np.array([0, frame.height], dtype=np.int64)
    keep = _lttb_grouped(xv, yv, offsets, n_out)
    return frame[keep]


def _lttb_grouped(x: np.ndarray, y: np.ndarray, offsets: np.ndarray, n_out: int) -> np.ndarray:
    """LTTB of every group [offsets[g], offsets[g+1]) of the concatenated arrays; global indices."""
    starts, ends = offsets[:-1], offsets[1:]
    sizes = ends - starts
    whole = sizes <= max(n_out, 2) if n_out >= 3 else np.ones_like(sizes, dtype=bool)
    kept = [np.arange(s, e) for s, e in zip(starts[whole], ends[whole], strict=True)]
    big = ~whole
    if big.any():
        kept.append(_lttb_big(x, y, starts[big], sizes[big], n_out))
    if not kept:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(kept))


def _lttb_big(x: np.ndarray, y: np.ndarray, starts: np.ndarray, sizes: np.ndarray, n_out: int) -> np.ndarray:
    """LTTB for groups that all have more than `n_out` points (n_out >= 3)."""
    n_buckets = n_out - 2
    every = (sizes - 2) / n_buckets  # float per group, as in the reference
    i = np.arange(n_buckets + 1, dtype=np.float64)
    # Bucket i of group g covers local [bound[g, i], bound[g, i + 1]); bound = floor(i * every) + 1.
    bound = np.floor(i[None, :] * every[:, None]).astype(np.int64) + 1
    bound[:, -1] = np.minimum(bound[:, -1], sizes - 1)
    # The average of the next bucket: bucket i + 1, or the last point for the last bucket.
    avg_lo = bound[:, 1:]  # start of bucket i + 1
    avg_hi = np.minimum(np.floor((i[None, 1:] + 1) * every[:, None]).astype(np.int64) + 1, sizes[:, None])
    cx = np.concatenate([[0.0], np.cumsum(x)])
    cy = np.concatenate([[0.0], np.cumsum(y)])
    glo, ghi = starts[:, None] + avg_lo, starts[:, None] + avg_hi
    count = (ghi - glo).astype(np.float64)
    avg_x = (cx[ghi] - cx[glo]) / count
    avg_y = (cy[ghi] - cy[glo]) / count

    lo, hi = bound[:, :-1], bound[:, 1:]
    width = int((hi - lo).max())
    lane = np.arange(width)
    a = starts.copy()  # the point kept last, per group (global index)
    out = np.empty((len(starts), n_out), dtype=np.int64)
    out[:, 0] = starts
    out[:, -1] = starts + sizes - 1
    for b in range(n_buckets):
        first = starts + lo[:, b]
        n_in = hi[:, b] - lo[:, b]
        idx = first[:, None] + lane[None, :]
        valid = lane[None, :] < n_in[:, None]
        idx = np.where(valid, idx, first[:, None])
        ax, ay = x[a][:, None], y[a][:, None]
        area = np.abs((ax - avg_x[:, b, None]) * (y[idx] - ay) - (ax - x[idx]) * (avg_y[:, b, None] - ay))
        area = np.where(valid, area, -1.0)
        a = first + np.argmax(area, axis=1)
        out[:, b + 1] = a
    return out.reshape(-1)


def lttb_reference(x: list[float], y: list[float], n_out: int) -> list[int]:
    """The textbook LTTB, one point at a time: the reference the vectorised one is tested against."""
    n = len(x)
    if n_out >= n or n_out < 3:
        return list(range(n))
    every = (n - 2) / (n_out - 2)
    a = 0
    kept = [0]
    for i in range(n_out - 2):
        avg_start = int(np.floor((i + 1) * every)) + 1
        avg_end = min(int(np.floor((i + 2) * every)) + 1, n)
        avg_x = sum(x[avg_start:avg_end]) / (avg_end - avg_start)
        avg_y = sum(y[avg_start:avg_end]) / (avg_end - avg_start)
        lo = int(np.floor(i * every)) + 1
        hi = min(int(np.floor((i + 1) * every)) + 1, n - 1)
        best, best_area = lo, -1.0
        for j in range(lo, hi):
            area = abs((x[a] - avg_x) * (y[j] - y[a]) - (x[a] - x[j]) * (avg_y - y[a]))
            if area > best_area:
                best, best_area = j, area
        kept.append(best)
        a = best
    kept.append(n - 1)
    return kept
