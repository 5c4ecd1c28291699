"""Per-sample Python loops with the same semantics as the vectorised detectors: the oracle the
tests compare against, and the baseline of bench/detectors.py."""

from __future__ import annotations

import itertools
import math
import statistics
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
        self.delays: dict[str, dict[str, list]] = {}  # per limit: [delayed state, run start ts, run samples]

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for r in batch.sort("tag_id", "ts", maintain_order=True).iter_rows(named=True):
            lim = self.info.get(r["tag_id"])
            st = self.state.setdefault(r["tag_id"], {name: False for name, _, _ in LIMITS})
            # Per limit: the raw (deadband) state, then the ISA-18.2 delayed one over its runs.
            delay = self.delays.setdefault(r["tag_id"], {name: [False, r["ts"], 0] for name, _, _ in LIMITS})
            score = None
            if lim is not None and _usable(r["value"], r["quality"]):
                x = r["value"]
                for name, side, _ in LIMITS:
                    limit = getattr(lim, name)
                    raw = st[name]
                    if limit is None:
                        raw = False
                    elif (x > limit) if side > 0 else (x < limit):
                        raw = True
                    elif (x <= limit - lim.deadband) if side > 0 else (x >= limit + lim.deadband):
                        raw = False
                    run = delay[name]
                    if raw != st[name]:
                        run[1], run[2] = r["ts"], 0
                    st[name] = raw
                    run[2] += 1
                    held = (r["ts"] - run[1]).total_seconds()
                    if raw and held >= lim.on_delay_s and run[2] >= lim.on_delay_samples:
                        run[0] = True
                    elif not raw and held >= lim.off_delay_s and run[2] >= lim.off_delay_samples:
                        run[0] = False
                upper = lim.warning_high if lim.warning_high is not None else lim.alarm_high
                lower = lim.warning_low if lim.warning_low is not None else lim.alarm_low
                excess = max(x - upper if upper is not None else 0.0, lower - x if lower is not None else 0.0, 0.0)
                score = excess / limit_span(lim.alarm_low, lim.warning_low, lim.warning_high, lim.alarm_high)
            level, limit_value = 0, None
            for name, _, lvl in LIMITS:  # most severe first
                if delay[name][0]:
                    level, limit_value = lvl, getattr(lim, name)
                    break
            rows.append((r["tag_id"], r["ts"], score, level, limit_value))
        return pl.DataFrame(rows, schema=_SCHEMA, orient="row")


class ReferenceZScore:
    """RollingZScore, one sample at a time with running sums. score(batch) -> (tag_id, ts, score, level)."""

    def __init__(self, tags: list[TagInfo], window: int = 120, threshold: float = 8.0,
                 min_std_fraction: float = 0.01, warmup: int = 30):
        from analytics.detectors.zscore import std_floors
        self.window, self.threshold, self.warmup = window, threshold, warmup
        self.floors: dict[str, float] = dict(std_floors(tags, min_std_fraction).iter_rows())
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


_SCORED = {"tag_id": pl.String, "ts": pl.Datetime("ns", "UTC"), "score": pl.Float64, "level": pl.Int64, "reason": pl.String}


class _PerTag:
    """Loop skeleton: one row per sample in (tag_id, ts) order; `step(tag, ts, x)` for the usable
    samples of known tags returns (score, level, reason); the others carry the tag's last level."""

    def __init__(self, known: set[str]):
        self.known = known
        self.last: dict[str, tuple[int, str | None]] = {}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for r in batch.sort("tag_id", "ts", maintain_order=True).iter_rows(named=True):
            tag = r["tag_id"]
            if tag in self.known and _usable(r["value"], r["quality"]):
                score, level, reason = self.step(tag, r["ts"], r["value"])
                self.last[tag] = (level, reason)
            else:
                score, (level, reason) = None, self.last.get(tag, (0, None))
            rows.append((tag, r["ts"], score, level, reason if level else None))
        return pl.DataFrame(rows, schema=_SCORED, orient="row")

    def step(self, tag: str, ts, x: float) -> tuple[float | None, int, str | None]:
        raise NotImplementedError


class ReferenceRateOfChange(_PerTag):
    """RateOfChangeDetector, one sample at a time."""

    def __init__(self, tags: list[TagInfo]):
        self.limit = {t.tag_id: t.tag.limits.rate_of_change for t in tags if t.tag.limits.rate_of_change}
        super().__init__(set(self.limit))
        self.prev: dict[str, tuple] = {}

    def step(self, tag, ts, x):
        prev, self.prev[tag] = self.prev.get(tag), (ts, x)
        if prev is None or (ts - prev[0]).total_seconds() <= 0:
            return None, 0, None
        rate = (x - prev[1]) / (ts - prev[0]).total_seconds()
        over = abs(rate) > self.limit[tag]
        return abs(rate) / self.limit[tag], int(over), "rate" if over else None


class ReferenceNelson(_PerTag):
    """NelsonRules, one sample at a time, each rule checked on a deque of the last 15 values by its
    textbook definition (no rolling sums)."""

    def __init__(self, centres: dict[str, tuple[float, float]], rules=(1, 2, 3, 4, 5, 6, 7, 8), same_side_run: int = 9):
        super().__init__(set(centres))
        self.centres, self.rules, self.n2 = centres, rules, same_side_run
        self.values: dict[str, deque] = {}

    def fired(self, v: list[float], z: list[float]) -> list[int]:
        d = [b - a for a, b in itertools.pairwise(v)]
        last = lambda seq, n: seq[-n:] if len(seq) >= n else None
        checks = {
            1: abs(z[-1]) > 3,
            2: (w := last(z, self.n2)) is not None and (all(q > 0 for q in w) or all(q < 0 for q in w)),
            3: (w := last(d, 5)) is not None and (all(q > 0 for q in w) or all(q < 0 for q in w)),
            4: (w := last(d, 13)) is not None and all(a * b < 0 for a, b in itertools.pairwise(w)),
            5: (w := last(z, 3)) is not None and (sum(q > 2 for q in w) >= 2 or sum(q < -2 for q in w) >= 2),
            6: (w := last(z, 5)) is not None and (sum(q > 1 for q in w) >= 4 or sum(q < -1 for q in w) >= 4),
            7: (w := last(z, 15)) is not None and all(abs(q) < 1 for q in w),
            8: (w := last(z, 8)) is not None and all(abs(q) > 1 for q in w) and any(q > 1 for q in w)
               and any(q < -1 for q in w),
        }
        return [r for r in sorted(self.rules) if checks[r]]

    def step(self, tag, ts, x):
        values = self.values.setdefault(tag, deque(maxlen=max(15, self.n2)))
        values.append(x)
        centre, sigma = self.centres[tag]
        v = list(values)
        z = [(q - centre) / sigma for q in v]
        fired = self.fired(v, z)
        return abs(z[-1]), int(bool(fired)), f"Nelson {fired[0]}:" if fired else None


class ReferenceEwma(_PerTag):
    """EwmaChart, one sample at a time."""

    def __init__(self, centres: dict[str, tuple[float, float]], lam: float = 0.2, L: float = 3.0, exact: bool = True):
        super().__init__(set(centres))
        self.centres, self.lam, self.L, self.exact = centres, lam, L, exact
        self.state: dict[str, list] = {}

    def step(self, tag, ts, x):
        centre, sigma = self.centres[tag]
        st = self.state.setdefault(tag, [centre, 0])
        st[0] = self.lam * x + (1 - self.lam) * st[0]
        st[1] += 1
        factor = self.lam / (2 - self.lam) * ((1 - (1 - self.lam) ** (2 * st[1])) if self.exact else 1.0)
        score = abs(st[0] - centre) / (sigma * math.sqrt(factor))
        return score, int(score > self.L), "EWMA" if score > self.L else None


class ReferenceCusum(_PerTag):
    """CusumChart, one sample at a time: the textbook recursion max(0, S + y - k)."""

    def __init__(self, centres: dict[str, tuple[float, float]], k: float = 0.5, h: float = 5.0):
        super().__init__(set(centres))
        self.centres, self.k, self.h = centres, k, h
        self.state: dict[str, list[float]] = {}

    def step(self, tag, ts, x):
        centre, sigma = self.centres[tag]
        st = self.state.setdefault(tag, [0.0, 0.0])
        y = (x - centre) / sigma
        st[0] = max(0.0, st[0] + y - self.k)
        st[1] = max(0.0, st[1] - y - self.k)
        high = max(st)
        return high / self.h, int(high > self.h), "CUSUM" if high > self.h else None


class ReferenceRobustZScore(_PerTag):
    """RobustZScore, one sample at a time, with deques of the previous values and deviations."""

    def __init__(self, tags: list[TagInfo], window: int = 120, threshold: float = 8.0, min_std_fraction: float = 0.01,
                 warmup: int = 30):
        from analytics.detectors.zscore import std_floors
        self.floors = dict(std_floors(tags, min_std_fraction).iter_rows())
        super().__init__(set(self.floors))
        self.window, self.threshold, self.warmup = window, threshold, warmup
        self.state: dict[str, tuple[deque, deque]] = {}

    def step(self, tag, ts, x):
        values, devs = self.state.setdefault(tag, (deque(maxlen=self.window), deque(maxlen=self.window)))
        median = statistics.median(values) if len(values) >= self.warmup else None
        known = [d for d in devs if d is not None]
        mad = statistics.median(known) if len(known) >= self.warmup else None
        values.append(x)
        devs.append(abs(x - median) if median is not None else None)
        if median is None or mad is None:
            return None, 0, None
        z = abs(x - median) / max(1.4826 * mad, self.floors[tag], 1e-9)
        return z, int(z > self.threshold), "robust z" if z > self.threshold else None


class ReferenceFlatline(_PerTag):
    """FlatlineDetector, one sample at a time (levels only: the bench's baseline)."""

    def __init__(self, tags: list[TagInfo], min_run: int = 30, tolerance: float = 0.0):
        super().__init__({t.tag_id for t in tags})
        self.min_run, self.tolerance = min_run, tolerance
        self.state: dict[str, list] = {}

    def step(self, tag, ts, x):
        st = self.state.get(tag)  # [previous value, run length]
        if st is None or abs(x - st[0]) > self.tolerance:
            st = self.state[tag] = [x, 0]
        st[0] = x
        st[1] += 1
        stuck = st[1] >= self.min_run
        return st[1] / self.min_run, int(stuck), "same value" if stuck else None
