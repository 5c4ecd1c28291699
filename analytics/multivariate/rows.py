"""Samples (long: one row per tag and time) to the wide rows the multivariate detectors read.

A unit's tags rarely share timestamps exactly (OPC-UA reports each tag when it changes), so
samples are put in `row_s` time slots (mean per tag and slot), and a tag with no sample in a
slot keeps its last value (forward fill, carried across micro-batches by `carry`). Rows that
still miss a variable (before its first value) are left out. Only good-quality samples count.
"""

from __future__ import annotations

import polars as pl

TS = "ts"


def wide_rows(samples: pl.DataFrame, variables: tuple[str, ...], *, row_s: float = 1.0,
              carry: pl.DataFrame | None = None) -> pl.DataFrame:
    """(ts, <variables>) rows sorted by ts, complete (no null). `carry` is a previous call's last
    row (before its own fill: `last_row`), used to fill the first rows. Vectorised."""
    slot_ns = max(round(row_s * 1e9), 1)
    schema = {TS: pl.Datetime("ns", "UTC"), **{v: pl.Float64 for v in variables}}
    long = samples.lazy().filter(
        pl.col("tag_id").is_in(list(variables)) & pl.col("value").is_not_null() & pl.col("value").is_finite()
        & (pl.col("quality").cast(pl.String) == "good")
    ).select(
        ((pl.col("ts").dt.epoch("ns") // slot_ns) * slot_ns).cast(pl.Datetime("ns", "UTC")).alias(TS),
        "tag_id", "value",
    ).group_by(TS, "tag_id").agg(pl.col("value").mean()).collect()
    if long.is_empty():
        return pl.DataFrame(schema=schema)
    wide = long.pivot(on="tag_id", index=TS, values="value")
    wide = wide.with_columns(pl.lit(None, pl.Float64).alias(v) for v in variables if v not in wide.columns)
    wide = wide.select(TS, *[pl.col(v).cast(pl.Float64) for v in variables]).sort(TS)
    if carry is not None and carry.height:
        wide = pl.concat([carry.select(schema.keys()).cast(schema), wide.filter(pl.col(TS) > carry[TS][0])])
        wide = wide.with_columns(pl.col(v).forward_fill() for v in variables)[1:]
    else:
        wide = wide.with_columns(pl.col(v).forward_fill() for v in variables)
    return wide.drop_nulls()


def last_row(rows: pl.DataFrame, previous: pl.DataFrame | None) -> pl.DataFrame | None:
    """The row to carry into the next call of `wide_rows`: the newest complete row."""
    return rows[-1:] if rows.height else previous
