"""Load generator for bench/ingest.py: a process of its own (so it does not share the collector's
event loop or interpreter) publishing pre-encoded batched payloads through an MQTT broker.

    python bench/_loadgen.py --url mqtt://127.0.0.1:1883 --format batched_json --units 10 --tags 100 \
        --rate 20000 --duration 60 [--qos 1] [--messages N]

Formats (one message per unit per tick, `--tags` values each):
    batched_json  topic bench/<unit>: {"ts": <epoch s>, "samples": [{"tag": "t000", "value": 1.5}, ...]}
    json          topic bench/<unit>: {"ts": <epoch s>, "t000": 1.5, ...}
    sparkplug_b   NBIRTH + a DBIRTH per unit (metric names and aliases), then DDATA by alias, seq
                  growing per message as the spec asks, timestamp in ms.
Only the time (and the Sparkplug seq) is encoded per message; the rest is encoded once, so the
generator costs little CPU per value. `ts` is the send time: the collector's latency reference.

`--rate` is values per second (0: as fast as paho publishes); the run ends after `--duration`
seconds or `--messages` data messages. On exit it prints one JSON line: messages and values sent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SITE, AREA, LINE = "s", "a", "l"
GROUP, EDGE_NODE = SITE, f"{AREA}-{LINE}"  # the sparkplug templates' defaults: {site}, {area}-{line}
VARIANTS = 8  # distinct value sets per unit, cycled


def unit_names(units: int) -> list[str]:
    return [f"u{i:02d}" for i in range(units)]


def tag_names(tags: int) -> list[str]:
    return [f"t{i:03d}" for i in range(tags)]


def site_config(fmt: str, url: str, units: int, tags: int, **source: object) -> dict:
    """The site file (as a dict) of the stream: one line of `units` units of `tags` tags, one MQTT source."""
    payload = "sparkplug_b" if fmt == "sparkplug_b" else fmt
    src: dict[str, object] = {"kind": "mqtt", "name": "bench", "url": url, "payload": payload, **source}
    if fmt != "sparkplug_b":
        src["topic_template"] = "bench/{unit}"
    return {
        "enterprise": "Bench",
        "sites": [{"id": SITE, "areas": [{"id": AREA, "lines": [{"id": LINE, "units": [
            {"id": u, "tags": [{"id": t, "mqtt": {}} for t in tag_names(tags)]} for u in unit_names(units)
        ]}]}]}],
        "sources": [src],
    }


def _value(unit: int, tag: int, variant: int) -> float:
    return round(20.0 + unit + tag * 0.01 + variant * 0.001, 4)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Stream:
    """The messages of one format: `births()` once, then `data(i, now)` for the i-th data message."""

    def __init__(self, fmt: str, units: int, tags: int):
        self.fmt, self.units, self.tags = fmt, units, tags
        self.unit_ids, self.tag_ids = unit_names(units), tag_names(tags)
        self.seq = 0
        if fmt == "batched_json":
            self.topics = [f"bench/{u}" for u in self.unit_ids]
            self.bodies = [[(',"samples":' + json.dumps(
                [{"tag": t, "value": _value(u, j, v)} for j, t in enumerate(self.tag_ids)], separators=(",", ":"))
                + "}").encode() for v in range(VARIANTS)] for u in range(units)]
        elif fmt == "json":
            self.topics = [f"bench/{u}" for u in self.unit_ids]
            self.bodies = [[("," + json.dumps({t: _value(u, j, v) for j, t in enumerate(self.tag_ids)},
                                              separators=(",", ":"))[1:]).encode() for v in range(VARIANTS)]
                           for u in range(units)]
        elif fmt == "sparkplug_b":
            from collector.sources.sparkplug_b_proto import Metric, Payload

            self.topics = [f"spBv1.0/{GROUP}/DDATA/{EDGE_NODE}/{u}" for u in self.unit_ids]
            self.bodies = [[Payload(metrics=[Metric(alias=j + 1, double_value=_value(u, j, v)) for j in range(tags)])
                            .SerializeToString() for v in range(VARIANTS)] for u in range(units)]
        else:
            raise SystemExit(f"unknown format {fmt!r}")

    def births(self, now: float) -> list[tuple[str, bytes]]:
        if self.fmt != "sparkplug_b":
            return []
        from collector.sources.sparkplug_b_proto import DataType, Metric, Payload

        ms = int(now * 1000)
        self.seq = 0
        out = [(f"spBv1.0/{GROUP}/NBIRTH/{EDGE_NODE}", Payload(timestamp=ms, seq=0, metrics=[
            Metric(name="bdSeq", datatype=DataType.INT64, long_value=0),
            Metric(name="Node Control/Rebirth", datatype=DataType.BOOLEAN, boolean_value=False),
        ]).SerializeToString())]
        for u, unit in enumerate(self.unit_ids):
            self.seq = (self.seq + 1) % 256
            out.append((f"spBv1.0/{GROUP}/DBIRTH/{EDGE_NODE}/{unit}", Payload(timestamp=ms, seq=self.seq, metrics=[
                Metric(name=t, alias=j + 1, datatype=DataType.DOUBLE, double_value=_value(u, j, 0))
                for j, t in enumerate(self.tag_ids)]).SerializeToString()))
        return out

    def data(self, i: int, now: float) -> tuple[str, bytes]:
        unit = i % self.units
        body = self.bodies[unit][(i // self.units) % VARIANTS]
        if self.fmt == "sparkplug_b":
            self.seq = (self.seq + 1) % 256
            # Protobuf fields may come in any order: timestamp (1) and seq (3) before the metrics.
            return self.topics[unit], b"\x08" + _varint(int(now * 1000)) + b"\x18" + _varint(self.seq) + body
        return self.topics[unit], b'{"ts":' + repr(now).encode() + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--format", default="batched_json", choices=["batched_json", "json", "sparkplug_b"])
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0, help="values per second (0: as fast as possible)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--messages", type=int, default=0, help="stop after this many data messages (0: no limit)")
    parser.add_argument("--qos", type=int, default=0)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from urllib.parse import urlsplit

    import paho.mqtt.client as mqtt

    url = urlsplit(args.url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(url.hostname, url.port or 1883, keepalive=60)
    client.loop_start()

    stream = Stream(args.format, args.units, args.tags)
    for topic, payload in stream.births(time.time()):
        client.publish(topic, payload, qos=1).wait_for_publish(10)

    msg_per_s = args.rate / args.tags if args.rate else 0.0
    started = time.monotonic()
    deadline = started + args.duration
    sent = 0
    last = None
    while True:
        now = time.monotonic()
        if now >= deadline or (args.messages and sent >= args.messages):
            break
        if msg_per_s:
            due = int((now - started) * msg_per_s) + 1
            if sent >= due:
                time.sleep(min(0.005, (sent - due + 1) / msg_per_s))
                continue
            burst = due - sent
        else:
            burst = 100
        for _ in range(burst):
            topic, payload = stream.data(sent, time.time())
            last = client.publish(topic, payload, qos=args.qos)
            sent += 1
    if last is not None:
        last.wait_for_publish(60)
    elapsed = time.monotonic() - started
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"messages": sent, "values": sent * args.tags, "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    main()
