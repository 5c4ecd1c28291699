"""MQTT source: JSON or Sparkplug B payloads from an MQTT broker (aiomqtt, i.e. paho-mqtt inside asyncio).

`payload: json` (the default): one JSON object per message, carrying one or more tags' values at
field paths named by the tag bindings (`mqtt: {topic, field}`), plus optional fields for the
sample time, the batch id and a per-field quality map:

    {"ts": "2026-11-29T10:00:00.500Z", "batch_id": "F1-0007",
     "fill_weight": 2.003, "speed": 301.2, "quality": {"speed": "uncertain"}}

A binding may leave its topic to the source's `topic_template` (placeholders {prefix} {site}
{area} {line} {unit} {tag}, e.g. `{prefix}/{site}/{area}/{line}/{unit}` with `topic_prefix:
plant`) and its field to the source's `value_field`, else the tag id: `mqtt: {}` is enough.

`payload: batched_json`: one message carries a list of samples (keys in `batched_json`:
samples_field, tag_field, value_field, timestamp_field, quality_field), each item naming its tag
as a binding's field does:

    {"batch_id": "F1-0007", "samples": [{"tag": "fill_weight", "ts": 1795946400.5, "value": 2.003},
                                        {"tag": "speed", "ts": 1795946400.5, "value": 301.2}]}

`payload: sparkplug_b`: see `collector.sources.sparkplug`.

Batch events: with `batch_event_topic`, each collected unit's batch-event topic is subscribed as
well, whatever the payload format; its messages are decoded by
`collector.sources.mqtt_batch_events` (set aside and counted like other payloads when malformed)
and handed to `on_batch_events` at each flush, before the messages are acknowledged.

Connection: MQTT 5 (default) or 3.1.1; a persistent session (a `client_id`, clean start off,
MQTT 5 session expiry `session_expiry_s`) keeps the subscriptions and the QoS 1/2 messages
published while the collector is away; `shared_group` subscribes as `$share/<group>/<topic>` so
several collectors split one stream; TLS for mqtts:// URLs or a `tls` block (CA, client
certificate for mutual TLS); username and a password read from the environment variable named by
`password_env` (never logged).

JSON payloads are kept as they came until the source flushes; then the whole flush is parsed at
once (`collector.sources.json_flush`: Polars' NDJSON reader, no Python loop per value), and any
message that path cannot vouch for is decoded on its own (`MqttJsonDecoder.decode`), which is the
reference. A malformed payload is counted per reason, written to the dead-letter file with its
topic and error, and skipped; it never stops the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import polars as pl
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.deadletter import DeadLetterFile
from collector.sources import Emit, SourceHealth
from collector.sources.columns import SampleColumns, concat_batches
from collector.sources.mqtt_batch_events import BatchEventDecoder, BatchEventError
from collector.sources.supervisor import supervise
from controltower.samples import Quality, tag_paths_frame
from controltower.site import MqttSourceConfig, MqttTlsConfig, TagInfo

log = logging.getLogger(__name__)

_QUALITIES = {q.value for q in Quality}


@dataclass(frozen=True)
class _FieldBinding:
    path: tuple[str, ...]
    field: str
    tag_id: str


class PayloadError(ValueError):
    """Why a payload was set aside; `reason` is the short counter label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


Rejected = tuple[str, bytes, "PayloadError"]  # (topic, payload, why) of what a decoder set aside


class MqttJsonDecoder:
    """Turns (topic, payload) pairs into sample columns for the tags bound to those topics.

    `add` keeps a message for the next `take_batch`, which decodes all of them at once (the fast
    path) and one by one with `decode` those it hands back; `decode` alone decodes one now."""

    def __init__(self, config: MqttSourceConfig, tags: list[TagInfo]):
        self.config = config
        self.bindings: dict[str, list[_FieldBinding]] = defaultdict(list)
        # batched_json: (topic, the name an item gives its tag) -> tag id
        self.by_name: dict[tuple[str, str], str] = {}
        self.names_by_topic: dict[str, dict[str, str]] = defaultdict(dict)  # the same, per topic
        for t in tags:
            topic, field = json_binding(config, t)
            if (topic, field) in self.by_name:
                raise MqttBindingError(
                    f"MQTT source {config.name}: tags {self.by_name[(topic, field)]} and {t.tag_id} "
                    f"both read field {field!r} of topic {topic!r}"
                )
            self.by_name[(topic, field)] = t.tag_id
            self.names_by_topic[topic][field] = t.tag_id
            self.bindings[topic].append(_FieldBinding(tuple(field.split(".")), field, t.tag_id))
        self.tag_paths = tag_paths_frame(tags)
        self.columns = SampleColumns()
        self.partial_errors: list[PayloadError] = []
        self.rejected: list[Rejected] = []  # set aside by `take_batch`, for the source to count
        self.commands: list[tuple[str, bytes]] = []  # nothing to send back for JSON
        self._topics: list[str] = []
        self._payloads: list[bytes] = []
        self._received: list[datetime] = []
        self.pending_samples = 0  # an estimate, for the source's flush_max_samples
        self._samples_per_message = {topic: len(b) for topic, b in self.bindings.items()}
        # Batched JSON: payload bytes per sample, learned at each flush; at first the shortest
        # item's, {"tag":"x","value":1} (so a first flush comes early rather than late).
        self._bytes_per_sample = 24
        if config.payload == "batched_json":
            self.decode = self.decode_batched  # type: ignore[method-assign]
        from collector.sources.json_flush import JsonFlushDecoder  # it imports this module's parser

        self._flush_decoder = JsonFlushDecoder(self)

    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe to (before any $share prefix)."""
        return list(self.bindings)

    def decode(self, topic: str, payload: bytes, received: datetime) -> int:
        """Append the samples of one message; return how many. Raise PayloadError when the whole
        message is unusable; fields that are merely absent are skipped (a payload may carry a subset)."""
        bindings = self.bindings.get(topic)
        if not bindings:
            raise PayloadError("unbound_topic", f"no tag is bound to topic {topic!r}")
        doc = _json_object(payload)

        ts = self._message_time(doc, received)
        batch_id = _lookup(doc, self.config.batch_field.split(".")) if self.config.batch_field else None
        qualities = _lookup(doc, self.config.quality_field.split(".")) if self.config.quality_field else None
        if not isinstance(qualities, dict):
            qualities = {}

        cols = self.columns
        row = len(cols.ts)
        count = 0
        bad_values = []
        for b in bindings:
            raw = _lookup(doc, b.path)
            if raw is _MISSING:
                continue
            if raw is None:
                value, quality = None, "bad"
            elif (number := _number(raw)) is not None:
                value, quality = number, str(qualities.get(b.field, "good"))
            else:
                bad_values.append(b.field)
                continue
            if quality not in _QUALITIES:
                quality = "uncertain"
            cols.add_sample(row, b.tag_id, value, quality)
            count += 1
        if count:
            cols.add_row(ts, received, str(batch_id) if batch_id not in (None, _MISSING) else None)
        if bad_values:
            error = PayloadError("non_numeric_value", f"field(s) {', '.join(bad_values)} hold no number")
            if count == 0:
                raise error
            # The good fields of the message are kept; the bad ones are still set aside and counted.
            self.partial_errors.append(error)
        elif count == 0:
            # An object on a bound topic with none of its fields (a renamed field, a wrong
            # publisher): counted, or it would vanish without a trace.
            raise PayloadError("no_bound_field", f"none of the field(s) {', '.join(b.field for b in bindings)} is present")
        return count

    def decode_batched(self, topic: str, payload: bytes, received: datetime) -> int:
        """`payload: batched_json`: append every item of the message's sample list; return how many.
        Items naming an unbound tag or holding no number are set aside (counted), the rest kept."""
        if topic not in self.bindings:
            raise PayloadError("unbound_topic", f"no tag is bound to topic {topic!r}")
        spec = self.config.batched_json
        doc = _json_object(payload)
        items = _lookup(doc, spec.samples_field.split("."))
        if not isinstance(items, list):
            raise PayloadError("no_sample_list", f"{spec.samples_field!r} is not a list of samples")
        message_ts = self._message_time(doc, received)
        raw_batch = _lookup(doc, self.config.batch_field.split(".")) if self.config.batch_field else None
        batch_id = str(raw_batch) if raw_batch not in (None, _MISSING) else None

        names, cols = self.names_by_topic[topic], self.columns
        tag_key, value_key = spec.tag_field, spec.value_field
        ts_key, quality_key = spec.timestamp_field, spec.quality_field
        count = 0
        problems: dict[str, int] = {}
        # The message's row (time, receive time, batch id), added with its first sample that has
        # no time of its own and shared by the others: per sample, only an index into the rows.
        message_row = None
        for item in items:
            if item.__class__ is not dict:
                problems["bad_sample_item"] = problems.get("bad_sample_item", 0) + 1
                continue
            name = item.get(tag_key)
            tag_id = names.get(name if name.__class__ is str else str(name))
            if tag_id is None:
                problems["unbound_tag"] = problems.get("unbound_tag", 0) + 1
                continue
            raw = item.get(value_key)
            if raw is None:
                value, quality = None, "bad"
            elif (value := raw if raw.__class__ is float else _number(raw)) is not None:
                quality = item.get(quality_key, "good") if quality_key else "good"
                if quality.__class__ is not str or quality not in _QUALITIES:
                    quality = "uncertain"
            else:
                problems["non_numeric_value"] = problems.get("non_numeric_value", 0) + 1
                continue
            raw_ts = item.get(ts_key) if ts_key is not None else None
            if raw_ts is not None:
                try:
                    ts = _parse_time(raw_ts, ts_key)
                except PayloadError:
                    problems["bad_timestamp"] = problems.get("bad_timestamp", 0) + 1
                    continue
                row = cols.add_row(ts, received, batch_id)
            else:
                if message_row is None:
                    message_row = cols.add_row(message_ts, received, batch_id)
                row = message_row
            cols.add_sample(row, tag_id, value, quality)
            count += 1
        for reason, n in problems.items():
            error = PayloadError(reason, f"{n} of {len(items)} sample(s) set aside: {reason.replace('_', ' ')}")
            if count == 0 and len(problems) == 1:
                raise error
            self.partial_errors.append(error)
        return count

    def _message_time(self, doc: dict, received: datetime) -> datetime:
        """The payload's own time (`timestamp_field`), else when it was received."""
        if self.config.timestamp_field:
            raw_ts = _lookup(doc, self.config.timestamp_field.split("."))
            if raw_ts is not _MISSING and raw_ts is not None:
                return _parse_time(raw_ts, self.config.timestamp_field)
        return received

    def parse_time(self, raw: Any) -> datetime:
        """A message or item time as the reference reads it (PayloadError when it is none)."""
        return _parse_time(raw, self.config.timestamp_field or "ts")

    def add(self, topic: str, payload: bytes, received: datetime) -> None:
        """Keep a message for the next `take_batch` (decoded then, with the rest of its flush)."""
        self._topics.append(topic)
        self._payloads.append(payload)
        self._received.append(received)
        if self.config.payload == "batched_json":
            self.pending_samples += len(payload) // self._bytes_per_sample
        else:
            self.pending_samples += self._samples_per_message.get(topic, 1)

    def take_batch(self) -> pl.DataFrame | None:
        """The samples of the messages added (and decoded) since the last call, as one batch; what
        was set aside is in `rejected` (topic, payload, error), one entry per reason."""
        topics, payloads, received = self._topics, self._payloads, self._received
        self._topics, self._payloads, self._received, self.pending_samples = [], [], [], 0
        fast = self._flush_decoder.decode(topics, payloads, received)
        for i in fast.slow:
            try:
                self.decode(topics[i], payloads[i], received[i])
            except PayloadError as exc:
                self.rejected.append((topics[i], payloads[i], exc))
            while self.partial_errors:
                self.rejected.append((topics[i], payloads[i], self.partial_errors.pop()))
        cols, self.columns = self.columns, SampleColumns()
        batch = concat_batches([fast.batch, cols.frame(self.tag_paths)])
        if batch is not None and self.config.payload == "batched_json":
            self._bytes_per_sample = max(8, sum(map(len, payloads)) // batch.height)
        return batch


class MqttBindingError(ValueError):
    """A tag binding that an MQTT source cannot use (raised at start-up, naming source and tag)."""


def _render(template: str, t: TagInfo, **extra: str) -> str:
    return template.format(site=t.site, area=t.area, line=t.line, unit=t.unit, tag=t.tag.id, **extra)


def json_binding(config: MqttSourceConfig, t: TagInfo) -> tuple[str, str]:
    """(topic, field path) of a tag on a JSON source: its binding's, else the source's template,
    value_field or the tag id."""
    b = t.tag.mqtt
    where = f"MQTT source {config.name}: tag {t.tag_id}"
    if b is None or b.sparkplug is not None:
        raise MqttBindingError(f"{where}: a sparkplug binding on a source whose payload is {config.payload}")
    topic = b.topic
    if topic is None:
        if config.topic_template is None:
            raise MqttBindingError(f"{where}: its mqtt binding names no topic and the source has no topic_template")
        topic = _render(config.topic_template, t, prefix=config.topic_prefix)
    if "+" in topic or "#" in topic or not topic:
        raise MqttBindingError(f"{where}: topic {topic!r} is empty or holds a wildcard")
    return topic, b.field or config.value_field or t.tag.id


def _json_object(payload: bytes) -> dict:
    """The payload as a JSON object; PayloadError (invalid_json, not_an_object) otherwise."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # also: nested too deep, an int of > 4300 digits
        raise PayloadError("invalid_json", f"payload is not JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise PayloadError("not_an_object", f"payload is a JSON {type(doc).__name__}, expected an object")
    return doc


def _parse_time(raw: Any, field: str) -> datetime:
    """ISO-8601 text (naive means UTC) or a number of epoch seconds; numbers above 1e11 cannot be
    seconds (year 5138), so they are read as milliseconds."""
    parsed = None
    try:
        if isinstance(raw, str):
            parsed = datetime.fromisoformat(raw)
            parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            parsed = datetime.fromtimestamp(raw / 1000 if abs(raw) > 1e11 else raw, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    if parsed is not None and SAMPLE_TIME_MIN <= parsed <= SAMPLE_TIME_MAX:
        return parsed
    raise PayloadError("bad_timestamp", f"{field!r} is {str(raw)[:60]!r}, not an ISO-8601 time or epoch number")


# Sample times are nanoseconds since 1970 in an int64 (Datetime(ns)): a time outside these
# bounds would make the whole batch fail to build, so it is set aside as a bad timestamp.
SAMPLE_TIME_MIN = datetime(1677, 9, 22, tzinfo=UTC)
SAMPLE_TIME_MAX = datetime(2262, 4, 11, tzinfo=UTC)


def _number(raw: Any) -> float | None:
    """A JSON number (or boolean) as a float; None for anything else or an integer beyond float64."""
    if isinstance(raw, (int, float)):
        try:
            return float(raw)
        except OverflowError:
            return None
    return None


_MISSING: Any = object()


def _lookup(doc: Any, path: tuple[str, ...] | list[str]) -> Any:
    node = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


class MqttSource:
    """Collects the tags bound to one MQTT broker."""

    def __init__(
        self,
        config: MqttSourceConfig,
        tags: list[TagInfo],
        *,
        dead_letter: DeadLetterFile | None = None,
        data_dir: Path | None = None,
    ):
        """Raises MqttBindingError (a ValueError) at start-up for a binding, TLS file or password
        variable that cannot be used, naming the source and the key."""
        self.config = config
        self.name = config.name
        self.health = SourceHealth(name=config.name, kind="mqtt")
        mine = [t for t in tags if t.source == config.name and t.tag.mqtt is not None]
        if config.payload == "sparkplug_b":
            from collector.sources.sparkplug import SparkplugDecoder  # protobuf is needed only here

            self.decoder: MqttJsonDecoder | SparkplugDecoder = SparkplugDecoder(config, mine)
            self.health.events = self.decoder.stats  # births, deaths, sequence gaps, rebirth requests
        else:
            self.decoder = MqttJsonDecoder(config, mine)
        self.dead_letter = dead_letter
        self.batch_events = BatchEventDecoder(config, mine)
        self.on_batch_events = None  # set by the pipeline: an async callable taking an event frame
        self._flush_now = asyncio.Event()
        # (paho client, mid, qos) of QoS 1/2 messages received but not yet in an emitted batch.
        self._unacked: list[tuple[Any, int, int]] = []
        url = urlsplit(config.url)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (8883 if config.uses_tls else 1883)
        self._tls_context = tls_context(config, data_dir) if config.uses_tls else None
        if config.password_env and config.password_env not in os.environ:
            raise MqttBindingError(
                f"MQTT source {config.name}: password_env: environment variable {config.password_env} is not set"
            )

    def _set_aside(self, topic: str, payload: bytes, error: PayloadError | BatchEventError) -> None:
        self.health.reject(error.reason)
        if self.dead_letter is not None:
            self.dead_letter.add(source=self.name, topic=topic, reason=error.reason, error=str(error), payload=payload)

    def handle_message(self, topic: str, payload: bytes, received: datetime) -> None:
        if self.batch_events.unit_by_topic and topic in self.batch_events.unit_by_topic:
            try:
                self.batch_events.decode(topic, payload)
            except BatchEventError as exc:
                self._set_aside(topic, payload, exc)
            return
        # JSON messages are decoded with the rest of their flush (`take_batch`), Sparkplug ones
        # now (births and sequence numbers are state).
        self.decoder.add(topic, payload, received)
        if self.decoder.rejected:
            self._set_aside_rejected()
        if self.decoder.pending_samples >= self.config.flush_max_samples:
            self._flush_now.set()

    def _set_aside_rejected(self) -> None:
        rejected, self.decoder.rejected = self.decoder.rejected, []
        for topic, payload, error in rejected:
            self._set_aside(topic, payload, error)

    def take_batch(self) -> pl.DataFrame | None:
        """The samples of the messages handled since the last call; what was malformed is counted
        and dead-lettered now."""
        batch = self.decoder.take_batch()
        self._set_aside_rejected()
        return batch

    async def _flush(self, emit: Emit) -> None:
        batch = self.take_batch()
        acks, self._unacked = self._unacked, []
        events = self.batch_events.take()
        if events.height:
            self.health.events["batch_events"] = self.health.events.get("batch_events", 0) + events.height
            if self.on_batch_events is not None:
                await self.on_batch_events(events)
        if batch is not None and batch.height:
            self.health.samples_in += batch.height
            self.health.batches_out += 1
            self.health.last_sample_at = datetime.now(UTC)
            await emit(batch)
        # Only now, with the batch taken by the pipeline (on disk when the spool is on), does the
        # broker hear that these messages were received: a crash before this point makes it
        # deliver them again to the persistent session, instead of losing them.
        for paho_client, mid, qos in acks:
            paho_client.ack(mid, qos)

    async def run(self, emit: Emit) -> None:
        await supervise(
            self.health,
            self._session,
            flush_interval_s=self.config.flush_interval_ms / 1000,
            wake=self._flush_now,
            flush=lambda: self._flush(emit),
        )

    def _client(self) -> aiomqtt.Client:
        config = self.config
        password = os.environ.get(config.password_env) if config.password_env else None
        persistent = config.persistent_session
        options: dict[str, Any] = {}
        if config.protocol == "5":
            options["protocol"] = aiomqtt.ProtocolVersion.V5
            options["clean_start"] = not persistent
            connect = Properties(PacketTypes.CONNECT)
            connect.SessionExpiryInterval = config.session_expiry_s if persistent else 0
            options["properties"] = connect
        else:
            options["protocol"] = aiomqtt.ProtocolVersion.V311
            options["clean_session"] = not persistent
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=config.client_id,
            username=config.username,
            password=password,
            tls_context=self._tls_context,
            keepalive=30,
            timeout=10,
            **options,
        )
        # Acknowledge QoS 1/2 messages after they are stored, not on receipt (see `_flush`).
        # aiomqtt does not expose paho's manual acknowledgement, hence its `_client`.
        client._client.manual_ack_set(True)
        return client

    def subscriptions(self) -> list[str]:
        filters = self.decoder.subscriptions() + self.batch_events.subscriptions()
        if self.config.shared_group:
            return [f"$share/{self.config.shared_group}/{f}" for f in filters]
        return filters

    async def _session(self) -> None:
        client = self._client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            # The broker answered and refused: say which settings to check (never their values).
            hint = f"check username and {self.config.password_env or 'password_env'}" if self.config.username else (
                "the broker may require a username and password, or a client certificate")
            raise ConnectionRefusedError(f"broker {self._host}:{self._port} refused the connection: {exc} ({hint})") from None
        try:
            filters = self.subscriptions()
            if filters:
                await client.subscribe([(f, self.config.qos) for f in filters])
            self.health.connected = True
            self.health.last_error = None
            log.info("MQTT source %s connected to %s:%s (MQTT %s, %s session), %d subscriptions", self.name, self._host,
                     self._port, self.config.protocol, "persistent" if self.config.persistent_session else "clean", len(filters))
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                self.handle_message(message.topic.value, payload, datetime.now(UTC))
                if message.qos > 0:
                    self._unacked.append((client._client, message.mid, message.qos))
                while self.decoder.commands:  # e.g. a Sparkplug rebirth request
                    topic, command = self.decoder.commands.pop(0)
                    await client.publish(topic, command, qos=0)
        finally:
            self.health.connected = False
            with contextlib.suppress(Exception):  # a lost connection has already said why
                await client.__aexit__(*sys.exc_info())


def tls_context(config: MqttSourceConfig, data_dir: Path | None = None) -> ssl.SSLContext:
    """The TLS context of a source, its files read now so that a missing or bad file fails at start-up."""
    tls = config.tls or MqttTlsConfig()

    def path(key: str) -> str | None:
        value = getattr(tls, key)
        if value is None:
            return None
        p = Path(value)
        if not p.is_absolute() and data_dir is not None:
            p = data_dir / p
        if not p.is_file():
            raise MqttBindingError(f"MQTT source {config.name}: tls.{key}: {p} is not a readable file")
        return str(p)

    try:
        key = "ca_file"
        context = ssl.create_default_context(cafile=path("ca_file"))
        key = "cert_file"
        cert_file, key_file = path("cert_file"), path("key_file")
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise MqttBindingError(f"MQTT source {config.name}: tls.{key}: not usable: {exc.reason or exc}") from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def open_dead_letter(data_dir: Path) -> DeadLetterFile:
    return DeadLetterFile(data_dir / "dead_letter.jsonl")
