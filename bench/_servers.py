"""Real servers for the benches, each on a free loopback port with its files under a temporary
directory: Mosquitto, VictoriaMetrics and InfluxDB 1.x. (The integration tests have their own
fixtures in tests/integration/conftest.py; the benches do not import pytest.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import urllib3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str, *candidates: str) -> str:
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    raise SystemExit(f"{name} is not installed: the bench needs it (Debian package: see Makefile SYSTEM_PACKAGES)")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    root: Path

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
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
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not answer {url} within {timeout}s")


def start_mosquitto(root: Path, extra_conf: str = "") -> Server:
    """Mosquitto with no queue limits: a persistent session holds a whole preloaded stream."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"log_dest file {root / 'mosquitto.log'}\nmax_queued_messages 0\nmax_queued_bytes 0\n" + extra_conf
    )
    proc = subprocess.Popen([binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port, proc, "mosquitto")
    return Server("mosquitto", port, proc, root)


def start_victoria_metrics(root: Path) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [binary("victoria-metrics", "/usr/bin/victoria-metrics"), f"-storageDataPath={root / 'data'}",
            f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y", "-loggerLevel=WARN"]
    with (root / "victoria-metrics.log").open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = Server("victoria-metrics", port, proc, root)
    try:
        _wait_http(f"{server.http_url}/health", proc, "victoria-metrics")
    except BaseException:
        server.stop()
        raise
    return server


_INFLUXDB_CONF = """\
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
"""


def start_influxdb_v1(root: Path, database: str = "controltower") -> Server:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    http_port, bind_port = free_port(), free_port()
    conf = root / "influxdb.conf"
    conf.write_text(_INFLUXDB_CONF.format(root=root, http_port=http_port, bind_port=bind_port))
    with (root / "influxd.log").open("ab") as out:
        proc = subprocess.Popen([binary("influxd", "/usr/bin/influxd"), "-config", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT)
    server = Server("influxdb-1", http_port, proc, root)
    try:
        _wait_http(f"{server.http_url}/ping", proc, "influxd")
        answer = urllib3.PoolManager().request(
            "POST", f"{server.http_url}/query", fields={"q": f'CREATE DATABASE "{database}"'}, encode_multipart=False)
        if answer.status != 200 or b'"error"' in answer.data:
            raise RuntimeError(f"influxd: CREATE DATABASE failed: {answer.status} {answer.data[:200]!r}")
    except BaseException:
        server.stop()
        raise
    return server


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
