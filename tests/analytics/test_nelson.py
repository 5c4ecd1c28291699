"""Nelson / Western Electric run rules on short crafted series, centre 0 and sigma 1 (so the
values are the z's), each rule alone, levels and reasons worked out by hand."""

import itertools

import polars as pl
import pytest

from analytics.detectors import NelsonRules
from tests.analytics.helpers import batch, make_tag

TAG = make_tag()
TID = TAG.tag_id
ALT14 = [-0.5, 0.5] * 7  # 14 points alternating up and down


def levels(rule: int, values: list, run: int = 9, chunks: tuple[int, ...] = ()) -> list[int]:
    """Levels of `rule` alone over `values`, scored in one batch or split at `chunks`."""
    det = NelsonRules([TAG], rules=[rule], same_side_run=run, given={TID: (0.0, 1.0)})
    cuts = [0, *chunks, len(values)]
    out = [det.score(batch(TID, values[a:b], start=a)) for a, b in itertools.pairwise(cuts)]
    return pl.concat(out)["level"].to_list()


@pytest.mark.parametrize("rule, values, expected", [
    (1, [0, 3.5, -3.2, 2.9, -3.0], [0, 1, 1, 0, 0]),                        # strictly beyond 3 sigma
    (2, [0.5] * 8 + [0.1, 0.2, -0.5], [0] * 8 + [1, 1, 0]),                 # 9th point on one side
    (2, [-0.5] * 4 + [0.0] + [-0.5] * 9, [0] * 13 + [1]),                   # a point on the centre breaks the run
    (3, [0, .1, .2, .3, .4, .5, .6, .5], [0, 0, 0, 0, 0, 1, 1, 0]),          # 6 rising = 5 rises
    (3, [0, .1, .1, .2, .3, .4, .5], [0] * 7),                               # a tie breaks the trend
    (3, [3, 2, 1, 0, -1, -2], [0, 0, 0, 0, 0, 1]),                           # falling too
    (4, ALT14 + [-0.5, -0.6], [0] * 13 + [1, 1, 0]),                         # the 14th alternating point
    (4, ALT14[:13], [0] * 13),
    (5, [0, 2.5, 2.5], [0, 0, 1]),                                           # 2 of 3 beyond 2 sigma
    (5, [2.5, 0, 2.1, -1, -1, -1], [0, 0, 1, 0, 0, 0]),
    (5, [2.5, -2.5, 0], [0, 0, 0]),                                          # not on the same side
    (6, [1.5, 1.5, 0, 1.5, 1.5, 0, 0], [0, 0, 0, 0, 1, 0, 0]),               # 4 of 5 beyond 1 sigma
    (6, [-1.5, -1.5, -1.5, 1.5, -1.5], [0, 0, 0, 0, 1]),                   # 4 of 5 below, one above between
    (6, [-1.5, -1.5, 1.5, 1.5, -1.5], [0, 0, 0, 0, 0]),                    # 3 below and 2 above
    (7, [0.1] * 15 + [1.5], [0] * 14 + [1, 0]),                              # 15 within 1 sigma
    (8, [1.5, -1.5] * 4 + [0.5], [0] * 7 + [1, 0]),                          # 8 beyond 1 sigma, both sides
    (8, [1.5] * 8, [0] * 8),                                                 # one side only: not rule 8
])
def test_rule_by_hand(rule, values, expected):
    assert levels(rule, values) == expected
    # The run carries across micro-batch boundaries: same levels whatever the cut points.
    assert levels(rule, values, chunks=(1,)) == expected
    assert levels(rule, values, chunks=tuple(range(1, len(values)))) == expected


def test_western_electric_rule_4_is_a_run_of_8():
    assert levels(2, [0.5] * 9, run=8) == [0] * 7 + [1, 1]
    assert levels(2, [0.5] * 9) == [0] * 8 + [1]
    det = NelsonRules.western_electric([TAG], given={TID: (0.0, 1.0)})
    assert det.rules == (1, 2, 5, 6) and det.same_side_run == 8


def test_reasons_name_the_lowest_rule_and_limit_is_its_zone_line():
    det = NelsonRules([TAG], given={TID: (10.0, 2.0)})
    out = det.score(batch(TID, [11.0] * 8 + [11.0, 17.0]))
    reasons = out["reason"].to_list()
    assert reasons[8] == "Nelson 2: 9 points in a row above centre" and out["limit"][8] == 10.0
    assert reasons[9] == "Nelson 1: beyond 3 sigma above centre" and out["limit"][9] == 16.0
    assert out["score"].to_list()[9] == 3.5  # |z|


def test_fit_learns_centre_and_sigma_and_unfitted_tags_are_not_scored():
    history = batch(TID, [9.0, 11.0] * 10)
    other = make_tag("s.a.l.u.other")
    det = NelsonRules([TAG, other]).fit(history)
    assert det.centres_["tag_id"].to_list() == [TID]
    assert det.centres_["centre"][0] == 10.0
    out = det.score(pl.concat([batch(TID, [20.0]), batch(other.tag_id, [1e6])]))
    assert out["level"].to_list() == [1, 0] and out["score"][1] is None


def test_side_of_two_of_three_is_the_side_of_the_pattern():
    det = NelsonRules([TAG], rules=[5], given={TID: (0.0, 1.0)})
    out = det.score(batch(TID, [2.5, 2.5, -0.5]))
    assert out["reason"].to_list() == [None, None, "Nelson 5: 2 of 3 points beyond 2 sigma above centre"]
    assert out["limit"].to_list() == [None, None, 2.0]
