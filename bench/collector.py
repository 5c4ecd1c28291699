"""Collector decode path: from what a protocol hands over to one columnar sample batch.

    .venv/bin/python bench/collector.py            # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/collector.py --no-write

MQTT: 20,000 unit messages (the demo filler's JSON, 3 tags each, 60,000 samples) decoded by
`MqttJsonDecoder` as the source does (`add` per message, the whole flush parsed at once by
`take_batch`), by its per-message reference path (`decode`: one `json.loads`, values appended to
column lists, one frame per flush), and the usual per-sample way: a dict per sample,
`pl.from_dicts`, then the ISA-95 path join. OPC-UA: 100,000 data-change notifications through `OpcUaSource._on_change` and one
`_take_batch` (status codes to quality vectorised, batch ids joined per unit) against a dict per
sample. Both sides produce the same sample-schema frame; medians of several repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402
from asyncua import ua  # noqa: E402

from benchdoc import DOC, write_section  # noqa: E402
from collector.sources.mqtt import MqttJsonDecoder  # noqa: E402
from collector.sources.opcua import OpcUaSource  # noqa: E402
from controltower.samples import QUALITY_DTYPE, SAMPLE_SCHEMA, tag_paths_frame  # noqa: E402
from controltower.site import load_site_config  # noqa: E402

T0 = datetime(2026, 11, 29, tzinfo=UTC)
TOPIC = "plant/lyon/ff/fill1/filler1"
FIELDS = ("fill_weight", "speed", "room_dp")


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def mqtt_messages(n: int) -> list[bytes]:
    return [
        json.dumps({"ts": (T0 + timedelta(milliseconds=500 * i)).isoformat().replace("+00:00", "Z"),
                    "batch_id": "FILLER1-0001", "fill_weight": 2.0 + (i % 7) * 1e-3, "speed": 300.0 + i % 5,
                    "room_dp": 15.0}).encode()
        for i in range(n)
    ]


def mqtt_per_sample(messages: list[bytes], tag_paths: pl.DataFrame, received: datetime) -> pl.DataFrame:
    """Baseline: one Python dict per sample, then a frame from the dicts."""
    rows = []
    for payload in messages:
        doc = json.loads(payload)
        ts = datetime.fromisoformat(doc["ts"])
        for field in FIELDS:
            rows.append({"ts": ts, "server_ts": received, "tag_id": f"lyon.ff.fill1.filler1.{field}",
                         "value": float(doc[field]), "quality": "good", "batch_id": doc.get("batch_id")})
    frame = pl.from_dicts(rows).join(tag_paths, on="tag_id", how="left")
    return frame.select(pl.col(c).cast(t) for c, t in SAMPLE_SCHEMA.items())


def bench_mqtt(repeats: int) -> dict[str, float]:
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    tags = [t for t in site.tag_table() if t.source == "plant-mqtt"]
    config = next(s for s in site.sources if s.kind == "mqtt")
    messages = mqtt_messages(20_000)
    received = datetime.now(UTC)

    def per_flush() -> pl.DataFrame:
        decoder = MqttJsonDecoder(config, tags)
        for payload in messages:
            decoder.add(TOPIC, payload, received)
        return decoder.take_batch()

    def per_message() -> pl.DataFrame:
        decoder = MqttJsonDecoder(config, tags)
        for payload in messages:
            decoder.decode(TOPIC, payload, received)
        return decoder.take_batch()

    a, r, b = per_flush(), per_message(), mqtt_per_sample(messages, tag_paths_frame(tags), received)
    assert a.sort("tag_id", "ts").equals(b.sort("tag_id", "ts")), "every way must give the same frame"
    assert r.sort("tag_id", "ts").equals(b.sort("tag_id", "ts")), "every way must give the same frame"
    fast = timed(per_flush, repeats)
    reference = timed(per_message, repeats)
    slow = timed(lambda: mqtt_per_sample(messages, tag_paths_frame(tags), received), repeats)
    return {"messages": len(messages), "samples": a.height, "columnar_s": fast, "per_message_s": reference,
            "per_sample_s": slow}


def bench_opcua(repeats: int) -> dict[str, float]:
    site = load_site_config(REPO / "config" / "demo-site.yaml")
    config = next(s for s in site.sources if s.kind == "opcua")
    tags = site.tag_table()
    opcua_tags = [t for t in tags if t.source == config.name]
    nodes = [ua.NodeId.from_string(t.tag.opcua.node_id) for t in opcua_tags]
    n = 100_000
    notifications = [
        (nodes[i % len(nodes)], 37.0 + (i % 13) * 0.01,
         ua.DataValue(Value=ua.Variant(37.0, ua.VariantType.Double), StatusCode=ua.StatusCode(ua.StatusCodes.Good),
                      SourceTimestamp=T0 + timedelta(milliseconds=i), ServerTimestamp=T0 + timedelta(milliseconds=i)))
        for i in range(n)
    ]

    def columnar() -> pl.DataFrame:
        source = OpcUaSource(config.model_copy(update={"flush_max_samples": 10 * n}), tags)
        for node, value, dv in notifications:
            source._on_change(node, value, dv)
        return source._take_batch()

    tag_by_node = {node: t.tag_id for node, t in zip(nodes, opcua_tags)}
    paths = tag_paths_frame(opcua_tags)

    def per_sample() -> pl.DataFrame:
        rows = [
            {"ts": dv.SourceTimestamp, "server_ts": dv.ServerTimestamp, "tag_id": tag_by_node[node], "value": value,
             "quality": "good" if dv.StatusCode.value >> 30 == 0 else "bad", "batch_id": None}
            for node, value, dv in notifications
        ]
        frame = pl.from_dicts(rows).join(paths, on="tag_id", how="left")
        return frame.select(pl.col(c).cast(t) for c, t in SAMPLE_SCHEMA.items())

    a = columnar()
    assert a.height == n and a["quality"].cast(pl.String).eq("good").all() and a.schema["quality"] == QUALITY_DTYPE
    fast = timed(columnar, repeats)
    slow = timed(per_sample, repeats)
    return {"messages": n, "samples": a.height, "columnar_s": fast, "per_sample_s": slow}


STAGE_FORMATS = {"batched_json": "MQTT batched JSON", "json": "MQTT JSON (object per unit)",
                 "sparkplug_b": "MQTT Sparkplug B"}


def bench_stages(repeats: int, messages: int = 2000) -> list[dict]:
    """CPU time per value of each stage the ingest bench's collector runs, on its stream (10 units x
    100 tags, bench/_loadgen.py): decoding as the source does (flushes of `flush_max_samples`),
    the spool append (Arrow IPC + fsync per batch), the DuckDB write (runs of 100,000, as the
    forwarder stores a backlog). Process CPU time, every thread; medians."""
    sys.path.append(str(REPO / "bench"))
    from _loadgen import Stream, site_config

    from collector.sinks.duckdb import DuckDbHistorian
    from collector.sources.mqtt import MqttSource
    from collector.spool import Spool
    from controltower.site import parse_site_config

    return [_stage_row(label, parse_site_config(site_config(fmt, "mqtt://127.0.0.1:1883", 10, 100, client_id="b")),
                       Stream(fmt, 10, 100), repeats, messages, MqttSource, Spool, DuckDbHistorian)
            for fmt, label in STAGE_FORMATS.items()]


def _stage_row(label: str, site, stream, repeats: int, messages: int, source_class, spool_class, historian_class) -> dict:
    import tempfile

    sent = time.time()
    data = [stream.data(i, sent) for i in range(messages)]
    births = stream.births(sent)
    batches: list[pl.DataFrame] = []

    def decode() -> None:
        source = source_class(site.sources[0], site.tag_table())
        for topic, payload in births:
            source.handle_message(topic, payload, datetime.now(UTC))
        source.take_batch()
        taken = []
        for topic, payload in data:
            source.handle_message(topic, payload, datetime.now(UTC))
            if source.decoder.pending_samples >= source.config.flush_max_samples:
                taken.append(source.take_batch())
        taken.append(source.take_batch())
        assert not source.health.rejected
        batches[:] = [b for b in taken if b is not None]

    def append_all(spool) -> None:
        for b in batches:
            spool.append(b)

    def write_all(historian) -> None:
        whole = pl.concat(batches)
        for start in range(0, whole.height, 100_000):
            historian.write_sync(whole.slice(start, 100_000))

    times: dict[str, list[float]] = {"decode": [], "spool": [], "duckdb": []}
    for _ in range(repeats):
        times["decode"].append(cpu_timed(decode))
        with tempfile.TemporaryDirectory() as tmp:
            spool = spool_class(Path(tmp) / "spool")
            times["spool"].append(cpu_timed(append_all, spool))
            spool.close()
            historian = historian_class(Path(tmp) / "h.duckdb")
            times["duckdb"].append(cpu_timed(write_all, historian))
            historian.close()
    values = sum(b.height for b in batches)
    return {"format": label, "values": values, "batches": len(batches),
            **{k: values / statistics.median(v) for k, v in times.items()}}


def cpu_timed(fn: Callable[..., object], *args: object) -> float:
    started = time.process_time()
    fn(*args)
    return time.process_time() - started


def stages_text(stages: list[dict]) -> str:
    lines = ["| stream | values | batches | decode, values per CPU-s | spool append | DuckDB write | all three, µs per value |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in stages:
        us = sum(1e6 / r[k] for k in ("decode", "spool", "duckdb"))
        lines.append(f"| {r['format']} | {r['values']:,} | {r['batches']} | {r['decode']:,.0f} | {r['spool']:,.0f} "
                     f"| {r['duckdb']:,.0f} | {us:.2f} |")
    return "\n".join(lines)


def section(mqtt: dict[str, float], opcua: dict[str, float], stages: list[dict] | None = None) -> str:
    def row(name: str, r: dict[str, float]) -> str:
        per_message = f"{r['per_message_s'] * 1000:.0f} ms" if "per_message_s" in r else "-"
        return (f"| {name} | {r['samples']:,} | {r['columnar_s'] * 1000:.0f} ms | {per_message} "
                f"| {r['per_sample_s'] * 1000:.0f} ms "
                f"| {r['per_sample_s'] / r['columnar_s']:.1f}x | {r['samples'] / r['columnar_s']:,.0f} |")

    return f"""## Collector

`{date.today().isoformat()}`, `.venv/bin/python bench/collector.py` (Python {platform.python_version()},
Polars {pl.__version__}, {platform.machine()}, 2 cores shared with other jobs: expect +-30%). Medians.

From what the protocol library hands over to one sample-schema batch. MQTT: 20,000 demo filler
messages (3 tags each, ISO times) through `MqttJsonDecoder` as the source runs it (raw payloads
kept, the flush parsed at once), and through its per-message reference path (`decode`: one
`json.loads` per message, values appended to column lists; what the source did before);
OPC-UA: 100,000 data-change notifications through the source's subscription callback and one
flush. Baseline: a Python dict per sample, then `pl.from_dicts` and the ISA-95 path join.

| path | samples | columnar decoder | per message (reference) | dict per sample | ratio | samples/s (columnar) |
|---|---:|---:|---:|---:|---:|---:|
{row("MQTT JSON", mqtt)}
{row("OPC-UA notifications", opcua)}

The MQTT flush path parses values in Rust (Polars' NDJSON reader); what is left in Python per
message is the ISO time (parsed once per distinct text) and keeping the raw payload.
{stage_section(stages)}"""


def stage_section(stages: list[dict] | None) -> str:
    if not stages:
        return ""
    return f"""
Where the ingest bench's collector spends its CPU (the stream of `bench/ingest.py`: 10 units x 100
tags, one message per unit; process CPU time of every thread, so DuckDB's own threads count;
medians). Decode: `MqttSource.handle_message` per message and `take_batch` per flush of
`flush_max_samples` (10,000), as the source runs; spool: `Spool.append` of those batches (Arrow
IPC, LZ4, one fsync each); DuckDB: `write_sync` of runs of 100,000 (insert sorted by time,
commit), as the forwarder stores them. The bare aiomqtt client of the ingest bench spends about
1.4-1.7 µs per value (600,000-730,000 values per CPU-s) receiving these messages; the collector
pays that too, plus these:

{stages_text(stages)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    text = section(bench_mqtt(args.repeats), bench_opcua(args.repeats), bench_stages(args.repeats))
    print(text)
    if not args.no_write:
        write_section("Collector", text)
        print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
