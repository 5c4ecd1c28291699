"""Fixtures that start real servers on free loopback ports, each with its own temporary
directory, and stop them after the test. No test relies on a system service.

The servers themselves start from tests/servers.py (the benches use it too); here a missing
binary becomes `missing()`: a skip locally, a failure in CI."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.conftest import missing
from tests.servers import Server, stop_process, wait_for_http, wait_for_port  # noqa: F401 (for the tests)

MosquittoServer = HttpServer = Server  # the names the tests were written with


def _needs_binary(start):
    @functools.wraps(start)
    def started(*args, **kwargs) -> Server:
        try:
            return start(*args, **kwargs)
        except servers.MissingServer as exc:
            missing(str(exc))

    return started


start_mosquitto = _needs_binary(servers.start_mosquitto)
start_influxdb_v1 = _needs_binary(servers.start_influxdb_v1)
start_victoria_metrics = _needs_binary(servers.start_victoria_metrics)


async def wait_until(condition, timeout_s: float, what: str) -> None:
    """Poll `condition()` on the event loop until true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Server]:
    server = start_mosquitto(tmp_path / "mosquitto")
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture
def influxdb_v1(tmp_path: Path) -> Iterator[Server]:
    server = start_influxdb_v1(tmp_path / "influxdb")
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[Server]:
    server = start_victoria_metrics(tmp_path / "victoria-metrics")
    try:
        yield server
    finally:
        stop_process(server.proc)
