"""Interoperability: the OPC-UA source against a server we did not write (node-opcua, an
independent OPC-UA stack, installed from npm by `make test`), and node-opcua's client against
the project's simulator. Both directions speak the same protocol, not just to each other."""

from __future__ import annotations

import asyncio
import selectors
import subprocess
import time
from pathlib import Path

import polars as pl

from collector.sources.opcua import OpcUaSource
from controltower.site import parse_site_config
from tests.conftest import REPO, free_port, missing, require_binary
from tests.integration.conftest import stop_process

INTEROP = REPO / "tests" / "interop"


def require_node_opcua() -> str:
    node = require_binary("node")
    if not (INTEROP / "node_modules" / "node-opcua").is_dir():
        missing("node-opcua is not installed: run `make test` (npm install --prefix tests/interop)")
    return node


def start_node(script: str, *args: str, ready: str = "READY", timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([require_node_opcua(), str(INTEROP / script), *args], cwd=INTEROP,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{script} exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            if line.startswith(ready):
                return proc, line.strip()
    stop_process(proc)
    raise TimeoutError(f"{script} did not print {ready} within {timeout_s}s")


def interop_site(url: str):
    return parse_site_config({
        "enterprise": "Interop",
        "sites": [{"id": "lab", "areas": [{"id": "a", "lines": [{"id": "line1", "units": [{"id": "u1", "tags": [
            {"id": "temperature", "unit": "degC", "opcua": {"node_id": "ns=1;s=Line1.Temperature"}},
            {"id": "pressure", "unit": "bar", "opcua": {"node_id": "ns=1;s=Line1.Pressure"}},
        ]}]}]}]}],
        "sources": [{"kind": "opcua", "name": "node-opcua", "url": url, "publishing_interval_ms": 100,
                     "flush_interval_ms": 200}],
    }, "interop.yaml")


async def test_collector_reads_a_node_opcua_server(tmp_path: Path) -> None:
    port = free_port()
    proc, _ = await asyncio.to_thread(start_node, "opcua_server.js", str(port), str(tmp_path))
    try:
        site = interop_site(f"opc.tcp://127.0.0.1:{port}/ua/plant")
        source = OpcUaSource(site.sources[0], site.tag_table(), data_dir=tmp_path)
        batches: list[pl.DataFrame] = []

        async def emit(batch: pl.DataFrame) -> None:
            batches.append(batch)

        task = asyncio.create_task(source.run(emit))
        for _ in range(100):
            if sum(b.height for b in batches) >= 20:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        stop_process(proc)

    frame = pl.concat(batches).sort("tag_id", "ts")
    assert source.health.last_error is None, source.health.last_error
    temps = frame.filter(pl.col("tag_id") == "lab.a.line1.u1.temperature")
    pressures = frame.filter(pl.col("tag_id") == "lab.a.line1.u1.pressure")
    assert temps.height >= 5 and pressures.height >= 5
    assert (temps["quality"].cast(str) == "good").all()
    # The server's formula, read back: 37 + 0.001 n, rising; source timestamps rising with it.
    values = temps["value"].to_numpy()
    assert ((values - 37.0) / 0.001).round(6).tolist() == ((values - 37.0) / 0.001).round().tolist()
    assert (temps["value"].diff().drop_nulls() > 0).all() and (temps["ts"].diff().drop_nulls().dt.total_milliseconds() > 0).all()
    assert temps["server_ts"].null_count() == 0 and frame["line"].unique().to_list() == ["line1"]


async def test_node_opcua_client_reads_the_simulator(tmp_path: Path) -> None:
    from controltower.demo import point_sources_at
    from controltower.site import load_site_config
    from simulators.service import SimulatorService

    url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    site = point_sources_at(site, opcua_url=url, mqtt_url="mqtt://127.0.0.1:1")
    simulator = SimulatorService(site, data_dir=tmp_path, opcua_url=url, mqtt_url=None)
    await simulator.start()
    ticking = asyncio.create_task(simulator.run(None))
    try:
        await asyncio.sleep(1.0)
        result = await asyncio.to_thread(
            subprocess.run,
            [require_node_opcua(), str(INTEROP / "opcua_read.js"), url, "ns=2;s=lyon.usp.bio1.br101.temperature"],
            cwd=INTEROP, capture_output=True, text=True, timeout=60,
        )
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
        await simulator.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    fields = dict(line.split("=", 1) for line in result.stdout.strip().splitlines() if "=" in line)
    assert fields["status"] == "Good"
    assert 36.0 < float(fields["value"]) < 38.0
    assert fields["unit"] == "degC" and fields["range"] == "35,39"  # as the site file says
