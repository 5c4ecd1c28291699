"""ISA-18.2 on-delay and off-delay of the limit detector, by samples and by seconds."""

import itertools

import polars as pl

from analytics.detectors import LimitDetector
from tests.analytics.helpers import batch, make_tag


def levels(values, chunks=(), step_s=1.0, **limits) -> list[int]:
    tag = make_tag(**limits)
    det = LimitDetector([tag])
    cuts = [0, *chunks, len(values)]
    return pl.concat(det.score(batch(tag.tag_id, values[a:b], start=a, step_s=step_s))
                     for a, b in itertools.pairwise(cuts))["level"].to_list()


def test_no_delay_is_the_old_behaviour():
    assert levels([11, 9, 11], alarm_high=10.0) == [2, 0, 2]


def test_on_delay_in_samples():
    values = [11, 11, 5, 11, 11, 11, 12, 5]
    want = [0, 0, 0, 0, 0, 2, 2, 0]  # raises on the 3rd consecutive sample in the condition
    assert levels(values, alarm_high=10.0, on_delay_samples=3) == want
    assert levels(values, chunks=(4,), alarm_high=10.0, on_delay_samples=3) == want
    assert levels(values, chunks=tuple(range(1, 8)), alarm_high=10.0, on_delay_samples=3) == want


def test_off_delay_in_seconds_and_bad_samples_neither_raise_nor_clear():
    tag = make_tag(alarm_high=10.0, off_delay_s=2.0)
    det = LimitDetector([tag])
    values = [11, 5, 11, 5, 5, None, 5, 5]
    out = det.score(batch(tag.tag_id, values))
    # Clear at t=1 starts the off-delay, t=2 re-enters; clear from t=3: held 1 s at 4, 2 s at 6.
    assert out["level"].to_list() == [2, 2, 2, 2, 2, 2, 0, 0]


def test_on_delay_in_seconds_with_warning_and_alarm():
    got = levels([38.5, 39.5, 39.5, 39.5, 37.0, 37.0], step_s=5.0, warning_high=38.0, alarm_high=39.0,
                 on_delay_s=10.0)
    # warning condition from t=0, held 10 s at t=10; alarm from t=5, held 10 s at t=15.
    assert got == [0, 0, 1, 2, 0, 0]


def test_chattering_shorter_than_the_delays_never_raises():
    chatter = [11, 9] * 20
    assert max(levels(chatter, alarm_high=10.0, on_delay_samples=2)) == 0
    assert levels(chatter, alarm_high=10.0, off_delay_samples=3)[1:] == [2] * 39  # never clears
