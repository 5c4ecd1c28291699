"""Scale out: ingest throughput with 1, 2 and 4 `controltower collect` processes sharing one MQTT
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
"""

from __future__ import annotations

import argparse
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


def start_workers(config: Path, work: Path, n: int) -> tuple[list[subprocess.Popen], list[Path]]:
    procs, dirs = [], []
    names = [f"w{i}" for i in range(n)]
    for name in names:
        d = work / f"analyse-{name}"
        log = (work / f"analyse-{name}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "controltower.cli", "--log-level", "WARNING", "analyse", "--config", str(config),
             "--worker", name, "--data-dir", str(d)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        dirs.append(d)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker exited; see {work}/analyse-*.log")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collectors", type=int, nargs="+", default=[1, 2, 4])
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
        influx = start_influxdb_v1(work / "influx") if args.historian == "influxdb" else None
        try:
            historian = ({"kind": "influxdb", "url": influx.http_url, "api": "v1", "bucket": "controltower",
                          "token_env": None} if influx else {"kind": "duckdb", "path": "historian.duckdb"})
            results = measure(args, work, broker, historian)
        finally:
            broker.stop()
            if influx:
                influx.stop()
    text = section(args, results)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
