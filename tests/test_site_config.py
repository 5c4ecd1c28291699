"""Site files: every shipped example validates, and each kind of mistake gets a message naming
the file, the key path and the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controltower.site import SiteConfigError, load_site_config, parse_site_config
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "config").glob("*.yaml"))


def demo_data() -> dict:
    return yaml.safe_load((REPO / "config" / "demo-site.yaml").read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    site = load_site_config(path)
    assert site.tag_table(), f"{path.name} defines no tag"
    assert all(t.source is not None for t in site.tag_table()), "every tag resolves to a source"


def test_at_least_three_examples_ship() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"demo-site.yaml", "opcua-site.yaml", "mqtt-site.yaml"} <= names


def test_broken_yaml_names_file_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("enterprise: Demo\nsites:\n  - id: lyon\n    areas: [\n")
    with pytest.raises(SiteConfigError) as err:
        load_site_config(bad)
    text = str(err.value)
    assert str(bad) in text and "not valid YAML at line" in text


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    data = demo_data()
    data["sites"][0]["areas"][0]["lines"][0]["units"][0]["tags"][0]["limits"]["alarm_hgh"] = 40
    with pytest.raises(SiteConfigError) as err:
        parse_site_config(data, "site.yaml")
    assert "site.yaml: sites[0].areas[0].lines[0].units[0].tags[0].limits.alarm_hgh: unknown key" in str(err.value)


def test_wrong_type_names_key_and_value() -> None:
    data = demo_data()
    data["sources"][0]["publishing_interval_ms"] = "fast"
    with pytest.raises(SiteConfigError) as err:
        parse_site_config(data, "site.yaml")
    message = str(err.value)
    assert "site.yaml: sources[0].publishing_interval_ms:" in message
    assert "valid integer" in message and "'fast'" in message


def test_missing_key_is_named() -> None:
    data = demo_data()
    del data["enterprise"]
    with pytest.raises(SiteConfigError, match=r"site.yaml: enterprise: required key is missing"):
        parse_site_config(data, "site.yaml")


def test_limits_out_of_order_are_rejected() -> None:
    data = demo_data()
    data["sites"][0]["areas"][0]["lines"][0]["units"][0]["tags"][0]["limits"] = {"alarm_low": 40, "alarm_high": 30}
    with pytest.raises(SiteConfigError, match=r"tags\[0\]\.limits: alarm_low \(40.0\) must be below alarm_high"):
        parse_site_config(data, "site.yaml")


def test_tag_needs_exactly_one_binding() -> None:
    data = demo_data()
    tag = data["sites"][0]["areas"][0]["lines"][0]["units"][0]["tags"][0]
    tag["mqtt"] = {"topic": "a/b", "field": "x"}
    with pytest.raises(SiteConfigError, match="exactly one binding"):
        parse_site_config(data, "site.yaml")


def test_binding_to_unknown_source_is_named() -> None:
    data = demo_data()
    data["sites"][0]["areas"][0]["lines"][0]["units"][0]["tags"][0]["source"] = "nope"
    with pytest.raises(SiteConfigError, match=r"source 'nope' is not among sources"):
        parse_site_config(data, "site.yaml")


def test_duplicate_ids_are_rejected() -> None:
    data = demo_data()
    tags = data["sites"][0]["areas"][0]["lines"][0]["units"][0]["tags"]
    tags.append(dict(tags[0]))
    with pytest.raises(SiteConfigError, match="duplicate tag id 'temperature'"):
        parse_site_config(data, "site.yaml")


def test_fault_on_unknown_tag_is_rejected() -> None:
    data = demo_data()
    data["simulation"]["faults"][0]["tag"] = "lyon.ff.fill1.filler1.nothing"
    with pytest.raises(SiteConfigError, match="unknown tag 'lyon.ff.fill1.filler1.nothing'"):
        parse_site_config(data, "site.yaml")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match="cannot read the file"):
        load_site_config(tmp_path / "absent.yaml")


def test_tag_table_has_full_ids_and_paths() -> None:
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    info = {t.tag_id: t for t in site.tag_table()}
    temp = info["lyon.usp.bio1.br101.temperature"]
    assert (temp.site, temp.area, temp.line, temp.unit) == ("lyon", "usp", "bio1", "br101")
    assert temp.source == "plant-opcua" and temp.tag.limits.alarm_high == 39.0
    assert info["lyon.ff.fill1.filler1.fill_weight"].source == "plant-mqtt"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controltower.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_config_check_ok_and_error(tmp_path: Path) -> None:
    ok = run_cli("config", "check", "config/demo-site.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 site(s), 28 tag(s), 2 source(s))" in ok.stdout

    data = demo_data()
    data["screen"]["port"] = "eighty"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    err = run_cli("config", "check", str(bad))
    assert err.returncode == 2
    assert f"{bad}: screen.port:" in err.stderr


def test_cli_config_schema_is_json_schema() -> None:
    out = run_cli("config", "schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["title"] == "SiteConfig"
    assert {"enterprise", "sites"} <= set(schema["required"])
    assert "Tag" in schema["$defs"] and "Limits" in schema["$defs"]
