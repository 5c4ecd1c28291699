"""Limit detector: the tag's alarm and warning limits, with hysteresis.

Catches: a value outside its configured operating window (the classic DCS high/low alarms).
Each of the four limits is its own condition: it enters when the value crosses the limit
(strictly above a high limit, strictly below a low limit) and leaves only once the value is
back inside by the tag's `deadband`; in between the condition keeps its previous state, across
micro-batch boundaries. Level 2 when an alarm limit is active, else 1 when a warning limit is.

Score: how far the value is outside the nearest (innermost) limit on its side, divided by the
tag's span (alarm_high - alarm_low, else warning_high - warning_low, else the gap between the
warning and alarm limits of the one side configured, else 1.0); 0 inside the limits.

ISA-18.2 delays (per tag, `Limits.on_delay_s` / `on_delay_samples` / `off_delay_s` /
`off_delay_samples`, all 0 by default): the condition above (with deadband) is the *raw* state;
the alarm raises only once the raw condition has held for on_delay_s seconds (from the first
sample in the condition to this one) and on_delay_samples consecutive usable samples (1 and 0
both mean "this sample"), and clears only once the raw condition has been clear for the
off-delays. Chattering shorter than the delays never reaches the operator.

Vectorised: per limit an enter/exit marker (True/False/null) is computed for every sample,
forward-filled within the tag and seeded with the tag's state at the end of the previous batch.
The delays do the same once more over the raw state: each run of equal raw state gets its start
time (forward-filled from its first sample) and its usable-sample count (a cumulative sum minus
its value at the run's start), both carried across batches with the run.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl

from analytics.detectors.base import (
    as_scores,
    carry_forward,
    last_of_tag,
    on_flagged,
    per_tag,
    sorted_by_tag,
    usable,
)
from analytics.detectors.wide import WideBatch, WideScores, aligned, aligned_columns, forward_fill, latch
from controltower.site import TagInfo

# (limit, side, level): side +1 for a high limit, -1 for a low one.
LIMITS: tuple[tuple[str, int, int], ...] = (
    ("alarm_high", +1, 2),
    ("alarm_low", -1, 2),
    ("warning_high", +1, 1),
    ("warning_low", -1, 1),
)
_STATE_SCHEMA = {"tag_id": pl.String(), **{f"{name}_was": pl.Boolean() for name, _, _ in LIMITS},
                 **{f"{name}_{part}": dt for name, _, _ in LIMITS for part, dt in
                    (("delayed_was", pl.Boolean()), ("since_was", pl.Datetime("ns", "UTC")), ("count_was", pl.Int64()))}}
_DELAYS = ("on_delay_s", "off_delay_s", "on_delay_samples", "off_delay_samples")


def limit_span(alarm_low: float | None, warning_low: float | None, warning_high: float | None,
               alarm_high: float | None) -> float:
    """The scale a limit excursion is measured against (see the module docstring)."""
    for hi, lo in ((alarm_high, alarm_low), (warning_high, warning_low), (alarm_high, warning_high),
                   (warning_low, alarm_low)):
        if hi is not None and lo is not None and hi > lo:
            return hi - lo
    return 1.0


def limit_marker(name: str, side: int) -> pl.Expr:
    """True where the sample enters the condition of limit `name`, False where it is back inside
    by the deadband, null where it keeps the previous state (inside the deadband, or skipped)."""
    limit, value, deadband = pl.col(name), pl.col("value"), pl.col("deadband")
    entered = value > limit if side > 0 else value < limit
    left = value <= limit - deadband if side > 0 else value >= limit + deadband
    return (
        pl.when(~usable()).then(None)
        .when(limit.is_null()).then(False)
        .when(entered).then(True)
        .when(left).then(False)
        .otherwise(None)
    )


def limit_level() -> pl.Expr:
    """2 while an alarm limit is active, 1 while only a warning limit is, else 0."""
    return (
        pl.when(pl.col("alarm_high_active") | pl.col("alarm_low_active")).then(2)
        .when(pl.col("warning_high_active") | pl.col("warning_low_active")).then(1)
        .otherwise(0)
        .cast(pl.UInt8)
    )


def active_limit() -> tuple[pl.Expr, pl.Expr]:
    """The limit value and reason of the most severe active condition (null when none).
    Reasons are prepared per tag (`<limit>_reason` columns of `LimitDetector.params()`)."""
    limit, reason = pl.when(False).then(None), pl.when(False).then(None)
    for name, _, _ in LIMITS:
        active = pl.col(f"{name}_active")
        limit = limit.when(active).then(pl.col(name))
        reason = reason.when(active).then(pl.col(f"{name}_reason"))
    return limit.otherwise(None).cast(pl.Float64), reason.otherwise(None).cast(pl.String)


def limit_reason(name: str, side: int, value: float | None) -> str | None:
    """Reason text of an active limit, e.g. "above alarm high 39.0" (None without that limit)."""
    if value is None:
        return None
    return ("above " if side > 0 else "below ") + name.replace("_", " ") + f" {value!r}"


def limit_score() -> pl.Expr:
    """Distance outside the innermost limit on the value's side, over the tag's span."""
    value = pl.col("value")
    upper = pl.coalesce(pl.col("warning_high"), pl.col("alarm_high"))
    lower = pl.coalesce(pl.col("warning_low"), pl.col("alarm_low"))
    excess = pl.max_horizontal(value - upper, lower - value, pl.lit(0.0))
    return pl.when(usable()).then(excess / pl.col("span")).otherwise(None)


def delayed_state(name: str) -> list[pl.Expr]:
    """Columns `<name>_since` (start of the current run of equal raw state), `<name>_count` (its
    usable samples) and `<name>_active` (the delayed state), from `<name>_raw` and the carried
    `<name>_was`, `_since_was`, `_count_was`, `_delayed_was` (frame sorted by tag, then ts)."""
    raw, ok = pl.col(f"{name}_raw"), usable().cast(pl.Int64)
    starts = (raw != pl.coalesce(per_tag(raw.shift(1)), pl.col(f"{name}_was"))).fill_null(True)
    since = carry_forward(pl.when(starts).then(pl.col("ts")), pl.col(f"{name}_since_was"))
    done = per_tag(ok.cum_sum())
    count = done - carry_forward(pl.when(starts).then(done - ok), -pl.col(f"{name}_count_was").fill_null(0))
    held = (pl.col("ts") - since).dt.total_nanoseconds() / 1e9
    marker = (
        pl.when(~usable()).then(None)
        .when(raw & (held >= pl.col("on_delay_s")) & (count >= pl.col("on_delay_samples"))).then(True)
        .when(~raw & (held >= pl.col("off_delay_s")) & (count >= pl.col("off_delay_samples"))).then(False)
        .otherwise(None)
    )
    return [since.alias(f"{name}_since"), count.alias(f"{name}_count"),
            carry_forward(marker, pl.col(f"{name}_delayed_was")).fill_null(False).alias(f"{name}_active")]


class LimitDetector:
    """Per-sample warning/alarm levels from each tag's `Limits`, with deadband hysteresis.

    Tags not in `tags` score null at level 0. See `analytics.detectors.base` for the output.
    """

    name = "limits"

    def __init__(self, tags: list[TagInfo]):
        self.tags = tags
        self._params: pl.DataFrame | None = None
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)

    def fit(self, history: pl.DataFrame) -> Self:
        """Nothing to learn: limits come from the site config. Returns self."""
        return self

    def reset(self) -> None:
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)

    def params(self) -> pl.DataFrame:
        """One row per tag: tag_id, its four limits, deadband, span and the four reason texts."""
        if self._params is None:
            rows = []
            for info in self.tags:
                lim = info.tag.limits
                rows.append({
                    "tag_id": info.tag_id,
                    "alarm_low": lim.alarm_low, "warning_low": lim.warning_low,
                    "warning_high": lim.warning_high, "alarm_high": lim.alarm_high,
                    "deadband": float(lim.deadband),
                    **{k: float(getattr(lim, k)) for k in _DELAYS},
                    "span": limit_span(lim.alarm_low, lim.warning_low, lim.warning_high, lim.alarm_high),
                    **{f"{name}_reason": limit_reason(name, side, getattr(lim, name)) for name, side, _ in LIMITS},
                })
            schema = {"tag_id": pl.String(), **{k: pl.Float64() for k in
                      ("alarm_low", "warning_low", "warning_high", "alarm_high", "deadband", "span", *_DELAYS)},
                      **{f"{name}_reason": pl.String() for name, _, _ in LIMITS}}
            self._params = pl.DataFrame(rows, schema=schema)
        return self._params

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        params = self.params()
        reasons = [f"{name}_reason" for name, _, _ in LIMITS]
        frame = (
            sorted_by_tag(batch.select("ts", "tag_id", "value", "quality"), params.drop(reasons), self._state)
            .with_columns(
                carry_forward(limit_marker(name, side), pl.col(f"{name}_was")).fill_null(False).alias(f"{name}_raw")
                for name, side, _ in LIMITS
            )
        )
        if self._has_delays():
            frame = frame.with_columns(e for name, _, _ in LIMITS for e in delayed_state(name))
        else:
            frame = frame.with_columns(pl.col(f"{name}_raw").alias(f"{name}_active") for name, _, _ in LIMITS)
        limit, reason = active_limit()
        frame = frame.with_columns(limit_level().alias("level"), limit_score().alias("score"), limit.alias("limit"))
        by_tag = params.select("tag_id", *reasons)
        frame = on_flagged(frame, pl.col("level") > 0, "reason",
                           lambda rows: rows.join(by_tag, on="tag_id", how="left", maintain_order="left").select(reason)
                           .to_series())
        self._remember(frame)
        return as_scores(frame)

    def _remember(self, frame: pl.DataFrame) -> None:
        """Keep each tag's condition states at the end of this batch, for the next one."""
        delays = self._has_delays()
        last = frame.filter(last_of_tag()).select(
            "tag_id", *(pl.col(f"{name}_raw").alias(f"{name}_was") for name, _, _ in LIMITS),
            *(e for name, _, _ in LIMITS for e in (
                pl.col(f"{name}_active").alias(f"{name}_delayed_was"),
                (pl.col(f"{name}_since") if delays else pl.lit(None)).alias(f"{name}_since_was"),
                (pl.col(f"{name}_count") if delays else pl.lit(None)).alias(f"{name}_count_was"))),
        ).cast(_STATE_SCHEMA)
        self._state = pl.concat([self._state.join(last, on="tag_id", how="anti"), last])

    def _has_delays(self) -> bool:
        """True when some tag sets an on- or off-delay (else the raw state is the alarm state)."""
        return any(getattr(t.tag.limits, k) for t in self.tags for k in _DELAYS)

    def score_wide(self, wide: WideBatch) -> WideScores:
        """`score` on a wide batch (`wide.pivot`): per limit the enter/exit markers are latched
        down each tag's column (`latch`), and the delays' run starts forward-filled."""
        ids = wide.tag_ids
        p = self._wide_params(ids)
        x, ok = wide.values, wide.usable
        delays = self._has_delays()
        carried = np.isin(np.array(ids, dtype=object), self._state.get_column("tag_id").to_list())
        was = aligned_columns(self._state, ids, {f"{name}_was": False for name, _, _ in LIMITS})
        active, ends = {}, {"tag_id": ids}
        for name, side, _ in LIMITS:
            limit = p[name]
            entered = x > limit if side > 0 else x < limit
            left = x <= limit - p["deadband"] if side > 0 else x >= limit + p["deadband"]
            # A tag without this limit never has it active (NaN compares False: never entered).
            decided = ok & (entered | left | np.isnan(limit))
            raw = latch(decided, entered, was[f"{name}_was"].astype(bool))
            ends[f"{name}_was"] = raw[-1]
            if delays:
                raw, since, count = self._delayed(name, raw, was[f"{name}_was"].astype(bool), carried, wide, p)
                ends[f"{name}_since_was"], ends[f"{name}_count_was"] = since[-1], count[-1]
            else:
                ends[f"{name}_since_was"] = ends[f"{name}_count_was"] = pl.Series([None] * len(ids), dtype=pl.Int64)
            active[name] = raw
            ends[f"{name}_delayed_was"] = raw[-1]
        self._state = pl.concat([self._state.join(wide.tag_frame(), on="tag_id", how="anti"),
                                 pl.DataFrame(ends).select(_STATE_SCHEMA.keys()).cast(_STATE_SCHEMA)])
        alarm = active["alarm_high"] | active["alarm_low"]
        level = np.where(alarm, np.uint8(2), (active["warning_high"] | active["warning_low"]).view(np.uint8))
        excess = np.fmax(np.fmax(x - p["upper"], p["lower"] - x), 0.0) / p["span"]
        score = excess if ok.all() else np.where(ok, excess, np.nan)

        def which(rows: np.ndarray, c: np.ndarray) -> np.ndarray:
            """The most severe active limit of each cell (index in LIMITS), -1 when none."""
            w = np.full(rows.size, -1)
            for i in reversed(range(len(LIMITS))):
                w[active[LIMITS[i][0]][rows, c]] = i
            return w

        def limits(rows: np.ndarray, c: np.ndarray) -> np.ndarray:
            w = which(rows, c)
            return np.where(w >= 0, p["values"][np.maximum(w, 0), c], np.nan)

        def reasons(rows: np.ndarray, c: np.ndarray) -> list:
            w = which(rows, c)
            return np.where(w >= 0, p["texts"][np.maximum(w, 0), c], None).tolist()

        return WideScores(wide, score, level, limits, reasons)

    def _wide_params(self, ids: list[str]) -> dict[str, np.ndarray]:
        """The per-tag parameters aligned to the columns of a wide batch (kept for the next
        batch of the same tags)."""
        key = tuple(ids)
        if getattr(self, "_aligned", (None,))[0] != key:
            names = [name for name, _, _ in LIMITS]
            p = aligned_columns(self.params(), ids, {c: None for c in (*names, "deadband", "span", *_DELAYS,
                                                                         *(f"{n}_reason" for n in names))})
            p = {c: a.astype(float) if not c.endswith("_reason") else a for c, a in p.items()}
            p["upper"] = np.where(np.isnan(p["warning_high"]), p["alarm_high"], p["warning_high"])
            p["lower"] = np.where(np.isnan(p["warning_low"]), p["alarm_low"], p["warning_low"])
            p["values"] = np.vstack([p[n] for n in names])  # (4, K)
            p["texts"] = np.vstack([p[f"{n}_reason"] for n in names])
            self._aligned = (key, p)
        return self._aligned[1]

    def _delayed(self, name: str, raw: np.ndarray, was: np.ndarray, carried: np.ndarray, wide: WideBatch,
                 p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`delayed_state` on arrays: (active, run start ts, run samples) per cell."""
        ids, ok = wide.tag_ids, wide.usable
        starts = np.empty(raw.shape, bool, order="F")
        starts[0] = ~carried | (raw[0] != was)
        np.not_equal(raw[1:], raw[:-1], out=starts[1:])
        ts = np.broadcast_to(wide.ts[:, None], raw.shape)
        since = forward_fill(ts, starts, aligned(self._state, ids, f"{name}_since_was"))
        step = ok.astype(np.int64)
        done = np.cumsum(step, axis=0)
        count = done - forward_fill(done - step, starts, -aligned(self._state, ids, f"{name}_count_was", 0))
        held = (ts - since).astype(float) / 1e9
        go = raw & (held >= p["on_delay_s"]) & (count >= p["on_delay_samples"])
        stop = ~raw & (held >= p["off_delay_s"]) & (count >= p["off_delay_samples"])
        seed = aligned(self._state, ids, f"{name}_delayed_was", False).astype(bool)
        return latch(ok & (go | stop), go, seed), since, count
