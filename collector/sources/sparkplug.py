"""Sparkplug B decoder for the MQTT source (`payload: sparkplug_b`), as a Sparkplug host application.

Topics: `spBv1.0/{group}/{NBIRTH|NDATA|NDEATH}/{edge_node}` and
`spBv1.0/{group}/{DBIRTH|DDATA|DDEATH}/{edge_node}/{device}`; payloads are the protobuf `Payload`
of `collector.sources.sparkplug_b_proto`.

Binding a tag. Each tag names one metric of an edge node or of one of its devices:

    mqtt: {sparkplug: {group: lyon, edge_node: ff-fill1, device: filler1, metric: fill_weight}}

Any part left out is filled from the source's `sparkplug` templates, which take the tag's ISA-95
path ({site} {area} {line} {unit} {tag}); the defaults are group `{site}`, edge node
`{area}-{line}`, device `{unit}` and metric `{tag}`, so with an edge node per line and a device per
unit `mqtt: {}` is a whole binding. `device: ""` binds a metric of the edge node itself (NBIRTH /
NDATA). Two tags on one metric, or a part that is not one topic level, fail at start-up.

What the decoder does, per edge node (group, edge node):
- NBIRTH starts a session: it records bdSeq (the `bdSeq` metric), the sequence number, and each
  metric's name, alias, datatype and engineering unit (property `engUnit`, if present); it
  forgets the devices, which must be born again. DBIRTH does the same for a device. Birth values
  are samples like any other.
- NDATA / DDATA may name metrics by alias only; aliases are resolved through the births.
- `seq` (0..255, wrapping) must grow by one on every message of the node after NBIRTH (NDATA,
  DBIRTH, DDATA, DDEATH). A gap, data from a node or device never seen born, or an unknown alias
  is counted (`stats`) and queues a rebirth request: an NCMD with the boolean metric
  `Node Control/Rebirth` = true to `spBv1.0/{group}/NCMD/{edge_node}`, at most once per
  `rebirth_min_interval_s` per node. The source publishes queued commands (`commands`).
- NDEATH (sent by the node, or by the broker as the node's Last Will) ends the session if its
  bdSeq matches the birth's (a death from an older session is counted and ignored); DDEATH ends a
  device. Every tag of what died gets a bad-quality sample (value null) at the death's time, so
  the screen and the detectors see the data stop.
- Values: integer, float, double and boolean metrics become float64 (signed Sparkplug integers
  are sign-extended from their unsigned wire fields); `is_null` is a bad-quality null sample;
  a string or bytes value on a bound metric is set aside as `non_numeric_value`.
- A payload that is not a Sparkplug protobuf is set aside as `invalid_sparkplug` (dead letter,
  counted), a topic that is not a Sparkplug one as `invalid_sparkplug_topic`; never a crash.
  Metrics of nodes or devices with no bound tag are read only for their births and sequence.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
from google.protobuf.message import DecodeError

from collector.sources.columns import SampleColumns
from collector.sources.mqtt import (
    SAMPLE_TIME_MAX,
    SAMPLE_TIME_MIN,
    MqttBindingError,
    PayloadError,
    Rejected,
    _render,
)
from collector.sources.sparkplug_b_proto import DataType, Metric, Payload
from controltower.samples import tag_paths_frame
from controltower.site import MqttSourceConfig, TagInfo

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
NODE_MESSAGES = ("NBIRTH", "NDATA", "NDEATH")
DEVICE_MESSAGES = ("DBIRTH", "DDATA", "DDEATH")

# Sparkplug signed integers travel in unsigned fields: the bit width to sign-extend from.
_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_NUMERIC_FIELDS = ("int_value", "long_value", "float_value", "double_value", "boolean_value")
# Metric field numbers (see `sparkplug_b_proto`): the value oneof starts at 10.
_NAME, _ALIAS, _TIMESTAMP, _DATATYPE, _IS_NULL, _FIRST_VALUE_FIELD = 1, 2, 3, 4, 7, 10
_NUMERIC_FIELD_NUMBERS = frozenset(Metric.DESCRIPTOR.fields_by_name[f].number for f in _NUMERIC_FIELDS)


@dataclass
class MetricInfo:
    """What a birth said about one metric."""

    name: str
    datatype: int
    unit: str | None = None


@dataclass
class _Device:
    born: bool = False
    by_alias: dict[int, MetricInfo] = field(default_factory=dict)
    by_name: dict[str, MetricInfo] = field(default_factory=dict)


@dataclass
class _EdgeNode:
    born: bool = False
    bd_seq: int | None = None
    seq: int | None = None
    # "" is the edge node itself, else a device id.
    devices: dict[str, _Device] = field(default_factory=lambda: defaultdict(_Device))
    last_rebirth_request: float = float("-inf")


def sparkplug_binding(config: MqttSourceConfig, t: TagInfo) -> tuple[str, str, str, str]:
    """(group, edge node, device or "", metric) of a tag on a Sparkplug source."""
    b = t.tag.mqtt
    where = f"MQTT source {config.name}: tag {t.tag_id}"
    if b is None or b.topic is not None or b.field is not None:
        raise MqttBindingError(f"{where}: a JSON binding (topic, field) on a source whose payload is sparkplug_b")
    sp = b.sparkplug
    templates = config.sparkplug
    group = sp.group if sp is not None and sp.group is not None else _render(templates.group, t)
    node = sp.edge_node if sp is not None and sp.edge_node is not None else _render(templates.edge_node, t)
    device = sp.device if sp is not None and sp.device is not None else _render(templates.device, t)
    metric = sp.metric if sp is not None and sp.metric is not None else _render(templates.metric, t)
    for key, value in (("group", group), ("edge_node", node), ("device", device)):
        if any(c in value for c in "/+#") or (key != "device" and not value):
            raise MqttBindingError(f"{where}: sparkplug {key} {value!r} is not one topic level")
    if not metric:
        raise MqttBindingError(f"{where}: sparkplug metric is empty")
    return group, node, device, metric


class SparkplugDecoder:
    """Turns Sparkplug B messages into sample columns for the bound metrics (see the module doc)."""

    def __init__(self, config: MqttSourceConfig, tags: list[TagInfo]):
        self.config = config
        self.rebirth_min_interval_s = config.sparkplug.rebirth_min_interval_s
        # (group, edge node, device or "", metric name) -> tag id
        self.bindings: dict[tuple[str, str, str, str], str] = {}
        # (group, edge node) -> device or "" -> tag ids, for deaths
        self.tags_of: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for t in tags:
            key = sparkplug_binding(config, t)
            if key in self.bindings:
                raise MqttBindingError(
                    f"MQTT source {config.name}: tags {self.bindings[key]} and {t.tag_id} both read Sparkplug metric {key}"
                )
            self.bindings[key] = t.tag_id
            self.tags_of[key[:2]][key[2]].append(t.tag_id)
        self.groups = sorted({k[0] for k in self.bindings})
        self.nodes: dict[tuple[str, str], _EdgeNode] = defaultdict(_EdgeNode)
        self.tag_paths = tag_paths_frame(tags)
        self.columns = SampleColumns()
        self.partial_errors: list[PayloadError] = []
        self.rejected: list[Rejected] = []  # set aside by `add`, for the source to count
        self.commands: list[tuple[str, bytes]] = []  # (topic, payload) for the source to publish
        self.stats: dict[str, int] = defaultdict(int)

    def subscriptions(self) -> list[str]:
        """The births, data and deaths of every group with a bound metric (not the commands)."""
        out = []
        for g in self.groups:
            out += [f"{NAMESPACE}/{g}/{kind}/+" for kind in NODE_MESSAGES]
            out += [f"{NAMESPACE}/{g}/{kind}/+/+" for kind in DEVICE_MESSAGES]
        return out

    def metric_info(self, group: str, edge_node: str, device: str = "") -> dict[str, MetricInfo]:
        """What the births of a node (or one of its devices) declared, by metric name."""
        return dict(self.nodes[(group, edge_node)].devices[device].by_name)

    # --- decoding ---------------------------------------------------------------------------

    @property
    def pending_samples(self) -> int:
        return len(self.columns)

    def add(self, topic: str, payload: bytes, received: datetime) -> None:
        """Decode one message now (its births and sequence number change the state the next one
        is read with); what is unusable goes to `rejected`."""
        try:
            self.decode(topic, payload, received)
        except PayloadError as exc:
            self.rejected.append((topic, payload, exc))
        while self.partial_errors:
            self.rejected.append((topic, payload, self.partial_errors.pop()))

    def decode(self, topic: str, payload: bytes, received: datetime) -> int:
        """Handle one message; return how many samples it appended. Raise PayloadError when it is
        unusable as a whole."""
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
            raise PayloadError("invalid_sparkplug_topic", f"{topic!r} is not spBv1.0/group/type/edge_node[/device]")
        group, kind, node_id = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else ""
        if (kind in NODE_MESSAGES) != (device == "") or kind not in NODE_MESSAGES + DEVICE_MESSAGES:
            if kind in ("NCMD", "DCMD", "STATE"):
                return 0
            raise PayloadError("invalid_sparkplug_topic", f"{topic!r}: {kind} is not a Sparkplug B message type here")
        try:
            message = Payload.FromString(payload)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise PayloadError("invalid_sparkplug", f"payload is not a Sparkplug B protobuf: {exc}") from None

        key = (group, node_id)
        node = self.nodes[key]
        if message.HasField("timestamp"):
            ts = _from_ms(message.timestamp, received)
        else:
            ts = received

        if kind == "NDEATH":
            return self._node_death(key, node, message, ts, received)
        if kind == "NBIRTH":
            node.born = True
            node.bd_seq = _bd_seq(message)
            node.seq = message.seq if message.HasField("seq") else 0
            node.devices.clear()
            self.stats["births"] += 1
        else:
            self._check_sequence(key, node, message)
            if not node.born:
                self._request_rebirth(key, node, "no_birth")

        dev = node.devices[device]
        if kind in ("NBIRTH", "DBIRTH"):
            dev.born = True
            dev.by_alias.clear()
            dev.by_name.clear()
            if kind == "DBIRTH":
                self.stats["births"] += 1
            for m in message.metrics:
                if m.HasField("name"):
                    info = MetricInfo(m.name, m.datatype, _engineering_unit(m))
                    dev.by_name[m.name] = info
                    if m.HasField("alias"):
                        dev.by_alias[m.alias] = info
        elif kind == "DDEATH":
            dev.born = False
            self.stats["deaths"] += 1
            return self._stale(self.tags_of.get(key, {}).get(device, []), ts, received)
        elif not dev.born and node.born:
            self._request_rebirth(key, node, "no_birth")

        bound = self.tags_of.get(key)
        if bound is None or device not in bound:
            return 0  # nothing of this node or device is bound: births and sequence only
        return self._samples(key, node, dev, device, message, ts, received)

    def _samples(self, key, node: _EdgeNode, dev: _Device, device: str, message, ts: datetime, received: datetime) -> int:
        group, node_id = key
        bindings, cols = self.bindings, self.columns
        add_sample = cols.add_sample
        count = 0
        non_numeric = []
        message_row = None
        for m in message.metrics:
            # One ListFields call reads every field the metric carries: with upb, each HasField or
            # attribute read costs about as much as the whole list.
            name = alias = stamp = datatype = raw = None
            which = 0
            is_null = False
            for f, v in m.ListFields():
                number = f.number
                if number >= _FIRST_VALUE_FIELD:
                    which, raw = number, v
                elif number == _NAME:
                    name = v
                elif number == _ALIAS:
                    alias = v
                elif number == _TIMESTAMP:
                    stamp = v
                elif number == _DATATYPE:
                    datatype = v
                elif number == _IS_NULL:
                    is_null = v
            if name is not None:
                info = dev.by_name.get(name)
            else:
                info = dev.by_alias.get(alias) if alias is not None else None
                if info is None:
                    self.stats["unknown_alias"] += 1
                    self._request_rebirth(key, node, "unknown_alias")
                    continue
                name = info.name
            tag_id = bindings.get((group, node_id, device, name))
            if tag_id is None:
                continue
            if is_null:
                value, quality = None, "bad"
            elif which in _NUMERIC_FIELD_NUMBERS:
                if datatype is None:
                    datatype = info.datatype if info is not None else 0
                value, quality = float(_signed(raw, datatype)), "good"
            elif not which:
                continue  # a metric without a value (e.g. a DataSet or Template): nothing to sample
            else:
                non_numeric.append(name)
                continue
            if stamp is not None:
                row = cols.add_row(_from_ms(stamp, received), received)
            else:
                # Metrics without a time of their own share one row: the payload's time.
                if message_row is None:
                    message_row = cols.add_row(ts, received)
                row = message_row
            add_sample(row, tag_id, value, quality)
            count += 1
        if non_numeric:
            self.partial_errors.append(PayloadError("non_numeric_value", f"metric(s) {', '.join(non_numeric)} hold no number"))
        return count

    def _check_sequence(self, key, node: _EdgeNode, message) -> None:
        if not message.HasField("seq"):
            return
        seq = message.seq
        if node.seq is not None and seq != (node.seq + 1) % 256:
            self.stats["sequence_gaps"] += 1
            log.warning("Sparkplug %s/%s: seq %d after %d; requesting a rebirth", *key, seq, node.seq)
            self._request_rebirth(key, node, "sequence_gap")
        node.seq = seq

    def _node_death(self, key, node: _EdgeNode, message, ts: datetime, received: datetime) -> int:
        bd_seq = _bd_seq(message)
        if node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
            self.stats["stale_deaths"] += 1  # the Last Will of an earlier session: this one lives on
            return 0
        node.born = False
        node.seq = None
        for dev in node.devices.values():
            dev.born = False
        self.stats["deaths"] += 1
        tags = [t for ids in self.tags_of.get(key, {}).values() for t in ids]
        return self._stale(tags, ts, received)

    def _stale(self, tag_ids: list[str], ts: datetime, received: datetime) -> int:
        """A bad-quality null sample for each tag: its source is gone."""
        cols = self.columns
        if tag_ids:
            row = cols.add_row(ts, received)
            for tag_id in tag_ids:
                cols.add_sample(row, tag_id, None, "bad")
        return len(tag_ids)

    def _request_rebirth(self, key, node: _EdgeNode, reason: str) -> None:
        now = time.monotonic()
        if now - node.last_rebirth_request < self.rebirth_min_interval_s:
            return
        node.last_rebirth_request = now
        self.stats["rebirths_requested"] += 1
        log.info("Sparkplug %s/%s: requesting a rebirth (%s)", *key, reason)
        self.commands.append((f"{NAMESPACE}/{key[0]}/NCMD/{key[1]}", rebirth_request()))

    def take_batch(self) -> pl.DataFrame | None:
        """The samples decoded since the last call, as one batch."""
        cols, self.columns = self.columns, SampleColumns()
        return cols.frame(self.tag_paths)


def rebirth_request(now: datetime | None = None) -> bytes:
    """The NCMD payload asking an edge node to publish its births again."""
    ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    return Payload(
        timestamp=ms,
        metrics=[Metric(name=REBIRTH_METRIC, timestamp=ms, datatype=DataType.BOOLEAN, boolean_value=True)],
    ).SerializeToString()


def _from_ms(ms: int, fallback: datetime) -> datetime:
    try:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return fallback
    # Beyond what a Datetime(ns) holds, the whole batch could not be built.
    return moment if SAMPLE_TIME_MIN <= moment <= SAMPLE_TIME_MAX else fallback


def _signed(value: float, datatype: int) -> float:
    bits = _SIGNED_BITS.get(datatype)
    if bits is None or not isinstance(value, int) or isinstance(value, bool):
        return value
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _bd_seq(message) -> int | None:
    for m in message.metrics:
        if m.name == "bdSeq":
            which = m.WhichOneof("value")
            if which in ("int_value", "long_value"):
                return int(getattr(m, which))
    return None


def _engineering_unit(m) -> str | None:
    if not m.HasField("properties"):
        return None
    for key, value in zip(m.properties.keys, m.properties.values):
        if key in ("engUnit", "engineeringUnit", "EngUnit") and value.WhichOneof("value") == "string_value":
            return value.string_value
    return None
