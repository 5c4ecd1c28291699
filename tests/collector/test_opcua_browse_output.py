"""What `controltower browse --yaml` makes of browsed variables, without a server."""

from __future__ import annotations

import re

import pytest
import yaml

from collector.sources.opcua_browse import BrowsedVariable, bindings_yaml, tag_id_from
from controltower.site import Tag

IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("temperature", "temperature"),
        ("TT-101 PV", "TT-101_PV"),
        ("  Température (°C) ", "Temp_rature_C"),
        ("_hidden.value", "hidden_value"),
        ("Ä", "tag"),
        ("x" * 80, "x" * 64),
    ],
)
def test_tag_ids_follow_the_site_identifier_pattern(name, expected):
    ident = tag_id_from(name)
    assert ident == expected and IDENTIFIER.match(ident) and len(ident) <= 64


def var(name: str, parent: str = "plant/line/unit", data_type: str = "Double", **kw) -> BrowsedVariable:
    return BrowsedVariable(
        node_id=f"ns=3;s={parent}.{name}",
        path=f"{parent}/{name}",
        display_name=name,
        data_type=data_type,
        **kw,
    )


def test_bindings_are_valid_tags_unique_per_group_with_eurange_as_alarm_limits():
    variables = [
        var("PV 1", unit="bar", eu_range=(0.0, 10.0)),
        var("PV.1", data_type="Int32", eu_range=(5.0, 5.0)),  # same id once sanitised; empty range
        var("Running", data_type="Boolean", eu_range=(0.0, 1.0)),
        var("PV 1", parent="plant/line/other", data_type="Float", description="Other unit"),
        var("Recipe", data_type="String"),
    ]
    text = bindings_yaml(variables, url="opc.tcp://plc:4840")
    tags = [Tag.model_validate(item) for item in yaml.safe_load(text)]
    assert [(t.id, t.data_type.value) for t in tags] == [
        ("PV_1", "float"),
        ("PV_1_2", "int"),
        ("Running", "bool"),
        ("PV_1", "float"),
    ]
    assert (tags[0].unit, tags[0].limits.alarm_low, tags[0].limits.alarm_high) == ("bar", 0.0, 10.0)
    assert tags[1].limits.alarm_low is None and tags[2].limits.alarm_high is None
    assert tags[3].description == "Other unit"
    assert "# plant/line/unit\n" in text and "# plant/line/other\n" in text
    assert "#   ns=3;s=plant/line/unit.Recipe (String)" in text
