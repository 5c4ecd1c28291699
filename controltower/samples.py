"""Samples, as they move through the product: one Polars DataFrame per batch, never one Python
object per sample. Decoders build batches with `samples_frame`; historians store and return this
schema; detectors read it.

Columns:
    ts         source timestamp, UTC, ns (when the value was measured)
    server_ts  server or receive timestamp, UTC, ns (when the source/collector saw it), nullable
    tag_id     full tag id `site.area.line.unit.tag`
    value      float64 (booleans and integers are converted)
    quality    good / uncertain / bad
    batch_id   the unit's batch (ISA-88) when known, else null
    site, area, line, unit   the ISA-95 path, to group by line and unit without a join
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum

import polars as pl
import pyarrow as pa

from controltower.site import TagInfo


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


QUALITY_DTYPE = pl.Enum([q.value for q in Quality])
TIMESTAMP_DTYPE = pl.Datetime("ns", "UTC")

SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "ts": TIMESTAMP_DTYPE,
    "server_ts": TIMESTAMP_DTYPE,
    "tag_id": pl.String(),
    "value": pl.Float64(),
    "quality": QUALITY_DTYPE,
    "batch_id": pl.String(),
    "site": pl.String(),
    "area": pl.String(),
    "line": pl.String(),
    "unit": pl.String(),
}
PATH_COLUMNS = ("site", "area", "line", "unit")


def empty_samples() -> pl.DataFrame:
    return pl.DataFrame(schema=SAMPLE_SCHEMA)


def quality_expr(status_code: pl.Expr) -> pl.Expr:
    """OPC-UA StatusCode (uint32) to quality: the top two bits are the severity
    (00 good, 01 uncertain, 10/11 bad), per OPC UA Part 4, 7.39."""
    severity = status_code.cast(pl.UInt32) // (1 << 30)
    return (
        pl.when(severity == 0)
        .then(pl.lit("good"))
        .when(severity == 1)
        .then(pl.lit("uncertain"))
        .otherwise(pl.lit("bad"))
        .cast(QUALITY_DTYPE)
    )


def tag_paths_frame(tags: Iterable[TagInfo]) -> pl.DataFrame:
    """tag_id and its ISA-95 path columns, one row per tag: what `samples_frame` joins on."""
    tags = list(tags)
    return pl.DataFrame(
        {"tag_id": [t.tag_id for t in tags], **{c: [getattr(t, c) for t in tags] for c in PATH_COLUMNS}},
        schema={"tag_id": pl.String, **{c: pl.String for c in PATH_COLUMNS}},
    )


def samples_frame(
    *,
    ts: Sequence[datetime | int] | pl.Series,
    tag_id: Sequence[str] | pl.Series,
    value: Sequence[float | None] | pl.Series,
    quality: Sequence[str] | pl.Series | None = None,
    server_ts: Sequence[datetime | int | None] | pl.Series | None = None,
    batch_id: Sequence[str | None] | pl.Series | None = None,
    tag_paths: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Build a sample batch from columns. `ts` and `server_ts` are datetimes (naive ones are
    taken as UTC) or integer ns since the epoch. `tag_paths` (tag_id, site, area, line, unit)
    fills the ISA-95 path columns by a join; tags missing from it get nulls there.
    """
    n = len(tag_id)
    cols: dict[str, pl.Series] = {
        "ts": timestamp_series("ts", ts),
        "server_ts": timestamp_series("server_ts", server_ts) if server_ts is not None else pl.Series("server_ts", [None] * n, TIMESTAMP_DTYPE),
        "tag_id": pl.Series("tag_id", tag_id, pl.String()),
        "value": pl.Series("value", value, pl.Float64(), strict=False),
        "quality": pl.Series("quality", quality if quality is not None else ["good"] * n, pl.String()).cast(QUALITY_DTYPE),
        "batch_id": pl.Series("batch_id", batch_id if batch_id is not None else [None] * n, pl.String()),
    }
    frame = pl.DataFrame(cols)
    if tag_paths is not None:
        frame = frame.join(tag_paths.select("tag_id", *PATH_COLUMNS), on="tag_id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, pl.String()).alias(c) for c in PATH_COLUMNS)
    return frame.select([pl.col(c).cast(dt) for c, dt in SAMPLE_SCHEMA.items()])


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Cast a frame read back from storage to the sample schema (missing columns become null)."""
    out = []
    for name, dtype in SAMPLE_SCHEMA.items():
        if name in frame.columns:
            col = pl.col(name)
            if name in ("ts", "server_ts") and frame.schema[name] != dtype:
                src = frame.schema[name]
                if isinstance(src, pl.Datetime):
                    col = col.dt.replace_time_zone("UTC") if src.time_zone is None else col.dt.convert_time_zone("UTC")
                    col = col.dt.cast_time_unit("ns")
                else:
                    col = col.cast(pl.Int64).cast(TIMESTAMP_DTYPE)
            out.append(col.cast(dtype).alias(name))
        else:
            out.append(pl.lit(None, dtype).alias(name))
    return frame.select(out)


def timestamp_series(name: str, values: Sequence[datetime | int | None] | pl.Series) -> pl.Series:
    """Datetimes (naive = UTC) or integer ns since the epoch as a Datetime(ns, UTC) series."""
    if not isinstance(values, pl.Series):
        first = next((v for v in values if v is not None), None)
        if isinstance(first, datetime):
            # Through Arrow with the type given: several times faster than letting Polars infer
            # from timezone-aware datetimes; naive ones are taken as UTC.
            return pl.Series(name, pa.array(values, type=pa.timestamp("us", tz="UTC"))).cast(TIMESTAMP_DTYPE)
        values = pl.Series(name, values, dtype=pl.Int64 if first is not None else pl.Null, strict=False)
    series = values.alias(name)
    if series.dtype == pl.Null:
        return series.cast(TIMESTAMP_DTYPE)
    if series.dtype.is_integer():
        return series.cast(pl.Int64).cast(TIMESTAMP_DTYPE)
    if isinstance(series.dtype, pl.Datetime):
        if series.dtype.time_zone is None:
            series = series.dt.replace_time_zone("UTC")
        return series.dt.convert_time_zone("UTC").dt.cast_time_unit("ns")
    raise TypeError(f"{name}: expected datetimes or integer nanoseconds, got {series.dtype}")
