"""Streaming plumbing shared by the per-tag detectors that score only usable samples of the
tags they know: pick those samples out, put each tag's carried tail in front of them, and give
the skipped samples the tag's previous level (with its limit and reason).

The detectors built on it (rate of change, Nelson rules, EWMA, CUSUM, robust z-score) differ
only in the per-tag expressions they run over the usable samples.
"""

from __future__ import annotations

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

LEVEL_STATE_SCHEMA = {"tag_id": pl.String(), "level_was": pl.UInt8(), "limit_was": pl.Float64(), "reason_was": pl.String()}


def upsert(state: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """`state` with the tags of `rows` replaced by `rows` (one row per tag_id)."""
    return pl.concat([state.join(rows, on="tag_id", how="anti"), rows.select(state.columns)])


def split_usable(batch: pl.DataFrame, params: pl.DataFrame, *other_tags: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, fresh): every sample of the batch in (tag_id, ts) order with `_row` and TAG_KEY; and
    the usable samples of the tags in `params` among them. `other_tags` (e.g. the tags of a
    carried tail) are numbered in the same TAG_KEY. Per-tag columns join later with `on_key`."""
    keys = tag_keys(batch.get_column("tag_id"), *other_tags)
    known = params.select("tag_id", pl.lit(True).alias("_known"))
    rows = sorted_by_tag(batch.select("ts", "tag_id", "value", "quality"), known, keys=keys).with_row_index("_row")
    fresh = rows.filter(usable() & pl.col("_known").fill_null(False)).drop("quality", "_known")
    return rows, fresh


def keys_of(rows: pl.DataFrame) -> pl.DataFrame:
    """(tag_id, TAG_KEY) of the tags in `rows` (sorted by TAG_KEY): the first row of each tag."""
    first = (pl.col(TAG_KEY) != pl.col(TAG_KEY).shift(1)).fill_null(True)
    return rows.filter(first).select("tag_id", TAG_KEY)


def on_key(frame: pl.DataFrame, per_tag_frame: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """`frame` (with TAG_KEY) left-joined with the per-tag columns of `per_tag_frame` (by tag_id)
    through the small keys table: an integer join over the batch instead of a string one."""
    small = keys.join(per_tag_frame, on="tag_id", how="inner").drop("tag_id")
    return frame.join(small, on=TAG_KEY, how="left", maintain_order="left")


def with_tail(fresh: pl.DataFrame, tail: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """The carried `tail` rows (tag_id, ts, value, ...; `_row` null) in front of each tag's `fresh`
    rows, sorted by TAG_KEY (stable: the tail stays first), for the tags in `keys` (`keys_of`)."""
    head = tail.join(keys, on="tag_id", how="inner").with_columns(pl.lit(None, pl.UInt32).alias("_row"))
    cols = fresh.columns
    head = head.select([pl.col(c) if c in head.columns else pl.lit(None, fresh.schema[c]).alias(c) for c in cols])
    return pl.concat([head.cast(fresh.schema), fresh]).sort(TAG_KEY, maintain_order=True)


def tail_of(frame: pl.DataFrame, n: int, columns: list[str]) -> pl.DataFrame:
    """The last `n` rows of each tag (frame sorted by TAG_KEY), `columns` only."""
    after = per_tag(pl.int_range(pl.len()).reverse())
    return frame.filter(after < n).select(columns)


def new_tails(old: pl.DataFrame, frame: pl.DataFrame, n: int) -> pl.DataFrame:
    """The carried tails after a batch: the last `n` rows of each tag in `frame` (sorted by
    TAG_KEY, carried tail included), and the `old` tails of the tags the batch did not have."""
    fresh = tail_of(frame, n, old.columns)
    return pl.concat([old.join(fresh.select("tag_id").unique(), on="tag_id", how="anti"), fresh])


class LevelMemory:
    """Per tag, the level, limit and reason at the end of the previous batch: a sample the detector
    skipped (bad quality, null) carries them, across batches too."""

    def __init__(self) -> None:
        self.state = pl.DataFrame(schema=LEVEL_STATE_SCHEMA)

    def merge(self, rows: pl.DataFrame, scored: pl.DataFrame) -> pl.DataFrame:
        """`rows` (from `split_usable`) joined with `scored` (_row, score, level_now, limit_now,
        reason_now) -> SCORE_SCHEMA; remembers each tag's last level."""
        scored_row = pl.col("level_now").is_not_null()
        if scored.height == rows.height:  # every sample scored (the usual case): same order, no join
            frame = rows.hstack(scored.drop("_row"))
        else:
            frame = rows.join(scored, on="_row", how="left", maintain_order="left")
        frame = (
            on_key(frame, self.state, keys_of(rows))
            .with_columns(
                carry_forward(pl.col("level_now"), pl.col("level_was")).fill_null(0).alias("level"),
                carry_forward(pl.when(scored_row).then(pl.col("limit_now").fill_null(float("nan"))), pl.col("limit_was"))
                .fill_nan(None).alias("limit"),
                carry_forward(pl.when(scored_row).then(pl.col("reason_now").fill_null("")), pl.col("reason_was"))
                .replace("", None).alias("reason"),
            )
            .with_columns(pl.when(pl.col("level") > 0).then(pl.col(c)).alias(c) for c in ("limit", "reason"))
        )
        last = frame.filter(last_of_tag()).select(
            "tag_id", pl.col("level").alias("level_was"), pl.col("limit").alias("limit_was"),
            pl.col("reason").alias("reason_was"),
        )
        self.state = upsert(self.state, last)
        return as_scores(frame)
