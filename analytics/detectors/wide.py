"""The wide layout of a micro-batch: one contiguous column per tag (time x tags NumPy arrays).

Batched MQTT and the simulator publish all tags of a unit at the same timestamps. In the long
sample schema every detector then spends most of its time regrouping the batch by tag-id
strings, sorting it and writing a tag-id string per output value; the arithmetic is cheap.
`pivot(batch)` does that regrouping once per batch, into a `WideBatch`: the distinct
timestamps as rows, the tags (sorted by tag_id) as columns. A cell with no sample is "missing":
it behaves like a skipped sample (it changes no state) and gives no output row. A detector's
`score_wide(wide)` returns `WideScores`, the same per-sample score, level, limit and reason as
`score(batch)` in arrays; `WideScores.to_long()` gives the `SCORE_SCHEMA` frame `score(batch)`
would have returned. Both paths read and write the same per-tag streaming state, so a detector
may score one batch wide and the next long.

`pivot` returns None (use the long path) when a tag has two samples at one timestamp or when
the grid would be mostly holes (the tags do not share timestamps).

Tools here are shared by the wide paths of the detectors: the per-tag state frames as arrays
aligned to the columns (`aligned`), forward filling along time (`last_index`), the usable
samples of each column moved to its top (`Compacted`) with the carried tail in front
(`stack_tail`, `tail_frame`), rolling counts by cumulative-sum differences, and the carrying of
levels over skipped samples (`carry_levels`, the wide twin of `stream.LevelMemory.merge`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from analytics.detectors.base import SCORE_SCHEMA
from analytics.detectors.stream import LEVEL_STATE_SCHEMA, upsert
from controltower.samples import TIMESTAMP_DTYPE

NO_TIME = np.iinfo(np.int64).min  # an empty int64 cell (no timestamp)
# A grid with more than this share of missing cells is left to the long path.
MAX_MISSING = 0.5


@dataclass
class WideBatch:
    """A batch as (time x tags) arrays. `values` is NaN where the sample is null, NaN or missing;
    `usable` marks the samples a detector scores (a value, quality not bad); `present` marks the
    cells holding a sample (None: all of them); `null` marks null values (None: none)."""

    ts: np.ndarray  # (T,) int64 ns since the epoch, increasing
    tag_ids: list[str]  # (K,) sorted
    values: np.ndarray  # (T, K) float64
    usable: np.ndarray  # (T, K) bool
    present: np.ndarray | None = None
    null: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the present cells in (tag_id, ts) order: the long path's row order."""
        T, K = self.shape
        if self.present is None:
            return np.tile(np.arange(T), K), np.repeat(np.arange(K), T)
        cols, rows = np.nonzero(self.present.T)
        return rows, cols

    def tag_frame(self) -> pl.DataFrame:
        """(tag_id) of the columns, in column order."""
        return pl.DataFrame({"tag_id": self.tag_ids}, schema={"tag_id": pl.String()})


def pivot(batch: pl.DataFrame, known: list[str] | None = None) -> WideBatch | None:
    """The batch (sample schema) as a `WideBatch`, or None when it is not wide (see the module
    docstring). `known` (sorted tag ids) limits the columns to those tags; others are dropped."""
    if batch.is_empty():
        return None
    tiled = _tiled(batch, known)
    if tiled is not None:
        return tiled
    names = known if known is not None else batch.get_column("tag_id").unique().sort().to_list()
    codes = batch.get_column("tag_id").cast(pl.Enum(names), strict=False).to_physical()
    keep = codes.is_not_null().to_numpy()
    if not keep.all():
        batch, codes = batch.filter(pl.Series(keep)), codes.filter(pl.Series(keep))
        if batch.is_empty():
            return None
    code = codes.to_numpy().astype(np.int64)
    seen = np.bincount(code, minlength=len(names))
    if (seen == 0).any():  # only the tags the batch has become columns
        order = np.flatnonzero(seen)
        remap = np.full(len(names), -1, np.int64)
        remap[order] = np.arange(order.size)
        code, names = remap[code], [names[i] for i in order]
    K = len(names)
    ts = batch.get_column("ts").to_physical().to_numpy()
    if ts.size > 1 and (ts[1:] >= ts[:-1]).all():
        change = np.empty(ts.size, bool)
        change[0] = True
        np.not_equal(ts[1:], ts[:-1], out=change[1:])
        times = ts[change]
        row = np.cumsum(change) - 1
    else:
        times, row = np.unique(ts, return_inverse=True)
    T = times.size
    if T * K * (1 - MAX_MISSING) > ts.size:
        return None
    flat = row * K + code
    filled = np.bincount(flat, minlength=T * K)
    if filled.max() > 1:  # two samples of a tag at one timestamp: keep the long path's tie order
        return None
    value = batch.get_column("value")
    usable_long = value.is_not_null().to_numpy() & ~(batch.get_column("quality") == "bad").fill_null(False).to_numpy()
    raw = value.to_numpy()  # nulls become NaN
    values = np.full(T * K, np.nan)
    values[flat] = raw
    usable = np.zeros(T * K, bool)
    usable[flat] = usable_long & ~np.isnan(raw)
    present = None if filled.size == ts.size else (filled == 1).reshape(T, K)
    null = None
    if value.null_count():
        null = np.zeros(T * K, bool)
        null[flat] = value.is_null().to_numpy()
        null = null.reshape(T, K)
    return WideBatch(times, names, np.asfortranarray(values.reshape(T, K)), np.asfortranarray(usable.reshape(T, K)),
                     None if present is None else np.asfortranarray(present),
                     None if null is None else np.asfortranarray(null))


def _tiled(batch: pl.DataFrame, known: list[str] | None) -> WideBatch | None:
    """The common layout, pivoted without a lookup per sample: every timestamp holds the same
    tags in the same order (what batched MQTT and the simulator publish). None otherwise."""
    ts = batch.get_column("ts").to_physical().to_numpy()
    n = ts.size
    first = np.flatnonzero(ts != ts[0])
    K = int(first[0]) if first.size else n
    if n % K:
        return None
    grid_ts = ts.reshape(-1, K)
    if not (grid_ts == grid_ts[:, :1]).all() or not (grid_ts[1:, 0] > grid_ts[:-1, 0]).all():
        return None
    ids = batch.get_column("tag_id")
    head = ids.head(K)
    if head.n_unique() != K or head.null_count() or (known is not None and not head.is_in(known).all()):
        return None
    if not ids.equals(head.gather(np.tile(np.arange(K, dtype=np.uint32), n // K))):
        return None
    names = head.to_list()
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    value = batch.get_column("value")
    raw = value.to_numpy()
    usable = ~np.isnan(raw) & ~(batch.get_column("quality") == "bad").fill_null(False).to_numpy()
    T = n // K
    pick = (lambda a: np.asfortranarray(a.reshape(T, K))) if (order == np.arange(K)).all() else \
        (lambda a: np.asfortranarray(a.reshape(T, K)[:, order]))
    null = pick(value.is_null().to_numpy()) if value.null_count() else None
    return WideBatch(grid_ts[:, 0].copy(), [names[i] for i in order], pick(raw), pick(usable), None, null)


# A reason builder: (rows, cols) of cells at level > 0 -> their reason texts.
Reasons = Callable[[np.ndarray, np.ndarray], list]
# A limit builder: (rows, cols) of cells at level > 0 -> their limits (float array, NaN for null).
Limits = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class WideScores:
    """One detector's scores of a `WideBatch`: `score` (NaN where null) and `level` (uint8) per
    cell; `limits(rows, cols)` and `reasons(rows, cols)` give the limits and reason texts of cells
    at level > 0, built only when asked (the engine needs them only where a condition changes or
    peaks)."""

    batch: WideBatch
    score: np.ndarray
    level: np.ndarray
    limits: Limits
    reasons: Reasons

    def to_long(self) -> pl.DataFrame:
        """The `SCORE_SCHEMA` frame `score(batch)` returns: one row per present cell, by (tag_id, ts)."""
        rows, cols = self.batch.cells()
        level = self.level[rows, cols]
        value = pl.Series("value", self.batch.values[rows, cols])
        if self.batch.null is not None:
            value = pl.when(pl.Series(self.batch.null[rows, cols])).then(None).otherwise(value)
            value = pl.select(value.alias("value")).to_series()
        reason = pl.Series("reason", [None] * rows.size, pl.String)
        limit = np.full(rows.size, np.nan)
        hit = np.flatnonzero(level > 0)
        if hit.size:
            reason = reason.scatter(hit, pl.Series(self.reasons(rows[hit], cols[hit]), dtype=pl.String))
            limit[hit] = self.limits(rows[hit], cols[hit])
        frame = pl.DataFrame({
            "ts": pl.Series(self.batch.ts[rows]).cast(TIMESTAMP_DTYPE),
            "tag_id": pl.Series(self.batch.tag_ids, dtype=pl.String).gather(cols),
            "value": value,
            "score": pl.Series(self.score[rows, cols]).fill_nan(None),
            "level": pl.Series(level),
            "limit": pl.Series(limit).fill_nan(None),
            "reason": reason,
        })
        return frame.select(pl.col(c).cast(dt) for c, dt in SCORE_SCHEMA.items())


def aligned_columns(frame: pl.DataFrame, tag_ids: list[str], fills: dict[str, object]) -> dict[str, np.ndarray]:
    """`aligned` for several columns (name -> fill) in one join."""
    joined = pl.DataFrame({"tag_id": tag_ids}, schema={"tag_id": pl.String()}).join(
        frame.select("tag_id", *fills), on="tag_id", how="left", maintain_order="left")
    return {c: aligned(joined, tag_ids, c, fill) if fill is not None or joined.schema[c] == pl.String
            or joined.schema[c].is_temporal() else joined.get_column(c).to_numpy() for c, fill in fills.items()}


def aligned(frame: pl.DataFrame, tag_ids: list[str], column: str, fill=None) -> np.ndarray:
    """`frame[column]` (one row per tag_id) for each of `tag_ids`, in that order; `fill` where
    the tag has no row (NaN for floats unless given)."""
    joined = pl.DataFrame({"tag_id": tag_ids}, schema={"tag_id": pl.String()}).join(
        frame.select("tag_id", column), on="tag_id", how="left", maintain_order="left").get_column(column)
    if fill is not None:
        joined = joined.fill_null(fill)
    if joined.dtype == pl.String:
        return np.array(joined.to_list(), dtype=object)
    if joined.dtype.is_temporal():  # int64 ns; NO_TIME where null (a float NaN would round the ns)
        joined = joined.to_physical().fill_null(NO_TIME)
    return joined.to_numpy()


def last_index(mask: np.ndarray) -> np.ndarray:
    """Per cell, the row of the latest True at or above it in its column, -1 when none."""
    rows = np.arange(mask.shape[0], dtype=np.int32).reshape(-1, *([1] * (mask.ndim - 1)))
    return np.maximum.accumulate(np.where(mask, rows, np.int32(-1)), axis=0)


def forward_fill(values: np.ndarray, set_: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """`values` where `set_`, else the column's latest set value above, else the column's `seed`."""
    idx = last_index(set_)
    cols = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    return np.where(idx >= 0, values[np.maximum(idx, 0), cols], seed)


def latch(decided: np.ndarray, value: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """A boolean state down each column: `value` where `decided`, else the latest decided value
    above, else the column's `seed`. (One running maximum over row * 2 + value.)"""
    rows = np.arange(0, 2 * decided.shape[0], 2, dtype=np.int32)[:, None]
    code = np.maximum.accumulate(np.where(decided, rows + value, np.int32(-1)), axis=0)
    return np.where(code >= 0, (code & 1).astype(bool), seed)


def rolling_count(flag: np.ndarray, window: int) -> np.ndarray:
    """How many of the last `window` rows (this one included) have `flag`, per column (int32);
    rows above the first `window - 1` count only the rows that exist."""
    c = np.cumsum(flag, axis=0, dtype=np.int32)
    if window >= c.shape[0]:
        return c
    out = np.empty(c.shape, np.int32, order="F")
    out[:window] = c[:window]
    np.subtract(c[window:], c[:-window], out=out[window:])
    return out


class Compacted:
    """Each column's usable samples moved to its top, in time order, NaN below (`x`), and back.
    When every sample is usable (the usual case) nothing moves."""

    def __init__(self, values: np.ndarray, usable: np.ndarray):
        self.usable = usable
        self.all = bool(usable.all())
        self.n = np.full(values.shape[1], values.shape[0]) if self.all else usable.sum(axis=0)
        if self.all:
            self.rows = None
            self.x = values
        else:
            self.rows = np.cumsum(usable, axis=0) - 1  # the cell's row in its compacted column
            self.x = self.pack(values)

    def pack(self, grid: np.ndarray, fill=np.nan) -> np.ndarray:
        """`grid` (T x K) compacted like the values."""
        if self.all:
            return grid
        out = np.full(grid.shape, fill, dtype=np.result_type(grid.dtype, np.asarray(fill).dtype), order="F")
        t, k = np.nonzero(self.usable)
        out[self.rows[t, k], k] = grid[t, k]
        return out

    def row_of(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The compacted rows of usable grid cells (rows, cols)."""
        return rows if self.all else self.rows[rows, cols]

    def last(self, compact: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Per column, the compacted array's value at its last usable row, else `before`."""
        k = np.arange(compact.shape[1])
        return np.where(self.n > 0, compact[np.maximum(self.n - 1, 0), k], before)

    def unpack(self, compact: np.ndarray, fill=np.nan) -> np.ndarray:
        """A compacted (T x K) result back on the grid; `fill` on the cells not scored."""
        if self.all:
            return compact
        out = np.full(compact.shape, fill, dtype=np.result_type(compact.dtype, np.asarray(fill).dtype), order="F")
        t, k = np.nonzero(self.usable)
        out[t, k] = compact[self.rows[t, k], k]
        return out


def stack_tail(tail: pl.DataFrame, tag_ids: list[str], depth: int, fresh: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per column name of `fresh` (compacted T x K arrays): the carried `tail` rows of that name
    (tag_id + columns, in time order; timestamps as int64 ns) bottom-aligned in `depth` rows
    (empty above: NaN, or NO_TIME for int64) on top of the fresh array. Returns the stacked
    arrays and each tag's tail length."""
    K = len(tag_ids)
    n_tail = np.zeros(K, np.int64)
    heads = {c: np.full((depth, K), NO_TIME if a.dtype == np.int64 else np.nan, dtype=a.dtype) for c, a in fresh.items()}
    if depth and tail.height:
        keyed = tail.join(pl.DataFrame({"tag_id": tag_ids}, schema={"tag_id": pl.String()}).with_row_index("_k"),
                          on="tag_id", how="inner", maintain_order="left")
        keyed = keyed.with_columns(pl.int_range(pl.len()).reverse().over("_k").alias("_back")).filter(
            pl.col("_back") < depth)
        k = keyed.get_column("_k").to_numpy().astype(np.int64)
        r = depth - 1 - keyed.get_column("_back").to_numpy()
        n_tail = np.bincount(k, minlength=K)
        for c, a in fresh.items():
            col = keyed.get_column(c)
            col = col.to_physical() if col.dtype.is_temporal() else col
            heads[c][r, k] = col.cast(pl.Int64 if a.dtype == np.int64 else pl.Float64).to_numpy()
    stacked = {}
    for c, a in fresh.items():  # column-major, like the batch: the columns stay contiguous
        stacked[c] = np.empty((depth + a.shape[0], K), a.dtype, order="F")
        stacked[c][:depth], stacked[c][depth:] = heads[c], a
    return stacked, n_tail


def tail_frame(stacked: dict[str, np.ndarray], schema: dict[str, pl.DataType], tag_ids: list[str], depth: int,
               n_tail: np.ndarray, n_fresh: np.ndarray, keep: int) -> pl.DataFrame:
    """The new carried tails: per tag the last `keep` of its rows in `stacked` (tail rows from
    `depth - n_tail`, then `n_fresh` fresh rows), as a frame with `schema` (tag_id first)."""
    end = depth + n_fresh
    start = np.maximum(depth - n_tail, end - keep)
    counts = end - start
    k = np.repeat(np.arange(len(tag_ids)), counts)
    r = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(start, counts)
    cols = {"tag_id": pl.Series(tag_ids, dtype=pl.String).gather(k)}
    for c, dt in schema.items():
        if c == "tag_id":
            continue
        s = pl.Series(c, stacked[c][r, k])
        cols[c] = (s.cast(pl.Int64).cast(dt) if dt.is_temporal() or dt.is_integer() else s.fill_nan(None).cast(dt))
    return pl.DataFrame(cols).select(schema.keys())


def replace_tails(old: pl.DataFrame, tag_ids: list[str], new: pl.DataFrame) -> pl.DataFrame:
    """The carried tails after a wide batch: `new` for the batch's tags, `old` for the others."""
    others = old.join(pl.DataFrame({"tag_id": tag_ids}, schema={"tag_id": pl.String()}), on="tag_id", how="anti")
    return pl.concat([others, new.select(old.columns)])


@dataclass
class CarriedLevels:
    """Levels over the whole grid after carrying skipped samples (see `carry_levels`)."""

    level: np.ndarray  # (T, K) uint8
    source: np.ndarray  # (T, K) row of the scored cell whose level, limit and reason a cell shows; -1: the carried state
    limit_was: np.ndarray  # (K,) float: the carried limit of each tag
    reason_was: np.ndarray  # (K,) object: the carried reason of each tag

    def limits(self, limits: Limits, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Limits of cells (rows, cols): NaN at level 0, else the limit of the scored cell they
        carry (built by `limits`), or the tag's carried limit."""
        return self._carried(limits, self.limit_was, np.full(rows.size, np.nan), rows, cols)

    def reasons(self, reasons: Reasons, rows: np.ndarray, cols: np.ndarray) -> list:
        """Reason texts of cells (rows, cols), like `limits`."""
        return self._carried(reasons, self.reason_was, np.full(rows.size, None, dtype=object), rows, cols).tolist()

    def _carried(self, build, was: np.ndarray, out: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        on = self.level[rows, cols] > 0
        src = self.source[rows, cols]
        built = on & (src >= 0)
        if built.any():
            out[built] = build(src[built], cols[built])
        old = on & (src < 0)
        out[old] = was[cols[old]]
        return out


def carry_levels(state: pl.DataFrame, wide: WideBatch, scored: np.ndarray, level_now: np.ndarray) -> CarriedLevels:
    """The wide `LevelMemory.merge`: scored cells keep `level_now`; the others take the level
    (and limit and reason) of the tag's previous scored sample, or the tag's `state`
    (`LEVEL_STATE_SCHEMA`) from the previous batch. `level_state` gives the state to keep."""
    ids = wide.tag_ids
    limit_was = aligned(state, ids, "limit_was").astype(float)
    reason_was = aligned(state, ids, "reason_was")
    if scored.all():  # every sample scored (the usual case): nothing to carry
        source = np.broadcast_to(np.arange(scored.shape[0])[:, None], scored.shape)
        return CarriedLevels(level_now.astype(np.uint8), source, limit_was, reason_was)
    level_was = aligned(state, ids, "level_was", 0).astype(np.uint8)
    source = last_index(scored)
    cols = np.broadcast_to(np.arange(len(ids)), scored.shape)
    level = np.where(source >= 0, level_now[np.maximum(source, 0), cols], level_was).astype(np.uint8)
    return CarriedLevels(level, source, limit_was, reason_was)


def level_state(state: pl.DataFrame, wide: WideBatch, carried: CarriedLevels, limits: Limits,
                reasons: Reasons) -> pl.DataFrame:
    """`state` with each tag's level, limit and reason at the end of the batch."""
    T, K = carried.level.shape
    if not T:
        return state
    last, cols = np.full(K, T - 1), np.arange(K)
    new = pl.DataFrame({"tag_id": wide.tag_ids, "level_was": carried.level[-1],
                        "limit_was": carried.limits(limits, last, cols),
                        "reason_was": carried.reasons(reasons, last, cols)},
                       schema=LEVEL_STATE_SCHEMA, nan_to_null=True)
    return upsert(state, new)


def long_reasons(frame: pl.DataFrame, expr: pl.Expr) -> list:
    """`expr` evaluated over `frame` (one row per asked cell) as a list of texts."""
    return frame.select(expr.cast(pl.String)).to_series().to_list() if frame.height else []


def memory_scores(levels, wide: WideBatch, scored: np.ndarray, score: np.ndarray, level_now: np.ndarray,
                  limits: Limits, reasons: Reasons) -> WideScores:
    """`WideScores` of a detector built on `stream.LevelMemory` (`levels`): the cells in `scored`
    have `score`, `level_now`, `limits(rows, cols)` and `reasons(rows, cols)`; the others carry
    the tag's previous level. Updates `levels.state` as `LevelMemory.merge` does."""
    carried = carry_levels(levels.state, wide, scored, level_now)
    levels.state = level_state(levels.state, wide, carried, limits, reasons)
    return WideScores(wide, score if scored.all() else np.where(scored, score, np.nan),
                      carried.level, lambda rows, cols: carried.limits(limits, rows, cols),
                      lambda rows, cols: carried.reasons(reasons, rows, cols))
