"""The detector contract, shared by the live engine, the offline path and the benchmarks.

A detector follows scikit-learn's shape: `__init__` only stores parameters, `fit(history)`
returns `self` (learned state, if any, ends with `_`), `score(batch)` never learns. Streaming
state that must survive micro-batch boundaries (hysteresis memory, a rolling window's tail) is
kept per tag by the detector in private attributes; it is not learning and `reset()` clears it.

`score(batch)` takes a batch in the sample schema (`controltower.samples.SAMPLE_SCHEMA`), any
number of tags interleaved, in any order, and returns one row per input sample, sorted by
(tag_id, ts), with `SCORE_SCHEMA`:

    ts      Datetime(ns, UTC)  the sample's source timestamp
    tag_id  String
    value   Float64            the sample's value
    score   Float64            higher = more anomalous; null when the sample was not scored
                               (bad quality, null value, unknown tag, warm-up)
    level   UInt8              0 normal, 1 warning, 2 alarm
    limit   Float64            the limit or bound involved (engineering unit), null at level 0
    reason  String             e.g. "above alarm high 39.0", null at level 0

Samples with bad quality or a null value are skipped by scoring: they neither raise nor clear a
condition, their `level` carries the tag's previous level (across batches too) and their
`score` is null.

A detector may also offer `score_wide(wide)`: the same scores of a batch pivoted into one column
per tag (`analytics.detectors.wide`), sharing the streaming state with `score`; the live engine
uses it when a batch's tags share timestamps.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import polars as pl

from controltower.samples import TIMESTAMP_DTYPE

SCORE_SCHEMA: dict[str, pl.DataType] = {
    "ts": TIMESTAMP_DTYPE,
    "tag_id": pl.String(),
    "value": pl.Float64(),
    "score": pl.Float64(),
    "level": pl.UInt8(),
    "limit": pl.Float64(),
    "reason": pl.String(),
}

LEVEL_NORMAL, LEVEL_WARNING, LEVEL_ALARM = 0, 1, 2


@runtime_checkable
class Detector(Protocol):
    name: str

    def fit(self, history: pl.DataFrame) -> Self:
        """Learn from a history in the sample schema; return self."""
        ...

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch in the sample schema: one row per sample, `SCORE_SCHEMA`."""
        ...

    def reset(self) -> None:
        """Forget the streaming state carried between micro-batches."""
        ...


def usable() -> pl.Expr:
    """True for samples a detector scores: a value, and a quality that is not bad."""
    bad = (pl.col("quality") == "bad").fill_null(False)
    return (pl.col("value").is_not_null() & pl.col("value").is_not_nan()).fill_null(False) & ~bad


# Integer key of a tag inside one batch (its rank by tag_id): grouping (`over`) and sorting on
# it is an order of magnitude cheaper than on the tag_id strings.
TAG_KEY = "_tag"


def tag_keys(*tag_ids: pl.Series) -> pl.DataFrame:
    """(tag_id, _tag) for the distinct tag ids given, numbered in tag_id order."""
    ids = pl.concat([s.alias("tag_id") for s in tag_ids]) if tag_ids else pl.Series("tag_id", [], pl.String)
    return ids.unique().sort().to_frame().with_row_index(TAG_KEY)


def sorted_by_tag(batch: pl.DataFrame, *lookups: pl.DataFrame, keys: pl.DataFrame | None = None) -> pl.DataFrame:
    """The batch with its tag key and the columns of each per-tag `lookups` frame (left-joined
    on tag_id), in (tag_id, ts) order; ties keep their arrival order. `keys` (from
    `tag_keys`) must cover the batch's tags; by default it is built from them."""
    if keys is None:
        keys = tag_keys(batch.get_column("tag_id"))
    # The lookups join the small per-tag table first: one string-keyed join over the batch.
    table = keys
    for lookup in lookups:
        table = table.join(lookup, on="tag_id", how="left")
    frame = batch.join(table, on="tag_id", how="left", maintain_order="left")
    # Stable sorts keep arrival order among ties; a batch already in time order (the usual
    # case) only needs its tags grouped, a much cheaper one-key sort.
    if frame.get_column("ts").is_sorted():
        return frame.sort(TAG_KEY, maintain_order=True)
    return frame.sort(TAG_KEY, "ts", maintain_order=True)


def per_tag(expr: pl.Expr) -> pl.Expr:
    """`expr` evaluated within each tag (the frame carries TAG_KEY)."""
    return expr.over(TAG_KEY)


def last_of_tag() -> pl.Expr:
    """True on the last row of each tag, in a frame sorted by tag."""
    return (pl.col(TAG_KEY) != pl.col(TAG_KEY).shift(-1)).fill_null(True)


def carry_forward(expr: pl.Expr, seed: pl.Expr) -> pl.Expr:
    """Forward-fill `expr` within each tag, then fill the leading gap with `seed` (the tag's
    state at the end of the previous batch). The frame must be sorted by tag, then ts."""
    return pl.coalesce(per_tag(expr.forward_fill()), seed)


def as_scores(frame: pl.DataFrame) -> pl.DataFrame:
    """Select and cast the documented output columns."""
    return frame.select(pl.col(c).cast(dt) for c, dt in SCORE_SCHEMA.items())


def on_flagged(frame: pl.DataFrame, flagged: pl.Expr, column: str, build) -> pl.DataFrame:
    """`frame` with `column` (String) set to `build(rows)` on the rows where `flagged`, null elsewhere.
    Reason texts are needed only on the few flagged rows: building them there, and scattering
    them back, spares formatting (and joining) a string per sample."""
    hits = frame.select(pl.arg_where(flagged)).to_series()
    texts = pl.Series(column, [None] * frame.height, pl.String)
    if hits.len():
        texts = texts.scatter(hits, build(frame[hits]).cast(pl.String))
    return frame.with_columns(texts)
