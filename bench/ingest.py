"""Ingest: values per second and latency from a real broker or OPC-UA server into a real historian,
through the real collector (MqttSource / OpcUaSource -> Pipeline with its spool -> DuckDB or
InfluxDB-protocol sink), each beside a bare client of the same library in the same run.

    .venv/bin/python bench/ingest.py                    # throughput + latency, updates docs/benchmarks.md
    .venv/bin/python bench/ingest.py --no-write --quick
    .venv/bin/python bench/ingest.py --soak 3600 --soak-rate 10000 --soak-out /tmp/ingest-soak.json
    .venv/bin/python bench/ingest.py --with-soak /tmp/ingest-soak.json   # puts a finished soak in the doc
    .venv/bin/python bench/ingest.py --save /tmp/ingest.json; ... --report /tmp/ingest.json --with-soak ...

Throughput (MQTT): a persistent session is created, then a separate load-generator process
(bench/_loadgen.py) preloads the broker with N batched messages (QoS 1) while the consumer is
away; the consumer then connects and the clock runs until it has taken everything: for the
collector, until the historian has committed every value; for the bare baseline (aiomqtt, the
library the collector uses, counting messages and nothing else), until it has received every
message. So the rate is the consumer's own, not the generator's, and the two share no core
with a publisher while the clock runs. Median of `--repeats`.

OPC-UA: the project's OPC-UA simulator server (a separate process) changes every value of a big
enterprise each tick; the collector's OpcUaSource and a bare asyncua subscription count data
changes per second over the same window.

Latency: the generator streams at a fixed rate with the send time in each payload; the latency of
a value is the time its batch was committed by the historian minus that time (p50/p95/p99).

Soak: a fixed-rate stream into the collector (DuckDB, spool on) for `--soak` seconds; RSS and
open file handles of the collector process sampled every `--soak-every` seconds. The collector
here is this process (source, pipeline, spool, historian, no detectors or screen); for the whole
product in a process of its own, with the same generator and rate, use
`bench/soak.py --generator loadgen --rate 10000` (docs/reliability.md, Soak).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

import aiomqtt
import numpy as np
import polars as pl
from _loadgen import site_config
from _servers import (
    Server,
    process_open_files,
    process_rss_bytes,
    start_influxdb_v1,
    start_mosquitto,
    start_victoria_metrics,
)
from benchdoc import DOC, write_section
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.pipeline import Pipeline
from collector.sinks.duckdb import DuckDbHistorian
from collector.sinks.influxdb import InfluxDbHistorian
from collector.sources.mqtt import MqttSource
from collector.spool import Spool
from controltower.site import parse_site_config

LOADGEN = REPO / "bench" / "_loadgen.py"
LATENCY_BIN_MS = 1  # histogram bins of 1 ms up to 120 s: bounded memory however long the run
LATENCY_BINS = 120_000


class LatencyHistogram:
    """Commit time minus source time, in 1 ms bins (fixed size: fit for an hour-long soak)."""

    def __init__(self) -> None:
        self.counts = np.zeros(LATENCY_BINS + 1, dtype=np.int64)

    def add(self, ts_ns: np.ndarray, committed_ns: int) -> None:
        ms = np.clip((committed_ns - ts_ns) // 1_000_000, 0, LATENCY_BINS)
        self.counts += np.bincount(ms, minlength=LATENCY_BINS + 1)

    def percentile(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if not total:
            return None
        return float(np.searchsorted(np.cumsum(self.counts), q / 100 * total)) * LATENCY_BIN_MS

    def summary(self) -> dict[str, float | None]:
        return {"p50_ms": self.percentile(50), "p95_ms": self.percentile(95), "p99_ms": self.percentile(99)}


class CommitTimer:
    """Wraps a historian: counts the values it has committed and their latency."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.stored = 0
        self.latency = LatencyHistogram()

    async def write(self, batch: pl.DataFrame) -> None:
        await self.inner.write(batch)
        committed = time.time_ns()
        self.stored += batch.height
        self.latency.add(batch["ts"].dt.epoch("ns").to_numpy(), committed)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


# --- historians ---------------------------------------------------------------------------------


@dataclass
class Target:
    """Where the collector stores: a label and how to open a fresh historian."""

    label: str
    server: Server | None = None

    def open(self, work: Path):
        if self.label == "DuckDB":
            return DuckDbHistorian(work / "historian.duckdb")
        if self.label == "VictoriaMetrics":
            return InfluxDbHistorian(url=self.server.http_url, api="v2", bucket="controltower")
        return InfluxDbHistorian(url=self.server.http_url, api="v1", bucket="controltower")


# --- consumers ----------------------------------------------------------------------------------


def source_site(fmt: str, url: str, units: int, tags: int, client_id: str, qos: int = 1):
    return parse_site_config(site_config(fmt, url, units, tags, client_id=client_id, qos=qos))


async def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _session_client(url: str, client_id: str | None) -> aiomqtt.Client:
    host, port = url.removeprefix("mqtt://").split(":")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600 if client_id else 0
    return aiomqtt.Client(host, int(port), identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                          clean_start=client_id is None, properties=props)


async def open_session(url: str, client_id: str, filters: list[str]) -> None:
    """Create a persistent session with these subscriptions, then leave (the broker queues for it)."""
    async with _session_client(url, client_id) as client:
        await client.subscribe([(f, 1) for f in filters])


class BareConsumer:
    """The baseline: aiomqtt (paho in asyncio, as the collector) receiving and counting, nothing else."""

    def __init__(self, url: str, client_id: str | None, filters: list[str], tags: int):
        self.url, self.client_id, self.filters, self.tags = url, client_id, filters, tags
        self.messages = 0
        self.connected = asyncio.Event()

    @property
    def values(self) -> int:
        return self.messages * self.tags

    async def run(self) -> None:
        async with _session_client(self.url, self.client_id) as client:
            await client.subscribe([(f, 1) for f in self.filters])
            self.connected.set()
            async for _ in client.messages:
                self.messages += 1


class CollectorRun:
    """The real collector: MqttSource -> Pipeline (spool on, as the runtime's default) -> historian."""

    def __init__(self, site, historian, work: Path):
        self.source = MqttSource(site.sources[0], site.tag_table())
        self.timer = CommitTimer(historian)
        self.pipeline = Pipeline([self.source], self.timer, spool=Spool(work / "spool"))
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.pipeline.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.pipeline.close()


def run_loadgen(url: str, fmt: str, units: int, tags: int, *, messages: int = 0, rate: float = 0.0,
                duration: float = 3600.0, qos: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(LOADGEN), "--url", url, "--format", fmt, "--units", str(units), "--tags", str(tags),
         "--messages", str(messages), "--rate", str(rate), "--duration", str(duration), "--qos", str(qos)],
        stdout=subprocess.PIPE, text=True)


def finish_loadgen(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"load generator failed with code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def births(fmt: str, units: int) -> int:
    """Messages before the data: NBIRTH + a DBIRTH per unit for Sparkplug."""
    return units + 1 if fmt == "sparkplug_b" else 0


async def drain_once(broker: Server, fmt: str, target: Target | None, units: int, tags: int, messages: int,
                     work: Path, run_id: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, every thread) for the consumer (bare when target
    is None) to take `messages` preloaded messages."""
    client_id = f"bench-{run_id}"
    site = source_site(fmt, broker.mqtt_url, units, tags, client_id)
    filters = MqttSource(site.sources[0], site.tag_table()).subscriptions()
    await open_session(broker.mqtt_url, client_id, filters)
    await asyncio.to_thread(lambda: finish_loadgen(run_loadgen(broker.mqtt_url, fmt, units, tags, messages=messages)))
    if target is None:
        bare = BareConsumer(broker.mqtt_url, client_id, filters, tags)
        expected = messages + births(fmt, units)
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(bare.run())
        try:
            await wait_for(lambda: bare.messages >= expected, 300, f"bare consumer: {expected} messages")
            return time.perf_counter() - started, time.process_time() - cpu
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run_dir = work / run_id
    run_dir.mkdir(parents=True)
    historian = target.open(run_dir)
    expected = (messages + (units if fmt == "sparkplug_b" else 0)) * tags
    run = CollectorRun(site, historian, run_dir)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        run.start()
        await wait_for(lambda: run.timer.stored >= expected, 300, f"collector into {target.label}: {expected} values")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        rejected = sum(run.source.health.rejected.values()) if hasattr(run.source.health, "rejected") else 0
        if rejected:
            raise RuntimeError(f"the collector rejected {rejected} payload(s): {run.source.health}")
        return elapsed, cpu
    finally:
        await run.stop()
        historian.close()


async def latency_run(broker: Server, fmt: str, target: Target, units: int, tags: int, rate: float,
                      seconds: float, work: Path, run_id: str) -> dict:
    site = source_site(fmt, broker.mqtt_url, units, tags, client_id=f"bench-{run_id}")
    run_dir = work / run_id
    run_dir.mkdir(parents=True)
    historian = target.open(run_dir)
    run = CollectorRun(site, historian, run_dir)
    try:
        run.start()
        await wait_for(lambda: run.source.health.connected, 20, "collector connected")
        await asyncio.sleep(0.3)  # subscriptions in place before the births
        sent = await asyncio.to_thread(lambda: finish_loadgen(
            run_loadgen(broker.mqtt_url, fmt, units, tags, rate=rate, duration=seconds)))
        expected = sent["values"] + (units * tags if fmt == "sparkplug_b" else 0)
        await wait_for(lambda: run.timer.stored >= expected, 60, f"collector: {expected} values stored")
        return {"values": run.timer.stored, **run.timer.latency.summary()}
    finally:
        await run.stop()
        historian.close()


# --- the benches ----------------------------------------------------------------------------------


FORMATS = {"batched_json": "MQTT batched JSON", "json": "MQTT JSON (object per unit)", "sparkplug_b": "MQTT Sparkplug B"}


async def throughput(args, broker: Server, targets: list[Target], work: Path) -> list[dict]:
    rows = []
    for fmt in args.formats:
        bare = []
        per_target: dict[str, list[float]] = {t.label: [] for t in targets}
        for r in range(args.repeats):
            # Interleaved, so a burst of load from other jobs hits baseline and collector alike.
            bare.append(await drain_once(broker, fmt, None, args.units, args.tags, args.messages, work, f"{fmt}-bare-{r}"))
            for t in targets:
                per_target[t.label].append(await drain_once(
                    broker, fmt, t, args.units, args.tags, args.messages, work, f"{fmt}-{t.label}-{r}"))
        values = args.messages * args.tags
        bare_rate = values / statistics.median(w for w, _ in bare)
        bare_cpu = values / statistics.median(c for _, c in bare)
        for t in targets:
            runs = per_target[t.label]
            rate, cpu = values / statistics.median(w for w, _ in runs), values / statistics.median(c for _, c in runs)
            rows.append({"format": fmt, "target": t.label, "values": values, "rate": rate, "bare_rate": bare_rate,
                         "cpu_rate": cpu, "bare_cpu_rate": bare_cpu, "runs": [round(values / w) for w, _ in runs]})
            print(f"{FORMATS[fmt]:<28} -> {t.label:<16} {rate:>9,.0f} values/s {cpu:>9,.0f}/CPU-s   bare "
                  f"{bare_rate:>9,.0f} values/s {bare_cpu:>9,.0f}/CPU-s", flush=True)
    return rows


async def latencies(args, broker: Server, targets: list[Target], work: Path) -> list[dict]:
    rows = []
    for fmt in args.formats:
        for t in targets:
            result = await latency_run(broker, fmt, t, args.units, args.tags, args.latency_rate, args.latency_seconds,
                                       work, f"lat-{fmt}-{t.label}")
            rows.append({"format": fmt, "target": t.label, **result})
            print(f"latency {FORMATS[fmt]:<28} -> {t.label:<16} p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  "
                  f"p99 {result['p99_ms']} ms", flush=True)
    return rows


def code_version() -> str:
    """The collector's commit (and whether it had edits): the code under test is what was imported at start."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "collector"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return f"collector at commit {head}{' with uncommitted edits' if dirty else ''}" if head else ""


async def soak(args, work: Path) -> dict:
    args.soak_note = code_version()
    broker = start_mosquitto(work / "mosquitto")
    samples = []
    try:
        site = source_site("batched_json", broker.mqtt_url, args.units, args.tags, client_id="bench-soak")
        historian = DuckDbHistorian(work / "soak" / "historian.duckdb")
        run = CollectorRun(site, historian, work / "soak")
        run.start()
        await wait_for(lambda: run.source.health.connected, 20, "collector connected")
        await asyncio.sleep(0.3)
        gen = run_loadgen(broker.mqtt_url, "batched_json", args.units, args.tags, rate=args.soak_rate,
                          duration=args.soak)
        started = time.monotonic()
        pid = os.getpid()
        while gen.poll() is None:
            await asyncio.sleep(args.soak_every)
            sample = {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(process_rss_bytes(pid) / 2**20, 1),
                      "open_files": process_open_files(pid), "stored": run.timer.stored,
                      "broker_rss_mb": round(process_rss_bytes(broker.proc.pid) / 2**20, 1),
                      "spool_pending": run.pipeline.spool_batches}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        sent = finish_loadgen(gen)
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: run.timer.stored >= sent["values"], 60, "soak: every value stored")
        stored = run.timer.stored
        latency = run.timer.latency.summary()
        await run.stop()
        historian.close()
    finally:
        broker.stop()
    return soak_summary(samples, sent, stored, latency, args)


def slope_per_hour(samples: list[dict], key: str) -> float:
    """Least-squares slope of `key` over time, per hour, on the second half (after warm-up)."""
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return float("nan")
    t = np.array([s["t_s"] for s in half]) / 3600
    y = np.array([s[key] for s in half], dtype=float)
    return float(np.polyfit(t, y, 1)[0])


def soak_summary(samples: list[dict], sent: dict, stored: int, latency: dict, args) -> dict:
    def stats(key: str) -> dict:
        values = [s[key] for s in samples]
        return {"first": values[0], "last": values[-1], "max": max(values), "slope_per_h": slope_per_hour(samples, key)}

    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "seconds": args.soak, "rate": args.soak_rate,
            "note": args.soak_note,
            "units": args.units, "tags": args.tags, "sent": sent["values"], "stored": stored, "latency": latency,
            "rss_mb": stats("rss_mb"), "open_files": stats("open_files"), "broker_rss_mb": stats("broker_rss_mb"),
            "samples": samples}


# --- report ---------------------------------------------------------------------------------------


def targets_text(through: list[dict]) -> str:
    """What the figures say about the targets, from the figures."""
    batched = [r for r in through if r["format"] == "batched_json"]
    if not batched:
        return ""
    low = min(batched, key=lambda r: r["rate"])
    ratios = [r["rate"] / r["bare_rate"] for r in through]
    cpu_ratios = [r["cpu_rate"] / r["bare_cpu_rate"] for r in through]
    met = "met" if low["rate"] >= 50_000 else "NOT met"
    return (
        f"Targets. At least 50,000 values/s per collector process from batched MQTT payloads: {met} (lowest "
        f"median: {low['rate']:,.0f} values/s into {low['target']}; per CPU-second, "
        f"{min(r['cpu_rate'] for r in batched):,.0f} or more). Within 20% of the bare baseline: NOT met, "
        f"{min(ratios):.2f}-{max(ratios):.2f} of its rate ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f} of its "
        f"values per CPU-second). The bare client only counts messages. Per value the collector also decodes "
        f"(a whole flush at once: Polars' NDJSON reader for JSON objects, orjson and vectorised checks for "
        f"batched JSON; for Sparkplug B protobuf per message and a Python loop over its metrics), appends each "
        f"flush to the spool (Arrow IPC, fsync) and stores it in the historian, in threads of the same process "
        f"(counted in its CPU time). The CPU per value of each stage on this stream is in \"Collector\" "
        f"(`bench/collector.py`): the DuckDB write (insert sorted by time, commit) alone costs about as much "
        f"as the bare client's whole receive, so no collector that stores every value can come within 20% of "
        f"a client that stores nothing; for the InfluxDB-protocol servers the line-protocol encoding and the "
        f"HTTP write take its place."
    )


def section(args, through: list[dict], lat: list[dict], soak_results: list[dict], opcua: dict | None) -> str:
    lines = [
        "## Ingest",
        "",
        (f"`{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}`, `.venv/bin/python bench/ingest.py"
        f"{(' ' + ' '.join(sys.argv[1:])) if sys.argv[1:] else ''}` (Python {platform.python_version()}, "
        f"{platform.machine()}, 2 cores shared with other jobs: expect +-30%)."),
        "",
        (f"Real Mosquitto, VictoriaMetrics (`/api/v2/write`) and InfluxDB 1.x (`/write`); the real collector "
        f"(MqttSource -> Pipeline with its spool, fsync per batch -> sink). Stream: {args.units} units x "
        f"{args.tags} tags, one message per unit carrying its {args.tags} values. Throughput: {args.messages:,} "
        f"messages ({args.messages * args.tags:,} values) preloaded into a persistent session (QoS 1) by a separate "
        f"generator process, then drained; the clock stops when the historian has committed the last value. "
        f"Baseline: aiomqtt (the collector's MQTT library) draining the same session, counting messages, "
        f"nothing else. Median of {args.repeats} interleaved runs. Values per CPU-s: values over the CPU time of "
        f"the consuming process (all its threads) during the drain; with other jobs on the 2 cores the wall-clock "
        f"rate varies with their load, the CPU cost much less."),
        "",
        ("| payload | historian | values/s | bare aiomqtt values/s | ratio | values per CPU-s | bare per CPU-s "
        "| ratio (CPU) | runs (values/s) |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in through:
        lines.append(f"| {FORMATS[r['format']]} | {r['target']} | {r['rate']:,.0f} | {r['bare_rate']:,.0f} | "
                     f"{r['rate'] / r['bare_rate']:.2f} | {r['cpu_rate']:,.0f} | {r['bare_cpu_rate']:,.0f} | "
                     f"{r['cpu_rate'] / r['bare_cpu_rate']:.2f} | {', '.join(f'{v:,}' for v in r['runs'])} |")
    lines += ["", targets_text(through)]
    if lat:
        lines += ["", (f"Latency, source timestamp (send time, in the payload) to the historian's commit, streaming "
                      f"{args.latency_rate:,.0f} values/s for {args.latency_seconds:.0f} s (QoS 1; the collector "
                      f"flushes every 500 ms or 10,000 samples):"), "",
                  "| payload | historian | values | p50 | p95 | p99 |", "|---|---|---:|---:|---:|---:|"]
        for r in lat:
            lines.append(f"| {FORMATS[r['format']]} | {r['target']} | {r['values']:,} | {r['p50_ms']:.0f} ms | "
                         f"{r['p95_ms']:.0f} ms | {r['p99_ms']:.0f} ms |")
    if opcua:
        lines += ["", opcua["text"]]
    for s in soak_results:
        lines += ["", (f"Soak ({s['date']}, `--soak {s['seconds']:.0f} --soak-rate {s['rate']:.0f}`"
                       f"{', ' + s['note'] if s.get('note') else ''}): batched JSON at "
                      f"{s['rate']:,.0f} values/s into DuckDB (spool on) for {s['seconds'] / 60:.0f} min; "
                      f"{s['stored']:,} of {s['sent']:,} values stored; latency p50 {s['latency']['p50_ms']:.0f} ms, "
                      f"p99 {s['latency']['p99_ms']:.0f} ms. Collector process sampled every "
                      f"{s['samples'][1]['t_s'] - s['samples'][0]['t_s']:.0f} s (slope: least squares over "
                      f"the second half):"), "",
                  "| measure | first | last | max | slope per hour |", "|---|---:|---:|---:|---:|"]
        for key, label in (("rss_mb", "collector RSS (MiB)"), ("open_files", "collector open files"),
                           ("broker_rss_mb", "mosquitto RSS (MiB)")):
            m = s[key]
            lines.append(f"| {label} | {m['first']} | {m['last']} | {m['max']} | {m['slope_per_h']:+.1f} |")
    return "\n".join(lines) + "\n"


def report_saved(args) -> None:
    """Write the doc section from a saved run (`--save`) and a finished soak, without measuring again."""
    saved = json.loads(Path(args.report).read_text())
    run_args = argparse.Namespace(**saved["args"])
    sys.argv[1:] = saved["argv"]
    soak_results = [json.loads(Path(f).read_text()) for f in args.with_soak or []]
    text = section(run_args, saved["through"], saved["lat"], soak_results, saved["opcua"])
    if args.note:
        text += "\n" + args.note + "\n"
    print(text)
    if not args.no_write:
        write_section("Ingest", text)
        print(f"updated {DOC.relative_to(REPO)}")


async def main_async(args) -> None:
    if args.report:
        report_saved(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        if args.soak:
            result = await soak(args, work)
            text = json.dumps(result, indent=1)
            if args.soak_out:
                Path(args.soak_out).write_text(text)
            print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
            return
        servers: list[Server] = []
        try:
            broker = start_mosquitto(work / "mosquitto")
            servers.append(broker)
            targets = [Target("DuckDB")]
            if "victoria" in args.historians:
                servers.append(start_victoria_metrics(work / "vm"))
                targets.append(Target("VictoriaMetrics", servers[-1]))
            if "influxdb1" in args.historians:
                servers.append(start_influxdb_v1(work / "influx"))
                targets.append(Target("InfluxDB 1.x", servers[-1]))
            through = await throughput(args, broker, targets, work)
            lat = await latencies(args, broker, targets, work) if args.latency_seconds else []
        finally:
            for s in servers:
                s.stop()
        opcua = None
        if args.opcua:
            from _ingest_opcua import bench_opcua

            opcua = await bench_opcua(args, work)
        if args.save:
            Path(args.save).write_text(json.dumps({"argv": sys.argv[1:], "args": vars(args), "through": through,
                                                   "lat": lat, "opcua": opcua}))
        soak_results = [json.loads(Path(f).read_text()) for f in args.with_soak or []]
        text = section(args, through, lat, soak_results, opcua)
        print(text)
        if not args.no_write:
            write_section("Ingest", text)
            print(f"updated {DOC.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="fewer messages and repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--tags", type=int, default=100, help="values per message")
    parser.add_argument("--messages", type=int, default=5000, help="messages per throughput run")
    parser.add_argument("--formats", nargs="+", default=["batched_json", "sparkplug_b", "json"], choices=list(FORMATS))
    parser.add_argument("--historians", nargs="+", default=["duckdb", "victoria", "influxdb1"])
    parser.add_argument("--latency-rate", type=float, default=20_000)
    parser.add_argument("--latency-seconds", type=float, default=15)
    parser.add_argument("--no-opcua", dest="opcua", action="store_false")
    parser.add_argument("--opcua-sites", type=int, default=3, help="OPC-UA: sites of the simulated enterprise")
    parser.add_argument("--opcua-lines", type=int, default=22)
    parser.add_argument("--opcua-seconds", type=float, default=10)
    parser.add_argument("--soak", type=float, default=0, help="soak mode: stream for this many seconds")
    parser.add_argument("--soak-rate", type=float, default=10_000, help="soak: values per second")
    parser.add_argument("--soak-every", type=float, default=30, help="soak: seconds between RSS samples")
    parser.add_argument("--soak-out", help="soak: write the result (JSON) here")
    parser.add_argument("--with-soak", nargs="+", help="soak results (JSON) to put in the doc section")
    parser.add_argument("--save", help="also write the figures of this run (JSON) here")
    parser.add_argument("--note", help="--report: a paragraph to end the section with")
    parser.add_argument("--report", help="write the doc section from a --save file (with --with-soak), measure nothing")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeats, args.latency_seconds = 1000, 1, 5
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
