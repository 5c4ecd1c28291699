"""The OPC-UA source against the project's simulator when the server goes away and comes back:
stale samples at the moment of loss, a gap on record (gap log and health), reconnection with
backoff, subscriptions recreated and values again. Also per-tag monitoring on the simulator
(an absolute deadband suppresses small changes). Real server, real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from collector.gaps import GapLog
from collector.sources.opcua import OpcUaSource
from controltower.site import OpcUaSourceConfig, SiteConfig, load_site_config
from simulators.opcua_server import PlantOpcUaServer
from simulators.plant import Plant
from tests.conftest import REPO, free_port
from tests.integration.figures import record

pytestmark = pytest.mark.integration

TEMPERATURE, PH = "lyon.usp.bio1.br101.temperature", "lyon.usp.bio1.br101.ph"


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    return load_site_config(REPO / "config" / "demo-site.yaml")


def source_for(site: SiteConfig, url: str, data_dir: Path, bindings: dict[str, dict] | None = None, **config) -> OpcUaSource:
    source_config = OpcUaSourceConfig(
        kind="opcua", name="sim", url=url, publishing_interval_ms=100, flush_interval_ms=100, **config
    )
    tags = []
    for t in site.tag_table():
        if t.tag_id in (TEMPERATURE, PH):
            binding = t.tag.opcua.model_copy(update=(bindings or {}).get(t.tag_id, {}))
            tags.append(t.model_copy(update={"source": "sim", "tag": t.tag.model_copy(update={"opcua": binding})}))
    return OpcUaSource(source_config, tags, data_dir=data_dir)


class Collected:
    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    async def __call__(self, frame: pl.DataFrame) -> None:
        self.frames.append(frame)

    def frame(self, since: int = 0) -> pl.DataFrame:
        frames = self.frames[since:]
        return pl.concat(frames) if frames else pl.DataFrame(schema={"tag_id": pl.String, "quality": pl.String})

    def good_tags(self, since: int = 0) -> set[str]:
        return set(self.frame(since).filter(pl.col("quality") == "good")["tag_id"].to_list())


async def until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what()}")
        await asyncio.sleep(0.05)


async def serve(site: SiteConfig, url: str) -> tuple[PlantOpcUaServer, asyncio.Task]:
    server = PlantOpcUaServer(site, url=url)
    await server.start()
    plant = Plant(site, seed=3)
    server.emitted = []  # the samples the server was given (the figures' source of truth)

    async def tick() -> None:
        while True:
            frame = plant.step(0.1)
            await server.publish(frame, plant.unit_states())
            server.emitted.append(frame.select("tag_id", "ts"))
            await asyncio.sleep(0.1)

    return server, asyncio.create_task(tick())


async def stop(server: PlantOpcUaServer, ticking: asyncio.Task) -> None:
    ticking.cancel()
    await asyncio.gather(ticking, return_exceptions=True)
    await server.stop()


async def test_server_loss_marks_tags_stale_records_the_gap_and_reconnects(site, tmp_path) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    server, ticking = await serve(site, url)
    source = source_for(site, url, tmp_path, publish_timeout_s=3)
    collected = Collected()
    task = asyncio.create_task(source.run(collected))
    try:
        await until(lambda: collected.good_tags() == {TEMPERATURE, PH}, 15, lambda: f"good samples ({source.health})")
        assert source.health.connected and source.health.stale_since is None

        # The server goes away.
        lost = datetime.now(UTC)
        await stop(server, ticking)
        await until(lambda: source.health.stale_since is not None, 10, lambda: f"the loss ({source.health})")
        assert not source.health.connected
        await until(lambda: not collected.frame().filter(pl.col("value").is_null()).is_empty(), 5, lambda: "stale samples")
        stale = collected.frame().filter(pl.col("value").is_null())
        assert sorted(stale["tag_id"].to_list()) == [PH, TEMPERATURE]
        assert (stale["quality"].cast(str) == "bad").all()
        # Dated the moment of loss (within the watchdog's second), not when the batch was flushed.
        for ts in stale["ts"].to_list():
            assert lost - timedelta(seconds=0.5) <= ts <= lost + timedelta(seconds=5), (lost, ts)
        assert source.health.stale_tags == 2 and source.health.gaps == 0

        # Down for a while (the source retries with backoff), then back on the same address.
        await asyncio.sleep(1.5)
        restarted = datetime.now(UTC)
        emitted_before = server.emitted
        server, ticking = await serve(site, url)
        back_at = time.monotonic()
        seen = len(collected.frames)
        await until(lambda: collected.good_tags(seen) == {TEMPERATURE, PH}, 30,
                    lambda: f"good samples after the restart ({source.health})")
        recovery_s = time.monotonic() - back_at
        assert source.health.connected and source.health.reconnects >= 1
        assert source.health.stale_since is None and source.health.gaps == 1
        gaps = GapLog(tmp_path / "gaps.jsonl").read()
        assert len(gaps) == 1, gaps
        gap = gaps[0]
        assert gap.source == "sim" and gap.tags == 2 and gap.closed_by == "reconnect"
        assert gap.start == stale["ts"].min() and restarted <= gap.end <= datetime.now(UTC)
        assert gap.duration_s >= 1.5 and source.health.gap_seconds == pytest.approx(gap.duration_s)
        assert gap.reason  # why the session ended, e.g. a ConnectionError
        await asyncio.sleep(1.0)  # a second of the restarted server, for the figures
        # Owed: what each server run published once the subscription delivered its first value (the
        # values before are from before the client subscribed: nobody can collect those).
        good = collected.frame().filter(pl.col("quality") == "good").select("tag_id", "ts")
        firsts = [collected.frame(a).filter(pl.col("quality") == "good")["ts"].min() for a in (0, seen)]
        emitted = pl.concat([pl.concat(run).filter(pl.col("ts") >= first)
                             for run, first in zip((emitted_before, server.emitted), firsts, strict=True)])
        emitted = emitted.filter(pl.col("tag_id").is_in([TEMPERATURE, PH]))
        distinct = good.unique()
        record("OPC-UA server restart (simulator's server, subscription)", emitted=emitted.height,
               stored=good.height, lost=emitted.join(distinct, on=["tag_id", "ts"], how="anti").height,
               duplicates=good.height - distinct.height, recovery_s=recovery_s,
               promise="no silent loss: tags marked stale (bad quality) at the loss, the gap in gaps.jsonl "
                       "and health; values the server held while down are not recoverable (OPC-UA keeps no history)",
               notes=f"2 tags, server ticks every 100 ms, publishing interval 100 ms; server down {gap.duration_s:.1f} s "
                     "(gap recorded); stored = good samples the source delivered; a subscription samples the "
                     "latest values per publishing interval (queue 10), counted from the first value each server run "
                     "delivered; the server publishes nothing while down, so no value of the outage is owed; "
                     "recovery = server listening again to good values from both tags")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop(server, ticking)


async def test_stop_while_disconnected_closes_the_gap(site, tmp_path) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    server, ticking = await serve(site, url)
    source = source_for(site, url, tmp_path, publish_timeout_s=3)
    collected = Collected()
    task = asyncio.create_task(source.run(collected))
    try:
        await until(lambda: collected.good_tags() == {TEMPERATURE, PH}, 15, lambda: f"good samples ({source.health})")
        await stop(server, ticking)
        await until(lambda: source.health.stale_since is not None, 10, lambda: f"the loss ({source.health})")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    gaps = GapLog(tmp_path / "gaps.jsonl").read()
    assert [(g.closed_by, g.tags) for g in gaps] == [("stop", 2)]


async def test_absolute_deadband_suppresses_small_changes_on_the_simulator(site, tmp_path) -> None:
    """Temperature with a deadband far wider than its noise reports once (its first good value);
    pH without one reports every 100 ms tick."""
    url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    server, ticking = await serve(site, url)
    source = source_for(site, url, tmp_path, bindings={TEMPERATURE: {"deadband_abs": 50.0}})
    collected = Collected()
    task = asyncio.create_task(source.run(collected))
    try:
        await until(lambda: collected.good_tags() == {TEMPERATURE, PH}, 15, lambda: f"good samples ({source.health})")
        await asyncio.sleep(2.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop(server, ticking)
    frame = collected.frame().filter(pl.col("quality") == "good")
    counts = dict(frame.group_by("tag_id").len().iter_rows())
    assert counts[TEMPERATURE] == 1, counts
    assert counts[PH] >= 10, counts
    assert source.health.last_error is None


async def test_each_endpoint_runs_in_its_own_task_with_its_own_health(site, tmp_path) -> None:
    """Two OPC-UA endpoints collected by one pipeline: when one server goes away, only its source
    goes stale and reconnects; the other's values keep flowing, and /api/health tells them apart."""
    from collector.pipeline import Pipeline
    from controltower.metrics import Metrics

    urls = [f"opc.tcp://127.0.0.1:{free_port()}/sim" for _ in range(2)]
    servers = [await serve(site, url) for url in urls]
    sources = [source_for(site, url, tmp_path / f"s{i}", publish_timeout_s=3) for i, url in enumerate(urls)]
    for i, s in enumerate(sources):
        s.name = s.health.name = f"plc{i}"
    class Historian:
        name = "memory"

        async def write(self, batch: pl.DataFrame) -> None:
            pass

    received: dict[str, int] = {}
    pipeline = Pipeline(sources, Historian(), metrics=Metrics())
    original = pipeline._emit_from

    def counting(source):
        emit = original(source)

        async def wrapped(batch: pl.DataFrame) -> None:
            received[source.name] = received.get(source.name, 0) + batch.filter(pl.col("quality") == "good").height
            await emit(batch)

        return wrapped

    pipeline._emit_from = counting
    task = asyncio.create_task(pipeline.run())
    try:
        await until(lambda: all(s.health.connected for s in sources) and len(received) == 2, 15,
                    lambda: str([s.health for s in sources]))
        await stop(*servers[0])
        await until(lambda: sources[0].health.stale_since is not None, 10, lambda: str(sources[0].health))
        before = received["plc1"]
        await asyncio.sleep(1.0)
        assert received["plc1"] > before + 5  # the other endpoint is not held up
        views = {s.health.name: s.health.as_dict() for s in sources}
        assert views["plc0"]["connected"] is False and views["plc0"]["stale_tags"] == 2
        assert views["plc0"]["stale_since"] is not None and views["plc0"]["last_error"]
        assert views["plc1"]["connected"] is True and views["plc1"]["stale_since"] is None
        assert views["plc1"]["reconnects"] == 0 and views["plc1"]["last_sample_at"] is not None
        tasks = {t.get_name() for t in asyncio.all_tasks()}
        assert {"source-plc0", "source-plc1"} <= tasks
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop(*servers[1])


async def test_control_tower_shows_the_loss_in_health_metrics_and_the_historian(site, tmp_path) -> None:
    """The whole path: the stale samples reach the DuckDB historian (through the spool), and
    /api/health and /metrics show the source stale, then the gap once it is back."""
    from controltower.runtime import ControlTower
    from controltower.site import parse_site_config

    url = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    server, ticking = await serve(site, url)
    tower_site = parse_site_config({
        "enterprise": "Pharma", "data_dir": str(tmp_path),
        "sites": [{"id": "lyon", "areas": [{"id": "usp", "lines": [{"id": "bio1", "units": [{"id": "br101", "tags": [
            {"id": "temperature", "opcua": {"node_id": f"ns=2;s={TEMPERATURE}"}},
            {"id": "ph", "opcua": {"node_id": f"ns=2;s={PH}", "deadband_abs": 0.001}},
        ]}]}]}]}],
        "sources": [{"kind": "opcua", "name": "plc", "url": url, "publishing_interval_ms": 100,
                     "flush_interval_ms": 100, "publish_timeout_s": 3}],
    }, "tower.yaml")
    tower = ControlTower(tower_site, data_dir=tmp_path)
    running = asyncio.create_task(tower.run())

    def view() -> dict:
        return tower.health()["sources"][0]

    try:
        await until(lambda: view()["connected"] and tower.pipeline.samples_stored >= 4, 20, lambda: str(tower.health()))
        await stop(server, ticking)
        await until(lambda: view()["stale_since"] is not None, 10, lambda: str(view()))
        assert tower.health()["status"] == "degraded" and view()["stale_tags"] == 2
        assert 'controltower_source_stale{source="plc"} 1.0' in tower.metrics.render().decode()
        lost = datetime.fromisoformat(view()["stale_since"])

        def stale_stored() -> pl.DataFrame:
            return tower.historian.read([TEMPERATURE, PH], lost - timedelta(seconds=1)).filter(pl.col("value").is_null())

        await until(lambda: stale_stored().height == 2, 10, lambda: str(stale_stored()))
        assert (stale_stored()["quality"].cast(str) == "bad").all() and (stale_stored()["ts"] == lost).all()

        server, ticking = await serve(site, url)
        await until(lambda: view()["gaps"] == 1 and view()["connected"], 30, lambda: str(view()))
        metrics = tower.metrics.render().decode()
        assert 'controltower_source_stale{source="plc"} 0.0' in metrics
        assert 'controltower_source_gaps_total{source="plc"} 1.0' in metrics
        assert view()["stale_since"] is None and view()["gap_seconds"] > 0
        assert [g.source for g in GapLog(tmp_path / "gaps.jsonl").read()] == ["plc"]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        tower.close()
        await stop(server, ticking)
