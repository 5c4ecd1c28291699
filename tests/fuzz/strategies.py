"""Shared settings and strategies for the fuzz tests."""

from __future__ import annotations

import os

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
