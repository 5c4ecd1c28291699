"""Per-sample Python loops with the same semantics as the vectorised detectors: the oracle the
tests compare against, and the baseline of bench/detectors.py."""

from __future__ import annotations

import math
from collections import deque

import polars as pl

from analytics.detectors.limits import LIMITS, limit_span
from controltower.site import TagInfo


_SCHEMA = {"tag_id": pl.String, "ts": pl.Datetime("ns", "UTC"), "score": pl.Float64, "level": pl.Int64, "limit": pl.Float64}


def _usable(value: float | None, quality: str | None) -> bool:
    return value is not None and not math.isnan(value) and quality != "bad"


class ReferenceLimits:
    """LimitDetector, one sample at a time. score(batch) -> (tag_id, ts, score, level, limit)."""

    def __init__(self, tags: list[TagInfo]):
        self.info = {t.tag_id: t.tag.limits for t in tags}
        self.state: dict[str, dict[str, bool]] = {}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for r in batch.sort("tag_id", "ts", maintain_order=True).iter_rows(named=True):
            lim = self.info.get(r["tag_id"])
            st = self.state.setdefault(r["tag_id"], {name: False for name, _, _ in LIMITS})
            score = None
            if lim is not None and _usable(r["value"], r["quality"]):
                x = r["value"]
                for name, side, _ in LIMITS:
                    limit = getattr(lim, name)
                    if limit is None:
                        st[name] = False
                    elif (x > limit) if side > 0 else (x < limit):
                        st[name] = True
                    elif (x <= limit - lim.deadband) if side > 0 else (x >= limit + lim.deadband):
                        st[name] = False
                upper = lim.warning_high if lim.warning_high is not None else lim.alarm_high
                lower = lim.warning_low if lim.warning_low is not None else lim.alarm_low
                excess = max(x - upper if upper is not None else 0.0, lower - x if lower is not None else 0.0, 0.0)
                score = excess / limit_span(lim.alarm_low, lim.warning_low, lim.warning_high, lim.alarm_high)
            level, limit_value = 0, None
            for name, _, lvl in LIMITS:  # most severe first
                if st[name]:
                    level, limit_value = lvl, getattr(lim, name)
                    break
            rows.append((r["tag_id"], r["ts"], score, level, limit_value))
        return pl.DataFrame(rows, schema=_SCHEMA, orient="row")


class ReferenceZScore:
    """RollingZScore, one sample at a time with running sums. score(batch) -> (tag_id, ts, score, level)."""

    def __init__(self, tags: list[TagInfo], window: int = 120, threshold: float = 8.0,
                 min_std_fraction: float = 0.01, warmup: int = 30):
        self.window, self.threshold, self.warmup = window, threshold, warmup
        self.floors: dict[str, float] = {}
        for t in tags:
            lim, span = t.tag.limits, None
            for hi, lo in ((lim.alarm_high, lim.alarm_low), (lim.warning_high, lim.warning_low)):
                if hi is not None and lo is not None:
                    span = hi - lo
                    break
            self.floors[t.tag_id] = min_std_fraction * span if span is not None else 0.0
        # per tag: [values deque, offset, sum, sum of squares, last level]; sums are of (x - offset).
        self.state: dict[str, list] = {}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for r in batch.sort("tag_id", "ts", maintain_order=True).iter_rows(named=True):
            tag, x = r["tag_id"], r["value"]
            if tag not in self.floors:
                rows.append((tag, r["ts"], None, 0))
                continue
            st = self.state.get(tag)
            if st is None:
                st = self.state[tag] = [deque(), None, 0.0, 0.0, 0]
            if not _usable(x, r["quality"]):
                rows.append((tag, r["ts"], None, st[4]))
                continue
            if st[1] is None:
                st[1] = x
            values, k = st[0], st[1]
            n, score, level = len(values), None, 0
            if n >= self.warmup:
                mean = k + st[2] / n
                var = (st[3] - st[2] * st[2] / n) / (n - 1) if n > 1 else 0.0
                sigma = max(math.sqrt(max(var, 0.0)), self.floors[tag], 1e-9)
                score = abs(x - mean) / sigma
                level = 1 if score > self.threshold else 0
            values.append(x)
            st[2] += x - k
            st[3] += (x - k) ** 2
            if len(values) > self.window:
                old = values.popleft()
                st[2] -= old - k
                st[3] -= (old - k) ** 2
            st[4] = level
            rows.append((tag, r["ts"], score, level))
        return pl.DataFrame(rows, schema={k: v for k, v in _SCHEMA.items() if k != "limit"}, orient="row")


def reference_limits(tags: list[TagInfo], batches: list[pl.DataFrame]) -> list[pl.DataFrame]:
    ref = ReferenceLimits(tags)
    return [ref.score(b) for b in batches]


def reference_zscore(tags: list[TagInfo], batches: list[pl.DataFrame], **params) -> list[pl.DataFrame]:
    ref = ReferenceZScore(tags, **params)
    return [ref.score(b) for b in batches]
