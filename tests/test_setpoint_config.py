"""Setpoints in the site file: the demo files declare the simulator's, and a bad setpoint fails at
start-up naming the file, the key path and the reason (a range the wrong way round, a node id
that is not one, a source that is not OPC-UA or does not exist, no source to choose)."""

from __future__ import annotations

import copy

import pytest
import yaml

from controltower.site import SiteConfigError, load_site_config, parse_site_config
from simulators.plant import Plant
from tests.conftest import REPO

DEMO = REPO / "config" / "demo-site.yaml"
KEY = "sites[0].areas[0].lines[0].units[0].setpoints[0]"


def test_the_demo_declares_the_simulators_setpoints_with_its_ranges() -> None:
    site = load_site_config(DEMO)
    plant = Plant(site, seed=1)
    declared = site.unit_setpoints()
    assert declared
    for unit, setpoints in declared.items():
        ranges, units = plant.setpoint_ranges(unit), plant.setpoint_units(unit)
        for s in setpoints:
            assert s.node_id == f"ns=2;s={unit}.sp.{s.id}"
            assert (s.low, s.high, s.unit) == (*ranges[s.id], units[s.id])
            assert site.setpoint_source(s).kind == "opcua"


def _with(change: dict, *, add_opcua_source: bool = False) -> str:
    data = yaml.safe_load(DEMO.read_text())
    setpoint = data["sites"][0]["areas"][0]["lines"][0]["units"][0]["setpoints"][0]
    setpoint.update(change)
    for key in [k for k, v in change.items() if v is None]:
        del setpoint[key]
    if add_opcua_source:
        extra = copy.deepcopy(next(s for s in data["sources"] if s["kind"] == "opcua"))
        data["sources"].append({**extra, "name": "second-opcua"})
        for unit in (u for a in data["sites"][0]["areas"] for ln in a["lines"] for u in ln["units"]):
            for tag in (t for t in unit["tags"] if "opcua" in t):
                tag["source"] = "plant-opcua"  # the tags name theirs; only the setpoint is left to choose
    with pytest.raises(SiteConfigError) as error:
        parse_site_config(data, "site.yaml")
    return str(error.value)


def test_bad_setpoints_name_the_file_the_key_and_the_reason() -> None:
    assert _with({"low": 45.0}) == f"site.yaml: {KEY}: low (45.0) must be below high (40.0)"
    message = _with({"node_id": "lyon.usp.bio1.br101.sp.temperature"})
    assert message.startswith(f"site.yaml: {KEY}.node_id: 'lyon.usp.bio1.br101.sp.temperature' is not an OPC-UA node id")
    message = _with({"source": "plant-mqtt"})
    assert message.startswith(f"site.yaml: {KEY}.source: ") and "is mqtt; setpoints are written over OPC-UA" in message
    assert "nsu= namespace URIs are not supported" in _with({"node_id": "nsu=urn:plant;s=br101.sp.temperature"})
    assert "'nowhere' is not among sources" in _with({"source": "nowhere"})
    assert "unknown key" in _with({"minimum": 1.0})
    assert f"{KEY}.setpoints" not in _with({"id": "ph"})  # a duplicate id is named at the unit
    assert "duplicate setpoint id 'ph'" in _with({"id": "ph"})


def test_a_setpoint_without_source_needs_exactly_one_opcua_source() -> None:
    data = yaml.safe_load(DEMO.read_text())
    del data["sites"][0]["areas"][0]["lines"][0]["units"][0]["setpoints"][0]["source"]
    site = parse_site_config(data, "site.yaml")  # one OPC-UA source: it is the one
    assert site.setpoint_source(site.unit_setpoints()["lyon.usp.bio1.br101"][0]).name == "plant-opcua"
    message = _with({"source": None}, add_opcua_source=True)
    assert f"{KEY}.source: " in message and "name the OPC-UA source to write through" in message
