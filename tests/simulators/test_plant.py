"""The plant: sample schema, ISA-95 columns, batches, simulated time, determinism per seed."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from controltower.samples import SAMPLE_SCHEMA
from controltower.site import SiteConfig
from simulators.plant import Plant
from tests.simulators.conftest import START


def test_step_returns_one_good_sample_per_tag_at_simulated_time(quiet_site: SiteConfig):
    plant = Plant(quiet_site, seed=1, start=START)
    frame = plant.step(0.5)
    assert frame.schema == pl.Schema(SAMPLE_SCHEMA)
    assert frame["tag_id"].to_list() == [t.tag_id for t in quiet_site.tag_table()]
    assert frame["ts"].unique().to_list() == [START + timedelta(seconds=0.5)]
    assert plant.now == START + timedelta(seconds=0.5)
    assert frame["quality"].unique().to_list() == ["good"]
    row = frame.filter(pl.col("tag_id") == "lyon.ff.fill1.filler1.fill_weight").row(0, named=True)
    assert (row["site"], row["area"], row["line"], row["unit"]) == ("lyon", "ff", "fill1", "filler1")
    assert row["batch_id"] == "FILLER1-0001"
    assert frame["value"].is_finite().all()


def test_same_seed_same_frames_other_seed_other_values(quiet_site: SiteConfig):
    a, b, c = (Plant(quiet_site, seed=s, start=START) for s in (11, 11, 12))
    for _ in range(20):
        fa, fb, fc = a.step(0.5), b.step(0.5), c.step(0.5)
        assert_frame_equal(fa, fb)
    assert not fa["value"].equals(fc["value"])


def test_run_equals_repeated_steps(quiet_site: SiteConfig):
    stepped = Plant(quiet_site, seed=3, start=START)
    frames = pl.concat([stepped.step(0.5) for _ in range(10)])
    assert_frame_equal(Plant(quiet_site, seed=3, start=START).run(5.0, 0.5), frames)


def test_long_steps_are_sub_stepped_and_batches_roll_over(quiet_site: SiteConfig):
    plant = Plant(quiet_site, seed=2, start=START)
    assert plant.unit_state("br101") == ("BR101-0001", "inoculation")
    plant.step(400.0)
    assert plant.unit_state("lyon.usp.bio1.br101") == ("BR101-0001", "growth")
    for _ in range(10):
        frame = plant.step(400.0)  # 4400 s: past the first bioreactor batch
    assert plant.unit_state("br101")[0] == "BR101-0002"
    assert frame.filter(pl.col("unit") == "br101")["batch_id"].unique().to_list() == ["BR101-0002"]
    for info in quiet_site.tag_table():  # still inside the warning limits after big steps
        value = frame.filter(pl.col("tag_id") == info.tag_id)["value"].item()
        lim = info.tag.limits
        assert lim.warning_low is None or value > lim.warning_low, info.tag_id
        assert lim.warning_high is None or value < lim.warning_high, info.tag_id


def test_unknown_unit_is_refused(quiet_site: SiteConfig):
    with pytest.raises(ValueError, match="nope"):
        Plant(quiet_site, seed=1, start=START).unit_state("nope")


def test_naive_start_is_utc_and_default_start_is_now(quiet_site: SiteConfig):
    assert Plant(quiet_site, seed=1, start=START.replace(tzinfo=None)).start == START
    assert Plant(quiet_site, seed=1).start.tzinfo is not None


def test_rebase_moves_start_and_scheduled_faults_until_the_plant_has_run(demo_site: SiteConfig):
    plant = Plant(demo_site, seed=1, start=START)
    later = START + timedelta(hours=1)
    plant.rebase(later)
    assert plant.start == later and plant.now == later
    fill = "lyon.ff.fill1.filler1.fill_weight"
    values = [plant.step(20.0).filter(pl.col("tag_id") == fill)["value"].item() for _ in range(3)]
    assert values[0] < 2.04 < values[1] and values[2] < 2.04  # the demo spike, [40 s, 60 s), moved along
    with pytest.raises(RuntimeError):
        plant.rebase(START)
