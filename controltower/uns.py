"""The unified namespace (UNS) on MQTT between the scaled-out services (docs/uns.md): its topics,
how units are partitioned, how payloads are encoded, and a bounded publisher.

    {root}/v1/values/p{k}/{site}/{area}/{line}/{unit}   one unit's samples of one collector batch:
                                                        columnar JSON (few) or Arrow IPC (many); QoS 1
    {root}/v1/batch-events/p{k}/{site}/{area}/{line}/{unit}
                                                        the unit's batch events (batch start, phase
                                                        change, end) of one collector flush, JSON;
                                                        QoS 1, same partition as its values
    {root}/v1/alerts/{site}/{area}/{line}/{unit}        one alert transition, JSON; QoS 1
    {root}/v1/alarm-state/{site}/{area}/{line}/{unit}/{alert_id}
                                                        an alert's current state, JSON, retained;
                                                        emptied once it is normal and not shelved
    {root}/v1/commands/p{k}/{site}/{area}/{line}/{unit} an operator's acknowledge / shelve /
                                                        unshelve, JSON, to the partition's owner
    {root}/v1/command-results/{request_id}              its outcome, JSON
    {root}/v1/tag-service/p{k}/{site}/{area}/{line}/{unit}/{tag}
                                                        a tag taken out of / back into service
                                                        (who, when, why), JSON, retained
    {root}/v1/tag-state/{site}/{area}/{line}/{unit}/{tag}
                                                        that state as the owning worker applied
                                                        it, JSON, retained; emptied in service
    {root}/v1/workers/{name}                            an analytics worker's membership, JSON,
                                                        retained; emptied by its last will

A unit's partition is `crc32(unit path) mod partitions`: a pure function of the path, so every
collector puts a unit in the same partition, and a worker owning the partition gets all of it.
Which worker owns which partition is rendezvous hashing over the live workers (`assign`): each
worker computes it alone from the membership topic, and a worker leaving moves only its own
partitions.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import ssl
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import polars as pl

from collector.sources.mqtt import MqttBindingError, tls_context
from collector.spool import decode_batch
from controltower.batch_events import batch_events_frame
from controltower.samples import PATH_COLUMNS, samples_frame
from controltower.site import UnsConfig

log = logging.getLogger(__name__)

VERSION = "v1"


class UnsTopicError(ValueError):
    """A topic that is not a UNS topic of this version (names the topic)."""


@dataclass(frozen=True)
class Topics:
    root: str
    partitions: int

    @classmethod
    def of(cls, config: UnsConfig) -> Topics:
        return cls(config.root, config.partitions)

    @property
    def base(self) -> str:
        return f"{self.root}/{VERSION}"

    def values(self, site: str, area: str, line: str, unit: str) -> str:
        k = partition_of(f"{site}.{area}.{line}.{unit}", self.partitions)
        return f"{self.base}/values/p{k}/{site}/{area}/{line}/{unit}"

    def values_filter(self, partition: int) -> str:
        return f"{self.base}/values/p{partition}/#"

    def batch_events(self, site: str, area: str, line: str, unit: str) -> str:
        k = partition_of(f"{site}.{area}.{line}.{unit}", self.partitions)
        return f"{self.base}/batch-events/p{k}/{site}/{area}/{line}/{unit}"

    def batch_events_filter(self, partition: int) -> str:
        return f"{self.base}/batch-events/p{partition}/#"

    def alerts(self, site: str, area: str, line: str, unit: str) -> str:
        return f"{self.base}/alerts/{site}/{area}/{line}/{unit}"

    @property
    def alerts_filter(self) -> str:
        return f"{self.base}/alerts/#"

    def alarm_state(self, site: str, area: str, line: str, unit: str, alert_id: str) -> str:
        return f"{self.base}/alarm-state/{site}/{area}/{line}/{unit}/{alert_id}"

    @property
    def alarm_state_filter(self) -> str:
        return f"{self.base}/alarm-state/#"

    def command(self, site: str, area: str, line: str, unit: str) -> str:
        k = partition_of(f"{site}.{area}.{line}.{unit}", self.partitions)
        return f"{self.base}/commands/p{k}/{site}/{area}/{line}/{unit}"

    def command_filter(self, partition: int) -> str:
        return f"{self.base}/commands/p{partition}/#"

    def command_result(self, request_id: str) -> str:
        return f"{self.base}/command-results/{request_id}"

    def tag_service(self, tag_id: str) -> str:
        """Where a tag is taken out of / put back in service: retained, the tag's wanted state."""
        site, area, line, unit, tag = _tag_parts(tag_id)
        k = partition_of(f"{site}.{area}.{line}.{unit}", self.partitions)
        return f"{self.base}/tag-service/p{k}/{site}/{area}/{line}/{unit}/{tag}"

    def tag_service_filter(self, partition: int) -> str:
        return f"{self.base}/tag-service/p{partition}/#"

    def tag_state(self, tag_id: str) -> str:
        """A tag's service state as its owning worker applied it: retained, emptied when in service."""
        return f"{self.base}/tag-state/{'/'.join(_tag_parts(tag_id))}"

    @property
    def tag_state_filter(self) -> str:
        return f"{self.base}/tag-state/#"

    def parse_tag(self, topic: str, kind: str) -> str:
        """The tag id of a `tag-service/p{k}/...` or `tag-state/...` topic."""
        prefix = f"{self.base}/{kind}/"
        parts = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
        if kind == "tag-service" and parts and parts[0][:1] == "p":
            parts = parts[1:]
        if len(parts) != 5:
            raise UnsTopicError(f"{topic!r} is not a {prefix}.../site/area/line/unit/tag topic")
        return ".".join(parts)

    def worker(self, name: str) -> str:
        return f"{self.base}/workers/{name}"

    @property
    def workers_filter(self) -> str:
        return f"{self.base}/workers/+"

    def parse_values(self, topic: str, kind: str = "values") -> tuple[int, str]:
        """(partition, unit path `site.area.line.unit`) of a values (or `kind`: commands,
        batch-events) topic."""
        prefix = f"{self.base}/{kind}/p"
        parts = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
        if len(parts) != 5 or not parts[0].isdigit():
            raise UnsTopicError(f"{topic!r} is not a {prefix}{{k}}/site/area/line/unit topic")
        return int(parts[0]), ".".join(parts[1:])

    def worker_name(self, topic: str) -> str:
        prefix = f"{self.base}/workers/"
        if not topic.startswith(prefix) or "/" in topic[len(prefix):]:
            raise UnsTopicError(f"{topic!r} is not a {prefix}{{name}} topic")
        return topic[len(prefix):]


def _tag_parts(tag_id: str) -> list[str]:
    parts = tag_id.split(".")
    if len(parts) != 5 or not all(parts) or any(c in tag_id for c in "/+#"):
        raise ValueError(f"{tag_id!r} is not a tag id site.area.line.unit.tag")
    return parts


def partition_of(unit_path: str, partitions: int) -> int:
    """The partition of a unit (`site.area.line.unit`): stable across processes and versions
    (crc32, not Python's salted `hash`)."""
    return zlib.crc32(unit_path.encode()) % partitions


def assign(partitions: int, workers: set[str] | list[str]) -> dict[str, list[int]]:
    """Partition owners by rendezvous (highest random weight) hashing: each partition goes to the
    worker with the highest hash of (worker, partition). Every worker computes the same answer
    from the same membership, and removing a worker moves only the partitions it owned."""
    owners: dict[str, list[int]] = {w: [] for w in workers}
    if not owners:
        return owners
    for k in range(partitions):
        best = max(owners, key=lambda w: hashlib.blake2b(f"{w}/{k}".encode(), digest_size=8).digest())
        owners[best].append(k)
    return owners


# --- payloads ------------------------------------------------------------------------------------


def split_by_unit(batch: pl.DataFrame) -> list[tuple[tuple[str, str, str, str], pl.DataFrame]]:
    """A batch as one frame per unit (ISA-95 path), in first-seen order; rows without a full
    path (tags unknown to the site) are left out: the caller counts them."""
    known = batch.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in PATH_COLUMNS))
    if known.is_empty():
        return []
    return list(known.partition_by(list(PATH_COLUMNS), as_dict=True, maintain_order=True).items())


# Below this many samples a values message is columnar JSON: an Arrow IPC stream carries its
# schema (about 2.4 kB) in every message, more than a few samples' worth of JSON. From it on,
# Arrow IPC with zstd is several times smaller than JSON (docs/uns.md has the figures).
ARROW_FROM_ROWS = 64
_ARROW_MARK = b"\xff\xff\xff\xff"  # an Arrow IPC stream starts with a continuation marker
_JSON_COLUMNS = ("ts", "server_ts", "tag", "value", "quality", "batch_id")


def encode_values(frame: pl.DataFrame) -> bytes:
    """One unit's samples (SAMPLE_SCHEMA, one ISA-95 path): columnar JSON for a few samples, an
    Arrow IPC stream (zstd) for more. The JSON form names tags relative to the unit, whose path
    is in the topic."""
    if frame.height >= ARROW_FROM_ROWS:
        buf = io.BytesIO()
        frame.write_ipc_stream(buf, compression="zstd")
        return buf.getvalue()
    unit_prefix = ".".join(str(frame[c][0]) for c in PATH_COLUMNS) + "."
    columns = frame.select(
        pl.col("ts").dt.epoch("ns"), pl.col("server_ts").dt.epoch("ns"),
        pl.col("tag_id").str.strip_prefix(unit_prefix).alias("tag"), "value", pl.col("quality").cast(pl.String),
        "batch_id",
    ).to_dict(as_series=False)
    # Columns that are the same all along (no receive time, all good, one batch) are sent once.
    body = {k: (v[0] if len(set(v)) == 1 and k not in ("ts", "tag", "value") else v) for k, v in columns.items()}
    return json.dumps(body, separators=(",", ":")).encode()  # NaN as NaN, as Python reads it


def decode_values(payload: bytes, unit_path: str) -> pl.DataFrame:
    """The samples of a values message of unit `unit_path` (`site.area.line.unit`, from its topic),
    in SAMPLE_SCHEMA; ValueError for a payload that is neither form."""
    if payload.startswith(_ARROW_MARK):
        try:
            return decode_batch(payload)
        except (pl.exceptions.PolarsError, OSError) as exc:  # a corrupt stream
            raise ValueError(f"not an Arrow IPC sample batch: {str(exc)[:200]}") from None
    try:
        body = json.loads(payload)
        n = len(body["ts"])
        columns = {k: body[k] if isinstance(body[k], list) else [body[k]] * n for k in _JSON_COLUMNS}
        if any(len(v) != n for v in columns.values()):
            raise ValueError("columns of different lengths")
        site, area, line, unit = unit_path.split(".")
        frame = samples_frame(
            ts=columns["ts"], server_ts=pl.Series("server_ts", columns["server_ts"], pl.Int64),
            tag_id=unit_path + "." + pl.Series("tag", columns["tag"], pl.String), value=columns["value"],
            quality=columns["quality"], batch_id=columns["batch_id"],
        )
    except (ValueError, KeyError, TypeError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"not a columnar JSON sample batch: {str(exc)[:200]}") from None
    return frame.with_columns(pl.lit(v, pl.String).alias(c) for c, v in zip(PATH_COLUMNS, (site, area, line, unit)))


_EVENT_FIELDS = ("batch_id", "phase", "transition", "product", "recipe")


def encode_batch_events(frame: pl.DataFrame) -> bytes:
    """One unit's batch events (`controltower.batch_events` schema) as a JSON list of objects,
    `ts` in ns since the epoch; the unit is in the topic. A few rows an hour: JSON is enough."""
    rows = frame.select(pl.col("ts").dt.epoch("ns"), *_EVENT_FIELDS).to_dicts()
    return json.dumps(rows, separators=(",", ":")).encode()


def decode_batch_events(payload: bytes, unit_path: str) -> pl.DataFrame:
    """The batch events of a batch-events message of unit `unit_path` (from its topic), in the
    event schema; ValueError for a payload that is not a list of events with `ts` and `transition`."""
    try:
        rows = json.loads(payload)
        if not isinstance(rows, list) or not all(
                isinstance(r, dict) and isinstance(r.get("ts"), int) and r.get("transition") for r in rows):
            raise ValueError("not a JSON list of objects with ts (ns since the epoch) and transition")
        return batch_events_frame([{k: r.get(k) for k in _EVENT_FIELDS} | {"ts": r["ts"], "unit_id": unit_path}
                                   for r in rows])
    except (ValueError, TypeError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"not a batch-events message: {str(exc)[:200]}") from None


def _iso(ts: Any) -> Any:
    if isinstance(ts, datetime):
        ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return ts


def alert_message(entry: dict[str, Any], alert: dict[str, Any] | None, worker: str) -> bytes:
    """An alert transition as JSON: the journal entry's fields (`event`, `from_state`, `to_state`,
    `at`, `user`, `comment`), the worker that saw it, and the alert as `Alert.to_dict()` after it."""
    body = {
        "event": entry["event"], "alert_id": entry.get("alert_id"), "tag_id": entry.get("tag_id"),
        "detector": entry.get("detector"), "from_state": entry.get("from_state"), "to_state": entry.get("to_state"),
        "at": _iso(entry.get("ts")), "user": entry.get("user"), "comment": entry.get("comment") or "",
        "worker": worker, "alert": alert,
    }
    return json.dumps(body, separators=(",", ":")).encode()


# --- connection ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnsLogin:
    """How a service reaches the UNS broker, resolved once at start-up (`uns_login`): the TLS
    context with its files read and the password read, so a missing file or variable stops the
    service at once, naming the key, instead of failing each reconnection. Never shown."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_context: ssl.SSLContext | None = field(default=None, repr=False)


def uns_login(config: UnsConfig, data_dir: Path | None = None) -> UnsLogin:
    """Resolve the site file's `uns` login; ValueError naming the `uns.` key and the reason (never
    the password). Relative TLS and password file paths are under `data_dir`."""
    url = urlsplit(config.url)
    context = None
    if config.uses_tls:
        try:  # the MQTT source's TLS context: the same keys, checked the same way
            context = tls_context(SimpleNamespace(name="uns", tls=config.tls), data_dir)  # type: ignore[arg-type]
        except MqttBindingError as exc:
            raise ValueError(str(exc).replace("MQTT source uns: ", "uns.")) from None
    password = None
    if config.password_env:
        password = os.environ.get(config.password_env)
        if password is None:
            raise ValueError(f"uns.password_env: environment variable {config.password_env} is not set")
    elif config.password_file:
        path = Path(config.password_file).expanduser()
        path = path if path.is_absolute() or data_dir is None else data_dir / path
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"uns.password_file: cannot read {path}: {exc.strerror or exc}") from None
        if not password:
            raise ValueError(f"uns.password_file: {path} is empty")
    return UnsLogin(url.hostname or "127.0.0.1", url.port or (8883 if config.uses_tls else 1883), config.username,
                    password, context)


def client_for(config: UnsConfig, client_id: str, login: UnsLogin | None = None, **options: Any) -> aiomqtt.Client:
    """An MQTT 5 client of the UNS broker (`login` from `uns_login`, resolved now when not given)."""
    login = login or uns_login(config)
    return aiomqtt.Client(
        login.host, login.port, identifier=client_id, username=login.username, password=login.password,
        tls_context=login.tls_context, protocol=aiomqtt.ProtocolVersion.V5, keepalive=config.keepalive_s, timeout=10,
        **options,
    )


@dataclass
class PublisherStats:
    published_messages: int = 0
    published_samples: int = 0
    dropped_messages: int = 0  # queue full: oldest dropped
    dropped_samples: int = 0
    unplaced_samples: int = 0  # no ISA-95 path: not a unit's value
    published_batch_events: int = 0  # handed to the queue (sent unless dropped with their message)
    connected: bool = False
    last_error: str | None = None
    reconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Message:
    topic: str
    payload: bytes
    samples: int


@dataclass
class UnsPublisher:
    """Publishes sample batches to the UNS, one message per unit per batch, QoS 1, through a
    bounded queue (oldest dropped and counted when the broker lags), reconnecting with backoff.
    `publish_batch` is a pipeline consumer: synchronous, never blocks, never raises."""

    config: UnsConfig
    client_id: str
    inflight: int = 32
    login: UnsLogin | None = None  # resolved on the first connection when not given
    stats: PublisherStats = field(default_factory=PublisherStats)

    def __post_init__(self) -> None:
        self.topics = Topics.of(self.config)
        self._queue: deque[_Message] = deque()
        self._ready = asyncio.Event()
        self._sending = 0  # messages taken from the queue, not yet acknowledged by the broker

    def publish_batch(self, batch: pl.DataFrame) -> None:
        parts = split_by_unit(batch)
        self.stats.unplaced_samples += batch.height - sum(f.height for _, f in parts)
        for (site, area, line, unit), frame in parts:
            self._queue.append(_Message(self.topics.values(site, area, line, unit), encode_values(frame), frame.height))
        self._bound_queue()

    def publish_batch_events(self, events: pl.DataFrame) -> None:
        """A pipeline event consumer: each unit's batch events to its `batch-events` topic, through
        the same queue as the values (so in order with them); synchronous, never blocks."""
        for (site, area, line, unit), frame in split_by_unit(events):
            self._queue.append(_Message(self.topics.batch_events(site, area, line, unit),
                                        encode_batch_events(frame), 0))
            self.stats.published_batch_events += frame.height
        self._bound_queue()

    def _bound_queue(self) -> None:
        """Drop the oldest messages beyond `queue_batches` (counted), and wake the sender."""
        while len(self._queue) > self.config.queue_batches:
            dropped = self._queue.popleft()
            self.stats.dropped_messages += 1
            self.stats.dropped_samples += dropped.samples
        if self._queue:
            self._ready.set()

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (queued or in flight)."""
        return len(self._queue) + self._sending

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                self.login = self.login or uns_login(self.config)
                async with client_for(self.config, self.client_id, self.login) as client:
                    self.stats.connected, self.stats.last_error, delay = True, None, 0.5
                    await self._send(client)
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
                log.warning("UNS publisher: broker %s: %s; retrying in %.1fs", self.config.url, exc, delay)
            finally:
                self.stats.connected = False
            self.stats.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                # Idle, wake for a batch or a lost connection (aiomqtt tells an idle client only
                # through this future), so `connected` says the truth and reconnection starts now.
                ready = asyncio.ensure_future(self._ready.wait())
                lost = client._disconnected
                try:
                    await asyncio.wait({ready, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ready.cancel()
                if lost.done():
                    raise aiomqtt.MqttError("connection to the UNS broker lost")
                continue
            window = [self._queue.popleft() for _ in range(min(self.inflight, len(self._queue)))]
            self._sending = len(window)
            try:
                results = await asyncio.gather(
                    *(client.publish(m.topic, m.payload, qos=self.config.qos) for m in window), return_exceptions=True
                )
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(window))
                raise
            finally:
                self._sending = 0
            failed = [m for m, r in zip(window, results) if isinstance(r, BaseException)]
            for m, r in zip(window, results):
                if not isinstance(r, BaseException):
                    self.stats.published_messages += 1
                    self.stats.published_samples += m.samples
            if failed:
                # Back to the front, in order: sent again after the reconnection (at least once).
                self._queue.extendleft(reversed(failed))
                error = next(r for r in results if isinstance(r, BaseException))
                raise error if isinstance(error, aiomqtt.MqttError) else aiomqtt.MqttError(str(error))

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (True) or `timeout_s` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self.pending
