"""Site configs for the simulator tests: the demo site, with and without its scheduled faults."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controltower.site import SiteConfig, load_site_config
from tests.conftest import REPO

START = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def demo_site() -> SiteConfig:
    return load_site_config(REPO / "config" / "demo-site.yaml")


@pytest.fixture(scope="session")
def quiet_site(demo_site: SiteConfig) -> SiteConfig:
    """The demo site with no scheduled faults: normal operation only."""
    assert demo_site.simulation is not None
    return demo_site.model_copy(update={"simulation": demo_site.simulation.model_copy(update={"faults": []})})
