"""Scale out, in two parts (`--part`):

collectors: ingest throughput with 1, 2 and 4 `controltower collect` processes sharing one MQTT
stream (a `shared_group` subscription), each storing into one shared historian and publishing
every batch to the UNS (docs/uns.md), as in production.

    .venv/bin/python bench/scale.py                    # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/scale.py --no-write --messages 1000 --repeats 1

For each collector count: start the collectors (each its own process, spool on), wait until all
are connected, then a load-generator process (bench/_loadgen.py) publishes `--messages` batched
JSON messages (QoS 1, `--units` units x `--tags` values) as fast as it can; the clock runs from
its start until the collectors' historian writes add up to every value sent (their status.json).
Median of `--repeats` runs with the same collectors; the ratio is against 1 collector in the
same run. The CPU time each collector and each analytics worker (`--workers`, running meanwhile
on the UNS) used per value is measured too (/proc): on a small machine the wall-clock figure is
the machine's (Mosquitto, the generator, the historian and every process share its cores), not
the collectors' alone.

analytics: 1, 2 and 4 `controltower analyse` workers splitting the UNS partitions. This script
publishes `--analytics-messages` pre-encoded UNS values messages (`--analytics-units` units x
`--tags` values, a limit excursion on one tag of each unit every 50th message) straight to the
broker, QoS 1, as fast as it can; the clock runs until the workers' detected samples add up to
every value sent. Per worker: values analysed, alerts raised, CPU time per value (/proc).

    .venv/bin/python bench/scale.py --part analytics --workers-counts 1 2 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

import yaml
from _loadgen import site_config
from _servers import Server, start_influxdb_v1, start_mosquitto

from bench.benchdoc import write_section

LOADGEN = REPO / "bench" / "_loadgen.py"
TITLE = "Scale out: collector processes"
ANALYTICS_TITLE = "Scale out: analytics workers"
SPIKE_EVERY = 50  # every 50th message of a unit puts its first tag above alarm_high, the next one clears it


def collector_site(work: Path, broker: Server, historian: dict, units: int, tags: int) -> Path:
    site = site_config("batched_json", broker.mqtt_url, units, tags, qos=1, client_id="bench-collect",
                       shared_group="collectors", flush_interval_ms=200)
    site["historian"] = historian
    site["uns"] = {"enabled": True, "url": broker.mqtt_url}
    site["data_dir"] = str(work / "site")
    path = work / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def status(path: Path) -> dict:
    try:
        return json.loads((path / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def stored(dirs: list[Path]) -> int:
    return sum(status(d).get("historian", {}).get("samples_stored", 0) for d in dirs)


def start_collectors(config: Path, work: Path, n: int) -> tuple[list[subprocess.Popen], list[Path]]:
    procs, dirs = [], []
    # The same instance names from one count to the next: a persistent session of the group left
    # offline (an instance 1-0 never started again) would keep being given its share, queued.
    for i in range(n):
        d = work / f"collect-{n}-{i}"
        log = (work / f"collect-{n}-{i}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "controltower.cli", "--log-level", "WARNING", "collect", "--config", str(config),
             "--instance", str(i), "--data-dir", str(d)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        dirs.append(d)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a collector exited with {p.returncode}; see {work}/collect-{n}-*.log")
        states = [status(d) for d in dirs]
        if all(s.get("sources") and s["sources"][0]["connected"] and s["uns"]["connected"] for s in states):
            return procs, dirs
        time.sleep(0.2)
    raise TimeoutError(f"{n} collectors did not connect")


def start_workers(config: Path, work: Path, n: int, prefix: str = "w") -> tuple[list[subprocess.Popen], list[Path]]:
    procs, dirs = [], []
    names = [f"{prefix}{i}" for i in range(n)]
    for name in names:
        d = work / f"analyse-{name}"
        log = (work / f"analyse-{name}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "controltower.cli", "--log-level", "WARNING", "analyse", "--config", str(config),
             "--worker", name, "--data-dir", str(d)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        dirs.append(d)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p, name in zip(procs, names):
            if p.poll() is not None:
                raise RuntimeError(f"worker {name} exited: {(work / f'analyse-{name}.log').read_text()[-2000:]}")
        if all(status(d).get("members") == names for d in dirs):
            return procs, dirs
        time.sleep(0.2)
    raise TimeoutError(f"{n} workers did not see each other")


def detected(dirs: list[Path]) -> int:
    return sum(status(d).get("counts", {}).get("samples_detected", 0) for d in dirs)


def cpu_seconds(procs: list[subprocess.Popen]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for p in procs:
        fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def one_run(broker: Server, collectors: tuple[list, list[Path]], workers: tuple[list, list[Path]], messages: int,
            units: int, tags: int) -> dict:
    (cprocs, dirs), (wprocs, wdirs) = collectors, workers
    before, detected_before = stored(dirs), detected(wdirs)
    cpu_before = cpu_seconds(cprocs), cpu_seconds(wprocs)
    values = messages * tags
    started = time.monotonic()
    gen = subprocess.run(
        [sys.executable, str(LOADGEN), "--url", broker.mqtt_url, "--format", "batched_json", "--units", str(units),
         "--tags", str(tags), "--messages", str(messages), "--duration", "3600", "--qos", "1"],
        capture_output=True, text=True, check=True)
    sent = json.loads(gen.stdout.strip().splitlines()[-1])
    assert sent["values"] == values, sent
    deadline = time.monotonic() + 300
    while stored(dirs) - before < values:
        if time.monotonic() > deadline:
            raise TimeoutError(f"stored {stored(dirs) - before} of {values} values")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    # The workers see every value once (their partitions do not overlap): wait for the last.
    while detected(wdirs) - detected_before < values:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers detected {detected(wdirs) - detected_before} of {values} values")
        time.sleep(0.05)
    time.sleep(0.5)
    assert detected(wdirs) - detected_before == values, "a value reached two workers"
    collector_cpu = cpu_seconds(cprocs) - cpu_before[0]
    worker_cpu = cpu_seconds(wprocs) - cpu_before[1]
    return {"seconds": seconds, "values_per_s": values / seconds, "generator_values_per_s": values / sent["seconds"],
            "collector_values_per_cpu_s": values / collector_cpu, "worker_values_per_cpu_s": values / worker_cpu}


def measure(args, work: Path, broker: Server, historian: dict) -> list[dict]:
    config = collector_site(work, broker, historian, args.units, args.tags)
    results = []
    workers = start_workers(config, work, args.workers)
    try:
        for n in args.collectors:
            collectors = start_collectors(config, work, n)
            try:
                one_run(broker, collectors, workers, max(args.messages // 10, 100), args.units, args.tags)  # warm-up
                runs = [one_run(broker, collectors, workers, args.messages, args.units, args.tags)
                        for _ in range(args.repeats)]
                uns = [status(d)["uns"] for d in collectors[1]]
            finally:
                stop(collectors[0])
            results.append({
                "collectors": n,
                **{key: statistics.median(r[key] for r in runs) for key in (
                    "values_per_s", "generator_values_per_s", "collector_values_per_cpu_s", "worker_values_per_cpu_s")},
                "runs": [round(r["values_per_s"]) for r in runs],
                "uns_dropped": sum(u["dropped_samples"] for u in uns),
                "uns_published": sum(u["published_samples"] for u in uns),
            })
            print(json.dumps(results[-1]), flush=True)
    finally:
        stop(workers[0])
    return results


def section(args, results: list[dict]) -> str:
    base = results[0]["values_per_s"]
    rows = "\n".join(
        f"| {r['collectors']} | {r['values_per_s']:,.0f} | {r['values_per_s'] / base:.2f}x | "
        f"{r['collector_values_per_cpu_s']:,.0f} | {r['worker_values_per_cpu_s']:,.0f} | "
        f"{r['generator_values_per_s']:,.0f} | {', '.join(f'{v:,}' for v in r['runs'])} | "
        f"{r['uns_published']:,} / {r['uns_dropped']:,} |"
        for r in results)
    return f"""## {TITLE}

{datetime.now(UTC).date().isoformat()}, `{' '.join(['.venv/bin/python', 'bench/scale.py', *sys.argv[1:]])}`
on {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python {platform.python_version()},
historian {args.historian}, shared by the collectors.

`controltower collect` processes in one MQTT shared-subscription group; a load generator publishes
{args.messages:,} batched JSON messages of {args.tags} values ({args.units} units; QoS 1) as fast as it can;
the clock runs until the collectors' historian writes add up to every value. Median of {args.repeats}
(after a warm-up); ratio against 1 collector in the same run. Every collector also publishes each
batch to the UNS, one message per unit, and {args.workers} `controltower analyse` workers run the default
detectors on it (each run also checks that the workers together saw every value exactly once).
"Values per CPU-s" divides the values by the CPU time (user + system) the collector processes, and
the worker processes, used in the run: what one core of their own would sustain, whatever else
the machine was doing. Mosquitto, the generator, the historian and the
collectors share the same {os.cpu_count()} cores (and other work running on the machine at the time).

| collectors | values/s stored | vs 1 | values per CPU-s, collectors | values per CPU-s, analytics workers | generator values/s | runs (values/s) | UNS published / dropped (samples) |
|---|---|---|---|---|---|---|---|
{rows}

Read with the core count in mind: with 2 cores, more collector processes cannot add CPU; they
only help when one collector process, not the broker, the historian or the generator, is the
bottleneck. docs/deployment.md turns these figures into sizing.
"""


# --- analytics workers ---------------------------------------------------------------------------


def analytics_site(work: Path, broker: Server, units: int, tags: int) -> Path:
    """Units with limits on every tag (so the limit detector has something to raise), the default
    detectors, the UNS on the bench broker (the workers read no source: the bench publishes the
    values itself)."""
    site = site_config("batched_json", broker.mqtt_url, units, tags)
    limits = {"alarm_low": -2.0, "warning_low": -1.5, "warning_high": 1.5, "alarm_high": 2.0, "deadband": 0.01}
    for unit in site["sites"][0]["areas"][0]["lines"][0]["units"]:
        for tag in unit["tags"]:
            tag["limits"] = limits
    site["uns"] = {"enabled": True, "url": broker.mqtt_url}
    site["data_dir"] = str(work / "site")
    path = work / "analytics-site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def values_messages(config: Path, messages: int, start_s: float) -> tuple[list[tuple[str, bytes]], int]:
    """`messages` UNS values messages round-robin over the site's units, one tick of every tag of
    the unit each, 0.1 s apart per unit from `start_s` (epoch seconds), encoded before the clock
    starts; (topic, payload) pairs and the number of values."""
    import numpy as np
    import polars as pl

    from controltower.samples import samples_frame
    from controltower.site import load_site_config
    from controltower.uns import Topics, encode_values

    site = load_site_config(config)
    topics = Topics.of(site.uns)
    by_unit: dict[tuple[str, str, str, str], list[str]] = {}
    for t in site.tag_table():
        by_unit.setdefault((t.site, t.area, t.line, t.unit), []).append(t.tag_id)
    units = list(by_unit)
    rng = np.random.default_rng(7)
    out, values = [], 0
    for i in range(messages):
        path, tick = units[i % len(units)], i // len(units)
        tag_ids = by_unit[path]
        value = rng.normal(0.0, 0.2, len(tag_ids))
        if tick % SPIKE_EVERY == SPIKE_EVERY - 1:
            value[0] = 3.0
        ts = int((start_s + tick * 0.1) * 1e9)
        frame = samples_frame(ts=[ts] * len(tag_ids), server_ts=pl.Series("server_ts", [None] * len(tag_ids), pl.Int64),
                              tag_id=tag_ids, value=value.tolist(), quality=["good"] * len(tag_ids),
                              batch_id=[None] * len(tag_ids))
        frame = frame.with_columns(pl.lit(v, pl.String).alias(c) for c, v in zip(("site", "area", "line", "unit"), path))
        out.append((topics.values(*path), encode_values(frame)))
        values += len(tag_ids)
    return out, values


async def publish_all(broker: Server, messages: list[tuple[str, bytes]], window: int = 64) -> float:
    """Publish every message, QoS 1, `window` in flight at a time; the seconds it took."""
    import aiomqtt

    started = time.monotonic()
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-uns-loadgen") as client:
        for i in range(0, len(messages), window):
            await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in messages[i:i + window]))
    return time.monotonic() - started


def worker_counts(dirs: list[Path], key: str) -> list[int]:
    return [status(d).get("counts", {}).get(key, 0) for d in dirs]


def analytics_run(broker: Server, config: Path, workers: tuple[list, list[Path]], messages: int,
                  start_s: float) -> dict:
    procs, dirs = workers
    payloads, values = values_messages(config, messages, start_s)
    before = worker_counts(dirs, "samples_detected")
    alerts_before = worker_counts(dirs, "alerts_raised")
    cpu_before = [cpu_seconds([p]) for p in procs]
    started = time.monotonic()
    publish_s = asyncio.run(publish_all(broker, payloads))
    deadline = time.monotonic() + 600
    while sum(worker_counts(dirs, "samples_detected")) - sum(before) < values:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers detected {sum(worker_counts(dirs, 'samples_detected')) - sum(before)} "
                               f"of {values} values")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    time.sleep(0.5)  # the last flush's transitions
    per_worker = [a - b for a, b in zip(worker_counts(dirs, "samples_detected"), before)]
    assert sum(per_worker) == values, f"a value reached two workers: {per_worker} of {values}"
    alerts = [a - b for a, b in zip(worker_counts(dirs, "alerts_raised"), alerts_before)]
    cpu = [cpu_seconds([p]) - c for p, c in zip(procs, cpu_before)]
    return {"seconds": seconds, "values": values, "values_per_s": values / seconds,
            "publish_values_per_s": values / publish_s, "per_worker": per_worker, "alerts": alerts, "cpu_s": cpu}


def measure_analytics(args, work: Path, broker: Server) -> list[dict]:
    config = analytics_site(work, broker, args.analytics_units, args.tags)
    results = []
    clock = time.time() - 3600.0  # sample times move forward from run to run, as a plant's do
    for n in args.workers_counts:
        workers = start_workers(config, work, n, prefix=f"a{n}-")
        try:
            runs = []
            for r in range(args.repeats + 1):  # the first is a warm-up
                run = analytics_run(broker, config, workers, args.analytics_messages if r else
                                    max(args.analytics_messages // 10, args.analytics_units * SPIKE_EVERY), clock)
                clock += run["values"] / args.tags / args.analytics_units * 0.1 + 1.0
                if r:
                    runs.append(run)
        finally:
            stop(workers[0])
        median = sorted(runs, key=lambda r: r["values_per_s"])[len(runs) // 2]
        results.append({
            "workers": n, "values_per_s": median["values_per_s"], "runs": [round(r["values_per_s"]) for r in runs],
            "publish_values_per_s": median["publish_values_per_s"], "per_worker": median["per_worker"],
            "alerts": median["alerts"], "cpu_s": median["cpu_s"],
            "values_per_cpu_s": median["values"] / sum(median["cpu_s"]),
            "cpu_us_per_value": [c / v * 1e6 if v else None for c, v in zip(median["cpu_s"], median["per_worker"])],
        })
        print(json.dumps(results[-1]), flush=True)
    return results


def analytics_section(args, results: list[dict]) -> str:
    base = results[0]["values_per_s"]
    rows = "\n".join(
        f"| {r['workers']} | {r['values_per_s']:,.0f} | {r['values_per_s'] / base:.2f}x | "
        f"{r['values_per_cpu_s']:,.0f} | {', '.join(f'{v:,}' for v in r['per_worker'])} | "
        f"{', '.join(f'{a}' for a in r['alerts'])} | "
        f"{', '.join(f'{u:.1f}' if u is not None else '-' for u in r['cpu_us_per_value'])} | "
        f"{r['publish_values_per_s']:,.0f} | {', '.join(f'{v:,}' for v in r['runs'])} |"
        for r in results)
    values = args.analytics_messages * args.tags
    return f"""## {ANALYTICS_TITLE}

{datetime.now(UTC).date().isoformat()}, `{' '.join(['.venv/bin/python', 'bench/scale.py', *sys.argv[1:]])}`
on {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python {platform.python_version()}.

`controltower analyse` workers (default detectors: limits, z-score, flatline, quality, rate of
change, stale) splitting the UNS's 16 partitions by rendezvous hashing; {args.analytics_units} units of
{args.tags} tags with limits. The bench publishes {args.analytics_messages:,} values messages ({values:,} values, one
tick of a unit each, columnar JSON or Arrow IPC as a collector sends them; one tag of each unit above
its alarm limit every {SPIKE_EVERY}th tick) to Mosquitto, QoS 1, as fast as it can; the clock runs until the
workers' detected samples add up to every value (each run checks every value reached exactly one
worker). Median of {args.repeats} runs after a warm-up; ratio against 1 worker in the same run. "µs CPU per
value" is each worker's CPU time (user + system, /proc) over the values it analysed: what a core of
its own costs per value. Mosquitto, the publisher and every worker share the {os.cpu_count()} cores with
whatever else ran on the machine.

| workers | values/s analysed (all) | vs 1 | values per CPU-s (all workers) | values per worker | alerts raised per worker | µs CPU per value, per worker | publish values/s | runs (values/s) |
|---|---|---|---|---|---|---|---|---|
{{rows}}

Units are spread over the workers by their partition, so the split follows the units (with
{args.analytics_units} units over 16 partitions it is uneven: a worker's share is its units'). On a
machine with {os.cpu_count()} cores, adding workers cannot add CPU beyond them; more workers pay for
themselves when one worker's core, not the broker, is the limit. docs/deployment.md turns these
figures into sizing.
""".replace("{rows}", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["collectors", "analytics", "both"], default="both")
    parser.add_argument("--collectors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers-counts", type=int, nargs="+", default=[1, 2, 4],
                        help="analytics part: numbers of analytics workers to measure (default 1 2 4)")
    parser.add_argument("--analytics-messages", type=int, default=3200)
    parser.add_argument("--analytics-units", type=int, default=32)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="analytics workers running meanwhile (default 2)")
    parser.add_argument("--historian", choices=["influxdb", "duckdb"], default="influxdb",
                        help="influxdb: one InfluxDB 1.x shared by the collectors; duckdb: a file per collector")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ct-bench-scale-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto(work / "mosquitto")
        collectors = args.part in ("collectors", "both")
        influx = start_influxdb_v1(work / "influx") if args.historian == "influxdb" and collectors else None
        try:
            historian = ({"kind": "influxdb", "url": influx.http_url, "api": "v1", "bucket": "controltower",
                          "token_env": None} if influx else {"kind": "duckdb", "path": "historian.duckdb"})
            results = measure(args, work, broker, historian) if collectors else None
            analytics = measure_analytics(args, work, broker) if args.part in ("analytics", "both") else None
        finally:
            broker.stop()
            if influx:
                influx.stop()
    for title, text in ((TITLE, results and section(args, results)),
                        (ANALYTICS_TITLE, analytics and analytics_section(args, analytics))):
        if text:
            print(text)
            if not args.no_write:
                write_section(title, text)


if __name__ == "__main__":
    main()
