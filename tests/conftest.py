"""Shared test helpers.

Integration tests start the real servers they need (Mosquitto, InfluxDB 1.x, VictoriaMetrics,
the project's OPC-UA simulator, Chromium) on free loopback ports with temporary data dirs.
When a server binary is missing, the test is skipped locally, but with
CONTROLTOWER_REQUIRE_SERVICES=1 (set by `.ci/run`) the same test fails instead: in CI a missing
service is a failure, never a skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from tests.servers import MissingServer, find_binary, free_port  # noqa: F401 (free_port: for the tests)

REPO = Path(__file__).resolve().parents[1]
REQUIRE_SERVICES = os.environ.get("CONTROLTOWER_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def missing(message: str) -> NoReturn:
    """Something a test needs is not on this machine: skip locally, fail when services are required."""
    if REQUIRE_SERVICES:
        pytest.fail(message + "; CONTROLTOWER_REQUIRE_SERVICES is set, so this is a failure")
    pytest.skip(message)


def require_binary(name: str, *candidates: str) -> str:
    """Path of a server binary; skip (or fail, when services are required) if it is not installed."""
    try:
        return find_binary(name, *candidates)
    except MissingServer as exc:
        missing(str(exc))


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def python_exe() -> str:
    return sys.executable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ starts real servers: mark it, so a quick local loop
    can leave them out with `-m "not integration"` (CI never does)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
