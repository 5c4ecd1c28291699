"""Plant clock steps before an InfluxDB write (collector/sinks/clocksteps.py): which samples get a
`clock_epoch` tag, and that the line protocol carries it only on them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from collector.sinks.clocksteps import CLOCK_EPOCH, ClockSteps
from collector.sinks.lineprotocol import encode_lines
from controltower.samples import timestamp_series

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def batch(rows: list[tuple[str, float]]) -> pl.DataFrame:
    """(tag, seconds after T0) in arrival order; values number the rows."""
    return pl.DataFrame({
        "ts": timestamp_series("ts", [T0 + timedelta(seconds=s) for _, s in rows]),
        "tag_id": [t for t, _ in rows], "value": [float(i) for i in range(len(rows))],
        "quality": "good", "site": "s", "area": "a", "line": "l", "unit": "u",
    })


def epochs(steps: ClockSteps, rows: list[tuple[str, float]]) -> list[str | None]:
    marked = steps.mark(batch(rows))
    steps.commit(marked)
    return marked.batch[CLOCK_EPOCH].to_list()


def test_a_step_back_marks_the_samples_below_the_previous_high_water_mark_only() -> None:
    steps = ClockSteps(tolerance=timedelta(seconds=1))
    # a runs 0..3 s, steps back 1.5 s, and is past its old newest (3 s) again at 3.5 s; b never steps.
    assert epochs(steps, [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("a", 3), ("a", 1.5), ("a", 2.5),
                          ("b", 1), ("a", 3), ("a", 3.5)]) == [
        None, None, None, None, None, "1", "1", None, "1", None]
    # Across batches: a second step back is the next epoch, its ceiling where the clock had been.
    assert epochs(steps, [("a", 4), ("a", 0.1), ("a", 3.9), ("a", 4.1)]) == [None, "2", "2", None]
    assert steps.steps_back == 2


def test_moves_back_within_the_tolerance_are_not_steps() -> None:
    # A message delivered again (at-least-once) carries the same timestamp: it must fold into
    # the same point, so it is not marked.
    steps = ClockSteps(tolerance=timedelta(seconds=1))
    assert epochs(steps, [("a", 0), ("a", 0.5), ("a", 1.0), ("a", 0.5), ("a", 1.0), ("a", 1.5)]) == [None] * 6
    assert steps.steps_back == 0


def test_nothing_is_committed_until_the_batch_is_stored() -> None:
    # A write that failed is retried with the same batch: it must be marked the same way.
    steps = ClockSteps()
    epochs(steps, [("a", 10)])
    first = steps.mark(batch([("a", 11), ("a", 5), ("a", 6)]))
    again = steps.mark(batch([("a", 11), ("a", 5), ("a", 6)]))
    assert first.batch[CLOCK_EPOCH].to_list() == again.batch[CLOCK_EPOCH].to_list() == [None, "1", "1"]
    assert first.example == "a by 6.0 s"
    steps.commit(again)
    assert epochs(steps, [("a", 7)]) == ["1"]  # still below the ceiling (11 s)


def test_line_protocol_carries_the_epoch_tag_on_marked_samples_only() -> None:
    steps = ClockSteps()
    epochs(steps, [("s.a.l.u.t", 10)])
    marked = steps.mark(batch([("s.a.l.u.t", 5), ("s.a.l.u.t", 11)]))
    back, ahead = encode_lines(marked.batch).to_list()
    assert back.startswith("process_values,area=a,clock_epoch=1,line=l,quality=good,site=s,tag_id=s.a.l.u.t,unit=u ")
    assert "clock_epoch" not in ahead
    # Without the column, the schema is the usual one.
    assert encode_lines(batch([("s.a.l.u.t", 5)])).item().startswith("process_values,area=a,line=l,quality=good,")
