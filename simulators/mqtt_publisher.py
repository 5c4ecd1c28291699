"""The plant over MQTT, each line in one of four payload formats, batch events, a Last Will
so a dead plant is visible, and a command topic to inject faults at run time.

Formats (SimulationConfig.mqtt_payload, per line mqtt_payloads; the collector source that reads
each is in brackets):
  json_unit (default)  `{prefix}/{site}/{area}/{line}/{unit}`, one object per unit per tick, QoS 1:
        {"ts": "2024-05-01T06:00:00.500000Z", "batch_id": "FILLER1-0001", "phase": "filling",
         "fill_weight": 2.0012, "speed": 299.7, "room_dp": 18.2}
      plus `"quality": {"<tag>": "bad"}` listing only tags whose quality is not good (a value that
      is not finite is sent as null, with quality bad).
      [payload: json, topic_template: "{prefix}/{site}/{area}/{line}/{unit}", topic_prefix: <prefix>]
  json_tag  `{prefix}/{site}/{area}/{line}/{unit}/{tag}`, one object per tag per tick:
        {"ts": "...", "value": 2.0012, "quality": "good", "batch_id": "FILLER1-0001"}
      [payload: json, topic_template: ".../{unit}/{tag}", value_field: value]
  batched_json  `{prefix}/{site}/{area}/{line}/{unit}`, one message per unit per tick:
        {"ts": "...", "batch_id": "...", "phase": "...",
         "samples": [{"tag": "fill_weight", "value": 2.0012, "ts": "...", "quality": "good"}, ...]}
      [payload: batched_json with the default batched_json keys]
  sparkplug_b  group {site}, edge node {area}-{line}, device {unit}: NBIRTH/DBIRTH/DDATA/NDEATH
      with bdSeq, seq and aliases (simulators/sparkplug_publisher.py). [payload: sparkplug_b]

Connections: one per site for its JSON lines, with the Will `{prefix}/{site}/_status` = "offline"
(retained) and "online" published retained on connect and "offline" on a clean stop; one per
Sparkplug line (edge node), with its NDEATH as the Will.

Batch events (batch_start, phase_change, batch_end; simulators/batch_events.py) go to
`{prefix}/{site}/{area}/{line}/{unit}/_batch`, QoS 1, whatever the line's format:
    {"sequence": 12, "ts": "...", "unit": "lyon.ff.fill1.filler1", "transition": "phase_change",
     "batch_id": "FILLER1-0001", "phase": "filling", "previous_phase": "start_up"}

Commands: `{prefix}/_simulator/inject` with
    {"tag_id": "lyon.ff.fill1.filler1.fill_weight", "kind": "spike", "duration_s": 30, "magnitude": 0.1}
or, for a process fault, "unit" instead of "tag_id":
    {"unit": "lyon.usp.bio1.br101", "kind": "cooling_failure", "duration_s": 600, "magnitude": 1.0}
(kinds and magnitudes: simulators/faults.py; an oscillation may add "period_s").
A malformed or refused command is logged and counted, never fatal.

Each connection has a supervisor task that reconnects with backoff; ticks wait on a bounded
queue meanwhile (oldest dropped and counted when full). Messages are encoded when sent, so
Sparkplug sequence numbers follow the wire order and births come first after every connect.
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
import paho.mqtt.client as mqtt
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulators.batch_events import BatchEvent
from simulators.clock import iso_utc, utc_now
from simulators.plant import PlantUnit
from simulators.sparkplug_publisher import SparkplugEdgeNode

log = logging.getLogger(__name__)

INJECT_TOPIC = "_simulator/inject"
PAYLOADS = ("json_unit", "json_tag", "batched_json", "sparkplug_b")
STATUS_SUFFIX = "_status"  # {prefix}/{site}/_status: "online" / "offline" (retained; the Will)
BATCH_EVENT_SUFFIX = "_batch"  # {prefix}/{site}/{area}/{line}/{unit}/_batch: batch events
ONLINE, OFFLINE = b"online", b"offline"
_BACKOFF_START_S, _BACKOFF_MAX_S = 0.5, 10.0
# QoS 1 messages paho keeps unacknowledged on the wire (its default, 20, throttles a big tick).
_MAX_INFLIGHT = 1000


class InjectCommand(BaseModel):
    """A fault injection request received on the command topic: a sensor fault on `tag_id`,
    or a process fault on `unit` (site.area.line.unit; `magnitude` its severity in (0, 1])."""

    model_config = ConfigDict(extra="forbid")

    tag_id: str | None = None
    unit: str | None = None
    kind: str
    duration_s: float = Field(gt=0, allow_inf_nan=False)
    magnitude: float = Field(default=0.0, allow_inf_nan=False)
    period_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)  # oscillation only

    @model_validator(mode="after")
    def _one_target(self) -> InjectCommand:
        if (self.tag_id is None) == (self.unit is None):
            raise ValueError("give exactly one of 'tag_id' (a sensor fault) or 'unit' (a process fault)")
        return self

    @property
    def target(self) -> str:
        """The tag id or the unit path."""
        return self.tag_id if self.tag_id is not None else str(self.unit)


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


def tag_payload(at: datetime, batch_id: str | None, value: float | None, quality: str) -> bytes:
    """`json_tag`: the JSON message of one tag's sample."""
    if value is None or not math.isfinite(value):
        value, quality = None, "bad"
    doc = {"ts": iso_utc(at), "value": value, "quality": quality, "batch_id": batch_id}
    return json.dumps(doc, separators=(",", ":")).encode()


def batched_payload(
    unit: PlantUnit, at: datetime, batch_id: str | None, phase: str | None, values: dict[str, tuple[float | None, str]]
) -> bytes:
    """`batched_json`: one unit's samples in a list, as the collector's MqttBatchedJsonConfig defaults read it."""
    ts = iso_utc(at)
    samples = []
    for tag_id, tag in zip(unit.tag_ids, unit.config.tags, strict=True):
        value, quality = values.get(tag_id, (None, "bad"))
        if value is None or not math.isfinite(value):
            value, quality = None, "bad"
        samples.append({"tag": tag.id, "value": value, "ts": ts, "quality": quality})
    doc = {"ts": ts, "batch_id": batch_id, "phase": phase, "samples": samples}
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_mqtt_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"MQTT url must look like mqtt://host:port, got {url!r}")
    return parsed.hostname, parsed.port or 1883


@dataclass(frozen=True)
class _Tick:
    """One step of the plant, as every channel encodes it when it is sent."""

    at: datetime
    values: dict[str, tuple[float | None, str]]  # full tag id -> (value, quality)
    states: dict[str, tuple[str, str]]  # unit path -> (batch_id, phase)
    events: tuple[BatchEvent, ...] = ()


_REBIRTH, _STOP = object(), object()  # queue markers
# (topic, payload, qos, retain)
_Message = tuple[str, bytes, int, bool]


class _Channel:
    """What one MQTT connection carries: the messages of some units, its Will, what it says on
    connecting and on a clean stop, and the commands it handles."""

    def __init__(self, name: str, prefix: str, units: list[PlantUnit]):
        self.name = name
        self.prefix = prefix
        self.units = units

    def unit_topic(self, unit: PlantUnit) -> str:
        return f"{self.prefix}/{unit.site}/{unit.area}/{unit.line}/{unit.unit}"

    def event_messages(self, tick: _Tick) -> list[_Message]:
        mine = {u.path: u for u in self.units}
        return [
            (f"{self.unit_topic(mine[e.unit])}/{BATCH_EVENT_SUFFIX}", json.dumps(e.as_json()).encode(), 1, False)
            for e in tick.events
            if e.unit in mine
        ]

    def new_session(self) -> None: ...

    def will(self) -> aiomqtt.Will:
        raise NotImplementedError

    def on_connect(self) -> list[_Message]:
        return []

    def encode(self, tick: _Tick) -> list[_Message]:
        raise NotImplementedError

    def goodbye(self, at: datetime) -> list[_Message]:
        return []

    def subscriptions(self) -> list[str]:
        return []

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Handle a command for this channel; True when the send loop should call `rebirth` now."""
        return False

    def rebirth(self) -> list[_Message]:
        """What to send when a command asked for it (Sparkplug births)."""
        return []


class _JsonChannel(_Channel):
    """The JSON lines of one site: each unit in its line's format, and the site's status topic."""

    def __init__(self, name: str, prefix: str, units: list[PlantUnit], payloads: dict[str, str]):
        super().__init__(name, prefix, units)
        self.site = units[0].site
        self.status_topic = f"{prefix}/{self.site}/{STATUS_SUFFIX}"
        self.payloads = payloads  # unit path -> json_unit | json_tag | batched_json

    def will(self) -> aiomqtt.Will:
        return aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True)

    def on_connect(self) -> list[_Message]:
        return [(self.status_topic, ONLINE, 1, True)]

    def goodbye(self, at: datetime) -> list[_Message]:
        return [(self.status_topic, OFFLINE, 1, True)]

    def encode(self, tick: _Tick) -> list[_Message]:
        out = self.event_messages(tick)
        for unit in self.units:
            batch_id, phase = tick.states.get(unit.path, (None, None))
            kind = self.payloads[unit.path]
            topic = self.unit_topic(unit)
            if kind == "json_unit":
                out.append((topic, unit_payload(unit, tick.at, batch_id, phase, tick.values), 1, False))
            elif kind == "batched_json":
                out.append((topic, batched_payload(unit, tick.at, batch_id, phase, tick.values), 1, False))
            else:  # json_tag
                for tag_id, tag in zip(unit.tag_ids, unit.config.tags, strict=True):
                    value, quality = tick.values.get(tag_id, (None, "bad"))
                    out.append((f"{topic}/{tag.id}", tag_payload(tick.at, batch_id, value, quality), 1, False))
        return out


class _SparkplugChannel(_Channel):
    """One line as a Sparkplug B edge node (see simulators.sparkplug_publisher)."""

    def __init__(self, name: str, prefix: str, units: list[PlantUnit]):
        super().__init__(name, prefix, units)
        self.node = SparkplugEdgeNode(units, bd_seq=255)  # the first session is bdSeq 0
        self.births_due = True
        self.last: _Tick | None = None

    def new_session(self) -> None:
        self.node.new_session()
        self.births_due = True

    def will(self) -> aiomqtt.Will:
        topic, payload = self.node.death()
        return aiomqtt.Will(topic, payload, qos=1, retain=False)

    def goodbye(self, at: datetime) -> list[_Message]:
        topic, payload = self.node.death(at)
        return [(topic, payload, 1, False)]

    def subscriptions(self) -> list[str]:
        return [self.node.command_topic]

    def on_message(self, topic: str, payload: bytes) -> bool:
        if topic != self.node.command_topic:
            return False
        if not self.node.is_rebirth_request(payload):
            return False
        log.info("Sparkplug %s/%s: rebirth requested", self.node.group, self.node.edge_node)
        self.births_due = True
        return True

    def rebirth(self) -> list[_Message]:
        """The births now, from the newest tick encoded (nothing before the first tick)."""
        if self.last is None:
            return []
        self.births_due = False
        return [(t, p, 0, False) for t, p in self.node.births(self.last.at, _plain(self.last.values), self.last.states)]

    def encode(self, tick: _Tick) -> list[_Message]:
        self.last = tick
        if self.births_due:  # births carry this tick's values: no DDATA for it
            out = self.rebirth()
        else:
            out = [(t, p, 0, False) for t, p in self.node.data(tick.at, _plain(tick.values), tick.states)]
        return out + self.event_messages(tick)


def _plain(values: dict[str, tuple[float | None, str]]) -> dict[str, float | None]:
    return {tag_id: v for tag_id, (v, _) in values.items()}


def _publish_tick(client: aiomqtt.Client, messages: list[_Message]) -> mqtt.MQTTMessageInfo | None:
    """Queue a tick's messages, in order, with paho's publish (aiomqtt's `_client`: it only
    queues), and return the last one's MQTTMessageInfo. Awaiting each QoS 1 publish would cost a
    broker round trip per message, and aiomqtt's publish its own bookkeeping per message."""
    paho = client._client
    info = None
    for topic, payload, qos, retain in messages:
        info = paho.publish(topic, payload, qos, retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:  # not connected: the connection's supervisor reconnects
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
    return info


async def _acknowledged(info: mqtt.MQTTMessageInfo | None) -> None:
    """Until the broker has acknowledged this message, and so (it acknowledges in order) every one
    before it. Polled: paho's MQTTMessageInfo has nothing to await; a lost connection ends the
    send task from outside."""
    while info is not None and not info.is_published():
        await asyncio.sleep(0.001)


class _Connection:
    """One MQTT connection carrying one channel: its own Will, queue and reconnect loop."""

    def __init__(self, owner: PlantMqttPublisher, channel: _Channel, client_id: str | None, commands: bool):
        self.owner = owner
        self.channel = channel
        self.client_id = client_id
        self.commands = commands  # this connection receives the injection commands
        self.connected = False
        self.client: aiomqtt.Client | None = None
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=owner.queue_size)
        self.unacknowledged: list[object] = []  # ticks published whose last message has no PUBACK yet
        self.task: asyncio.Task[None] | None = None

    def put(self, item: object) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # a live plant view wants the newest values: drop the oldest
            self.owner.stats.dropped += 1
        self.queue.put_nowait(item)

    async def supervise(self) -> None:
        backoff = _BACKOFF_START_S
        owner, channel = self.owner, self.channel
        while True:
            channel.new_session()
            try:
                async with aiomqtt.Client(
                    owner.host, owner.port, identifier=self.client_id, keepalive=15, timeout=5, will=channel.will(),
                    max_inflight_messages=_MAX_INFLIGHT,
                ) as client:
                    self.client = client
                    topics = channel.subscriptions() + ([owner.command_topic] if self.commands else [])
                    for topic in topics:
                        await client.subscribe(topic, qos=1)
                    for topic, payload, qos, retain in channel.on_connect():
                        await client.publish(topic, payload, qos=qos, retain=retain)
                    owner.stats.connects += 1
                    self._set_connected(True)
                    backoff = _BACKOFF_START_S
                    log.info("simulator MQTT %s connected to %s:%d", channel.name, owner.host, owner.port)
                    if await self._serve(client):
                        return
            except aiomqtt.MqttError as exc:
                log.warning(
                    "simulator MQTT %s: connection to %s:%d lost or refused (%s); retrying in %.1fs",
                    channel.name,
                    owner.host,
                    owner.port,
                    exc,
                    backoff,
                )
            finally:
                self.client = None
                self._set_connected(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        self.owner._connection_changed()

    async def _serve(self, client: aiomqtt.Client) -> bool:
        """Send and receive until either side fails (MqttError) or a clean stop (True)."""
        tasks = {asyncio.create_task(self._send(client)), asyncio.create_task(self._receive(client))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if t.result() is _STOP:  # re-raises the MqttError that ended it
                return True
        raise aiomqtt.MqttError("message loop ended")

    async def _send(self, client: aiomqtt.Client) -> object:
        channel, stats = self.channel, self.owner.stats
        previous: mqtt.MQTTMessageInfo | None = None  # the last message of the tick before
        # Ticks sent on the connection that failed and never acknowledged by the broker go out
        # again first, in order: the new session does not resend them, and a plant edge that
        # dropped them would lose data the collector never saw (at least once, like QoS 1 itself).
        pending, self.unacknowledged = self.unacknowledged, []
        try:
            while True:
                item = pending.pop(0) if pending else await self.queue.get()
                if item is _STOP:
                    for topic, payload, qos, retain in channel.goodbye(self.owner.last_at or utc_now()):
                        await client.publish(topic, payload, qos=qos, retain=retain)
                        stats.published += 1
                    return _STOP
                if item is _REBIRTH:
                    messages = channel.rebirth()
                else:
                    messages = channel.encode(item)
                    self.unacknowledged.append(item)
                last = _publish_tick(client, messages)
                stats.published += len(messages)
                # One tick on the wire while the one before is acknowledged: a slow broker holds the
                # next tick back (the queue absorbs it), without a pause per tick for the round trip.
                await _acknowledged(previous)
                # The broker acknowledges in order: only this tick can still be unacknowledged.
                self.unacknowledged = [] if item is _REBIRTH else [item]
                previous = last
        finally:
            self.unacknowledged += pending  # not sent again yet: after the ones that were

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if self.commands and topic == self.owner.command_topic:
                self.owner.handle_command(message.payload)
            elif self.channel.on_message(topic, payload):
                self.put(_REBIRTH)  # sent by the send loop, so seq stays in order


class PlantMqttPublisher:
    """Publishes the plant to the broker at `url`, each line in its payload format (`payloads`:
    line path site.area.line -> json_unit | json_tag | batched_json | sparkplug_b, default
    `default_payload`); `on_inject(command)` is called for each valid injection command and may
    raise ValueError to refuse it.

    Connections: one per site for its JSON lines (Will: `{prefix}/{site}/_status` "offline",
    retained; "online" published retained on connect), one per Sparkplug line (Will: NDEATH)."""

    def __init__(
        self,
        *,
        url: str,
        topic_prefix: str,
        units: list[PlantUnit],
        on_inject: Callable[[InjectCommand], object],
        queue_size: int = 1000,
        client_id: str | None = None,
        default_payload: str = "json_unit",
        payloads: dict[str, str] | None = None,
    ):
        self.host, self.port = parse_mqtt_url(url)
        self.prefix = topic_prefix.rstrip("/")
        self.command_topic = f"{self.prefix}/{INJECT_TOPIC}"
        self.units = units
        self.stats = PublisherStats()
        self.connected = asyncio.Event()
        self.queue_size = queue_size
        self.last_at: datetime | None = None
        self._on_inject = on_inject
        payloads = dict(payloads or {})
        for kind in [default_payload, *payloads.values()]:
            if kind not in PAYLOADS:
                raise ValueError(f"unknown MQTT payload {kind!r}; one of {', '.join(PAYLOADS)}")
        self.payload_of = {u.path: payloads.get(f"{u.site}.{u.area}.{u.line}", default_payload) for u in units}
        channels: list[_Channel] = []
        json_sites: dict[str, list[PlantUnit]] = {}
        sparkplug_lines: dict[str, list[PlantUnit]] = {}
        for u in units:
            if self.payload_of[u.path] == "sparkplug_b":
                sparkplug_lines.setdefault(f"{u.site}.{u.area}.{u.line}", []).append(u)
            else:
                json_sites.setdefault(u.site, []).append(u)
        for site, site_units in json_sites.items():
            channels.append(_JsonChannel(f"json:{site}", self.prefix, site_units, self.payload_of))
        for line, line_units in sparkplug_lines.items():
            channels.append(_SparkplugChannel(f"sparkplug:{line}", self.prefix, line_units))
        many = len(channels) > 1
        self.connections = [
            _Connection(
                self,
                ch,
                f"{client_id}-{ch.name.replace(':', '-')}" if client_id and many else client_id,
                commands=(i == 0),
            )
            for i, ch in enumerate(channels)
        ]

    def topic(self, unit: PlantUnit) -> str:
        """The unit's topic (json_unit, batched_json; json_tag adds /<tag>)."""
        return f"{self.prefix}/{unit.site}/{unit.area}/{unit.line}/{unit.unit}"

    def status_topic(self, site: str) -> str:
        return f"{self.prefix}/{site}/{STATUS_SUFFIX}"

    def sparkplug_nodes(self) -> list[SparkplugEdgeNode]:
        return [c.channel.node for c in self.connections if isinstance(c.channel, _SparkplugChannel)]

    async def start(self) -> None:
        for c in self.connections:
            if c.task is None:
                c.task = asyncio.create_task(c.supervise(), name=f"simulator-mqtt-{c.channel.name}")

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Say goodbye where connected (NDEATH, status offline), disconnect, and end the tasks."""
        tasks = []
        for c in self.connections:
            if c.task is None:
                continue
            if c.connected:
                while not c.queue.empty():  # the goodbye goes now, not after a backlog
                    c.queue.get_nowait()
                c.queue.put_nowait(_STOP)
            else:
                c.task.cancel()  # nobody to say goodbye to
            tasks.append(c.task)
            c.task = None
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout_s)
        self.connected.clear()

    def publish(
        self, frame: pl.DataFrame, unit_states: dict[str, tuple[str, str]], events: list[BatchEvent] | None = None
    ) -> None:
        """Queue a step's samples (sample schema), unit states and batch events for every connection."""
        if not frame.height:
            return
        at = frame["ts"][0]
        self.last_at = at
        values = {t: (v, q) for t, v, q in frame.select("tag_id", "value", "quality").iter_rows()}
        tick = _Tick(at, values, dict(unit_states), tuple(events or ()))
        for c in self.connections:
            c.put(tick)

    def _connection_changed(self) -> None:
        if self.connections and all(c.connected for c in self.connections):
            self.connected.set()
        else:
            self.connected.clear()

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
            command.target,
            command.duration_s,
            command.magnitude,
        )
        return True
