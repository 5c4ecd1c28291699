"""controltower/live.py: the latest sample per tag is the last to arrive, whatever its timestamp
(a plant clock that steps), and samples dated ahead of the tower's clock are flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from controltower.live import LiveState
from controltower.samples import conform, timestamp_series

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def samples(rows: list[tuple[str, float, float]]) -> pl.DataFrame:
    """(tag, seconds from NOW, value) in arrival order."""
    return conform(pl.DataFrame({
        "ts": timestamp_series("ts", [NOW + timedelta(seconds=s) for _, s, _ in rows]),
        "tag_id": [t for t, _, _ in rows], "value": [v for _, _, v in rows],
        "quality": "good", "site": "s", "area": "a", "line": "l", "unit": "u",
    }))


def values(live: LiveState) -> dict[str, float]:
    return dict(live.latest().select("tag_id", "value").iter_rows())


def test_the_latest_sample_is_the_last_to_arrive_after_a_step_back_and_after_a_correction() -> None:
    live = LiveState([])
    live.update(samples([("s.a.l.u.x", 0, 1.0), ("s.a.l.u.y", 0, 2.0)]))
    live.update(samples([("s.a.l.u.x", -3600, 3.0), ("s.a.l.u.x", -3599.9, 4.0)]))  # stepped back an hour
    assert values(live) == {"s.a.l.u.x": 4.0, "s.a.l.u.y": 2.0}
    live.update(samples([("s.a.l.u.y", 3600, 5.0)]))  # an hour ahead...
    live.update(samples([("s.a.l.u.y", 1, 6.0)]))  # ...then corrected: not frozen on the future value
    assert values(live) == {"s.a.l.u.x": 4.0, "s.a.l.u.y": 6.0}
    assert live.latest().height == 2


def test_samples_dated_ahead_of_the_tower_are_flagged() -> None:
    live = LiveState([])
    live.update(samples([("s.a.l.u.x", 0.5, 1.0), ("s.a.l.u.y", 3600, 2.0)]))
    ahead = live.future_dated(NOW)
    assert ahead["tag_id"].to_list() == ["s.a.l.u.y"] and round(ahead["ahead_s"].item()) == 3600
    assert live.line_freshness(NOW)["future"].to_list() == [True]
    live.update(samples([("s.a.l.u.y", 1.0, 3.0)]))  # within the tolerance of clocks in sync
    assert live.future_dated(NOW).is_empty() and live.line_freshness(NOW)["future"].to_list() == [False]
