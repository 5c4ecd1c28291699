"""The plant over MQTT: one flat JSON message per unit per tick, and a command topic to inject
faults at run time.

Topic `{prefix}/{site}/{area}/{line}/{unit}`, QoS 1, payload:
    {"ts": "2024-05-01T06:00:00.500000Z", "batch_id": "FILLER1-0001", "phase": "filling",
     "fill_weight": 2.0012, "speed": 299.7, "room_dp": 18.2}
plus `"quality": {"<tag>": "bad"}` listing only tags whose quality is not good (a value that
is not finite is sent as null, with quality bad).

Commands: `{prefix}/_simulator/inject` with
    {"tag_id": "lyon.ff.fill1.filler1.fill_weight", "kind": "spike", "duration_s": 30, "magnitude": 0.1}
(kinds and magnitudes: simulators/faults.py; an oscillation may add "period_s").
A malformed or refused command is logged and counted, never fatal.

One supervisor task owns the connection and reconnects with backoff; ticks wait on a bounded
queue meanwhile (oldest dropped and counted when full).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlparse

import aiomqtt
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulators.clock import iso_utc
from simulators.plant import PlantUnit

log = logging.getLogger(__name__)

INJECT_TOPIC = "_simulator/inject"
_BACKOFF_START_S, _BACKOFF_MAX_S = 0.5, 10.0


class InjectCommand(BaseModel):
    """A fault injection request received on the command topic."""

    model_config = ConfigDict(extra="forbid")

    tag_id: str
    kind: str
    duration_s: float = Field(gt=0, allow_inf_nan=False)
    magnitude: float = Field(default=0.0, allow_inf_nan=False)
    period_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)  # oscillation only


@dataclass
class PublisherStats:
    published: int = 0
    dropped: int = 0
    commands_accepted: int = 0
    commands_rejected: int = 0
    connects: int = 0


def unit_payload(
    unit: PlantUnit, at: datetime, batch_id: str, phase: str, values: dict[str, tuple[float | None, str]]
) -> bytes:
    """The JSON message of one unit; `values` maps full tag id -> (value, quality)."""
    payload: dict[str, object] = {"ts": iso_utc(at), "batch_id": batch_id, "phase": phase}
    not_good: dict[str, str] = {}
    for tag_id, tag in zip(unit.tag_ids, unit.config.tags, strict=True):
        value, quality = values.get(tag_id, (None, "bad"))
        if value is None or not math.isfinite(value):
            value, quality = None, "bad"
        payload[tag.id] = value
        if quality != "good":
            not_good[tag.id] = quality
    if not_good:
        payload["quality"] = not_good
    return json.dumps(payload, separators=(",", ":")).encode()


def parse_mqtt_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"MQTT url must look like mqtt://host:port, got {url!r}")
    return parsed.hostname, parsed.port or 1883


class PlantMqttPublisher:
    """Publishes unit messages to the broker at `url`; `on_inject(command)` is called for each
    valid injection command and may raise ValueError to refuse it."""

    def __init__(
        self,
        *,
        url: str,
        topic_prefix: str,
        units: list[PlantUnit],
        on_inject: Callable[[InjectCommand], object],
        queue_size: int = 1000,
        client_id: str | None = None,
    ):
        self.host, self.port = parse_mqtt_url(url)
        self.prefix = topic_prefix.rstrip("/")
        self.command_topic = f"{self.prefix}/{INJECT_TOPIC}"
        self.units = units
        self.stats = PublisherStats()
        self.connected = asyncio.Event()
        self._on_inject = on_inject
        self._client_id = client_id
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None

    def topic(self, unit: PlantUnit) -> str:
        return f"{self.prefix}/{unit.site}/{unit.area}/{unit.line}/{unit.unit}"

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="simulator-mqtt")

    async def stop(self, timeout_s: float = 3.0) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.wait({task}, timeout=timeout_s)
        self.connected.clear()

    def publish(self, frame: pl.DataFrame, unit_states: dict[str, tuple[str, str]]) -> None:
        """Queue one message per unit from a step's samples (sample schema)."""
        if not frame.height:
            return
        at = frame["ts"][0]
        values = {t: (v, q) for t, v, q in frame.select("tag_id", "value", "quality").iter_rows()}
        for unit in self.units:
            batch_id, phase = unit_states.get(unit.path, (None, None))
            self._enqueue(self.topic(unit), unit_payload(unit, at, batch_id, phase, values))

    def _enqueue(self, topic: str, payload: bytes) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # a live plant view wants the newest values: drop the oldest
            self.stats.dropped += 1
        self._queue.put_nowait((topic, payload))

    async def _supervise(self) -> None:
        backoff = _BACKOFF_START_S
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self._client_id, keepalive=15, timeout=5
                ) as client:
                    await client.subscribe(self.command_topic, qos=1)
                    self.stats.connects += 1
                    self.connected.set()
                    backoff = _BACKOFF_START_S
                    log.info("simulator MQTT publisher connected to %s:%d", self.host, self.port)
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "simulator MQTT connection to %s:%d lost or refused (%s); retrying in %.1fs",
                    self.host,
                    self.port,
                    exc,
                    backoff,
                )
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Send queued messages and handle commands until either side fails."""
        tasks = {asyncio.create_task(self._send(client)), asyncio.create_task(self._receive(client))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()  # re-raise the MqttError that ended it
        raise aiomqtt.MqttError("message loop ended")

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self._queue.get()
            await client.publish(topic, payload, qos=1)
            self.stats.published += 1

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.handle_command(message.payload)

    def handle_command(self, payload: object) -> bool:
        """Parse and apply one injection command; False (logged, counted) when it is refused."""
        try:
            raw = payload.decode() if isinstance(payload, bytes | bytearray) else str(payload)
            command = InjectCommand.model_validate_json(raw)
            self._on_inject(command)
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            self.stats.commands_rejected += 1
            log.warning("simulator: refused injection command %r: %s", payload, exc)
            return False
        except Exception:  # e.g. the ground truth cannot be written: still no crash of the publisher
            self.stats.commands_rejected += 1
            log.exception("simulator: injection command %r failed", payload)
            return False
        self.stats.commands_accepted += 1
        log.info(
            "simulator: injected %s on %s for %ss (magnitude %s)",
            command.kind,
            command.tag_id,
            command.duration_s,
            command.magnitude,
        )
        return True
