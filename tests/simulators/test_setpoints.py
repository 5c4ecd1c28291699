"""Operator setpoints on the plant: range checks with clear errors, the process following a
write, the override ending with its batch (or lasting on units without batches), and replay."""

from __future__ import annotations

import numpy as np
import pytest

from controltower.site import SiteConfig
from simulators.plant import Plant
from tests.simulators.conftest import START

BIO = "lyon.usp.bio1.br101"
FILLER = "lyon.ff.fill1.filler1"


def test_ranges_and_refusals_name_unit_setpoint_and_range(quiet_site: SiteConfig) -> None:
    plant = Plant(quiet_site, seed=1, start=START)
    assert plant.setpoints(BIO) == {"temperature": 37.0, "ph": 7.05, "dissolved_oxygen": 50.0, "pressure": 0.2}
    assert plant.setpoint_ranges(FILLER) == {"speed": (100.0, 400.0), "target_fill_weight": (1.5, 2.5)}
    assert plant.setpoint_units(FILLER)["speed"] == "vials/min"
    with pytest.raises(ValueError, match=r"unit lyon.usp.bio1.br101: setpoint temperature = 45.0 is outside its range \[30, 40\] degC"):
        plant.write_setpoint(BIO, "temperature", 45.0)
    with pytest.raises(ValueError, match=r"no setpoint 'agitation'; it has \['dissolved_oxygen', 'ph', 'pressure', 'temperature'\]"):
        plant.write_setpoint(BIO, "agitation", 100.0)
    with pytest.raises(ValueError, match="outside its range"):
        plant.write_setpoint(BIO, "temperature", float("nan"))
    assert plant.setpoint_overrides(BIO) == {}
    assert plant.write_setpoint(BIO, "temperature", 38.0) == 37.0
    assert plant.setpoints(BIO)["temperature"] == 38.0


def test_the_process_follows_and_the_override_ends_with_the_batch(quiet_site: SiteConfig) -> None:
    plant = Plant(quiet_site, seed=2, start=START)
    plant.write_setpoint(FILLER, "speed", 200.0)
    plant.write_setpoint("lyon.osd.tab1.press1", "target_weight", 260.0)
    plant.run(600, 1.0)
    values = plant.last_values
    assert abs(values[f"{FILLER}.speed"] - 200.0) < 5.0  # 300 vials/min by the recipe
    assert abs(values["lyon.osd.tab1.press1.tablet_weight"] - 260.0) < 6.0  # 250 mg by the recipe
    batch = plant.unit_state(FILLER)[0]
    while plant.unit_state(FILLER)[0] == batch:  # the filler's batch is 20 simulated minutes
        plant.advance(10.0)
    assert plant.setpoint_overrides(FILLER) == {} and plant.setpoints(FILLER)["speed"] == 300.0


def test_units_without_batches_keep_the_override_until_cleared(demo_site: SiteConfig) -> None:
    from controltower.site import parse_site_config

    data = demo_site.model_dump(mode="json", exclude_none=True)
    data["sites"][0]["areas"][0]["lines"][0]["units"].append({
        "id": "wfi1", "kind": "wfi_loop",
        "tags": [{"id": "supply_temperature", "unit": "degC", "limits": {"warning_low": 80, "warning_high": 86},
                  "opcua": {"node_id": "ns=2;s=x"}}],
    })
    data["simulation"]["faults"] = []
    plant = Plant(parse_site_config(data), seed=3, start=START)
    wfi = "lyon.usp.bio1.wfi1"
    plant.write_setpoint(wfi, "supply_temperature", 80.0)
    plant.run(2 * 3600, 5.0)  # two "batches" (hours) of the loop
    assert plant.setpoint_overrides(wfi) == {"supply_temperature": 80.0}
    assert abs(plant.last_values[f"{wfi}.supply_temperature"] - 80.0) < 0.5
    plant.clear_setpoint(wfi)
    assert plant.setpoints(wfi) == {"supply_temperature": 83.0}


def test_same_writes_at_the_same_times_replay_identically(quiet_site: SiteConfig) -> None:
    def run() -> np.ndarray:
        plant = Plant(quiet_site, seed=9, start=START)
        plant.run(120, 1.0)
        plant.write_setpoint(BIO, "dissolved_oxygen", 60.0)
        plant.run(300, 1.0)
        plant.write_setpoint(FILLER, "target_fill_weight", 2.1)
        return plant.run(300, 1.0)["value"].to_numpy()

    first, second = run(), run()
    assert np.array_equal(first, second, equal_nan=True)
    untouched = Plant(quiet_site, seed=9, start=START)
    untouched.run(720, 1.0)
    assert not np.array_equal(untouched.run(300, 1.0)["value"].to_numpy(), first, equal_nan=True)


def test_every_unit_has_a_product_and_a_recipe_its_own_or_its_kinds() -> None:
    from controltower.site import load_site_config
    from simulators.batches import PRODUCTS
    from simulators.plant import Plant
    from tests.screen.demo_context import DEMO_SITE

    site = load_site_config(DEMO_SITE)
    bio = site.sites[0].areas[0].lines[0].units[0]
    custom = bio.model_copy(update={"product": "mAb-202", "recipe": "FB-202 v1"})
    site.sites[0].areas[0].lines[0].units[0] = custom
    info = Plant(site, seed=1).batch_info()
    assert info["lyon.usp.bio1.br101"] == ("mAb-202", "FB-202 v1")
    assert info["lyon.osd.tab1.press1"] == PRODUCTS["tablet_press"]
