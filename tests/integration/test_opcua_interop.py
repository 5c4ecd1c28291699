"""Interoperability: the OPC-UA source against a server we did not write (node-opcua, an
independent OPC-UA stack, installed from npm by `make test`), and node-opcua's client against
the project's simulator. Both directions speak the same protocol, not just to each other."""

from __future__ import annotations

import asyncio
import queue
import shutil
import subprocess
import threading
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


def start_node(script: str, *args: str, ready: str = "READY", timeout_s: float = 150) -> tuple[subprocess.Popen, str]:
    # node-opcua's server start (its certificate, on first use) takes seconds on an idle machine
    # and a minute or more on a loaded one: the bound is generous, a hang still fails.
    proc = subprocess.Popen([require_node_opcua(), str(INTEROP / script), *args], cwd=INTEROP,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A thread reads the lines: a script that prints two lines at once must not leave the second
    # in a buffer that select() on the pipe cannot see (and it keeps the pipe from filling).
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout_s
    proc.printed = []  # what the script printed before `ready`
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                raise RuntimeError(f"{script} exited with {proc.returncode}: {proc.stderr.read()[-2000:]}") from None
            continue
        if line.startswith(ready):
            return proc, line.strip()
        proc.printed.append(line.strip())
    stop_process(proc)
    raise TimeoutError(f"{script} did not print {ready} within {timeout_s}s; it printed {proc.printed[-10:]}, "
                       f"stderr {proc.stderr.read()[-1000:]!r}")


def interop_site(url: str, *, temperature: dict | None = None, pressure: dict | None = None,
                 speed: dict | None = None, **source: object):
    tags = [
        {"id": "temperature", "unit": "degC", "opcua": {"node_id": "ns=1;s=Line1.Temperature", **(temperature or {})}},
        {"id": "pressure", "unit": "bar", "opcua": {"node_id": "ns=1;s=Line1.Pressure", **(pressure or {})}},
    ]
    if speed is not None:
        tags.append({"id": "speed", "opcua": {"node_id": "ns=1;s=Line1.Speed", **speed}})
    return parse_site_config({
        "enterprise": "Interop",
        "sites": [{"id": "lab", "areas": [{"id": "a", "lines": [{"id": "line1", "units": [{"id": "u1", "tags": tags}]}]}]}],
        "sources": [{"kind": "opcua", "name": "node-opcua", "url": url, "publishing_interval_ms": 100,
                     "flush_interval_ms": 200, **source}],
    }, "interop.yaml")


async def collect(source: OpcUaSource, until, timeout_s: float = 10.0) -> pl.DataFrame:
    """Run `source` until `until(frame so far)` holds (or the timeout); return what it emitted."""
    batches: list[pl.DataFrame] = []

    async def emit(batch: pl.DataFrame) -> None:
        batches.append(batch)

    def frame() -> pl.DataFrame:
        return pl.concat(batches) if batches else pl.DataFrame()

    task = asyncio.create_task(source.run(emit))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (batches and until(frame())):
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return frame()


async def test_collector_reads_a_node_opcua_server(tmp_path: Path) -> None:
    port = free_port()
    proc, _ = await asyncio.to_thread(start_node, "opcua_server.js", str(port), str(tmp_path))
    try:
        site = interop_site(f"opc.tcp://127.0.0.1:{port}/ua/plant")
        source = OpcUaSource(site.sources[0], site.tag_table(), data_dir=tmp_path)
        frame = await collect(source, lambda f: f.height >= 20)
    finally:
        stop_process(proc)

    frame = frame.sort("tag_id", "ts")
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


async def test_sign_and_encrypt_against_node_opcua(tmp_path: Path) -> None:
    """Basic256Sha256 SignAndEncrypt with node-opcua's stack on the server side: the collector
    trusts the server's certificate (copied into its trust list), node-opcua accepts the
    collector's, and values arrive over the encrypted channel."""
    port = free_port()
    proc, _ = await asyncio.to_thread(start_node, "opcua_server.js", str(port), str(tmp_path / "server"))
    try:
        certificate = Path(next(line.split(" ", 1)[1] for line in proc.printed if line.startswith("CERT ")))
        data = tmp_path / "data"
        (data / "pki" / "trusted").mkdir(parents=True)
        shutil.copy(certificate, data / "pki" / "trusted" / "node-opcua.pem")
        site = interop_site(f"opc.tcp://127.0.0.1:{port}/ua/plant", security_policy="Basic256Sha256",
                            security_mode="SignAndEncrypt")
        source = OpcUaSource(site.sources[0], site.tag_table(), data_dir=data)
        negotiated: list = []

        def enough(frame: pl.DataFrame) -> bool:
            negotiated.append(source.session_security)
            return frame.filter(pl.col("quality") == "good")["tag_id"].n_unique() == 2 and frame.height >= 10

        frame = await collect(source, enough, timeout_s=30)
    finally:
        stop_process(proc)
    assert source.health.last_error is None, source.health.last_error
    assert ("Basic256Sha256", "SignAndEncrypt") in negotiated
    temps = frame.filter(pl.col("tag_id") == "lab.a.line1.u1.temperature")
    assert temps.height >= 3 and (temps["quality"].cast(str) == "good").all()
    assert ((temps["value"] - 37.0) / 0.001).round(6).to_list() == ((temps["value"] - 37.0) / 0.001).round().to_list()


async def test_per_tag_sampling_interval_and_percent_deadband_on_node_opcua(tmp_path: Path) -> None:
    """node-opcua samples at the requested interval: temperature every 1000 ms, pressure every
    100 ms (the server updates both every 200 ms). Speed (n = 0, 1, 2... every 200 ms) has no
    EURange, so its percent deadband is refused with a message naming the tag and the reason."""
    port = free_port()
    proc, _ = await asyncio.to_thread(start_node, "opcua_server.js", str(port), str(tmp_path))
    try:
        site = interop_site(
            f"opc.tcp://127.0.0.1:{port}/ua/plant",
            temperature={"sampling_interval_ms": 1000},
            pressure={"sampling_interval_ms": 100, "queue_size": 20},
            speed={"deadband_percent": 5},
        )
        source = OpcUaSource(site.sources[0], site.tag_table(), data_dir=tmp_path)
        started: list[float] = []

        def long_enough(frame: pl.DataFrame) -> bool:
            if not started:
                started.append(time.monotonic())
            return time.monotonic() - started[0] > 4.0

        frame = await collect(source, long_enough, timeout_s=20)
    finally:
        stop_process(proc)
    counts = dict(frame.group_by("tag_id").len().iter_rows())
    temps, pressures = counts.get("lab.a.line1.u1.temperature", 0), counts.get("lab.a.line1.u1.pressure", 0)
    # ~4-5 s of data: about one temperature sample a second, about five pressure samples a second.
    assert 2 <= temps <= 8, counts
    assert pressures >= 3 * temps, counts
    assert "lab.a.line1.u1.speed" not in counts
    error = source.health.last_error or ""
    assert "tag lab.a.line1.u1.speed: deadband_percent needs the EURange property of node ns=1;s=Line1.Speed" in error, error


async def test_percent_and_absolute_deadbands_on_node_opcua(tmp_path: Path) -> None:
    """Temperature moves 0.001 degC per 200 ms tick: a 1 % deadband of its EURange (0..100, so
    1 degC) lets only the first value through. Pressure moves 0.0001 bar per tick: an absolute
    deadband of 0.00025 bar reports about every third tick (compared with the last value reported)."""
    port = free_port()
    proc, _ = await asyncio.to_thread(start_node, "opcua_server.js", str(port), str(tmp_path))
    try:
        site = interop_site(
            f"opc.tcp://127.0.0.1:{port}/ua/plant",
            temperature={"deadband_percent": 1},
            pressure={"deadband_abs": 0.00025},
        )
        source = OpcUaSource(site.sources[0], site.tag_table(), data_dir=tmp_path)
        started: list[float] = []

        def long_enough(frame: pl.DataFrame) -> bool:
            if not started:
                started.append(time.monotonic())
            return time.monotonic() - started[0] > 4.0

        frame = await collect(source, long_enough, timeout_s=20)
    finally:
        stop_process(proc)
    assert source.health.last_error is None, source.health.last_error
    temps = frame.filter(pl.col("tag_id") == "lab.a.line1.u1.temperature")
    pressures = frame.filter(pl.col("tag_id") == "lab.a.line1.u1.pressure").sort("ts")
    assert temps.height == 1, temps
    # ~20 ticks in 4 s: without the deadband 20 samples, with it about 7.
    assert 3 <= pressures.height <= 10, pressures
    steps = pressures["value"].diff().drop_nulls()
    assert (steps > 0.00025).all() and (steps < 0.00045).all(), steps.to_list()


async def test_a_frozen_server_is_detected_without_the_connection_closing(tmp_path: Path) -> None:
    """A server that stops answering while its socket stays open (SIGSTOP: as a hung PLC or a
    pulled cable looks) is detected by the keep-alive probe: the tags go stale within seconds,
    and once it answers again the source reconnects, resubscribes and records the gap."""
    import os
    import signal

    from collector.gaps import GapLog

    port = free_port()
    proc, _ = await asyncio.to_thread(start_node, "opcua_server.js", str(port), str(tmp_path))
    site = interop_site(f"opc.tcp://127.0.0.1:{port}/ua/plant", publish_timeout_s=3)
    source = OpcUaSource(site.sources[0], site.tag_table(), data_dir=tmp_path)
    batches: list[pl.DataFrame] = []

    async def emit(batch: pl.DataFrame) -> None:
        batches.append(batch)

    def frame(since: int = 0) -> pl.DataFrame:
        return pl.concat(batches[since:]) if batches[since:] else pl.DataFrame(schema={"value": pl.Float64})

    async def until(check, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {source.health}"
            await asyncio.sleep(0.1)

    task = asyncio.create_task(source.run(emit))
    try:
        await until(lambda: frame().height >= 6, 20, "values")
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        await until(lambda: source.health.stale_since is not None, 15, "the loss to be detected")
        assert time.monotonic() - frozen < 10
        stale = frame().filter(pl.col("value").is_null())
        assert stale["tag_id"].n_unique() == 2 and (stale["quality"].cast(str) == "bad").all()
        os.kill(proc.pid, signal.SIGCONT)
        seen = len(batches)
        await until(lambda: source.health.gaps == 1 and frame(seen)["value"].drop_nulls().len() >= 4, 40,
                    "values after the server answers again")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stop_process(proc)
    [gap] = GapLog(tmp_path / "gaps.jsonl").read()
    assert gap.tags == 2 and gap.closed_by == "reconnect" and gap.duration_s > 0
