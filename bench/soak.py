"""Soak: the project's simulator streams over Mosquitto into a collector process (`controltower run`,
DuckDB historian and on-disk spool) for an hour; the collector's memory and open file handles must
stay flat. Not part of CI.

    .venv/bin/python bench/soak.py                       # one hour, writes the soak section of docs/reliability.md
    .venv/bin/python bench/soak.py --duration 120 --no-write

The site is a generated enterprise (simulators/enterprise.py) cut down to its MQTT-bound lines
(fill-finish and cleanroom HVAC), so every tag travels over MQTT; `--tick-ms` sets the rate
(values/s = tags x 1000 / tick_ms). The simulator runs in this process (SimulatorService, wall-clock
ticks, per-unit JSON by default); the collector is a separate process whose /proc/PID/status (VmRSS)
and /proc/PID/fd are sampled every `--every` seconds. At the end the simulator stops, the collector
gets SIGTERM (a clean stop flushes its batches) and the historian is read back: values emitted
(simulator ticks x tags), stored, distinct (tag, ts). Result: first/last/max and the least-squares
slope per hour of RSS and open files (on the second half, after warm-up), JSON in --out.
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
            "slope_per_h": round(slope_per_hour(samples, key), 3)}


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


async def soak(args, work: Path) -> dict:
    from controltower.site import parse_site_config
    from simulators.service import SimulatorService

    broker = start_mosquitto(work / "mosquitto", "sys_interval 1\n")
    doc = mqtt_only_site(args.lines, args.tick_ms, args.payload, broker.mqtt_url, work / "collector")
    config = work / "site.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    site = parse_site_config(doc)
    tags = len(site.tag_table())
    log = (work / "collector.log").open("ab")
    collector = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything runs)
        [sys.executable, "-m", "controltower.cli", "--log-level", "WARNING", "run", "--config", str(config),
         "--port", str(free_port())], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    simulator = SimulatorService(site, data_dir=work / "sim", opcua_url=None, mqtt_url=broker.mqtt_url)
    samples: list[dict] = []
    try:
        # The stream starts once the collector has subscribed (else its first ticks go nowhere).
        await wait_subscribed(broker.mqtt_url, collector, args.warmup)
        run = asyncio.create_task(simulator.run(args.duration))
        started = time.monotonic()
        print(json.dumps({"tags": tags, "values_per_s": tags * 1000 / args.tick_ms, "collector_pid": collector.pid,
                          "work": str(work)}), flush=True)
        while not run.done():
            await asyncio.wait({run}, timeout=args.every)
            if collector.poll() is not None:
                raise SystemExit(f"collector exited with {collector.returncode}: see {work / 'collector.log'}")
            sample = {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(rss_mb(collector.pid), 1),
                      "open_files": open_files(collector.pid), "ticks": simulator.ticks}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        await run
        ticks, published = simulator.ticks, simulator.mqtt_stats.published
        plant_start, plant_end = simulator.plant.start, simulator.plant.now
        dropped = simulator.mqtt_stats.dropped
        await simulator.stop()
        await asyncio.sleep(args.drain)  # the last batches reach the historian
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=60)
    finally:
        await simulator.stop()
        if collector.poll() is None:
            collector.kill()
            collector.wait()
        broker.stop()
        log.close()

    import duckdb

    with duckdb.connect(str(work / "collector" / "historian.duckdb"), read_only=True) as db:
        stored, distinct = db.execute("SELECT count(*), count(DISTINCT (tag_id, ts)) FROM samples").fetchone()
        # Where any loss sits: ticks stored incomplete, and the stored time span against the simulator's.
        incomplete, first_ts, last_ts = db.execute(
            "SELECT count(*) FILTER (WHERE n < ?), min(ts), max(ts) FROM "
            "(SELECT ts, count(DISTINCT tag_id) AS n FROM samples GROUP BY ts)", [tags]).fetchone()
    emitted = ticks * tags
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "duration_s": args.duration,
            "tick_ms": args.tick_ms, "payload": args.payload, "tags": tags, "values_per_s": tags * 1000 / args.tick_ms,
            "ticks": ticks, "messages_published": published, "publisher_dropped": dropped, "emitted": emitted,
            "stored": stored, "distinct": distinct, "lost": emitted - distinct, "duplicates": stored - distinct,
            "ticks_stored_incomplete": incomplete, "first_stored_ts": str(first_ts), "last_stored_ts": str(last_ts),
            "simulated_span": [str(plant_start), str(plant_end)],
            "every_s": args.every, "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
            f"{platform.python_implementation()} {platform.python_version()}",
            "rss_mb": stats(samples, "rss_mb"), "open_files": stats(samples, "open_files"), "samples": samples}


def historian_alone(tags: int, stream_s: float, tick_ms: int) -> dict:
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
    per_batch = max(1, 500 // tick_ms)
    t0 = int(datetime(2026, 11, 29, tzinfo=UTC).timestamp() * 1e9)
    points = []
    with tempfile.TemporaryDirectory(prefix="soak-duckdb-") as tmp:
        historian = DuckDbHistorian(Path(tmp) / "historian.duckdb")
        batches = int(stream_s * 1000 / tick_ms / per_batch)
        for b in range(batches):
            ticks = t0 + (b * per_batch + np.arange(per_batch)) * tick_ms * 1_000_000
            ts = np.repeat(ticks, tags)
            historian.write_sync(samples_frame(
                ts=pl.Series("ts", ts).cast(pl.Datetime("ns", "UTC")), tag_id=pl.Series("tag_id", ids * per_batch),
                value=pl.Series("value", np.random.default_rng(b).random(len(ts))),
                quality=pl.Series("quality", ["good"] * len(ts)), batch_id=[None] * len(ts), tag_paths=paths))
            if b % max(1, batches // 20) == 0 or b == batches - 1:
                points.append({"t_s": b * per_batch * tick_ms / 1000, "rss_mb": round(rss_mb(os.getpid()), 1)})
        historian.close()
    return {"stream_s": stream_s, "rows": batches * per_batch * tags, "rss_mb": stats(points, "rss_mb")}


def section(result: dict, command: str) -> str:
    r, f = result["rss_mb"], result["open_files"]
    return "\n".join([
        f"## {SECTION}",
        "",
        f"{result['date']}, `{command}`, {result['machine']}.",
        "",
        (f"The simulator ({result['tags']} tags, one tick every {result['tick_ms']} ms, `{result['payload']}` over "
         f"Mosquitto: **{result['values_per_s']:.0f} values/s** nominal, {result['emitted'] / result['duration_s']:.0f} "
         f"sustained: it skips ticks when the machine is busy) streamed for {result['duration_s'] / 3600:.2f} h into a "
         "`controltower run` process (DuckDB historian, on-disk spool, detectors and screen running). Its RSS "
         f"(/proc/PID/status VmRSS) and open file handles (/proc/PID/fd) were sampled every {result['every_s']} s "
         f"({len(result['samples'])} samples). Slope: least squares over the second half (after warm-up)."),
        "",
        "| collector | first | last | min | max | slope per hour |",
        "|---|---|---|---|---|---|",
        f"| RSS (MiB) | {r['first']} | {r['last']} | {r['min']} | {r['max']} | {r['slope_per_h']:+.2f} MiB/h |",
        f"| open file handles | {f['first']} | {f['last']} | {f['min']} | {f['max']} | {f['slope_per_h']:+.2f} /h |",
        "",
        (f"Values emitted {result['emitted']:,} ({result['ticks']:,} ticks x {result['tags']} tags, "
         f"{result['messages_published']:,} MQTT messages, {result['publisher_dropped']} dropped by the publisher), "
         f"stored {result['stored']:,}, distinct (tag, ts) {result['distinct']:,}: lost {result['lost']:,}, "
         f"duplicates {result['duplicates']:,}."),
        "",
        *([(f"Baseline (`bench/soak.py --historian-alone`, on this machine): the DuckDB historian alone, writing the "
            f"same {result['baseline']['rows']:,} rows in this process, went from {result['baseline']['rss_mb']['first']} "
            f"to {result['baseline']['rss_mb']['last']} MiB RSS ({result['baseline']['rss_mb']['slope_per_h']:+.1f} MiB "
            "per hour of stream, on the second half): the store's buffer pool grows with the database, and that is "
            "the part of the collector's growth to compare against."), ""] if result.get("baseline") else []),
    ])


def write_section(text: str, doc: Path = RELIABILITY_DOC) -> None:
    from benchdoc import write_section as replace_section

    if not doc.exists():
        doc.write_text("# Reliability\n", encoding="utf-8")
    replace_section(SECTION, text, doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3600, help="seconds of streaming")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples of the collector")
    parser.add_argument("--lines", type=int, default=6, help="lines of the generated site (its MQTT lines are kept)")
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--payload", default="json_unit", choices=["json_unit", "batched_json"])
    parser.add_argument("--warmup", type=float, default=120, help="seconds the collector may take to start and subscribe")
    parser.add_argument("--drain", type=float, default=10, help="seconds between the simulator's stop and the collector's")
    parser.add_argument("--out", type=Path, help="also write the result (with every sample) as JSON here")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/reliability.md")
    parser.add_argument("--from-json", type=Path, help="write the section from an earlier run's --out file")
    parser.add_argument("--historian-alone", action="store_true",
                        help="also (or with --from-json: only) measure the DuckDB historian alone on the same rows")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        if args.historian_alone:
            result["baseline"] = historian_alone(result["tags"], result["duration_s"], result["tick_ms"])
            print(json.dumps(result["baseline"]), flush=True)
            args.from_json.write_text(json.dumps(result, indent=1))
        if not args.no_write:
            write_section(section(result, result["command"]))
        return
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    result["command"] = "python bench/soak.py " + " ".join(sys.argv[1:])
    if args.historian_alone:
        result["baseline"] = historian_alone(result["tags"], args.duration, args.tick_ms)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        write_section(section(result, result["command"]))


if __name__ == "__main__":
    main()
