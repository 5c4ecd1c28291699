"""`controltower browse` against the project's OPC-UA simulator: the demo plant's variables
come back with units and EURange, and `--yaml` prints tag bindings a site file accepts."""

from __future__ import annotations

import argparse
import shutil

import pytest
import yaml

from collector.sources.opcua_browse import add_browse_arguments, collect_variables, run_browse
from controltower.site import SiteConfig, Tag, load_site_config
from simulators.opcua_server import PlantOpcUaServer
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def site() -> SiteConfig:
    return load_site_config(REPO / "config" / "demo-site.yaml")


@pytest.fixture
async def server(site):
    server = PlantOpcUaServer(site, url=f"opc.tcp://127.0.0.1:{free_port()}/sim")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="controltower browse")
    add_browse_arguments(parser)
    return parser.parse_args(argv)


def opcua_tags(site: SiteConfig) -> dict[str, Tag]:
    return {tag.opcua.node_id: tag for _, tag in site.iter_tags() if tag.opcua is not None}


async def test_browse_lists_the_demo_variables_with_units_and_eurange(server, site):
    variables = await collect_variables(server.url)
    by_node = {v.node_id: v for v in variables}
    expected = opcua_tags(site)
    assert set(expected) <= set(by_node)
    for node_id, tag in expected.items():
        var = by_node[node_id]
        assert var.display_name == tag.id and var.data_type == "Double" and var.unit == tag.unit
        assert var.eu_range is not None and var.eu_range[0] < var.eu_range[1]
    temperature = by_node["ns=2;s=lyon.usp.bio1.br101.temperature"]
    assert temperature.path == "Demo Pharma/lyon/usp/bio1/br101/temperature"
    assert temperature.eu_range == (35.0, 39.0)
    assert by_node["ns=2;s=lyon.usp.bio1.br101.batch_id"].data_type == "String"
    # Nothing from the Server object's diagnostics.
    assert all(v.node_id.startswith("ns=2;") for v in variables)


async def test_browse_root_depth_and_patterns(server, site):
    under_bio = await collect_variables(server.url, root="ns=2;s=lyon.usp.bio1", depth=2)
    assert {v.path for v in under_bio} >= {"br101/temperature", "br101/ph"}
    assert await collect_variables(server.url, root="ns=2;s=lyon.usp.bio1", depth=1) == []
    # The unit's state variables (batch_id, phase, product, recipe, last_batch_transition,
    # unacknowledged_batch_events) left out.
    picked = await collect_variables(
        server.url, include=["*/br101/*", "*fill_weight"],
        exclude=["*batch_id", "*phase", "*_batch_*", "*/product", "*/recipe"],
    )
    br101 = [tag.id for node_id, tag in opcua_tags(site).items() if ".br101." in node_id]
    assert "dissolved_oxygen" in br101
    assert sorted(v.display_name for v in picked) == sorted([*br101, "fill_weight"])


async def test_browse_yaml_prints_tag_bindings_a_site_file_accepts(server, site, capsys):
    code = await _run_in_thread(parse(server.url, "--yaml", "--exclude", "*/ff/*"))
    out = capsys.readouterr().out
    assert code == 0
    assert "# Demo Pharma/lyon/usp/bio1/br101" in out
    tags = [Tag.model_validate(item) for item in yaml.safe_load(out)]
    expected = {k: v for k, v in opcua_tags(site).items() if ".ff." not in k}
    made = {t.opcua.node_id for t in tags}
    assert made >= set(expected)
    # Besides the site's tags, only the simulator's numeric unit state (a counter) becomes a tag.
    assert all(n.endswith(".unacknowledged_batch_events") for n in made - set(expected)), made - set(expected)
    temperature = next(t for t in tags if t.id == "temperature")
    assert temperature.unit == "degC"
    assert (temperature.limits.alarm_low, temperature.limits.alarm_high) == (35.0, 39.0)
    assert temperature.description.startswith("Broth temperature")
    assert "ns=2;s=lyon.usp.bio1.br101.batch_id (String)" in out  # listed, not made a tag


async def test_browse_table_and_an_unreachable_server(server, capsys):
    assert await _run_in_thread(parse(server.url, "--include", "*temperature")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NODE", "ID", "DISPLAY", "NAME", "DATA", "TYPE", "UNIT", "EURANGE"]
    assert out[1].split() == [
        "ns=2;s=lyon.usp.bio1.br101.temperature",
        "temperature",
        "Double",
        "degC",
        "35",
        "..",
        "39",
    ]
    assert len(out) == 2
    assert await _run_in_thread(parse(f"opc.tcp://127.0.0.1:{free_port()}/none", "--timeout", "1")) == 1
    assert "cannot browse" in capsys.readouterr().err
    assert await _run_in_thread(parse(server.url, "--security-policy", "Basic256Sha256")) == 2
    assert "needs --security-mode" in capsys.readouterr().err


async def test_browse_a_secured_server_with_username(site, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CT_BROWSE_PASSWORD", "pw-for-browse")
    server = PlantOpcUaServer(
        site,
        url=f"opc.tcp://127.0.0.1:{free_port()}/sim",
        security=["Basic256Sha256_SignAndEncrypt"],
        certificate=tmp_path / "server" / "cert.der",
        private_key=tmp_path / "server" / "key.pem",
        users={"engineer": "pw-for-browse"},
    )
    await server.start()
    try:
        args = parse(
            server.url,
            "--include",
            "*ph",
            "--data-dir",
            str(tmp_path / "data"),
            "--security-policy",
            "Basic256Sha256",
            "--security-mode",
            "SignAndEncrypt",
            "--username",
            "engineer",
            "--password-env",
            "CT_BROWSE_PASSWORD",
        )
        assert await _run_in_thread(args) == 1  # the server is not trusted yet
        err = capsys.readouterr().err
        assert "server certificate is not trusted; to trust it, copy rejected/" in err
        (rejected,) = (tmp_path / "data" / "pki" / "rejected").iterdir()
        (tmp_path / "data" / "pki" / "trusted").mkdir()
        shutil.copy(rejected, tmp_path / "data" / "pki" / "trusted")
        assert await _run_in_thread(args) == 0
        assert "ns=2;s=lyon.usp.bio1.br101.ph" in capsys.readouterr().out
    finally:
        await server.stop()


async def _run_in_thread(args: argparse.Namespace) -> int:
    """run_browse owns its event loop (asyncio.run), as the CLI calls it; the server runs in this one."""
    import asyncio

    return await asyncio.to_thread(run_browse, args)
