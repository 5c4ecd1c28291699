"""The query layer over a context of real parts: line states (normal, warning, alarm, stale and
their combinations), alerts, tag history and the line page's downsampled trends."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from controltower.screen import queries as q
from tests.screen.conftest import NOW
from tests.screen.demo_context import BATCHES, BIO, FILL, TAB, plant_history


def _fresh_all(ctx, at=NOW, seconds=30):
    ctx.feed(plant_history(ctx, at, seconds=seconds))


def _states(ctx, now=NOW) -> dict[str, dict]:
    return {r["line_id"]: r for r in q.line_states(ctx, now).iter_rows(named=True)}


def test_every_line_is_normal_with_fresh_data_and_no_alerts(ctx) -> None:
    _fresh_all(ctx)
    frame = q.line_states(ctx, NOW)
    assert frame.schema == pl.Schema(q.LINE_STATE_SCHEMA)
    assert frame["line_id"].to_list() == [BIO, TAB, FILL]  # site-file order
    states = _states(ctx)
    for line_id, row in states.items():
        assert (row["state"], row["state_text"], row["stale"]) == ("normal", "normal", False), line_id
        assert row["age_s"] == pytest.approx(0.0)
        assert (row["alerts_warning"], row["alerts_alarm"]) == (0, 0)
    assert states[BIO]["line_name"] == "Bioreactor line 1"
    assert states[BIO]["area_name"] == "Upstream processing"
    assert states[BIO]["batch_ids"] == [BATCHES[f"{BIO}.br101"]]
    assert states[FILL]["batch_ids"] == []


def test_a_warning_alert_makes_its_line_warning(ctx) -> None:
    _fresh_all(ctx)
    ctx.event(NOW - timedelta(seconds=5), f"{TAB}.press1.tablet_weight", 1, 258.0, 257.5)
    states = _states(ctx)
    assert states[TAB]["state"] == "warning" and states[TAB]["alerts_warning"] == 1
    assert states[BIO]["state"] == states[FILL]["state"] == "normal"


def test_alarm_outranks_warning_and_clearing_returns_to_normal(ctx) -> None:
    _fresh_all(ctx)
    fw, dp = f"{FILL}.filler1.fill_weight", f"{FILL}.filler1.room_dp"
    ctx.event(NOW - timedelta(seconds=9), dp, 1, 12.0, 12.5)
    ctx.event(NOW - timedelta(seconds=8), fw, 1, 2.045, 2.04)
    ctx.event(NOW - timedelta(seconds=7), fw, 2, 2.07, 2.06)  # escalation: same alert, now an alarm
    row = _states(ctx)[FILL]
    assert (row["state"], row["state_text"]) == ("alarm", "alarm")
    assert (row["alerts_warning"], row["alerts_alarm"]) == (1, 1)

    ctx.event(NOW - timedelta(seconds=2), fw, 0, 2.0)
    ctx.event(NOW - timedelta(seconds=1), dp, 0, 18.0)
    assert _states(ctx)[FILL]["state"] == "normal"


def test_a_line_without_recent_samples_is_stale(ctx) -> None:
    stale_after = ctx.site.screen.stale_after_s
    _fresh_all(ctx, at=NOW - timedelta(seconds=stale_after + 5))
    # Only the bioreactor keeps reporting.
    ctx.feed(ctx.samples([(NOW - timedelta(seconds=1), f"{BIO}.br101.temperature", 37.0)]))
    states = _states(ctx)
    assert (states[BIO]["state"], states[BIO]["stale"]) == ("normal", False)
    assert (states[TAB]["state"], states[TAB]["state_text"], states[TAB]["stale"]) == ("stale", "stale", True)
    assert states[TAB]["age_s"] == pytest.approx(stale_after + 5)


def test_a_line_that_never_reported_is_stale_with_no_sample_time(ctx) -> None:
    ctx.feed(ctx.samples([(NOW, f"{BIO}.br101.temperature", 37.0)]))
    row = _states(ctx)[FILL]
    assert (row["state"], row["stale"], row["last_ts"], row["age_s"]) == ("stale", True, None, None)


def test_an_alarm_on_a_stale_line_shows_both(ctx) -> None:
    _fresh_all(ctx, at=NOW - timedelta(minutes=5))
    ctx.event(NOW - timedelta(minutes=5), f"{FILL}.filler1.fill_weight", 2, 2.08, 2.06)
    ctx.event(NOW - timedelta(minutes=5), f"{TAB}.press1.speed", 1, 72.0, 70.0)
    states = _states(ctx)
    assert (states[FILL]["state"], states[FILL]["state_text"], states[FILL]["stale"]) == ("alarm", "alarm · stale", True)
    assert (states[TAB]["state"], states[TAB]["state_text"]) == ("warning", "warning · stale")
    assert (states[BIO]["state"], states[BIO]["state_text"]) == ("stale", "stale")


def test_active_recent_and_cleared_alerts(ctx) -> None:
    fw, tw = f"{FILL}.filler1.fill_weight", f"{TAB}.press1.tablet_weight"
    ctx.event(NOW - timedelta(seconds=60), tw, 1, 258.0, 257.5)
    ctx.event(NOW - timedelta(seconds=50), tw, 0, 250.0)
    ctx.event(NOW - timedelta(seconds=40), f"{TAB}.press1.speed", 1, 71.0, 70.0)
    ctx.event(NOW - timedelta(seconds=30), fw, 2, 2.08, 2.06)

    active = q.active_alerts(ctx)
    assert active.schema == pl.Schema(q.ALERT_SCHEMA)
    assert active["severity"].to_list() == ["alarm", "warning"]  # alarms first
    first = active.row(0, named=True)
    assert first["tag_id"] == fw and first["line_id"] == FILL and first["unit_id"] == f"{FILL}.filler1"
    assert first["description"] == "Fill weight, check-weigher" and first["eng_unit"] == "g"
    assert first["value"] == pytest.approx(2.08) and first["active"]

    assert q.active_alerts(ctx, TAB)["tag_id"].to_list() == [f"{TAB}.press1.speed"]
    recent = q.recent_alerts(ctx, limit=2)
    assert recent.height == 2 and recent["tag_id"].to_list() == [fw, f"{TAB}.press1.speed"]
    cleared = q.cleared_alerts(ctx)
    assert cleared["tag_id"].to_list() == [tw]
    assert cleared["cleared_at"][0] == NOW - timedelta(seconds=50)


def test_tag_history_is_one_tag_in_its_window_oldest_first(ctx) -> None:
    _fresh_all(ctx, seconds=120)
    tag = f"{BIO}.br101.ph"
    frame = q.tag_history(ctx, tag, NOW - timedelta(seconds=60), NOW)
    assert frame.columns == ["ts", "value", "quality", "batch_id"]
    assert frame.height == 60  # 1 Hz, until is exclusive (the sample at NOW is left out)
    assert frame["ts"].is_sorted() and frame["ts"][0] == NOW - timedelta(seconds=60)
    assert set(frame["batch_id"]) == {BATCHES[f"{BIO}.br101"]}
    with pytest.raises(q.UnknownTagError, match="unknown tag 'lyon.usp.bio1.br101.nope'"):
        q.tag_history(ctx, f"{BIO}.br101.nope", NOW - timedelta(seconds=60))


def test_line_trends_bound_points_and_keep_a_spike(ctx) -> None:
    ctx.feed(plant_history(ctx, NOW, seconds=3600))
    spike_at = NOW - timedelta(seconds=1234)
    ctx.feed(ctx.samples([(spike_at, f"{FILL}.filler1.fill_weight", 2.5)]))
    trend = q.line_trends(ctx, FILL, NOW, 3600, points=100)
    filler = [t.tag.id for t in ctx.tags if t.unit_id == f"{FILL}.filler1"]
    assert trend.tags["name"].to_list()[:3] == ["fill_weight", "speed", "room_dp"]
    assert trend.tags["name"].to_list() == filler  # in the site file's order
    limits = trend.tags.row(0, named=True)
    assert (limits["alarm_low"], limits["warning_low"], limits["warning_high"], limits["alarm_high"]) == (1.94, 1.96, 2.04, 2.06)
    per_tag = trend.samples.group_by("tag_id").len()
    assert per_tag["len"].max() == 100 and per_tag.height == len(filler)  # LTTB: 100 points per tag
    fw = trend.samples.filter(pl.col("tag_id") == f"{FILL}.filler1.fill_weight")
    assert fw["value"].max() == 2.5 and spike_at in fw["ts"].to_list()
    assert trend.samples["ts"].min() >= NOW - timedelta(seconds=3600)

    with pytest.raises(q.UnknownLineError):
        q.line_trends(ctx, "lyon.ff.nope", NOW, 60)


def test_line_trends_since_reads_only_newer_samples(ctx) -> None:
    ctx.feed(plant_history(ctx, NOW, seconds=600))
    cut = NOW - timedelta(seconds=100)
    head = q.line_trends(ctx, BIO, cut, 600, points=600)
    tail = q.line_trends(ctx, BIO, NOW, 600, since=cut, spacing_s=head.spacing_s, points=600)
    assert tail.samples["ts"].min() >= cut and tail.anomaly.scores["ts"].min() >= cut
    # 100 s of the 600 s window: its share of the points, and all 100 samples fit in it.
    assert tail.samples.group_by("tag_id").len()["len"].max() == 100


def test_freshness_over_the_site(ctx) -> None:
    assert q.freshness(ctx, NOW) == {"last_ts": None, "age_s": None, "lines": 3, "lines_stale": 3}
    ctx.feed(ctx.samples([(NOW - timedelta(seconds=2), f"{BIO}.br101.temperature", 37.0)]))
    fresh = q.freshness(ctx, NOW)
    assert fresh["age_s"] == pytest.approx(2.0) and fresh["lines_stale"] == 2


def test_trend_follows_a_plant_clock_that_runs_ahead(ctx) -> None:
    """An accelerated simulator (or a plant clock ahead of ours) stamps samples after our 'now':
    the line's trends must end at its newest sample, not hide it."""
    ahead = NOW + timedelta(minutes=3)
    ctx.feed(plant_history(ctx, ahead, seconds=60))
    newest = ctx.live.latest().filter(pl.col("tag_id").str.starts_with(BIO + "."))["ts"].max()
    assert q.line_data_clock(ctx, BIO, NOW) == newest
    assert q.line_data_clock(ctx, BIO, ahead + timedelta(minutes=1)) == ahead + timedelta(minutes=1)
    trend = q.line_trends(ctx, BIO, q.line_data_clock(ctx, BIO, NOW) + timedelta(seconds=1), 600)
    assert trend.samples["ts"].max() > NOW + timedelta(minutes=2)
