"""InfluxQL quoting (collector/sinks/influxdb.py): for any tag id, measurement or retention policy,
the quoted literal reads back as the input under InfluxQL's own string rules (influxql
scanner.go `ScanString`: escapes \\n \\\\ \\" \\' only, a raw newline ends the string as an error), and
a statement's structure cannot be changed by its values (no injection)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from collector.sinks.influxdb import quote_identifier, quote_string, select_statement
from tests.fuzz.strategies import FUZZ, nasty_text

_ESCAPES = {"n": "\n", "\\": "\\", '"': '"', "'": "'"}


class BadString(ValueError):
    pass


def scan_string(text: str, start: int) -> tuple[str, int]:
    """InfluxQL's ScanString from text[start] (the opening quote): (value, index after the closing quote)."""
    ending = text[start]
    out, i = [], start + 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise BadString(f"unterminated or newline at {i}")
        ch = text[i]
        if ch == ending:
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _ESCAPES:
                raise BadString(f"bad escape at {i}")
            out.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        out.append(ch)
        i += 1


def tokens(statement: str) -> tuple[str, list[str]]:
    """The statement with each quoted literal replaced by its quote char, and the literals' values."""
    skeleton, values, i = [], [], 0
    while i < len(statement):
        if statement[i] in "'\"":
            value, i_next = scan_string(statement, i)
            skeleton.append(statement[i] * 2)
            values.append(value)
            i = i_next
        else:
            skeleton.append(statement[i])
            i += 1
    return "".join(skeleton), values


@FUZZ
@given(value=nasty_text)
@example(value="a\nb")  # a raw newline is not allowed inside an InfluxQL string
@example(value="x' OR '1'='1")
@example(value="\\")
def test_quoted_literals_read_back_whole(value: str) -> None:
    for quoted in (quote_string(value), quote_identifier(value)):
        assert scan_string(quoted, 0) == (value, len(quoted))


@FUZZ
@given(measurement=nasty_text, tag_ids=st.lists(nasty_text, min_size=1, max_size=4), rp=st.none() | nasty_text,
       start=st.integers(-(2**63), 2**63 - 1), end=st.none() | st.integers(-(2**63), 2**63 - 1))
@example(measurement="m", tag_ids=["a') OR time > 0 --\n"], rp=None, start=0, end=None)
def test_select_statement_structure_does_not_depend_on_values(measurement, tag_ids, rp, start, end) -> None:
    skeleton, values = tokens(select_statement(measurement, tag_ids, start, end, rp))
    source = '"".""' if rp else '""'
    where = " OR ".join(["\"\" = ''"] * len(tag_ids))
    expected = f"SELECT * FROM {source} WHERE ({where}) AND time >= {start}" + (f" AND time < {end}" if end is not None else "")
    assert skeleton == expected
    names = [rp, measurement] if rp else [measurement]
    assert values == [*names, *(v for t in tag_ids for v in ("tag_id", t))]
