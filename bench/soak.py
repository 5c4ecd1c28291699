"""Soak: a stream over Mosquitto into a collector process (`controltower run`, DuckDB historian and
on-disk spool) for an hour; the collector's memory and open file handles must stay flat. Not part
of CI.

    .venv/bin/python bench/soak.py                       # one hour, writes the soak section of docs/reliability.md
    .venv/bin/python bench/soak.py --duration 120 --no-write
    .venv/bin/python bench/soak.py --generator loadgen --rate 10000 --out /tmp/soak.json   # 10,000 values/s

Two generators. `simulator` (default): the project's plant simulator, in this process:

the site is a generated enterprise (simulators/enterprise.py) cut down to its MQTT-bound lines
(fill-finish and cleanroom HVAC), so every tag travels over MQTT; `--tick-ms` sets the rate
(values/s = tags x 1000 / tick_ms; it skips ticks when the machine is busy). `loadgen`: the
ingest bench's load generator (bench/_loadgen.py), a process of its own publishing batched JSON
(`--units` messages of `--tags` values per round, QoS 1) at `--rate` values/s, paced by the wall
clock, and the site file is its tags; this is the rate the ingest target states (10,000 values/s).

The collector is a separate process; it, the broker and the generator (this process for the
simulator) have /proc/PID/status (VmRSS) and /proc/PID/fd sampled every `--every` seconds. At the
end the generator stops, the collector gets SIGTERM (a clean stop flushes its batches) and the
historian is read back: values emitted (simulator ticks x tags, or the values the load generator
published), stored, distinct (tag, ts). Result: first/last/max and the least-squares slope per hour
of RSS and open files (on the second half, after warm-up), JSON in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before bench/ (the script's directory: bench/collector.py is no package)

import numpy as np
import yaml
from _servers import free_port, start_mosquitto

RELIABILITY_DOC = REPO / "docs" / "reliability.md"
SECTION = "Soak"


def mqtt_only_site(lines: int, tick_ms: int, payload: str, mqtt_url: str, data_dir: Path) -> dict:
    """A generated enterprise's site document with only its MQTT-bound units (and the MQTT source)."""
    from simulators.enterprise import build_enterprise

    doc = build_enterprise(1, lines, seed=7).model_dump(mode="json", exclude_none=True)
    for site in doc["sites"]:
        for area in site["areas"]:
            for line in area["lines"]:
                line["units"] = [u for u in line["units"] if all("mqtt" in t for t in u["tags"])]
            area["lines"] = [line for line in area["lines"] if line["units"]]
        site["areas"] = [a for a in site["areas"] if a["lines"]]
    doc["sources"] = [dict(s, url=mqtt_url) for s in doc["sources"] if s["kind"] == "mqtt"]
    doc["simulation"].update(mqtt_url=mqtt_url, opcua_url=None, tick_ms=tick_ms, mqtt_payload=payload, faults=[])
    doc["data_dir"] = str(data_dir)
    return doc


def loadgen_site(units: int, tags: int, mqtt_url: str, data_dir: Path) -> dict:
    """The load generator's site document (one line, `units` x `tags` MQTT tags, batched JSON)."""
    from _loadgen import site_config

    return dict(site_config("batched_json", mqtt_url, units, tags, client_id="soak-collector", qos=1),
                data_dir=str(data_dir))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(samples: list[dict], key: str) -> float:
    """Least-squares slope of `key` per hour on the second half of the run (after warm-up)."""
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return float("nan")
    t = np.array([s["t_s"] for s in half]) / 3600
    return float(np.polyfit(t, np.array([s[key] for s in half], dtype=float), 1)[0])


def stats(samples: list[dict], key: str) -> dict:
    values = [s[key] for s in samples]
    return {"first": values[0], "last": values[-1], "max": max(values), "min": min(values),
            "slope_per_h": round(slope_per_hour(samples, key), 3), "quarter_means": quarter_means(samples, key)}


def quarter_means(samples: list[dict], key: str) -> list[float]:
    """Mean of `key` over each quarter of the run: whether a rise levels off, which one slope
    over noisy samples does not say."""
    values = np.array([s[key] for s in samples if key in s], dtype=float)
    return [round(float(q.mean()), 1) for q in np.array_split(values, 4) if len(q)]


async def wait_subscribed(mqtt_url: str, collector: subprocess.Popen, timeout_s: float) -> None:
    """Until the broker counts a subscription ($SYS/broker/subscriptions/count, every sys_interval)."""
    import aiomqtt

    from simulators.mqtt_publisher import parse_mqtt_url

    host, port = parse_mqtt_url(mqtt_url)
    async with asyncio.timeout(timeout_s), aiomqtt.Client(host, port) as probe:
        await probe.subscribe("$SYS/broker/subscriptions/count")
        async for message in probe.messages:
            if collector.poll() is not None:
                raise SystemExit(f"collector exited with {collector.returncode}")
            if int(message.payload) > 1:  # the probe's own subscription is one
                return


class SimulatorStream:
    """The plant simulator in this process, publishing over MQTT on wall-clock ticks."""

    def __init__(self, site, work: Path, mqtt_url: str, tags: int):
        from simulators.service import SimulatorService

        self.service = SimulatorService(site, data_dir=work / "sim", opcua_url=None, mqtt_url=mqtt_url)
        self.tags, self.pid, self.task = tags, os.getpid(), None

    def start(self, duration: float) -> None:
        self.task = asyncio.create_task(self.service.run(duration))

    async def wait(self, timeout: float) -> bool:
        await asyncio.wait({self.task}, timeout=timeout)
        return self.task.done()

    def progress(self) -> dict:
        return {"ticks": self.service.ticks}

    async def finish(self) -> dict:
        await self.task
        s = self.service
        result = {"ticks": s.ticks, "emitted": s.ticks * self.tags, "messages_published": s.mqtt_stats.published,
                  "publisher_dropped": s.mqtt_stats.dropped, "simulated_span": [str(s.plant.start), str(s.plant.now)]}
        await s.stop()
        return result

    async def stop(self) -> None:
        await self.service.stop()


class LoadgenStream:
    """bench/_loadgen.py as a process of its own: batched JSON at a fixed rate, QoS 1."""

    def __init__(self, mqtt_url: str, units: int, tags: int, rate: float):
        self.args = [sys.executable, str(REPO / "bench" / "_loadgen.py"), "--url", mqtt_url, "--format",
                     "batched_json", "--units", str(units), "--tags", str(tags), "--rate", str(rate), "--qos", "1"]
        self.proc: subprocess.Popen | None = None
        self.pid = 0

    def start(self, duration: float) -> None:
        self.proc = subprocess.Popen([*self.args, "--duration", str(duration)], stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    async def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        return self.proc.poll() is not None

    def progress(self) -> dict:
        return {}

    async def finish(self) -> dict:
        out, _ = await asyncio.to_thread(self.proc.communicate, timeout=600)
        if self.proc.returncode:
            raise SystemExit(f"load generator failed with code {self.proc.returncode}")
        sent = json.loads(out.strip().splitlines()[-1])
        return {"emitted": sent["values"], "messages_published": sent["messages"], "publisher_dropped": 0,
                "generator_seconds": round(sent["seconds"], 1)}

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def samples_stored(port: int) -> int | None:
    """What the collector says it has stored (/api/health), None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 503 when degraded: the body is the same health document
        body = json.load(exc)
    except (OSError, ValueError):
        return None
    return body["historian"]["samples_stored"]


async def drained(port: int, emitted: int, quiet_s: float, limit_s: float = 900) -> None:
    """Until the collector has stored `emitted` values, or stored nothing new for `quiet_s` seconds
    (a backlog in the broker or the spool is drained before the collector is stopped)."""
    last, last_change, deadline = None, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        stored = await asyncio.to_thread(samples_stored, port)
        if stored is not None and stored >= emitted:
            return
        if stored != last:
            last, last_change = stored, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return
        await asyncio.sleep(1)


def process_sample(pid: int, name: str) -> dict:
    return {f"{name}_rss_mb": round(rss_mb(pid), 1), f"{name}_open_files": open_files(pid)}


async def soak(args, work: Path) -> dict:
    from controltower.site import parse_site_config

    code = commit()  # the code the collector starts with, not what HEAD is an hour later
    broker = start_mosquitto(work / "mosquitto", "sys_interval 1\n")
    if args.generator == "loadgen":
        doc = loadgen_site(args.units, args.tags, broker.mqtt_url, work / "collector")
    else:
        doc = mqtt_only_site(args.lines, args.tick_ms, args.payload, broker.mqtt_url, work / "collector")
    config = work / "site.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    site = parse_site_config(doc)
    tags = len(site.tag_table())
    if args.generator == "loadgen":
        stream, values_per_s, per_message = LoadgenStream(broker.mqtt_url, args.units, args.tags, args.rate), \
            args.rate, args.tags
    else:
        stream, values_per_s, per_message = SimulatorStream(site, work, broker.mqtt_url, tags), \
            tags * 1000 / args.tick_ms, tags
    log = (work / "collector.log").open("ab")
    port = free_port()
    cli = ["--log-level", "WARNING", "run", "--config", str(config), "--port", str(port)]
    # --probe: the collector samples where its memory sits (bench/_memprobe.py) into a file
    launch = ([str(Path(__file__).with_name("_memprobe.py")), str(args.probe), str(args.every), "--"] if args.probe
              else ["-m", "controltower.cli"])
    collector = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything runs)
        [sys.executable, *launch, *cli], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    samples: list[dict] = []
    try:
        # The stream starts once the collector has subscribed (else its first messages go nowhere).
        await wait_subscribed(broker.mqtt_url, collector, args.warmup)
        stream.start(args.duration)
        started = time.monotonic()
        print(json.dumps({"tags": tags, "values_per_s": values_per_s, "collector_pid": collector.pid,
                          "generator_pid": stream.pid, "work": str(work)}), flush=True)
        done = False
        while not done:
            done = await stream.wait(args.every)
            if collector.poll() is not None:
                raise SystemExit(f"collector exited with {collector.returncode}: see {work / 'collector.log'}")
            sample = {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(rss_mb(collector.pid), 1),
                      "open_files": open_files(collector.pid), **process_sample(broker.proc.pid, "broker"),
                      **(process_sample(stream.pid, "generator") if not done else {}), **stream.progress(),
                      "stored": await asyncio.to_thread(samples_stored, port)}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        emitted = await stream.finish()
        await drained(port, emitted["emitted"], args.drain)
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=120)
    finally:
        await stream.stop()
        if collector.poll() is None:
            collector.kill()
            collector.wait()
        broker.stop()
        log.close()

    import duckdb

    with duckdb.connect(str(work / "collector" / "historian.duckdb"), read_only=True) as db:
        stored, distinct = db.execute("SELECT count(*), count(DISTINCT (tag_id, ts)) FROM samples").fetchone()
        # Where any loss sits: timestamps (simulator ticks, or generator messages) stored incomplete,
        # and the stored time span.
        incomplete, first_ts, last_ts = db.execute(
            "SELECT count(*) FILTER (WHERE n < ?), min(ts), max(ts) FROM "
            "(SELECT ts, count(DISTINCT tag_id) AS n FROM samples GROUP BY ts)", [per_message]).fetchone()
    with_gen = [s for s in samples if "generator_rss_mb" in s]
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": code, "generator": args.generator,
            "duration_s": args.duration, "tick_ms": args.tick_ms, "payload": args.payload
            if args.generator == "simulator" else "batched_json", "tags": tags, "values_per_s": values_per_s,
            **emitted, "stored": stored, "distinct": distinct, "lost": emitted["emitted"] - distinct,
            "duplicates": stored - distinct, "timestamps_stored_incomplete": incomplete,
            "first_stored_ts": str(first_ts), "last_stored_ts": str(last_ts),
            "every_s": args.every, "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
            f"{platform.python_implementation()} {platform.python_version()}",
            "rss_mb": stats(samples, "rss_mb"), "open_files": stats(samples, "open_files"),
            "broker_rss_mb": stats(samples, "broker_rss_mb"), "broker_open_files": stats(samples, "broker_open_files"),
            **({"generator_rss_mb": stats(with_gen, "generator_rss_mb"),
                "generator_open_files": stats(with_gen, "generator_open_files")} if with_gen else {}),
            "samples": samples}


def commit() -> str:
    """HEAD, marked when the collector's code has uncommitted edits."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "collector", "controltower"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return head + (" (with uncommitted edits)" if dirty else "")


def historian_alone(tags: int, stream_s: float, values_per_s: float) -> dict:
    """The baseline for the RSS slope: the DuckDB historian alone, in this process, writing the
    same number of rows as `stream_s` of the soak (batches of half a second, as fast as it goes).
    Its RSS grows with the database (DuckDB's buffer pool), which says how much of the
    collector's growth is the store's."""
    import numpy as np
    import polars as pl

    from collector.sinks.duckdb import DuckDbHistorian
    from controltower.samples import samples_frame

    ids = [f"s.a.l.u{i // 4}.t{i % 4}" for i in range(tags)]
    paths = pl.DataFrame({"tag_id": ids, "site": "s", "area": "a", "line": "l", "unit": [t.split(".")[3] for t in ids]})
    per_batch = max(1, round(values_per_s / 2 / tags))  # rounds of `tags` values per half second
    t0 = int(datetime(2026, 11, 29, tzinfo=UTC).timestamp() * 1e9)
    points = []
    with tempfile.TemporaryDirectory(prefix="soak-duckdb-") as tmp:
        historian = DuckDbHistorian(Path(tmp) / "historian.duckdb")
        batches = int(stream_s * values_per_s / tags / per_batch)
        for b in range(batches):
            ticks = t0 + ((b * per_batch + np.arange(per_batch)) * tags * 1e9 / values_per_s).astype(np.int64)
            ts = np.repeat(ticks, tags)
            historian.write_sync(samples_frame(
                ts=pl.Series("ts", ts).cast(pl.Datetime("ns", "UTC")), tag_id=pl.Series("tag_id", ids * per_batch),
                value=pl.Series("value", np.random.default_rng(b).random(len(ts))),
                quality=pl.Series("quality", ["good"] * len(ts)), batch_id=[None] * len(ts), tag_paths=paths))
            if b % max(1, batches // 20) == 0 or b == batches - 1:
                points.append({"t_s": b * per_batch * tags / values_per_s, "rss_mb": round(rss_mb(os.getpid()), 1)})
        historian.close()
    return {"stream_s": stream_s, "rows": batches * per_batch * tags, "rss_mb": stats(points, "rss_mb")}


def section(result: dict, command: str) -> str:
    if result.get("generator") == "loadgen":
        stream = (f"The load generator (bench/_loadgen.py, a process of its own: batched JSON, {result['tags']} tags, "
                  f"QoS 1, paced by the wall clock: **{result['values_per_s']:,.0f} values/s**, "
                  f"{result['emitted'] / result['duration_s']:,.0f} sustained)")
        emitted = f"{result['messages_published']:,} MQTT messages"
    else:
        stream = (f"The simulator ({result['tags']} tags, one tick every {result['tick_ms']} ms, `{result['payload']}`: "
                  f"**{result['values_per_s']:,.0f} values/s** nominal, "
                  f"{result['emitted'] / result['duration_s']:,.0f} sustained: it skips ticks when the machine is busy)")
        emitted = (f"{result['ticks']:,} ticks x {result['tags']} tags, {result['messages_published']:,} MQTT messages, "
                   f"{result['publisher_dropped']} dropped by the publisher")
    rows = [("collector RSS (MiB)", "rss_mb", "MiB/h"), ("collector open files", "open_files", "/h"),
            ("mosquitto RSS (MiB)", "broker_rss_mb", "MiB/h"), ("mosquitto open files", "broker_open_files", "/h"),
            ("generator RSS (MiB)", "generator_rss_mb", "MiB/h"), ("generator open files", "generator_open_files", "/h")]
    table = [f"| {label} | {m['first']} | {m['last']} | {m['min']} | {m['max']} | {m['slope_per_h']:+.2f} {unit} | "
             f"{', '.join(str(q) for q in m.get('quarter_means') or quarter_means(result['samples'], key))} |"
             for label, key, unit in rows if (m := result.get(key))]
    commit = f", commit {result['commit']}" if result.get("commit") else ""
    return "\n".join([
        f"## {SECTION}",
        "",
        f"{result['date']}, `{command}`{commit}, {result['machine']}.",
        "",
        (f"{stream} streamed over Mosquitto for {result['duration_s'] / 3600:.2f} h into a `controltower run` process "
         "(DuckDB historian, on-disk spool, detectors and screen running). The RSS (/proc/PID/status VmRSS) and open "
         f"file handles (/proc/PID/fd) of each process were sampled every {result['every_s']:g} s "
         f"({len(result['samples'])} samples). Slope: least squares over the second half (after warm-up)."),
        "",
        "| process | first | last | min | max | slope per hour (second half) | mean per quarter of the run |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
        (f"Values emitted {result['emitted']:,} ({emitted}), stored {result['stored']:,}, distinct (tag, ts) "
         f"{result['distinct']:,}: lost {result['lost']:,}, duplicates {result['duplicates']:,}."),
        "",
        *probe_table(result.get("probe")),
        *([(f"Baseline (`bench/soak.py --historian-alone`, on this machine): the DuckDB historian alone, writing the "
            f"same {result['baseline']['rows']:,} rows in this process, went from {result['baseline']['rss_mb']['first']} "
            f"to {result['baseline']['rss_mb']['last']} MiB RSS ({result['baseline']['rss_mb']['slope_per_h']:+.1f} MiB "
            "per hour of stream, on the second half): the part of the collector's growth that is the store's."), ""]
          if result.get("baseline") else []),
    ])


# What the collector's probe (--probe, bench/_memprobe.py) saw, by where the memory sits.
PROBE_ROWS = [
    ("RSS", "rss_mb", "MiB"),
    ("glibc: bytes in use (Python's large objects, DuckDB's bookkeeping, C libraries)", "glibc_in_use_mb", "MiB"),
    ("glibc: free bytes kept in its arenas", "glibc_free_mb", "MiB"),
    ("main heap mapping, resident", "heap_mb", "MiB"),
    ("unnamed anonymous mappings, resident (glibc thread arenas, pymalloc, jemalloc of Polars and DuckDB)",
     "anon_mb", "MiB"),
    ("file-backed mappings, resident (shared libraries)", "file_mb", "MiB"),
    ("DuckDB buffer pool (duckdb_memory(), all kinds)", "duckdb_mb", "MiB"),
    ("Python: pymalloc blocks", "pymalloc_blocks", ""),
    ("Python: objects tracked by the GC", "gc_objects", ""),
]


def probe_table(probe: list[dict] | None) -> list[str]:
    """The probe's samples as quarter means per kind of memory, and the slope over the second half."""
    if not probe:
        return []
    t0 = probe[0]["t"]
    rows = [dict(r, t_s=r["t"] - t0, duckdb_mb=sum(v for k, v in r.items() if k.startswith("duckdb_") and
                                                     k.endswith("_mb"))) for r in probe]
    lines = [f"Inside the collector (`--probe`: bench/_memprobe.py, {len(rows)} samples from /proc/self/smaps, "
             "glibc's mallinfo2, `sys.getallocatedblocks`, the GC and DuckDB's `duckdb_memory()`):", "",
             "| where | first | last | slope per hour (second half) | mean per quarter of the run |", "|---|---|---|---|---|"]
    for label, key, unit in PROBE_ROWS:
        if all(key in r for r in rows):
            lines.append(f"| {label} | {rows[0][key]:,} | {rows[-1][key]:,} | "
                         f"{slope_per_hour(rows, key):+,.1f} {unit}/h | "
                         f"{', '.join(f'{q:,}' for q in quarter_means(rows, key))} |")
    return [*lines, ""]


def read_probe(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_section(text: str, doc: Path = RELIABILITY_DOC) -> None:
    from benchdoc import write_section as replace_section

    if not doc.exists():
        doc.write_text("# Reliability\n", encoding="utf-8")
    replace_section(SECTION, text, doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3600, help="seconds of streaming")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples of the collector")
    parser.add_argument("--generator", default="simulator", choices=["simulator", "loadgen"])
    parser.add_argument("--rate", type=float, default=10_000, help="loadgen: values per second")
    parser.add_argument("--units", type=int, default=10, help="loadgen: units (one message per unit per round)")
    parser.add_argument("--tags", type=int, default=100, help="loadgen: tags per unit (values per message)")
    parser.add_argument("--lines", type=int, default=6, help="simulator: lines of the generated site (its MQTT lines)")
    parser.add_argument("--tick-ms", type=int, default=100, help="simulator: milliseconds per tick")
    parser.add_argument("--payload", default="json_unit", choices=["json_unit", "batched_json"], help="simulator")
    parser.add_argument("--warmup", type=float, default=120, help="seconds the collector may take to start and subscribe")
    parser.add_argument("--drain", type=float, default=30, help="after the generator stops, the collector is stopped once it has stored every value or stored "
                        "nothing new for this many seconds")
    parser.add_argument("--out", type=Path, help="also write the result (with every sample) as JSON here")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/reliability.md")
    parser.add_argument("--probe", type=Path, help="the collector also writes where its memory sits (smaps by "
                        "kind, glibc, pymalloc, DuckDB, Python types; bench/_memprobe.py) as JSON lines here; with --from-json: "
                        "the probe file of that run, to put in the section")
    parser.add_argument("--from-json", type=Path, help="write the section from an earlier run's --out file")
    parser.add_argument("--historian-alone", action="store_true",
                        help="also (or with --from-json: only) measure the DuckDB historian alone on the same rows")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        if args.probe:
            result["probe"] = read_probe(args.probe)
        if args.historian_alone:
            result["baseline"] = historian_alone(result["tags"], result["duration_s"], result["values_per_s"])
            print(json.dumps(result["baseline"]), flush=True)
            args.from_json.write_text(json.dumps(result, indent=1))
        if not args.no_write:
            write_section(section(result, result["command"]))
        return
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    result["command"] = "python bench/soak.py " + " ".join(sys.argv[1:])
    if args.probe:
        result["probe"] = read_probe(args.probe)
    if args.historian_alone:
        result["baseline"] = historian_alone(result["tags"], args.duration, result["values_per_s"])
    summary = {k: v for k, v in result.items() if k not in ("samples", "probe")}
    print(json.dumps(summary), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        write_section(section(result, result["command"]))


if __name__ == "__main__":
    main()
