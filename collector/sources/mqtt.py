"""MQTT source: JSON payloads from an MQTT broker (aiomqtt, i.e. paho-mqtt inside asyncio).

A payload is one JSON object per message, carrying one or more tags' values at field paths
named by the tag bindings (`mqtt: {topic, field}`), plus optional fields for the sample time,
the batch id and a per-field quality map:

    {"ts": "2026-11-29T10:00:00.500Z", "batch_id": "F1-0007",
     "fill_weight": 2.003, "speed": 301.2, "quality": {"speed": "uncertain"}}

Decoding appends to column lists; a flush turns them into one sample batch. A malformed payload
is counted per reason, written to the dead-letter file with its topic and error, and skipped;
it never stops the source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import polars as pl

from collector.deadletter import DeadLetterFile
from collector.sources import Emit, SourceHealth
from collector.sources.supervisor import supervise
from controltower.samples import QUALITY_DTYPE, Quality, samples_frame, tag_paths_frame, timestamp_series
from controltower.site import MqttSourceConfig, TagInfo

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


class _Columns:
    """Per message: time, receive time, batch id. Per sample: its message's row, tag, value, quality.
    A message's fields are stored once, not once per sample."""

    __slots__ = ("ts", "received", "batch_id", "message", "tag_id", "value", "quality")

    def __init__(self) -> None:
        self.ts: list[datetime] = []
        self.received: list[datetime] = []
        self.batch_id: list[str | None] = []
        self.message: list[int] = []
        self.tag_id: list[str] = []
        self.value: list[float | None] = []
        self.quality: list[str] = []

    def __len__(self) -> int:
        return len(self.tag_id)


class MqttJsonDecoder:
    """Turns (topic, payload) pairs into sample columns for the tags bound to those topics."""

    def __init__(self, config: MqttSourceConfig, tags: list[TagInfo]):
        self.config = config
        self.bindings: dict[str, list[_FieldBinding]] = defaultdict(list)
        for t in tags:
            if t.tag.mqtt is not None:
                self.bindings[t.tag.mqtt.topic].append(
                    _FieldBinding(tuple(t.tag.mqtt.field.split(".")), t.tag.mqtt.field, t.tag_id)
                )
        self.tag_paths = tag_paths_frame(tags)
        self.columns = _Columns()
        self.partial_errors: list[PayloadError] = []

    def decode(self, topic: str, payload: bytes, received: datetime) -> int:
        """Append the samples of one message; return how many. Raise PayloadError when the whole
        message is unusable; fields that are merely absent are skipped (a payload may carry a subset)."""
        bindings = self.bindings.get(topic)
        if not bindings:
            raise PayloadError("unbound_topic", f"no tag is bound to topic {topic!r}")
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PayloadError("invalid_json", f"payload is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise PayloadError("not_an_object", f"payload is a JSON {type(doc).__name__}, expected an object")

        ts = received
        if self.config.timestamp_field:
            raw_ts = _lookup(doc, self.config.timestamp_field.split("."))
            if raw_ts is not _MISSING and raw_ts is not None:
                ts = _parse_time(raw_ts, self.config.timestamp_field)
        batch_id = _lookup(doc, self.config.batch_field.split(".")) if self.config.batch_field else None
        qualities = _lookup(doc, self.config.quality_field.split(".")) if self.config.quality_field else None
        if not isinstance(qualities, dict):
            qualities = {}

        cols = self.columns
        message = len(cols.ts)
        count = 0
        bad_values = []
        for b in bindings:
            raw = _lookup(doc, b.path)
            if raw is _MISSING:
                continue
            if raw is None:
                value, quality = None, "bad"
            elif isinstance(raw, (int, float)):
                value, quality = float(raw), str(qualities.get(b.field, "good"))
            else:
                bad_values.append(b.field)
                continue
            if quality not in _QUALITIES:
                quality = "uncertain"
            cols.message.append(message)
            cols.tag_id.append(b.tag_id)
            cols.value.append(value)
            cols.quality.append(quality)
            count += 1
        if count:
            cols.ts.append(ts)
            cols.received.append(received)
            cols.batch_id.append(str(batch_id) if batch_id not in (None, _MISSING) else None)
        if bad_values:
            error = PayloadError("non_numeric_value", f"field(s) {', '.join(bad_values)} hold no number")
            if count == 0:
                raise error
            # The good fields of the message are kept; the bad ones are still set aside and counted.
            self.partial_errors.append(error)
        return count

    def take_batch(self) -> pl.DataFrame | None:
        """The samples decoded since the last call, as one batch."""
        cols, self.columns = self.columns, _Columns()
        if not cols:
            return None
        row = pl.Series(cols.message, dtype=pl.UInt32)  # each sample's message
        return samples_frame(
            ts=timestamp_series("ts", cols.ts).gather(row),
            server_ts=timestamp_series("server_ts", cols.received).gather(row),
            tag_id=cols.tag_id,
            value=cols.value,
            quality=pl.Series(cols.quality, dtype=pl.String).cast(QUALITY_DTYPE),
            batch_id=pl.Series(cols.batch_id, dtype=pl.String).gather(row),
            tag_paths=self.tag_paths,
        )


def _parse_time(raw: Any, field: str) -> datetime:
    """ISO-8601 text (naive means UTC) or a number of epoch seconds; numbers above 1e11 cannot be
    seconds (year 5138), so they are read as milliseconds."""
    try:
        if isinstance(raw, str):
            parsed = datetime.fromisoformat(raw)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return datetime.fromtimestamp(raw / 1000 if abs(raw) > 1e11 else raw, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise PayloadError("bad_timestamp", f"{field!r} is {str(raw)[:60]!r}, not an ISO-8601 time or epoch number")


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

    def __init__(self, config: MqttSourceConfig, tags: list[TagInfo], *, dead_letter: DeadLetterFile | None = None):
        self.config = config
        self.name = config.name
        self.health = SourceHealth(name=config.name, kind="mqtt")
        self.decoder = MqttJsonDecoder(config, [t for t in tags if t.source == config.name and t.tag.mqtt is not None])
        self.dead_letter = dead_letter
        self._flush_now = asyncio.Event()
        url = urlsplit(config.url)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self._tls = url.scheme == "mqtts"

    def _set_aside(self, topic: str, payload: bytes, error: PayloadError) -> None:
        self.health.reject(error.reason)
        if self.dead_letter is not None:
            self.dead_letter.add(source=self.name, topic=topic, reason=error.reason, error=str(error), payload=payload)

    def handle_message(self, topic: str, payload: bytes, received: datetime) -> None:
        try:
            self.decoder.decode(topic, payload, received)
        except PayloadError as exc:
            self._set_aside(topic, payload, exc)
        while self.decoder.partial_errors:
            self._set_aside(topic, payload, self.decoder.partial_errors.pop())
        if len(self.decoder.columns) >= self.config.flush_max_samples:
            self._flush_now.set()

    async def _flush(self, emit: Emit) -> None:
        batch = self.decoder.take_batch()
        if batch is not None and batch.height:
            self.health.samples_in += batch.height
            self.health.batches_out += 1
            self.health.last_sample_at = datetime.now(UTC)
            await emit(batch)

    async def run(self, emit: Emit) -> None:
        await supervise(
            self.health,
            self._session,
            flush_interval_s=self.config.flush_interval_ms / 1000,
            wake=self._flush_now,
            flush=lambda: self._flush(emit),
        )

    async def _session(self) -> None:
        password = os.environ.get(self.config.password_env) if self.config.password_env else None
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=self.config.client_id,
            username=self.config.username,
            password=password,
            tls_params=aiomqtt.TLSParameters() if self._tls else None,
            keepalive=30,
            timeout=10,
        )
        async with client:
            for topic in self.decoder.bindings:
                await client.subscribe(topic, qos=self.config.qos)
            self.health.connected = True
            self.health.last_error = None
            log.info("MQTT source %s connected to %s:%s, %d topics", self.name, self._host, self._port, len(self.decoder.bindings))
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                self.handle_message(message.topic.value, payload, datetime.now(UTC))
        self.health.connected = False


def open_dead_letter(data_dir: Path) -> DeadLetterFile:
    return DeadLetterFile(data_dir / "dead_letter.jsonl")
