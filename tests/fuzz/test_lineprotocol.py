"""Line protocol (collector/sinks/lineprotocol.py): with any tag strings (commas, spaces, equals,
quotes, backslashes, unicode, newlines), each encoded line splits back, by InfluxDB's escaping
rules, into the measurement, the tags, the fields and the timestamp it was made from.

A tag value ending in a backslash has no encoding (lineprotocol.py says why): such rows, and only
they, are set aside by `split_unencodable`, counted by reason (the dedicated run's report), and
`encode_lines` refuses them. Against a real InfluxDB 1.6.7, the historian stores the other rows
of the same batch, tags read back as written, and counts the rows it set aside.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from collector.sinks.influxdb import InfluxDbHistorian
from collector.sinks.lineprotocol import (
    UNENCODABLE_REASON,
    encode,
    encode_lines,
    parse_query_response,
    split_unencodable,
)
from controltower.samples import SAMPLE_SCHEMA
from tests.fuzz.strategies import FUZZ, nasty_text, write_report
from tests.integration.conftest import start_influxdb_v1, stop_process

TS = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
REJECTIONS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    write_report(REJECTIONS)


def split_unescaped(text: str, sep: str, quotes: bool = False) -> list[str]:
    """Split at `sep` as InfluxDB's parser (models/points.go) does: in the measurement and tags, a
    separator right after a backslash is escaped; in the fields, a backslash escapes the next
    character and separators inside a "string" do not count."""
    parts, cur, i, in_string = [], [], 0, False
    while i < len(text):
        ch = text[i]
        if not quotes and ch == sep and i and text[i - 1] == "\\":
            cur.append(ch)
            i += 1
            continue
        if quotes and ch == "\\" and i + 1 < len(text):
            cur += [ch, text[i + 1]]
            i += 2
            continue
        if quotes and ch == '"':
            in_string = not in_string
        if ch == sep and not in_string:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape_tag(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 2] in (",", "=", " "):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def unescape_string_field(text: str) -> str:
    assert text[0] == text[-1] == '"'
    return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")


def parse_line(line: str) -> tuple[dict[str, str], dict[str, str], int]:
    key, *rest = split_unescaped(line, " ")  # quotes mean nothing in the measurement and tags
    fields, ts = split_unescaped(" ".join(rest), " ", quotes=True)
    measurement, *pairs = split_unescaped(key, ",")
    assert measurement == "process_values"
    tags = {}
    for pair in pairs:
        k, v = split_unescaped(pair, "=")
        tags[k] = unescape_tag(v)
    field_values = {}
    for pair in split_unescaped(fields, ",", quotes=True):
        k, _, v = pair.partition("=")
        field_values[k] = v
    return tags, field_values, int(ts)


def _flat(text: str | None) -> str | None:
    return None if text is None else text.replace("\n", " ").replace("\r", " ")


def frame_of(rows: list[tuple[str, str, str | None, float | None]]) -> pl.DataFrame:
    """(tag_id, unit, batch_id, value) rows at TS, in line fill1 of lyon.ff."""
    return pl.DataFrame(
        {
            "ts": [TS] * len(rows), "server_ts": [TS] * len(rows),
            "tag_id": [r[0] for r in rows], "value": [r[3] for r in rows], "quality": ["good"] * len(rows),
            "batch_id": [r[2] for r in rows], "site": ["lyon"] * len(rows), "area": ["ff"] * len(rows),
            "line": ["fill1"] * len(rows), "unit": [r[1] for r in rows],
        },
        schema=SAMPLE_SCHEMA,
    )


def ends_in_backslash(text: str) -> bool:
    return _flat(text).endswith("\\")


def check_rows(rows: list[tuple[str, str, str | None, float | None]]) -> int:
    """The rows that end a tag value in a backslash, and only they, are set aside (and refused by
    encode_lines); every other row's line parses back to what it was made from. Returns how many
    were set aside (also counted in REJECTIONS)."""
    frame = frame_of(rows)
    encodable, set_aside = split_unencodable(frame)
    unencodable = [r for r in rows if ends_in_backslash(r[0]) or ends_in_backslash(r[1])]
    assert set_aside.height == len(unencodable) and encodable.height == len(rows) - len(unencodable)
    if unencodable:
        REJECTIONS[UNENCODABLE_REASON] += len(unencodable)
        with pytest.raises(ValueError, match="ends in a backslash"):
            encode_lines(frame)
    REJECTIONS["encoded"] += encodable.height
    rows = [r for r in rows if r not in unencodable]
    if not rows:
        return len(unencodable)
    lines = encode(encodable).decode("utf-8").split("\n")
    assert len(lines) == len(rows)
    for line, (tag_id, unit, batch_id, _value) in zip(lines, rows):
        tags, fields, ts = parse_line(line)
        expected = {"site": "lyon", "area": "ff", "line": "fill1", "quality": "good", "tag_id": _flat(tag_id), "unit": _flat(unit)}
        assert tags == {k: v for k, v in expected.items() if v}
        if batch_id is not None:
            assert unescape_string_field(fields["batch_id"]) == _flat(batch_id)
        assert ts == int(TS.timestamp()) * 10**9
    return len(unencodable)


@FUZZ
@example(rows=[("C:\\", "u", None, 1.0), ("t", "u\\", None, 2.0), ("ok\\,\\ x", "u", "b\\", 3.0)])
@given(rows=st.lists(st.tuples(nasty_text, nasty_text, st.none() | nasty_text, st.floats() | st.none()), min_size=1, max_size=5))
def test_every_line_parses_back(rows) -> None:
    if check_rows(rows):
        event(UNENCODABLE_REASON)


@FUZZ
@given(tag_id=nasty_text, batch_id=st.none() | nasty_text, value=st.floats() | st.none())
def test_query_response_round_trip(tag_id: str, batch_id: str | None, value: float | None) -> None:
    check_query_response(tag_id, batch_id, value)


def check_query_response(tag_id: str, batch_id: str | None, value: float | None) -> None:
    """InfluxQL's JSON answer with these strings comes back as the sample schema, strings intact."""
    ns = int(TS.timestamp()) * 10**9
    body = {"results": [{"series": [{"name": "process_values", "columns": ["time", "tag_id", "value", "batch_id", "quality"],
                                      "values": [[ns, tag_id, value, batch_id, "good"]]}]}]}
    frame = parse_query_response(body)
    assert frame.schema == pl.Schema(SAMPLE_SCHEMA)
    assert frame["tag_id"].to_list() == [tag_id] and frame["batch_id"].to_list() == [batch_id]


NASTY_TAGS = ["C:\\", "a,b c=d", "back\\slash", "ends\\ space ", "\\,x\\=y", 'quote"s', "é😀", "two\\\\", "x\\\n"]


def test_influxdb_stores_what_line_protocol_can_carry_and_counts_the_rest(tmp_path: Path) -> None:
    """Real InfluxDB 1.6.7: a batch mixing tag ids that end in a backslash with other awkward ones
    is stored but for those rows (not refused whole, not retried forever), and every stored tag id
    reads back exactly as written."""
    influx = start_influxdb_v1(tmp_path / "influx")
    historian = InfluxDbHistorian(url=influx.url, api="v1", bucket="controltower", max_attempts=1)
    try:
        rows = [(tag, "unit", None, float(i)) for i, tag in enumerate(NASTY_TAGS)]
        historian.write_sync(frame_of(rows))
        bad = [tag for tag in NASTY_TAGS if ends_in_backslash(tag)]
        assert historian.rejected == {UNENCODABLE_REASON: len(bad)} and len(bad) == 2
        good = [tag for tag in NASTY_TAGS if tag not in bad]
        stored = historian.read([_flat(t) for t in good], TS - timedelta(seconds=1), TS + timedelta(seconds=1))
        assert sorted(stored["tag_id"].to_list()) == sorted(_flat(t) for t in good)
        assert dict(zip(stored["tag_id"], stored["value"])) == {_flat(t): float(NASTY_TAGS.index(t)) for t in good}
    finally:
        historian.close()
        stop_process(influx.proc)
