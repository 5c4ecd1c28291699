"""Collector decode path: from what a protocol hands over to one columnar sample batch.

    .venv/bin/python bench/collector.py            # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/collector.py --no-write

MQTT: 20,000 unit messages (the demo filler's JSON, 3 tags each, 60,000 samples) decoded by
`MqttJsonDecoder` (per message: one `json.loads`, values appended to column lists; one frame per
flush) against the usual per-sample way: a dict per sample, `pl.from_dicts`, then the ISA-95
path join. OPC-UA: 100,000 data-change notifications through `OpcUaSource._on_change` and one
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

    def columnar() -> pl.DataFrame:
        decoder = MqttJsonDecoder(config, tags)
        for payload in messages:
            decoder.decode(TOPIC, payload, received)
        return decoder.take_batch()

    a, b = columnar(), mqtt_per_sample(messages, tag_paths_frame(tags), received)
    assert a.sort("tag_id", "ts").equals(b.sort("tag_id", "ts")), "both ways must give the same frame"
    fast = timed(columnar, repeats)
    slow = timed(lambda: mqtt_per_sample(messages, tag_paths_frame(tags), received), repeats)
    return {"messages": len(messages), "samples": a.height, "columnar_s": fast, "per_sample_s": slow}


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


def section(mqtt: dict[str, float], opcua: dict[str, float]) -> str:
    def row(name: str, r: dict[str, float]) -> str:
        return (f"| {name} | {r['samples']:,} | {r['columnar_s'] * 1000:.0f} ms | {r['per_sample_s'] * 1000:.0f} ms "
                f"| {r['per_sample_s'] / r['columnar_s']:.1f}x | {r['samples'] / r['columnar_s']:,.0f} |")

    return f"""## Collector

`{date.today().isoformat()}`, `.venv/bin/python bench/collector.py` (Python {platform.python_version()},
Polars {pl.__version__}, {platform.machine()}, 2 cores shared with other jobs: expect +-30%). Medians.

From what the protocol library hands over to one sample-schema batch. MQTT: 20,000 demo filler
messages (3 tags each) through `MqttJsonDecoder`; OPC-UA: 100,000 data-change notifications through
the source's subscription callback and one flush. Baseline: a Python dict per sample, then
`pl.from_dicts` and the ISA-95 path join.

| path | samples | columnar decoder | dict per sample | ratio | samples/s (columnar) |
|---|---:|---:|---:|---:|---:|
{row("MQTT JSON", mqtt)}
{row("OPC-UA notifications", opcua)}

The MQTT figure is bounded by `json.loads` and ISO time parsing, once per message; the decoder
never builds a per-sample object.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    text = section(bench_mqtt(args.repeats), bench_opcua(args.repeats))
    print(text)
    if not args.no_write:
        write_section("Collector", text)
        print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
