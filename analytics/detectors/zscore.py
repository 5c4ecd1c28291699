"""Rolling z-score: a sample far from the recent behaviour of its own tag.

Catches: spikes and steps that stay inside the configured limits (a sensor glitch, a sudden
change of regime), relative to the tag's last `window` samples.

    z = |x - mean(prev)| / max(std(prev), min_std_fraction * span, 1e-9)

where `prev` is the tag's previous `window` usable samples (never the current one) and `span`
the tag's alarm span (alarm_high - alarm_low), else its warning span, else none (floor 1e-9).
No score until `warmup` previous samples exist. Level 1 (warning) when z > threshold; `limit`
is the value bound crossed (mean + threshold * sigma on the sample's side), `reason`
"z=9.3 over 120 samples".

Streaming: the last `window` usable samples of each tag are kept between micro-batches and put
in front of the next batch, so a window spans batch boundaries. Vectorised with rolling
expressions over tag groups.
"""

from __future__ import annotations

from typing import Self

import polars as pl

from analytics.detectors.base import (
    TAG_KEY,
    as_scores,
    carry_forward,
    last_of_tag,
    per_tag,
    sorted_by_tag,
    tag_keys,
    usable,
)
from controltower.site import TagInfo

_WINDOW_SCHEMA = {"tag_id": pl.String(), "ts": pl.Datetime("ns", "UTC"), "value": pl.Float64(), "floor": pl.Float64()}
_LEVEL_SCHEMA = {"tag_id": pl.String(), "level_was": pl.UInt8()}


def previous_mean(window: int, min_samples: int) -> pl.Expr:
    """Mean of the tag's previous `window` values (the current one excluded)."""
    return per_tag(pl.col("value").shift(1).rolling_mean(window, min_samples=min_samples))


def previous_std(window: int, min_samples: int) -> pl.Expr:
    """Sample standard deviation of the tag's previous `window` values."""
    return per_tag(pl.col("value").shift(1).rolling_std(window, min_samples=min_samples))


def samples_after() -> pl.Expr:
    """How many samples of the same tag follow this one (0 for the tag's last sample)."""
    return per_tag(pl.int_range(pl.len()).reverse())


def sigma(floor: pl.Expr) -> pl.Expr:
    """The spread a deviation is measured in: max(std, floor, 1e-9), null before warm-up."""
    return pl.when(pl.col("mean").is_not_null()).then(
        pl.max_horizontal(pl.col("std").fill_null(0.0), floor, pl.lit(1e-9))
    )


def zscore() -> pl.Expr:
    """|x - mean| / sigma, from the `mean` and `sigma` columns."""
    return (pl.col("value") - pl.col("mean")).abs() / pl.col("sigma")


def crossed_bound(threshold: float) -> pl.Expr:
    """mean +/- threshold * sigma, on the side of the sample."""
    side = pl.when(pl.col("value") >= pl.col("mean")).then(1.0).otherwise(-1.0)
    return pl.col("mean") + side * threshold * pl.col("sigma")


def std_floors(tags: list[TagInfo], fraction: float) -> pl.DataFrame:
    """tag_id and the spread floor: `fraction` of the alarm span, else the warning span, else 0."""
    rows = []
    for info in tags:
        lim, span = info.tag.limits, None
        for hi, lo in ((lim.alarm_high, lim.alarm_low), (lim.warning_high, lim.warning_low)):
            if hi is not None and lo is not None:
                span = hi - lo
                break
        rows.append((info.tag_id, fraction * span if span is not None else 0.0))
    return pl.DataFrame(rows, schema={"tag_id": pl.String(), "floor": pl.Float64()}, orient="row")


class WindowedScore:
    """What the rolling z-scores (mean/std here, median/MAD in `robust_zscore`) share: their
    parameters, the per-tag spread floors and the parameter check. Nothing to learn: the window
    is streaming state, not a model."""

    def __init__(self, tags: list[TagInfo], window: int = 120, threshold: float = 8.0,
                 min_std_fraction: float = 0.01, warmup: int = 30):
        self.tags = tags
        self.window = window
        self.threshold = threshold
        self.min_std_fraction = min_std_fraction
        self.warmup = warmup
        self._floors: pl.DataFrame | None = None

    def fit(self, history: pl.DataFrame) -> Self:
        """Nothing to learn. Returns self."""
        return self

    def floors(self) -> pl.DataFrame:
        """One row per tag: tag_id and its spread floor (min_std_fraction * span, or 0)."""
        if self._floors is None:
            self._floors = std_floors(self.tags, self.min_std_fraction)
        return self._floors

    def _check(self) -> None:
        if self.window < 2 or not 1 <= self.warmup <= self.window:
            raise ValueError(f"need window >= 2 and 1 <= warmup <= window, got window={self.window}, warmup={self.warmup}")


def zscore_reason() -> pl.Expr:
    """Reason text, e.g. "z=9.3 over 120 samples"."""
    return pl.format("z={} over {} samples", pl.col("score").round(1), pl.col("n_prev"))


class RollingZScore(WindowedScore):
    """Per-sample z-score against the tag's previous `window` samples; level 1 above `threshold`.

    Tags not in `tags` score null at level 0 (and no window is kept for them). See
    `analytics.detectors.base` for the output.
    """

    name = "zscore"

    def __init__(self, tags: list[TagInfo], window: int = 120, threshold: float = 8.0,
                 min_std_fraction: float = 0.01, warmup: int = 30):
        super().__init__(tags, window, threshold, min_std_fraction, warmup)
        self.reset()

    def reset(self) -> None:
        self._window = pl.DataFrame(schema=_WINDOW_SCHEMA)
        self._levels = pl.DataFrame(schema=_LEVEL_SCHEMA)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        self._check()
        keys = tag_keys(batch.get_column("tag_id"), self._window.get_column("tag_id"))
        rows = sorted_by_tag(
            batch.select("ts", "tag_id", "value", "quality"), self.floors(), self._levels, keys=keys
        ).with_row_index("_row")
        # Only known tags' usable samples enter the windows.
        fresh = rows.filter(usable() & pl.col("floor").is_not_null()).select("_row", *_WINDOW_SCHEMA, TAG_KEY)
        tail = self._window.join(keys, on="tag_id", how="left").select(
            pl.lit(None, fresh.schema["_row"]).alias("_row"), *_WINDOW_SCHEMA, TAG_KEY
        )
        # The kept window goes in front of this batch's samples of the same tag (even if older ones arrive late).
        stats = (
            pl.concat([tail, fresh])
            .sort(TAG_KEY, maintain_order=True)
            .with_columns(
                previous_mean(self.window, self.warmup).alias("mean"),
                previous_std(self.window, self.warmup).alias("std"),
                pl.min_horizontal(per_tag(pl.int_range(pl.len())), pl.lit(self.window)).alias("n_prev"),
            )
            .with_columns(sigma(pl.col("floor")).alias("sigma"))
            .with_columns(zscore().alias("score"))
        )
        self._window = stats.filter(samples_after() < self.window).select(_WINDOW_SCHEMA.keys())

        over = (pl.col("score") > self.threshold).fill_null(False)
        scored = stats.filter(pl.col("_row").is_not_null()).select(
            "_row",
            "score",
            over.cast(pl.UInt8).alias("level_now"),  # 0 during warm-up
            pl.when(over).then(crossed_bound(self.threshold)).alias("limit"),
            pl.when(over).then(zscore_reason()).alias("reason"),
        )
        frame = (
            rows.join(scored, on="_row", how="left", maintain_order="left")
            # Skipped samples (no row in `scored`) carry the tag's previous level.
            .with_columns(carry_forward(pl.col("level_now"), pl.col("level_was")).fill_null(0).alias("level"))
        )
        last = frame.filter(last_of_tag()).select("tag_id", pl.col("level").alias("level_was"))
        self._levels = pl.concat([self._levels.join(last, on="tag_id", how="anti"), last])
        return as_scores(frame)
