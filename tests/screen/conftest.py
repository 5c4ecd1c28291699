from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.screen.demo_context import DemoContext, build_context

# A fixed "now" so ages and windows are exact.
NOW = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[DemoContext]:
    context = build_context(tmp_path, started_at=NOW)
    try:
        yield context
    finally:
        context.historian.close()
