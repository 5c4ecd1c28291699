"""Real servers for the benches: tests/servers.py (the integration tests start the same ones),
with the benches' broker default: no per-client queue limit, so a persistent session can hold a
whole preloaded stream. A missing binary stops the bench with the message naming it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `tests.servers`

from tests import servers
from tests.servers import (  # noqa: F401 (re-exported for the benches)
    MissingServer,
    Server,
    free_port,
    process_open_files,
    process_rss_bytes,
    start_influxdb_v1,
    start_victoria_metrics,
)


def start_mosquitto(root: Path, extra_conf: str = "") -> Server:
    return servers.start_mosquitto(root, max_queued_messages=0, extra_conf=extra_conf)
