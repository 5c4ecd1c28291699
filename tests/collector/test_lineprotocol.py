"""Line protocol encoding (escaping, nulls, timestamps, chunks) and the InfluxQL result parser."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from collector.sinks.lineprotocol import (
    QueryError,
    encode,
    encode_chunks,
    encode_lines,
    line_expr,
    parse_query_response,
)
from controltower.samples import SAMPLE_SCHEMA, samples_frame

T0 = 1_718_000_000_123_456_789


def _batch(**kwargs) -> pl.DataFrame:
    defaults = dict(ts=[T0], tag_id=["basel.gran.l1.gr1.temp"], value=[41.25])
    defaults.update(kwargs)
    return samples_frame(**defaults)


def _paths(tag_ids=("basel.gran.l1.gr1.temp",), **values) -> pl.DataFrame:
    """Tag paths; values are one per tag (lists) or one for all."""
    columns = {c: values.get(c) for c in ("site", "area", "line", "unit")}
    columns = {c: v if isinstance(v, list) else [v] * len(tag_ids) for c, v in columns.items()}
    return pl.DataFrame(
        {"tag_id": list(tag_ids), **columns}, schema_overrides={c: pl.String for c in columns}
    )


def test_a_sample_is_one_line_with_sorted_tags_fields_and_ns_timestamp():
    batch = _batch(
        server_ts=[T0 + 5],
        batch_id=["B-1"],
        tag_paths=_paths(site="basel", area="gran", line="l1", unit="gr1"),
    )
    assert encode(batch) == (
        b"process_values,area=gran,line=l1,quality=good,site=basel,tag_id=basel.gran.l1.gr1.temp,unit=gr1 "
        b'value=41.25,batch_id="B-1",server_ts=1718000000123456794i 1718000000123456789'
    )


def test_measurement_is_configurable():
    assert encode(_batch(), measurement="pv").startswith(b"pv,quality=good,tag_id=")


def test_tag_values_escape_commas_spaces_and_equals_signs():
    batch = _batch(tag_id=["a,b c=d"], tag_paths=_paths(["a,b c=d"], line="line 1"))
    assert (
        encode(batch).split(b" value=")[0] == rb"process_values,line=line\ 1,quality=good,tag_id=a\,b\ c\=d"
    )


def test_null_and_empty_tags_are_left_out():
    batch = _batch(tag_paths=_paths(site="basel", area="", line=None, unit=None))
    assert (
        encode(batch).split(b" ")[0]
        == b"process_values,quality=good,site=basel,tag_id=basel.gran.l1.gr1.temp"
    )


def test_string_fields_escape_quotes_and_backslashes_and_drop_newlines():
    line = encode(_batch(batch_id=['B "7" \\ x\ny']))
    assert b'batch_id="B \\"7\\" \\\\ x y"' in line


def test_null_batch_and_server_ts_are_left_out():
    assert (
        encode(_batch())
        == b"process_values,quality=good,tag_id=basel.gran.l1.gr1.temp value=41.25 1718000000123456789"
    )


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (None, b'value_text="null"'),
        (math.nan, b'value_text="NaN"'),
        (math.inf, b'value_text="+Inf"'),
        (-math.inf, b'value_text="-Inf"'),
    ],
)
def test_non_finite_values_become_a_text_field(value, field):
    assert encode(_batch(value=[value], quality=["bad"])).split(b" ")[1] == field


def test_floats_keep_full_precision():
    values = [0.1, 1 / 3, 1e-10, 1e20, -0.0, 123456789.12345679, 5e-324]
    lines = encode_lines(_batch(ts=[T0] * len(values), tag_id=["t"] * len(values), value=values))
    written = [float(line.split(" ")[1].removeprefix("value=")) for line in lines]
    assert written == values


def test_timestamps_are_exact_ns_for_datetimes_with_a_time_zone():
    series = (
        pl.Series([T0, 0, -1_000], dtype=pl.Int64)
        .cast(pl.Datetime("ns", "UTC"))
        .dt.convert_time_zone("Europe/Zurich")
    )
    lines = encode_lines(_batch(ts=series, tag_id=["t"] * 3, value=[1.0] * 3))
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == [T0, 0, -1_000]


def test_a_sample_without_ts_is_refused():
    batch = _batch().with_columns(pl.lit(None, SAMPLE_SCHEMA["ts"]).alias("ts"))
    with pytest.raises(ValueError, match="without a source timestamp"):
        encode(batch)


def test_chunks_split_on_line_boundaries():
    n = 12
    batch = _batch(ts=list(range(n)), tag_id=["t"] * n, value=[float(i) for i in range(n)])
    chunks = list(encode_chunks(batch, max_lines=5))
    assert [c.count(b"\n") + 1 for c in chunks] == [5, 5, 2]
    assert b"\n".join(chunks) == encode(batch)


def _as_query_response(batch: pl.DataFrame, chunked: bool = False) -> bytes:
    """What InfluxDB answers to SELECT * for the lines of `batch` (built from the lines themselves,
    so the test is independent of how the encoder is written)."""
    rows = []
    columns = [
        "time",
        "area",
        "batch_id",
        "line",
        "quality",
        "server_ts",
        "site",
        "tag_id",
        "unit",
        "value",
        "value_text",
    ]
    for raw in encode_lines(batch):
        head, fields, ts = _split_line(raw)
        tags = dict(_unescape(pair).split("=", 1) for pair in _split_unescaped(head, ",")[1:])
        values = {}
        for pair in _split_unescaped(fields, ","):
            key, text = pair.split("=", 1)
            if text.startswith('"'):
                values[key] = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            elif text.endswith("i"):
                values[key] = int(text[:-1])
            else:
                values[key] = float(text)
        rows.append([int(ts), *[tags.get(c, values.get(c)) for c in columns[1:]]])
    series = {"name": "process_values", "columns": columns, "values": rows}
    if chunked:
        docs = [
            {"results": [{"statement_id": 0, "series": [dict(series, values=rows[i : i + 2])]}]}
            for i in range(0, len(rows), 2)
        ]
        return "\n".join(json.dumps(d) for d in docs).encode()
    return json.dumps({"results": [{"statement_id": 0, "series": [series]}]}).encode()


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split on `sep` outside escapes and double-quoted strings (escapes are kept)."""
    parts, current, escaped, quoted = [], "", False, False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            current += char
        elif char == sep and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _split_line(raw: str) -> tuple[str, str, str]:
    head, fields, ts = _split_unescaped(raw, " ")
    return head, fields, ts


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


@pytest.mark.parametrize("chunked", [False, True])
def test_query_results_parse_back_to_the_sample_schema(chunked):
    batch = samples_frame(
        ts=[T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4],
        tag_id=["a", "a", "b c", "b c", "d"],
        value=[1.5, 2.0, math.nan, None, -3e-9],
        quality=["good", "uncertain", "bad", "bad", "good"],
        server_ts=[T0 + 10, None, T0 + 12, None, T0 - 1],
        batch_id=["B,1", None, 'q"x', None, None],
        tag_paths=_paths(["a", "b c"], site="s", line=["l 1", "l=2"]),
    )
    parsed = parse_query_response(_as_query_response(batch, chunked))
    assert parsed.schema == pl.Schema(SAMPLE_SCHEMA)
    assert parsed.equals(batch)


def test_an_empty_result_is_an_empty_frame():
    parsed = parse_query_response(b'{"results":[{"statement_id":0}]}')
    assert parsed.height == 0 and parsed.schema == pl.Schema(SAMPLE_SCHEMA)


def test_a_query_error_is_raised():
    with pytest.raises(QueryError, match="database not found"):
        parse_query_response(b'{"results":[{"statement_id":0,"error":"database not found: x"}]}')


def test_rfc3339_times_are_refused():
    body = {
        "results": [
            {"series": [{"name": "m", "columns": ["time", "value"], "values": [["2024-01-01T00:00:00Z", 1]]}]}
        ]
    }
    with pytest.raises(QueryError, match="epoch=ns"):
        parse_query_response(body)


def test_the_fast_path_matches_the_single_expression():
    batch = samples_frame(
        ts=list(range(6)),
        tag_id=["a", "b c", "a", "a", "b c", "d"],
        value=[1.0, 2.0, None, 4.0, math.inf, 6.0],
        quality=["good", "good", "bad", "good", "uncertain", "good"],
        batch_id=[None, "x", "y", None, None, "z"],
        tag_paths=_paths(["a", "b c"], site="s", line=[None, "l,2"]),
    )
    assert encode_lines(batch).to_list() == batch.select(line_expr()).to_series().to_list()
