"""`parse_time` on random text: a timezone-aware UTC datetime or a ValueError, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from controltower.timeparse import parse_time
from tests.fuzz.strategies import FUZZ

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
durations = st.builds(
    lambda sign, n, space, unit: f"{sign}{n}{space}{unit}",
    st.sampled_from(["", "-"]), st.integers(0, 10**30).map(str) | st.floats(0, 1e30).map(str),
    st.sampled_from(["", " "]), st.sampled_from(["ms", "s", "m", "h", "d", "w"]),
)


@FUZZ
@given(text=st.text(max_size=40) | durations | st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat))
@example(text="99999999999999999999d")  # beyond timedelta
@example(text="1e400s")
@example(text="0001-01-01T00:00:00+01:00")  # before year 1 in UTC
@example(text="9999-12-31T23:59:59-01:00")  # after year 9999 in UTC
@example(text="nan")
def test_a_datetime_or_a_value_error(text: str) -> None:
    try:
        moment = parse_time(text, NOW)
    except ValueError as exc:
        assert repr(text.strip())[:20] in str(exc) or "is not a time" in str(exc), str(exc)
    else:
        assert isinstance(moment, datetime) and moment.utcoffset() == timedelta(0)
