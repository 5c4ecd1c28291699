"""Coverage-guided fuzzing (atheris, libFuzzer) of the byte-level payload decoders: MQTT JSON,
batched JSON and Sparkplug B, through `MqttSource.handle_message` as the broker's messages reach
it; and of the site loader (`load_site_config` on the input as a file) and line protocol (rows
of tag strings encoded and parsed back, the InfluxQL answer decoded), the two targets that
hypothesis drives too slowly for a 100,000-input run on a shared machine. Not a pytest module
(no `test_` prefix): a dedicated run, not CI.

    .venv/bin/python -m tests.fuzz.atheris_decoders mqtt_json -atheris_runs=100000
    .venv/bin/python -m tests.fuzz.atheris_decoders sparkplug_b -atheris_runs=100000 -max_len=512 corpus/

The property, per input: `handle_message` never raises; the batch taken after it is None or has
the sample schema; an input that gives no sample is counted in `health.rejected` (JSON formats:
every such payload but a batched message with an empty sample list, which is valid and holds
nothing; Sparkplug B: every payload that is not a valid protobuf on a spBv1.0 topic, since a
valid NCMD or STATE message has no sample to give). A broken property raises, and
libFuzzer writes the input to crash-<sha1> and stops.

Site loader: a SiteConfig, or a SiteConfigError whose message starts with the file's name (never
another exception), counted by the kind of its first error. Line protocol: the checks of
tests/fuzz/test_lineprotocol.py (`check_rows`, `check_query_response`) on rows the input spells.

The first byte of an input picks the topic (bound, unbound, malformed); for Sparkplug B also the
message kind and whether the node and device were born first. Every 10,000 inputs and at the end,
the counts (inputs, with samples, rejected by reason) go to the JSON file named by
CONTROLTOWER_FUZZ_REPORT, when set.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import atheris

# The line-protocol checks parse each line character by character: their branches guide the search too.
with atheris.instrument_imports(include=["collector", "controltower", "tests.fuzz.test_lineprotocol"]):
    import polars as pl

    # mqtt.py imports these two lazily, after this block: imported here, so they are instrumented.
    for lazy in ("collector.sources.json_flush", "collector.sources.sparkplug"):
        importlib.import_module(lazy)
    from collector.sources.mqtt import MqttSource
    from controltower.samples import SAMPLE_SCHEMA
    from controltower.site import SiteConfigError, load_site_config, parse_site_config
    from tests.fuzz import test_lineprotocol as lp

from collector.sources.sparkplug_b_proto import DataType, Metric
from tests.collector.test_sparkplug_decoder import TAGS, D, N, dbirth, nbirth, payload, site
from tests.conftest import REPO
from tests.fuzz import test_mqtt_batched_json as batched
from tests.fuzz.test_site_config import rejection_kind

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
REPORT_EVERY = 10_000


def _json_source() -> tuple[MqttSource, list[str]]:
    demo = load_site_config(REPO / "config" / "demo-site.yaml")
    config = next(s for s in demo.sources if s.kind == "mqtt" and s.payload == "json")
    return MqttSource(config, demo.tag_table()), ["plant/lyon/ff/fill1/filler1", "plant/lyon/ff/fill1/other", ""]


def _batched_source() -> tuple[MqttSource, list[str]]:
    site = batched.SITE  # fill_weight and speed (named SPD in the items) of lyon.ff.fill1.filler1
    return MqttSource(site.sources[0], site.tag_table()), [batched.TOPIC, "plant/x/y/z/w", ""]


def _sparkplug_source() -> tuple[MqttSource, list[str]]:
    config = parse_site_config(site(TAGS, sparkplug={"rebirth_min_interval_s": 0}))
    kinds = ["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "DCMD"]
    topics = [D.format(k) for k in kinds] + [N.format(k) for k in kinds] + ["spBv1.0/lyon/STATE/x", "spBv1.0/", "x/y"]
    return MqttSource(config.sources[0], config.tag_table()), topics


TARGETS = {"mqtt_json": _json_source, "batched_json": _batched_source, "sparkplug_b": _sparkplug_source}


def seeds(target: str) -> list[bytes]:
    """Valid messages to start from (topic byte 0: the bound topic), so that mutations begin inside
    the decoders rather than at the first JSON or protobuf check."""
    if target == "site_config":
        # Small sites (YAML parsing is most of the cost per input), and mqtt-site.yaml without its comments.
        mqtt_site = b"\n".join(line for line in (REPO / "config" / "mqtt-site.yaml").read_bytes().splitlines()
                               if not line.lstrip().startswith(b"#"))
        return [mqtt_site, (b"enterprise: E\nsites:\n  - id: s\n    areas:\n      - id: a\n        lines:\n"
                           b"          - id: l\n            units:\n              - id: u\n                tags:\n"
                           b"                  - {id: t, opcua: {node_id: 'ns=2;s=t'}, limits: {alarm_high: 5}}\n"
                           b"sources:\n  - {kind: opcua, name: o, url: 'opc.tcp://127.0.0.1:4840'}\n")]
    if target == "line_protocol":
        return [b"\x02C:\\\x00unit\x00\x01B-1", "\x04a,b c=d\x00é😀\x00\x00".encode()]
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


class SiteFileTarget:
    """The input is the site file: UTF-8 or not, YAML or not, a site or not."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="fuzz-site-")) / "site.yaml"
        self.counts: Counter[str] = Counter()

    def one_input(self, data: bytes) -> None:
        self.path.write_bytes(data)
        self.counts["inputs"] += 1
        try:
            load_site_config(self.path)
        except SiteConfigError as exc:
            if not str(exc).startswith(str(self.path)):
                raise AssertionError(f"the error does not name the file: {exc}") from None
            self.counts[rejection_kind(str(exc), str(self.path))] += 1
        else:
            self.counts["accepted"] += 1


class LineProtocolTarget:
    """The input spells 1-5 rows (tag id, unit, batch id or none, value or none): encoded and parsed back."""

    def __init__(self):
        self.counts = lp.REJECTIONS  # check_rows counts "encoded" and the rows set aside

    def one_input(self, data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        rows = []
        for _ in range(fdp.ConsumeIntInRange(1, 5)):
            tag, unit = fdp.ConsumeUnicodeNoSurrogates(24), fdp.ConsumeUnicodeNoSurrogates(12)
            batch = fdp.ConsumeUnicodeNoSurrogates(12) if fdp.ConsumeBool() else None
            value = fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else (None if fdp.ConsumeBool() else fdp.ConsumeFloat())
            rows.append((tag, unit, batch, value))
        self.counts["inputs"] += 1
        lp.check_rows(rows)
        lp.check_query_response(*rows[0][::2], rows[0][3])


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
            if self.target == "sparkplug_b" and topic.startswith("spBv1.0/"):
                self.counts["valid Sparkplug B without a bound sample"] += 1
            elif self.target == "batched_json" and _empty_sample_list(payload):
                self.counts["an empty sample list (nothing to store)"] += 1
            else:
                raise AssertionError(f"{self.target}: no sample and no rejection for {payload[:200]!r} on {topic!r}")


def _empty_sample_list(payload: bytes) -> bool:
    """A batched message whose sample list is empty: valid (a gateway with nothing to say), no sample."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("samples") == []


OTHER_TARGETS = {"site_config": SiteFileTarget, "line_protocol": LineProtocolTarget}


def report(target: str, counts: Counter[str]) -> None:
    out = os.environ.get("CONTROLTOWER_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps({"target": target, **counts}, indent=1))


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in TARGETS and name not in OTHER_TARGETS:
        names = ",".join([*TARGETS, *OTHER_TARGETS])
        sys.exit(f"usage: python -m tests.fuzz.atheris_decoders {{{names}}} [libFuzzer flags] [corpus dir]")
    target = Harness(name) if name in TARGETS else OTHER_TARGETS[name]()
    corpus = [Path(a) for a in sys.argv[2:] if not a.startswith("-")]
    for folder in corpus:  # libFuzzer keeps what it finds there; seeds only the first time
        if folder.is_dir() and not any(folder.iterdir()):
            for i, seed in enumerate(seeds(name)):
                (folder / f"seed-{i}").write_bytes(seed)

    def one_input(data: bytes) -> None:
        target.one_input(data)
        if target.counts["inputs"] % REPORT_EVERY == 0:
            report(name, target.counts)

    atexit.register(lambda: report(name, target.counts))
    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
