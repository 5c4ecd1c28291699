"""Sparkplug B against an edge node we did not write: sparkplug-client (Eclipse Tahu's JavaScript
client, installed from npm by `make test`) publishes through a real Mosquitto. The collector
reads its NBIRTH/DBIRTH (aliases, datatypes, engineering units), its DDATA by alias, asks it to
rebirth after a sequence gap (and it does), and marks tags stale on its DDEATH and on the
NDEATH the broker publishes as its Last Will when the process is killed."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
import time

import polars as pl

from collector.deadletter import DeadLetterFile
from collector.sources.mqtt import MqttSource
from controltower.site import parse_site_config
from tests.conftest import missing, require_binary
from tests.integration.conftest import stop_process
from tests.integration.test_opcua_interop import INTEROP

FILL, SPEED, CABINET = "lyon.ff.fill1.filler1.fill_weight", "lyon.ff.fill1.filler1.speed", "lyon.ff.fill1.filler1.cabinet_temp"


class EdgeNode:
    """The sparkplug_edge.js process: commands on stdin, its lines read by a thread."""

    def __init__(self, url: str):
        node = require_binary("node")
        if not (INTEROP / "node_modules" / "sparkplug-client").is_dir():
            missing("sparkplug-client is not installed: run `make interop-deps` (npm install --prefix tests/interop)")
        self.proc = subprocess.Popen(
            [node, str(INTEROP / "sparkplug_edge.js"), url, "lyon", "ff-fill1", "filler1"],
            cwd=INTEROP, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    async def expect(self, wanted: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = await asyncio.to_thread(self.lines.get, timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"the edge node exited: {self.proc.stderr.read()[-2000:]}") from None
                continue
            if line == wanted:
                return
        raise AssertionError(f"the edge node did not print {wanted!r} within {timeout_s}s")

    async def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        await self.expect(f"DONE {command}")

    def kill(self) -> None:
        self.proc.kill()  # no DISCONNECT: the broker publishes the Last Will
        self.proc.wait(10)


async def until(check, timeout: float = 15.0, what=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what()}")
        await asyncio.sleep(0.05)


async def test_collector_reads_a_sparkplug_client_edge_node(mosquitto, tmp_path) -> None:
    site = parse_site_config({
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": [
                {"id": "fill_weight", "unit": "g", "mqtt": {}},
                {"id": "speed", "mqtt": {"sparkplug": {"metric": "Filler/Speed"}}},
                {"id": "cabinet_temp", "mqtt": {"sparkplug": {"device": "", "metric": "Cabinet/Temperature"}}},
            ]},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "spb", "url": mosquitto.url, "payload": "sparkplug_b",
                     "client_id": "ct-host", "flush_interval_ms": 50, "sparkplug": {"rebirth_min_interval_s": 0}}],
    })
    source = MqttSource(site.sources[0], site.tag_table(), dead_letter=DeadLetterFile(tmp_path / "dead.jsonl"))
    batches: list[pl.DataFrame] = []

    async def emit(batch: pl.DataFrame) -> None:
        batches.append(batch)

    def rows(tag: str | None = None, quality: str | None = None) -> pl.DataFrame:
        frame = pl.concat(batches) if batches else pl.DataFrame(schema={"tag_id": pl.String, "quality": pl.String,
                                                                         "value": pl.Float64})
        if tag is not None:
            frame = frame.filter(pl.col("tag_id") == tag)
        if quality is not None:
            frame = frame.filter(pl.col("quality").cast(pl.String) == quality)
        return frame

    task = asyncio.create_task(source.run(emit))
    edge = None
    try:
        await until(lambda: source.health.connected, what=lambda: str(source.health))
        edge = EdgeNode(mosquitto.url)
        await edge.expect("BORN")
        await until(lambda: rows(quality="good").height >= 3, what=lambda: str(rows()))
        births = dict(zip(rows(quality="good")["tag_id"], rows(quality="good")["value"]))
        assert births == {FILL: 2.0, SPEED: 300.0, CABINET: 24.5}
        device = source.decoder.metric_info("lyon", "ff-fill1", "filler1")
        assert (device["fill_weight"].unit, device["Filler/Speed"].datatype) == ("g", 3)  # Int32
        assert source.decoder.metric_info("lyon", "ff-fill1")["Cabinet/Temperature"].unit == "degC"

        # Data by alias only; a negative Int32 travels in an unsigned field and comes back signed.
        await edge.send("data")
        await until(lambda: rows(SPEED, "good").height >= 2, what=lambda: str(rows()))
        assert rows(FILL, "good")["value"].to_list() == [2.0, 2.004]
        assert rows(SPEED, "good")["value"].to_list() == [300.0, -7.0]
        assert source.decoder.stats["sequence_gaps"] == 0

        # A lost sequence number: the collector requests a rebirth, the node answers with its births.
        await edge.send("skip")
        await edge.send("data")
        await edge.expect("REBIRTH")
        assert source.decoder.stats["sequence_gaps"] == 1 and source.decoder.stats["rebirths_requested"] == 1
        await until(lambda: rows(CABINET, "good").height >= 2, what=lambda: str(rows()))

        # The device dies: its tags (not the node's) become stale.
        await edge.send("ddeath")
        await until(lambda: rows(quality="bad").height >= 2, what=lambda: str(rows()))
        assert sorted(rows(quality="bad")["tag_id"].to_list()) == [FILL, SPEED]

        # The node is killed: the broker's Last Will (NDEATH, same bdSeq) makes every tag of the node stale.
        edge.kill()
        await until(lambda: rows(CABINET, "bad").height == 1, what=lambda: str(rows()))
    finally:
        if edge is not None:
            stop_process(edge.proc)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rows(quality="bad")["value"].null_count() == rows(quality="bad").height
    events = source.health.as_dict()["events"]
    assert events["deaths"] == 2 and events.get("stale_deaths", 0) == 0
    assert source.health.rejected == {}
