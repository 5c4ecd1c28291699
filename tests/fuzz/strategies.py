"""Shared settings and strategies for the fuzz tests."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CONTROLTOWER_FUZZ_EXAMPLES", "200"))

# No deadline (a first call may import or compile), no example database in the work tree.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Text that stresses escaping: the characters that mean something to JSON, line protocol, InfluxQL.
NASTY = st.sampled_from(list(',= "\'\\\n\r\t{}[]:/+#$\x00') + ["é", "µ", "\u2028", "😀", "\ud7ff"])
nasty_text = st.lists(st.one_of(NASTY, st.characters(codec="utf-8")), max_size=30).map("".join)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond float64
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=25,
)


def reason_of(message: str) -> str:
    """The message without the values it quotes, so that rejections group by kind."""
    return re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?\d[\d.e+-]*", "…", message)[:90]


def write_report(counts: Counter[str]) -> None:
    """The rejections counted by reason, as one JSON object, to the file CONTROLTOWER_FUZZ_REPORT
    names (a dedicated run; bench/reliability.py tabulates it); nothing when it is unset."""
    report = os.environ.get("CONTROLTOWER_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(counts.most_common()), indent=1))
