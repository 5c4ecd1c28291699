"""Real servers on free loopback ports, each with its files under a directory of its own:
Mosquitto, InfluxDB 1.x and VictoriaMetrics. The integration tests (tests/integration/conftest.py,
which turns a missing binary into a skip or, in CI, a failure) and the benches (bench/_servers.py)
both start them from here; nothing in this module imports pytest.

Starting a server again with the same directory restarts it on its earlier port and data, which
is how the tests stop a broker or a historian and bring it back."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import urllib3


class MissingServer(RuntimeError):
    """A server binary is not installed on this machine."""


def find_binary(name: str, *candidates: str) -> str:
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if os.path.isabs(candidate) and os.access(candidate, os.X_OK) else None)
        if found:
            return found
    raise MissingServer(f"{name} is not installed (apt-get install the package that provides it)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@dataclass
class Server:
    """A server process listening on 127.0.0.1:`port`, its files under `root`."""

    name: str
    port: int
    proc: subprocess.Popen
    root: Path
    log_path: Path

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.mqtt_url if self.name == "mosquitto" else self.http_url

    @property
    def data_dir(self) -> Path:
        return self.root

    def stop(self) -> None:
        stop_process(self.proc)


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


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 20.0, what: str = "server") -> None:
    """Wait until GET `url` answers 2xx (the port may listen before the server is ready)."""
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


def _port_of(conf: Path, pattern: str) -> int | None:
    """The port an earlier start wrote into `conf` (a restart keeps it), else None."""
    if not conf.exists():
        return None
    return int(re.search(pattern, conf.read_text()).group(1))


# --- Mosquitto ---------------------------------------------------------------------------------


def start_mosquitto(root: Path, *, persistent: bool = False, max_queued_messages: int = 100_000,
                    extra_conf: str = "") -> Server:
    """Mosquitto on a free port. `persistent`: sessions and queued messages saved in `root` when
    it stops (on shutdown only: the restart, not a timer, is what tests exercise), so a start with
    the same `root` brings them back. `max_queued_messages` 0 lifts the per-client queue limit
    (benches preload whole streams into a session)."""
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    conf, log = root / "mosquitto.conf", root / "mosquitto.log"
    port = _port_of(conf, r"listener (\d+) ")
    if port is None:
        port = free_port()
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", f"log_dest file {log}",
                 f"max_queued_messages {max_queued_messages}"]
        if max_queued_messages == 0:
            lines.append("max_queued_bytes 0")
        if persistent:
            lines += ["persistence true", f"persistence_location {root}/", "autosave_interval 0"]
            # Started as root, Mosquitto drops to user "mosquitto", which cannot write in a
            # private directory: keep root (a non-root user stays itself anyway).
            if os.geteuid() == 0:
                lines.append("user root")
        else:
            lines.append("persistence false")
        conf.write_text("\n".join(lines) + "\n" + extra_conf)
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc, what="mosquitto")
    except BaseException:
        stop_process(proc)
        raise
    return Server("mosquitto", port, proc, root, log)


# --- historians: InfluxDB 1.x and VictoriaMetrics ----------------------------------------------

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


def start_influxdb_v1(root: Path, database: str = "controltower") -> Server:
    """InfluxDB 1.x (`influxd`) on free ports, everything under `root`, with `database` created."""
    binary = find_binary("influxd", "/usr/bin/influxd")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    conf, log = root / "influxdb.conf", root / "influxd.log"
    http_port = _port_of(conf, r'bind-address = "127\.0\.0\.1:(\d+)"\n  auth')
    if http_port is None:
        http_port, bind_port = free_port(), free_port()
        conf.write_text(INFLUXDB_CONF.format(root=root, http_port=http_port, bind_port=bind_port))
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, "-config", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    server = Server("influxdb-1", http_port, proc, root, log)
    try:
        wait_for_http(f"{server.url}/ping", proc, what="influxd")
        answer = urllib3.PoolManager().request(
            "POST", f"{server.url}/query", fields={"q": f'CREATE DATABASE "{database}"'}, encode_multipart=False
        )
        if answer.status != 200 or b'"error"' in answer.data:
            raise RuntimeError(f"influxd: CREATE DATABASE failed: {answer.status} {answer.data[:200]!r}")
    except BaseException:
        stop_process(proc)
        raise
    return server


def start_victoria_metrics(root: Path) -> Server:
    """Single-node VictoriaMetrics on a free port with its storage under `root`."""
    binary = find_binary("victoria-metrics", "/usr/bin/victoria-metrics")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), root / "victoria-metrics.log"
    args = [binary, f"-storageDataPath={root / 'data'}", f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y", "-loggerLevel=WARN"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = Server("victoria-metrics", port, proc, root, log)
    try:
        wait_for_http(f"{server.url}/health", proc, what="victoria-metrics")
    except BaseException:
        stop_process(proc)
        raise
    return server


# --- what a process holds ----------------------------------------------------------------------


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
