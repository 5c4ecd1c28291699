"""One production line as a Sparkplug B edge node: the messages it sends, with their sequence
numbers and aliases (the MQTT connection itself is `simulators.mqtt_publisher`'s).

Names follow the collector's default templates (controltower.site.MqttSparkplugConfig), so a
`payload: sparkplug_b` source with `mqtt: {}` bindings reads the simulator as it is:
group `{site}`, edge node `{area}-{line}`, device `{unit}`, metric `{tag}`.

Per MQTT session (each connection attempt):
  NDEATH   spBv1.0/{group}/NDEATH/{edge}, metric bdSeq (Int64, as Eclipse Tahu sends it);
           registered as the connection's Will, so the broker announces a node that vanished;
           also sent on a clean stop.
  NBIRTH   seq 0, metrics bdSeq (the same as the Will's) and "Node Control/Rebirth" (false).
  DBIRTH   per unit: every tag (Double, with its alias and property engUnit), batch_id and phase
           (String), all with their current values.
  DDATA    per unit per tick: the tags by alias only (no names), batch_id/phase only when they
           changed. A non-finite reading is is_null.
`seq` counts every message after NBIRTH (0..255, wrapping); bdSeq grows by one per session
(0..255). An NCMD "Node Control/Rebirth" = true makes the node send NBIRTH and DBIRTHs again.
Aliases are unique across the node and its devices and stable for the node's life.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime

from google.protobuf.message import DecodeError

from collector.sources.sparkplug_b_proto import DataType, Metric, Payload, PropertySet, PropertyValue
from simulators.plant import PlantUnit

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
_STATE_METRICS = ("batch_id", "phase")


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def edge_node_id(unit: PlantUnit) -> tuple[str, str]:
    """(group, edge node) of the line a unit belongs to."""
    return unit.site, f"{unit.area}-{unit.line}"


class SparkplugEdgeNode:
    """Encodes one line's Sparkplug session. `units`: the line's units (devices)."""

    def __init__(self, units: list[PlantUnit], *, bd_seq: int = 0):
        if not units:
            raise ValueError("a Sparkplug edge node needs at least one unit")
        self.group, self.edge_node = edge_node_id(units[0])
        self.units = units
        self.bd_seq = bd_seq % 256
        self.seq = 0
        self.node_topic = f"{NAMESPACE}/{self.group}/{{kind}}/{self.edge_node}"
        self.command_topic = self.node_topic.format(kind="NCMD")
        # Alias 0 is the node's rebirth metric; tags and state metrics follow, device by device.
        self.aliases: dict[tuple[str, str], int] = {}
        alias = 1
        for u in units:
            for tag in u.config.tags:
                self.aliases[(u.unit, tag.id)] = alias
                alias += 1
            for name in _STATE_METRICS:
                self.aliases[(u.unit, name)] = alias
                alias += 1
        self._sent_state: dict[str, tuple[str, str]] = {}

    def topic(self, kind: str, device: str | None = None) -> str:
        base = self.node_topic.format(kind=kind)
        return base if device is None else f"{base}/{device}"

    def new_session(self) -> None:
        """A new MQTT connection: the next bdSeq (the Will must be built after this)."""
        self.bd_seq = (self.bd_seq + 1) % 256

    def death(self, at: datetime | None = None) -> tuple[str, bytes]:
        """NDEATH with this session's bdSeq (the Will, or sent on a clean stop)."""
        payload = Payload(metrics=[Metric(name="bdSeq", datatype=DataType.INT64, long_value=self.bd_seq)])
        if at is not None:
            payload.timestamp = _ms(at)
        return self.topic("NDEATH"), payload.SerializeToString()

    def births(
        self, at: datetime, values: Mapping[str, float | None], states: Mapping[str, tuple[str, str]]
    ) -> list[tuple[str, bytes]]:
        """NBIRTH (seq 0) and one DBIRTH per unit, with current values (`values` by full tag id)."""
        ms = _ms(at)
        self.seq = 0
        node = Payload(
            timestamp=ms,
            seq=self.seq,
            metrics=[
                Metric(name="bdSeq", timestamp=ms, datatype=DataType.INT64, long_value=self.bd_seq),
                Metric(name=REBIRTH_METRIC, alias=0, timestamp=ms, datatype=DataType.BOOLEAN, boolean_value=False),
            ],
        )
        out = [(self.topic("NBIRTH"), node.SerializeToString())]
        for u in self.units:
            metrics = []
            for tag, tag_id in zip(u.config.tags, u.tag_ids, strict=True):
                m = Metric(name=tag.id, alias=self.aliases[(u.unit, tag.id)], timestamp=ms, datatype=DataType.DOUBLE)
                _set_double(m, values.get(tag_id))
                if tag.unit:
                    m.properties.CopyFrom(
                        PropertySet(keys=["engUnit"], values=[PropertyValue(type=DataType.STRING, string_value=tag.unit)])
                    )
                metrics.append(m)
            state = states.get(u.path, ("", ""))
            for name, text in zip(_STATE_METRICS, state, strict=True):
                metrics.append(
                    Metric(name=name, alias=self.aliases[(u.unit, name)], timestamp=ms, datatype=DataType.STRING, string_value=text)
                )
            self._sent_state[u.path] = state
            out.append((self.topic("DBIRTH", u.unit), self._payload(ms, metrics)))
        return out

    def data(
        self, at: datetime, values: Mapping[str, float | None], states: Mapping[str, tuple[str, str]]
    ) -> list[tuple[str, bytes]]:
        """One DDATA per unit: tags by alias only; batch_id / phase when they changed."""
        ms = _ms(at)
        out = []
        for u in self.units:
            metrics = []
            for tag, tag_id in zip(u.config.tags, u.tag_ids, strict=True):
                m = Metric(alias=self.aliases[(u.unit, tag.id)], timestamp=ms)
                _set_double(m, values.get(tag_id))
                metrics.append(m)
            state = states.get(u.path)
            if state is not None and state != self._sent_state.get(u.path):
                for name, text, before in zip(_STATE_METRICS, state, self._sent_state.get(u.path, ("", "")), strict=True):
                    if text != before:
                        metrics.append(
                            Metric(alias=self.aliases[(u.unit, name)], timestamp=ms, datatype=DataType.STRING, string_value=text)
                        )
                self._sent_state[u.path] = state
            out.append((self.topic("DDATA", u.unit), self._payload(ms, metrics)))
        return out

    def is_rebirth_request(self, payload: bytes) -> bool:
        """Whether an NCMD payload asks for a rebirth (by name, or by the alias the NBIRTH gave)."""
        try:
            message = Payload.FromString(payload)
        except (DecodeError, ValueError, RuntimeError):  # not a Sparkplug payload: not a request
            return False
        return any(
            (m.name == REBIRTH_METRIC or (not m.name and m.HasField("alias") and m.alias == 0))
            and m.WhichOneof("value") == "boolean_value"
            and m.boolean_value
            for m in message.metrics
        )

    def _payload(self, ms: int, metrics: Iterable) -> bytes:
        self.seq = (self.seq + 1) % 256
        return Payload(timestamp=ms, seq=self.seq, metrics=list(metrics)).SerializeToString()


def _set_double(metric, value: float | None) -> None:
    if value is None or not math.isfinite(value):
        metric.is_null = True
    else:
        metric.double_value = value
