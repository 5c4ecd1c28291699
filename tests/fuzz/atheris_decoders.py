"""Coverage-guided fuzzing (atheris, libFuzzer) of the byte-level payload decoders: MQTT JSON,
batched JSON and Sparkplug B, through `MqttSource.handle_message` as the broker's messages reach
it. Not a pytest module (no `test_` prefix): a dedicated run, not CI.

    .venv/bin/python -m tests.fuzz.atheris_decoders mqtt_json -atheris_runs=100000
    .venv/bin/python -m tests.fuzz.atheris_decoders sparkplug_b -atheris_runs=100000 -max_len=512 corpus/

The property, per input: `handle_message` never raises; the batch taken after it is None or has
the sample schema; an input that gives no sample is counted in `health.rejected` (JSON formats:
every such payload; Sparkplug B: every payload that is not a valid protobuf on a spBv1.0 topic,
since a valid NCMD or STATE message has no sample to give). A broken property raises, and
libFuzzer writes the input to crash-<sha1> and stops.

The first byte of an input picks the topic (bound, unbound, malformed); for Sparkplug B also the
message kind and whether the node and device were born first. Every 10,000 inputs and at the end,
the counts (inputs, with samples, rejected by reason) go to the JSON file named by
CONTROLTOWER_FUZZ_REPORT, when set.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["collector", "controltower"]):
    import polars as pl

    # mqtt.py imports these two lazily, after this block: imported here, so they are instrumented.
    for lazy in ("collector.sources.json_flush", "collector.sources.sparkplug"):
        importlib.import_module(lazy)
    from collector.sources.mqtt import MqttSource
    from controltower.samples import SAMPLE_SCHEMA
    from controltower.site import load_site_config, parse_site_config

from collector.sources.sparkplug_b_proto import DataType, Metric
from tests.collector.test_sparkplug_decoder import TAGS, D, N, dbirth, nbirth, payload, site
from tests.conftest import REPO

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
REPORT_EVERY = 10_000


def _json_source() -> tuple[MqttSource, list[str]]:
    demo = load_site_config(REPO / "config" / "demo-site.yaml")
    config = next(s for s in demo.sources if s.kind == "mqtt" and s.payload == "json")
    return MqttSource(config, demo.tag_table()), ["plant/lyon/ff/fill1/filler1", "plant/lyon/ff/fill1/other", ""]


def _batched_source() -> tuple[MqttSource, list[str]]:
    config = parse_site_config({
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": [{"id": "fill_weight", "mqtt": {}}, {"id": "speed", "mqtt": {"field": "SPD"}}]},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "m", "url": "mqtt://127.0.0.1:1883", "payload": "batched_json",
                     "timestamp_field": "ts", "batch_field": "batch_id",
                     "topic_template": "plant/{site}/{area}/{line}/{unit}"}],
    })
    return MqttSource(config.sources[0], config.tag_table()), ["plant/lyon/ff/fill1/filler1", "plant/x/y/z/w", ""]


def _sparkplug_source() -> tuple[MqttSource, list[str]]:
    config = parse_site_config(site(TAGS, sparkplug={"rebirth_min_interval_s": 0}))
    kinds = ["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "DCMD"]
    topics = [D.format(k) for k in kinds] + [N.format(k) for k in kinds] + ["spBv1.0/lyon/STATE/x", "spBv1.0/", "x/y"]
    return MqttSource(config.sources[0], config.tag_table()), topics


TARGETS = {"mqtt_json": _json_source, "batched_json": _batched_source, "sparkplug_b": _sparkplug_source}


def seeds(target: str) -> list[bytes]:
    """Valid messages to start from (topic byte 0: the bound topic), so that mutations begin inside
    the decoders rather than at the first JSON or protobuf check."""
    if target == "mqtt_json":
        return [b"\0" + json.dumps({"ts": "2026-11-29T10:00:00.5Z", "batch_id": "F-1", "fill_weight": 2.01, "speed": 300,
                                    "room_dp": None, "quality": {"room_dp": "bad"}}).encode(),
                b"\0" + b'{"fill_weight": "1e3", "speed": true, "ts": 1764410400}']
    if target == "batched_json":
        return [b"\0" + json.dumps({"ts": "2026-11-29T10:00:00Z", "batch_id": "B", "samples": [
            {"tag": "fill_weight", "value": 2.0, "ts": "2026-11-29T10:00:00.1Z", "quality": "good"},
            {"tag": "SPD", "value": "x"}, {"tag": "nope", "value": 1}]}).encode()]
    ddata = 0x80 | 4  # born first, then DDATA on the bound device
    return [bytes([ddata]) + payload(2, [Metric(alias=1, datatype=DataType.DOUBLE, double_value=2.5),
                                         Metric(alias=3, datatype=DataType.INT32, int_value=9)]),
            bytes([0x80 | 3]) + dbirth(5), bytes([8]) + nbirth(1)]


class Harness:
    def __init__(self, target: str):
        self.target = target
        self.source, self.topics = TARGETS[target]()
        self.counts: Counter[str] = Counter()

    def take(self) -> int:
        batch = self.source.take_batch()
        if batch is not None and batch.schema != pl.Schema(SAMPLE_SCHEMA):
            raise AssertionError(f"batch schema {batch.schema} is not the sample schema")
        return 0 if batch is None else batch.height

    def one_input(self, data: bytes) -> None:
        if not data:
            return
        head, payload = data[0], data[1:]
        topic = self.topics[head % len(self.topics)]
        source, health = self.source, self.source.health
        if self.target == "sparkplug_b" and head & 0x80:  # born first, so DDATA aliases resolve
            source.handle_message(N.format("NBIRTH"), nbirth(), NOW)
            source.handle_message(D.format("DBIRTH"), dbirth(1), NOW)
            self.take()
        before = dict(health.rejected)
        source.handle_message(topic, payload, NOW)
        samples = self.take()
        new = {k: v - before.get(k, 0) for k, v in health.rejected.items() if v > before.get(k, 0)}
        self.counts["inputs"] += 1
        if samples:
            self.counts["gave samples"] += 1
        for reason, n in new.items():
            self.counts[f"rejected: {reason}"] += n
        if not samples and not new:
            if self.target != "sparkplug_b" or not topic.startswith("spBv1.0/"):
                raise AssertionError(f"{self.target}: no sample and no rejection for {payload[:200]!r} on {topic!r}")
            self.counts["valid Sparkplug B without a bound sample"] += 1
        if self.counts["inputs"] % REPORT_EVERY == 0:
            self.report()

    def report(self) -> None:
        out = os.environ.get("CONTROLTOWER_FUZZ_REPORT")
        if out:
            Path(out).write_text(json.dumps({"target": self.target, **self.counts}, indent=1))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.atheris_decoders {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus dir]")
    harness = Harness(sys.argv[1])
    corpus = [Path(a) for a in sys.argv[2:] if not a.startswith("-")]
    for folder in corpus:  # libFuzzer keeps what it finds there; seeds only the first time
        if folder.is_dir() and not any(folder.iterdir()):
            for i, seed in enumerate(seeds(harness.target)):
                (folder / f"seed-{i}").write_bytes(seed)
    import atexit

    atexit.register(harness.report)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], harness.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
