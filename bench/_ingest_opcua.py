"""The OPC-UA part of bench/ingest.py: the project's OPC-UA simulator (a separate process, ticking
back to back) serving a generated enterprise; the collector's OpcUaSource -> Pipeline (spool) ->
DuckDB against a bare asyncua subscription on the same nodes with the same monitoring settings,
counting data changes and doing nothing else. Values per second over the simulator's clock."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _servers import free_port
from asyncua import Client, ua

from collector.pipeline import Pipeline
from collector.sinks.duckdb import DuckDbHistorian
from collector.sources.opcua import OpcUaSource
from collector.spool import Spool
from simulators.enterprise import build_enterprise

SIMPROC = Path(__file__).resolve().parent / "_simproc.py"
WAIT_S = 8.0  # between the server being up and its clock starting: both clients subscribe meanwhile


async def _read_json_line(proc: asyncio.subprocess.Process) -> dict:
    import json

    while True:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator process ended early (code {await proc.wait()})")
        if line.startswith(b"{"):
            return json.loads(line)


async def _server(sites: int, lines: int, seconds: float) -> tuple[asyncio.subprocess.Process, str]:
    url = f"opc.tcp://127.0.0.1:{free_port()}/controltower/sim"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SIMPROC), "serve", "--sites", str(sites), "--lines", str(lines), "--opcua-url", url,
        "--seconds", str(seconds), "--wait", str(WAIT_S), stdout=subprocess.PIPE)
    await _read_json_line(proc)
    return proc, url


class _Counter:
    def __init__(self) -> None:
        self.changes = 0

    def datachange_notification(self, node, val, data) -> None:
        self.changes += 1


async def _bare(config, tags, sites: int, lines: int, seconds: float) -> float:
    proc, url = await _server(sites, lines, seconds)
    started = time.monotonic()
    counter = _Counter()
    async with Client(url, timeout=30) as client:
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=config.publishing_interval_ms, RequestedMaxKeepAliveCount=100,
            RequestedLifetimeCount=1000, MaxNotificationsPerPublish=0)
        subscription = await client.create_subscription(params, counter)
        nodes = [client.get_node(t.tag.opcua.node_id) for t in tags]
        await subscription.subscribe_data_change(
            nodes, queuesize=config.queue_size, sampling_interval=config.publishing_interval_ms / 2)
        await asyncio.sleep(max(0.0, WAIT_S - (time.monotonic() - started)))
        before, cpu = counter.changes, time.process_time()
        result = await _read_json_line(proc)
        await asyncio.sleep(config.publishing_interval_ms / 1000 * 2)  # the last publish responses
        after, cpu = counter.changes, time.process_time() - cpu
    await proc.wait()
    return (after - before) / result["seconds"], (after - before) / cpu


async def _collector(config, site, work: Path, sites: int, lines: int, seconds: float, run: str) -> float:
    proc, url = await _server(sites, lines, seconds)
    started = time.monotonic()
    run_dir = work / run
    historian = DuckDbHistorian(run_dir / "historian.duckdb")
    source = OpcUaSource(config.model_copy(update={"url": url}), site.tag_table(), data_dir=run_dir)
    stored = [0]

    class Counting:
        name = historian.name

        async def write(self, batch) -> None:
            await historian.write(batch)
            stored[0] += batch.height

        def __getattr__(self, name):
            return getattr(historian, name)

    pipeline = Pipeline([source], Counting(), spool=Spool(run_dir / "spool"))
    task = asyncio.create_task(pipeline.run())
    try:
        await asyncio.sleep(max(0.0, WAIT_S - (time.monotonic() - started)))
        if not source.health.connected:
            raise RuntimeError("the OPC-UA source did not connect before the simulator's clock started")
        before, cpu = stored[0], time.process_time()
        result = await _read_json_line(proc)
        # The last notifications, then a flush (flush_interval_ms) and a write.
        await asyncio.sleep(config.publishing_interval_ms / 1000 * 2 + config.flush_interval_ms / 1000 + 1.0)
        after, cpu = stored[0], time.process_time() - cpu
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pipeline.close()
        historian.close()
        await proc.wait()
    return (after - before) / result["seconds"], (after - before) / cpu


async def bench_opcua(args, work: Path) -> dict:
    sites, lines, seconds = args.opcua_sites, args.opcua_lines, args.opcua_seconds
    site = build_enterprise(sites, lines, seed=7)
    config = next(s for s in site.sources if s.kind == "opcua").model_copy(update={"publishing_interval_ms": 100})
    tags = [t for t in site.tag_table() if t.source == config.name]
    bare, collector = [], []
    for r in range(args.repeats):
        bare.append(await _bare(config, tags, sites, lines, seconds))
        collector.append(await _collector(config, site, work, sites, lines, seconds, f"opcua-{r}"))
        print(f"OPC-UA -> DuckDB {collector[-1][0]:>9,.0f} values/s {collector[-1][1]:>9,.0f}/CPU-s   bare asyncua "
              f"{bare[-1][0]:>9,.0f} values/s {bare[-1][1]:>9,.0f}/CPU-s", flush=True)
    c, b = statistics.median(x for x, _ in collector), statistics.median(x for x, _ in bare)
    cc, bc = statistics.median(x for _, x in collector), statistics.median(x for _, x in bare)
    text = (
        f"OPC-UA: the project's OPC-UA simulator (a separate process, `--sites {sites} --lines {lines}`, "
        f"{len(tags):,} tags read over OPC-UA) changing every value on each tick, back to back; monitored items "
        f"with publishing interval {config.publishing_interval_ms} ms, sampling {config.publishing_interval_ms / 2:.0f} "
        f"ms, queue {config.queue_size}, so at most {len(tags) * 2000 // config.publishing_interval_ms:,} changes/s "
        f"can come. Over {seconds:.0f} s, median of {args.repeats}:\n\n"
        "| path | values/s | bare asyncua subscription (data changes/s) | ratio | values per CPU-s | bare per CPU-s "
        "| ratio (CPU) | runs (values/s) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|\n"
        f"| OPC-UA -> DuckDB | {c:,.0f} | {b:,.0f} | {c / b:.2f} | {cc:,.0f} | {bc:,.0f} | {cc / bc:.2f} | "
        f"{', '.join(f'{x:,.0f}' for x, _ in collector)} |\n"
    )
    return {"text": text, "rate": c, "bare_rate": b}
