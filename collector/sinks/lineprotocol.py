"""Sample batches to InfluxDB line protocol and InfluxQL results back, vectorised with Polars.

The InfluxDB schema (one point per sample):

    measurement  `process_values` (configurable: `historian.measurement`)
    tags         area, line, quality, site, tag_id, unit   (a null or empty tag is left out)
    fields       value=<float>          the sample value, when finite
                 value_text="<text>"    only when the value is not finite: "NaN", "+Inf", "-Inf" or
                                        "null" (InfluxDB stores no NaN/Inf, and a point needs a field)
                 batch_id="<string>"    the ISA-88 batch, when known
                 server_ts=<int>i       the server/receive timestamp in ns, when known
    timestamp    `ts`, the source timestamp, in ns (write precision `ns`)
    clock_epoch  an extra tag, only on the samples written after a plant clock stepped back and
                 dated before where the tag's clock had been (collector/sinks/clocksteps.py):
                 "1", "2", ... so that they do not overwrite the points already at those
                 timestamps. Absent otherwise: the normal schema is unchanged.

    process_values,area=granulation,line=l1,quality=good,site=basel,tag_id=basel.granulation.l1.gr1.temp,unit=gr1
        value=41.25,batch_id="B-2024-001",server_ts=1718000000120000000i 1718000000100000000

Tag keys are sorted (as InfluxDB recommends). In tag values, commas, spaces and equals signs are
escaped with a backslash; in string fields, double quotes and backslashes are. Line protocol has
no newline in a value: a newline or carriage return becomes a space. Quality is a tag, so that
Grafana can filter and group on it.

A tag value that ends in a backslash has no encoding: InfluxDB reads `\\,` or `\\ ` as an escaped
separator whatever comes before it (a doubled backslash does not help; influxdata/influxdb#5231,
#3070, closed as won't fix). `split_unencodable` sets such rows aside (the historian counts them
under UNENCODABLE_REASON), and `encode_lines` refuses them rather than send a line InfluxDB
would refuse, failing the whole request with it (a retried write could never succeed).

From Grafana (InfluxQL data source, database = the historian's bucket):

    SELECT mean("value") FROM "process_values" WHERE "tag_id"='basel.granulation.l1.gr1.temp'
        AND $timeFilter GROUP BY time(10s)

    SELECT last("value") FROM "process_values" WHERE "line"='l1' AND "quality"='good'
        AND $timeFilter GROUP BY time($__interval), "tag_id"

VictoriaMetrics names the series `<measurement>_<field>` (`process_values_value`) with the tags as
labels, keeps numeric fields only (not batch_id) and stores milliseconds.

`parse_query_response` turns the JSON of an InfluxQL `SELECT * ...` on `/query` (with
`epoch=ns`, chunked or not) back into the sample schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from collector.sinks.clocksteps import CLOCK_EPOCH
from controltower.samples import PATH_COLUMNS, SAMPLE_SCHEMA, conform, empty_samples

DEFAULT_MEASUREMENT = "process_values"
# Sorted by key: InfluxDB sorts the tag set anyway, so sending it sorted saves it the work.
TAG_COLUMNS = tuple(sorted((*PATH_COLUMNS, "tag_id", "quality")))
# Lines per request: InfluxDB's guidance is 5000 points per write for best throughput.
DEFAULT_MAX_LINES = 5000


def _no_newlines(expr: pl.Expr) -> pl.Expr:
    return expr.str.replace_all("\n", " ", literal=True).str.replace_all("\r", " ", literal=True)


def escape_tag(expr: pl.Expr) -> pl.Expr:
    """Tag key/value escaping: backslash before commas, spaces and equals signs."""
    escaped = _no_newlines(expr)
    for char in (",", "=", " "):
        escaped = escaped.str.replace_all(char, "\\" + char, literal=True)
    return escaped


def escape_measurement(name: str) -> str:
    return name.replace("\r", " ").replace("\n", " ").replace(",", r"\,").replace(" ", r"\ ")


def string_field(expr: pl.Expr) -> pl.Expr:
    """A quoted string field value: backslashes and double quotes escaped."""
    escaped = (
        _no_newlines(expr)
        .str.replace_all("\\", "\\\\", literal=True)
        .str.replace_all('"', '\\"', literal=True)
    )
    return pl.concat_str(pl.lit('"'), escaped, pl.lit('"'))


def _tag_pair(column: str) -> pl.Expr:
    value = pl.col(column).cast(pl.String)
    # InfluxDB rejects empty tag values: leave the tag out, like a null.
    return pl.when(value.is_not_null() & (value != "")).then(pl.lit(f",{column}=") + escape_tag(value))


def series_key_expr(measurement: str = DEFAULT_MEASUREMENT, tag_columns: Iterable[str] = TAG_COLUMNS) -> pl.Expr:
    """Measurement and tag set: `process_values,area=...,unit=...`."""
    return pl.concat_str(
        pl.lit(escape_measurement(measurement)), *(_tag_pair(c) for c in tag_columns), ignore_nulls=True
    ).alias("series_key")


def field_set_expr() -> pl.Expr:
    """`value=...[,batch_id="..."][,server_ts=...i]` (or value_text for a non-finite value)."""
    value = pl.col("value")
    finite = value.is_finite().fill_null(False)
    value_text = (
        pl.when(value.is_null())
        .then(pl.lit("null"))
        .when(value.is_nan())
        .then(pl.lit("NaN"))
        .when(value > 0)
        .then(pl.lit("+Inf"))
        .otherwise(pl.lit("-Inf"))
    )
    first = (
        pl.when(finite)
        .then(pl.lit("value=") + value.cast(pl.String))
        .otherwise(pl.concat_str(pl.lit('value_text="'), value_text, pl.lit('"')))
    )
    batch = pl.when(pl.col("batch_id").is_not_null()).then(
        pl.lit(",batch_id=") + string_field(pl.col("batch_id"))
    )
    server_ts = pl.concat_str(
        pl.lit(",server_ts="), pl.col("server_ts").dt.epoch("ns").cast(pl.String), pl.lit("i")
    )
    return pl.concat_str(first, batch, server_ts, ignore_nulls=True).alias("field_set")


def _line(series_key: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        series_key, pl.lit(" "), field_set_expr(), pl.lit(" "), pl.col("ts").dt.epoch("ns").cast(pl.String)
    ).alias("line")


def line_expr(measurement: str = DEFAULT_MEASUREMENT) -> pl.Expr:
    """One line-protocol line (without the newline) per sample row, as a single expression."""
    return _line(series_key_expr(measurement))


UNENCODABLE_REASON = "a tag value ends in a backslash (line protocol cannot encode it)"


def _unencodable(columns: Iterable[str]) -> pl.Expr:
    """Rows with a tag value ending in a backslash (after newlines became spaces, which keeps the last
    character unless it is a newline)."""
    return pl.any_horizontal(
        _no_newlines(pl.col(c).cast(pl.String)).str.ends_with("\\").fill_null(False) for c in columns
    )


def split_unencodable(batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows line protocol can carry, rows with a tag value ending in a backslash): see the module doc."""
    tag_columns = [c for c in TAG_COLUMNS if c in batch.columns]
    bad = batch.select(_unencodable(tag_columns)).to_series()
    if not bad.any():
        return batch, batch.clear()
    return batch.filter(~bad), batch.filter(bad)


def encode_lines(batch: pl.DataFrame, measurement: str = DEFAULT_MEASUREMENT) -> pl.Series:
    """Sample batch (sample schema) -> a String series of line-protocol lines, one per row.

    Same result as `line_expr`, faster: a batch holds few distinct tag sets (tag x quality), so
    each series key is built and escaped once and joined back to the rows.
    Raises ValueError when a row has no `ts` (InfluxDB would stamp it with its own clock), or a tag
    value ending in a backslash (`split_unencodable` sets those aside first).
    """
    frame = conform(batch).with_columns(pl.col("quality").cast(pl.String))
    if frame["ts"].null_count():
        raise ValueError(f"{frame['ts'].null_count()} sample(s) without a source timestamp (ts)")
    tag_columns = list(TAG_COLUMNS)
    if CLOCK_EPOCH in batch.columns:  # conform keeps the sample schema only
        frame = frame.with_columns(batch[CLOCK_EPOCH].cast(pl.String))
        tag_columns = sorted([*tag_columns, CLOCK_EPOCH])
    keys = frame.select(tag_columns).unique()
    # Checked on the distinct tag sets (a handful per batch), not on every row.
    if (bad := keys.filter(_unencodable(tag_columns))).height:
        raise ValueError(f"{UNENCODABLE_REASON}: tag_id {bad['tag_id'][0]!r}")
    keys = keys.with_columns(series_key_expr(measurement, tag_columns))
    frame = frame.join(keys, on=tag_columns, how="left", nulls_equal=True, maintain_order="left")
    return frame.select(_line(pl.col("series_key"))).to_series()


def encode(batch: pl.DataFrame, measurement: str = DEFAULT_MEASUREMENT) -> bytes:
    """Sample batch -> line-protocol bytes (UTF-8, lines separated by `\\n`)."""
    return _join(encode_lines(batch, measurement))


def _join(lines: pl.Series) -> bytes:
    # Joined and handed over as binary: no 10+ MB Python str to build and encode again.
    return lines.str.join("\n").cast(pl.Binary).item()


def encode_chunks(
    batch: pl.DataFrame, measurement: str = DEFAULT_MEASUREMENT, max_lines: int = DEFAULT_MAX_LINES
) -> Iterator[bytes]:
    """Sample batch -> line-protocol request bodies of at most `max_lines` lines each."""
    lines = encode_lines(batch, measurement)
    for offset in range(0, len(lines), max_lines):
        yield _join(lines.slice(offset, max_lines))


# --- InfluxQL /query results -------------------------------------------------------------------


def _documents(body: bytes | str | dict | list) -> Iterable[dict]:
    if isinstance(body, dict):
        yield body
        return
    if isinstance(body, list):
        yield from body
        return
    text = body.decode() if isinstance(body, bytes) else body
    # Chunked responses are one JSON document per line.
    for raw in text.splitlines():
        if raw.strip():
            yield json.loads(raw)


def _query_error(doc: dict) -> str | None:
    if doc.get("error"):
        return str(doc["error"])
    for result in doc.get("results", []):
        if result.get("error"):
            return str(result["error"])
    return None


class QueryError(ValueError):
    """The server answered the query with an error."""


def _series_frame(series: dict[str, Any]) -> pl.DataFrame:
    columns: list[str] = series["columns"]
    values: list[list[Any]] = series.get("values") or []
    by_column = list(zip(*values)) if values else [()] * len(columns)
    data: dict[str, pl.Series] = {}
    for name, col in zip(columns, by_column):
        key = "ts" if name == "time" else name
        if key in ("ts", "server_ts"):
            if any(isinstance(v, str) for v in col):
                raise QueryError("query results must use epoch=ns (got RFC3339 times)")
            data[key] = pl.Series(key, col, pl.Int64, strict=False)
        elif key in ("value",):
            # JSON writes 2.0 as 2: let ints become floats.
            data[key] = pl.Series(key, col, pl.Float64, strict=False)
        else:
            data[key] = pl.Series(key, [None if v is None else str(v) for v in col], pl.String)
    frame = pl.DataFrame(data)
    # GROUP BY tag queries put the tags beside the rows, not in them.
    for key, tag_value in (series.get("tags") or {}).items():
        if key not in frame.columns:
            frame = frame.with_columns(pl.lit(tag_value or None, pl.String).alias(key))
    return frame


def parse_query_response(body: bytes | str | dict | list) -> pl.DataFrame:
    """InfluxQL `/query` JSON (`epoch=ns`; one document, or chunked: one per line) -> sample schema.

    Expects the columns of `SELECT * FROM <measurement>`: time, the tags and the fields of the
    schema above; other columns are dropped. Raises QueryError when the server reports one.
    """
    frames: list[pl.DataFrame] = []
    for doc in _documents(body):
        error = _query_error(doc)
        if error:
            raise QueryError(error)
        for result in doc.get("results", []):
            for series in result.get("series", []) or []:
                frames.append(_series_frame(series))
    if not frames:
        return empty_samples()
    frame = pl.concat(frames, how="diagonal_relaxed")
    if "value_text" in frame.columns:
        special = pl.col("value_text").replace_strict(
            {"NaN": float("nan"), "+Inf": float("inf"), "-Inf": float("-inf")},
            default=None,
            return_dtype=pl.Float64,
        )
        value = pl.col("value") if "value" in frame.columns else pl.lit(None, pl.Float64)
        frame = frame.with_columns(value=pl.coalesce(value, special))
    return conform(frame.select([c for c in SAMPLE_SCHEMA if c in frame.columns]))
