"""Batch events and phase spans: when each unit's ISA-88 batch started, changed phase and ended.

Samples carry their `batch_id` but not the phase; the phase lives in a small stream of its own,
one row per transition (a few an hour per unit), which the collector takes from the servers
(OPC-UA batch id / phase variables, MQTT `.../<unit>/_batch` messages), stores in the
historian beside the samples (DuckDB table / InfluxDB measurement `batch_events`) and reads
back as phase spans.

Batch-event columns (`BATCH_EVENT_SCHEMA`):
    ts          when the transition happened (source time), UTC, ns
    site, area, line, unit   the unit's ISA-95 path
    batch_id    the batch (for batch_end: the batch that ended)
    phase       the phase entered (for batch_end: the last phase of the ended batch)
    transition  batch_start | phase_change | batch_end | observed
    product, recipe   what the batch makes and how (ISA-88), when the server says so

`observed` is the collector's own: the first (batch, phase) it saw of a unit whose server
announces state rather than transitions (OPC-UA variables). The phase had begun before; its
span starts when the collector first saw it.

Phase spans (`PHASE_SPAN_SCHEMA`: unit_id, batch_id, phase, start, end): every event but
batch_end opens a span of its phase; the next event of the same unit ends it (end null: the
phase is still running). `with_phases` puts the phase beside each sample (an as-of join by
unit and time), which is how the golden-batch model aligns batches by phase.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from controltower.samples import PATH_COLUMNS, TIMESTAMP_DTYPE, timestamp_series

# Their order at one instant: a batch ends before the next starts; a phase change after its batch's
# start (an OPC-UA server may update the batch id and the phase in separate notifications).
TRANSITIONS = ("batch_end", "observed", "batch_start", "phase_change")
BATCH_EVENT_SCHEMA: dict[str, pl.DataType] = {
    "ts": TIMESTAMP_DTYPE,
    "site": pl.String(),
    "area": pl.String(),
    "line": pl.String(),
    "unit": pl.String(),
    "batch_id": pl.String(),
    "phase": pl.String(),
    "transition": pl.String(),
    "product": pl.String(),
    "recipe": pl.String(),
}
PHASE_SPAN_SCHEMA: dict[str, pl.DataType] = {
    "unit_id": pl.String(),
    "batch_id": pl.String(),
    "phase": pl.String(),
    "start": TIMESTAMP_DTYPE,
    "end": TIMESTAMP_DTYPE,
}


def empty_batch_events() -> pl.DataFrame:
    return pl.DataFrame(schema=BATCH_EVENT_SCHEMA)


def empty_phase_spans() -> pl.DataFrame:
    return pl.DataFrame(schema=PHASE_SPAN_SCHEMA)


def batch_events_frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    """Events from dicts with the schema's keys (`ts` a datetime or ns; `unit_id` may stand for
    the four path keys). Missing keys are null."""
    if not rows:
        return empty_batch_events()
    columns: dict[str, list[object]] = {c: [] for c in BATCH_EVENT_SCHEMA}
    for row in rows:
        path = str(row["unit_id"]).split(".") if row.get("unit_id") else [row.get(c) for c in PATH_COLUMNS]
        for c, v in zip(PATH_COLUMNS, path, strict=False):
            columns[c].append(v)
        for c in ("batch_id", "phase", "transition", "product", "recipe"):
            columns[c].append(row.get(c) or None)
        columns["ts"].append(row["ts"])
    ts = timestamp_series("ts", columns.pop("ts"))
    return pl.DataFrame({"ts": ts, **columns}).select([pl.col(c).cast(dt) for c, dt in BATCH_EVENT_SCHEMA.items()])


def conform_events(frame: pl.DataFrame) -> pl.DataFrame:
    """A frame read back from storage in the event schema (missing columns null), sorted by
    unit, time and transition order."""
    out = []
    for name, dtype in BATCH_EVENT_SCHEMA.items():
        if name not in frame.columns:
            out.append(pl.lit(None, dtype).alias(name))
        elif name == "ts":
            out.append(timestamp_series("ts", frame["ts"]).alias("ts"))
        else:
            out.append(pl.col(name).cast(dtype))
    return frame.select(out).pipe(sort_events)


def unit_id_expr() -> pl.Expr:
    return pl.concat_str(*PATH_COLUMNS, separator=".").alias("unit_id")


def sort_events(events: pl.DataFrame) -> pl.DataFrame:
    """By unit, time, then transition order (a batch ends before the next one starts)."""
    rank = pl.col("transition").replace_strict(
        {t: i for i, t in enumerate(TRANSITIONS)}, default=len(TRANSITIONS), return_dtype=pl.Int8)
    return events.sort([*PATH_COLUMNS, "ts", rank], maintain_order=True)


def phase_spans(events: pl.DataFrame, start: datetime | None = None, end: datetime | None = None) -> pl.DataFrame:
    """Phase spans (see the module doc) of `events`, sorted by unit and start; with `start` /
    `end`, only those overlapping [start, end) (an open span overlaps whenever it began before
    `end`). Feed it the last event of each unit before `start` too, or the phase running at
    `start` is missing, and the first at or after `end`, or the last span looks open."""
    if events.is_empty():
        return empty_phase_spans()
    ordered = sort_events(events).with_columns(unit_id_expr())
    spans = (
        ordered.with_columns(pl.col("ts").shift(-1).over("unit_id").alias("end"))
        .filter(pl.col("transition") != "batch_end")
        .select("unit_id", "batch_id", "phase", pl.col("ts").alias("start"), "end")
        # Two events at one instant (a batch ending as the next starts) leave no span between them.
        .filter(pl.col("end").is_null() | (pl.col("end") > pl.col("start")))
    )
    if start is not None:
        spans = spans.filter(pl.col("end").is_null() | (pl.col("end") > pl.lit(start).cast(TIMESTAMP_DTYPE)))
    if end is not None:
        spans = spans.filter(pl.col("start") < pl.lit(end).cast(TIMESTAMP_DTYPE))
    return spans.select([pl.col(c).cast(dt) for c, dt in PHASE_SPAN_SCHEMA.items()]).sort("unit_id", "start")


def with_phases(samples: pl.DataFrame, spans: pl.DataFrame) -> pl.DataFrame:
    """`samples` (sample schema) with a `phase` column: the phase span of the sample's unit that
    holds its ts (as-of join by unit and time), null outside every span or when the span's batch
    is not the sample's. Row order is kept."""
    unit = pl.concat_str(*PATH_COLUMNS, separator=".")
    if samples.is_empty() or spans.is_empty():
        return samples.with_columns(pl.lit(None, pl.String).alias("phase"))
    keyed = samples.with_row_index("_row").with_columns(unit.alias("_unit"))
    right = spans.select(pl.col("unit_id").alias("_unit"), pl.col("start").alias("_start"),
                         pl.col("end").alias("_end"), pl.col("batch_id").alias("_span_batch"),
                         pl.col("phase").alias("phase")).sort("_start")
    joined = keyed.sort("ts").join_asof(right, left_on="ts", right_on="_start", by="_unit", strategy="backward",
                                         check_sortedness=False)  # sorted above; Polars cannot check within groups
    inside = (pl.col("_end").is_null() | (pl.col("ts") < pl.col("_end"))) & (
        pl.col("batch_id").is_null() | (pl.col("batch_id") == pl.col("_span_batch")))
    return (
        joined.with_columns(pl.when(inside).then(pl.col("phase")).otherwise(None).alias("phase"))
        .sort("_row")
        .drop("_row", "_unit", "_start", "_end", "_span_batch")
    )


def path_filter(prefix: str) -> pl.Expr:
    """Events of the unit or line (or area, site) at ISA-95 path `prefix`."""
    return (unit_id_expr() == prefix) | unit_id_expr().str.starts_with(prefix + ".")


def read_phase_spans(historian: object, path: str, start: datetime, end: datetime | None = None) -> pl.DataFrame:
    """The phase spans of the unit or line at `path` overlapping [start, end), from a historian's
    batch events (`read_batch_events`; a historian without them has no spans)."""
    read = getattr(historian, "read_batch_events", None)
    if read is None:
        return empty_phase_spans()
    return phase_spans(read(path, start, end), start, end)
