"""Fixtures that start real servers on free loopback ports, each with its own temporary
directory, and stop them after the test. No test relies on a system service."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_binary


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


async def wait_until(condition, timeout_s: float, what: str) -> None:
    """Poll `condition()` on the event loop until true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class MosquittoServer:
    def __init__(self, port: int, proc: subprocess.Popen, log_path: Path):
        self.port = port
        self.proc = proc
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def start_mosquitto(tmp: Path) -> MosquittoServer:
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    log = tmp / "mosquitto.log"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        f"log_dest file {log}\n"
        "max_queued_messages 100000\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_port(port, proc, what="mosquitto")
    return MosquittoServer(port, proc, log)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = start_mosquitto(tmp_path / "mosquitto")
    try:
        yield server
    finally:
        stop_process(server.proc)


# --- historians: InfluxDB 1.x and VictoriaMetrics ----------------------------------------------


class HttpServer:
    """A server with an HTTP API on 127.0.0.1:`port`."""

    def __init__(self, port: int, proc: subprocess.Popen, data_dir: Path, log_path: Path):
        self.port = port
        self.proc = proc
        self.data_dir = data_dir
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 20.0, what: str = "server") -> None:
    """Wait until GET `url` answers 2xx (the port may listen before the server is ready)."""
    import urllib3

    http = urllib3.PoolManager(retries=False, timeout=1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if http.request("GET", url).status < 300:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not answer {url} within {timeout}s")


INFLUXDB_CONF = """\
reporting-disabled = true
bind-address = "127.0.0.1:{bind_port}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[retention]
  enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  max-row-limit = 0

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""


def start_influxdb_v1(tmp: Path, database: str = "controltower") -> HttpServer:
    """InfluxDB 1.x (`influxd`) on free ports, everything under `tmp`, with `database` created.
    Calling it again with the same `tmp` restarts the server on its earlier ports and data."""
    binary = require_binary("influxd", "/usr/bin/influxd")
    root = tmp.resolve()
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "influxdb.conf"
    if conf.exists():
        text = conf.read_text()
        http_port = int(re.search(r'bind-address = "127\.0\.0\.1:(\d+)"\n  auth', text).group(1))
    else:
        http_port, bind_port = free_port(), free_port()
        conf.write_text(INFLUXDB_CONF.format(root=root, http_port=http_port, bind_port=bind_port))
    log = root / "influxd.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, "-config", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    server = HttpServer(http_port, proc, root, log)
    try:
        wait_for_http(f"{server.url}/ping", proc, what="influxd")
        import urllib3

        answer = urllib3.PoolManager().request(
            "POST", f"{server.url}/query", fields={"q": f'CREATE DATABASE "{database}"'}, encode_multipart=False
        )
        if answer.status != 200 or b'"error"' in answer.data:
            raise RuntimeError(f"influxd: CREATE DATABASE failed: {answer.status} {answer.data[:200]!r}")
    except BaseException:
        stop_process(proc)
        raise
    return server


def start_victoria_metrics(tmp: Path) -> HttpServer:
    """Single-node VictoriaMetrics on a free port with its storage under `tmp`."""
    binary = require_binary("victoria-metrics", "/usr/bin/victoria-metrics")
    root = tmp.resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "victoria-metrics.log"
    args = [
        binary,
        f"-storageDataPath={root / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",
        "-loggerLevel=WARN",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = HttpServer(port, proc, root, log)
    try:
        wait_for_http(f"{server.url}/health", proc, what="victoria-metrics")
    except BaseException:
        stop_process(proc)
        raise
    return server


@pytest.fixture
def influxdb_v1(tmp_path: Path) -> Iterator[HttpServer]:
    server = start_influxdb_v1(tmp_path / "influxdb")
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[HttpServer]:
    server = start_victoria_metrics(tmp_path / "victoria-metrics")
    try:
        yield server
    finally:
        stop_process(server.proc)
