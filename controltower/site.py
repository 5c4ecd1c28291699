"""The site model: an ISA-95 hierarchy (enterprise -> site -> area -> line -> unit -> tag),
where each tag is bound to the source that delivers it, plus the runtime settings of a
control tower (sources, historian, detectors, screen).

A site file is YAML. `load_site_config(path)` validates it once, at start-up; every error
names the file, the key path and the reason (`SiteConfigError`). Inside the product the
models are trusted.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# ISA-95 ids become OPC-UA node ids, MQTT topic levels and InfluxDB tag values:
# keep them to characters that need no escaping anywhere.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$", max_length=64)]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataType(StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


class Limits(Strict):
    """Alarm and warning limits of a tag, in its engineering unit. Any may be absent."""

    alarm_low: float | None = None
    warning_low: float | None = None
    warning_high: float | None = None
    alarm_high: float | None = None
    # Hysteresis: a limit condition clears only once the value is back by this much.
    deadband: float = Field(default=0.0, ge=0.0)
    # ISA-18.2 delays: a limit condition raises only once it has held for on_delay_s seconds and
    # on_delay_samples consecutive samples, and clears only once it has been clear for the
    # off-delays. 0 (the default): raise and clear on the sample itself.
    on_delay_s: float = Field(default=0.0, ge=0.0)
    off_delay_s: float = Field(default=0.0, ge=0.0)
    on_delay_samples: int = Field(default=0, ge=0)
    off_delay_samples: int = Field(default=0, ge=0)
    # Rate-of-change limit: |dv/dt| in the tag's unit per second (None: not checked).
    rate_of_change: float | None = Field(default=None, gt=0.0)
    # Stale data: no sample for this many seconds (None: the detectors' default).
    stale_after_s: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        chain = [
            (name, getattr(self, name))
            for name in ("alarm_low", "warning_low", "warning_high", "alarm_high")
            if getattr(self, name) is not None
        ]
        for (lo_name, lo), (hi_name, hi) in zip(chain, chain[1:]):
            if lo >= hi:
                raise ValueError(f"{lo_name} ({lo}) must be below {hi_name} ({hi})")
        return self


class OpcUaMonitoring(Strict):
    """How the server samples a node and when it reports a change (OPC UA Part 4, 7.21/7.22).
    Any setting left out comes from the source. `deadband_abs` (in the tag's unit) and
    `deadband_percent` (of the node's EURange, which the server must expose) are exclusive:
    a change smaller than the deadband is not reported."""

    # How often the server samples the value, in ms (0: as fast as the server can).
    sampling_interval_ms: float | None = Field(default=None, ge=0, le=3_600_000)
    # Samples the server keeps between two publishes (1: only the newest).
    queue_size: int | None = Field(default=None, ge=1, le=10_000)
    deadband_abs: float | None = Field(default=None, ge=0)
    deadband_percent: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_deadband(self) -> OpcUaMonitoring:
        _one_deadband(self.deadband_abs, self.deadband_percent)
        return self


def _one_deadband(absolute: float | None, percent: float | None) -> None:
    if absolute is not None and percent is not None:
        raise ValueError(f"deadband_abs ({absolute}) and deadband_percent ({percent}) are exclusive: set one of them")


class OpcUaBinding(OpcUaMonitoring):
    """Where an OPC-UA source finds the tag: a node id such as `ns=2;s=lyon.usp.bio1.br101.temperature`,
    with optional monitoring settings of its own (see OpcUaMonitoring)."""

    node_id: str = Field(min_length=1)


class SparkplugBinding(Strict):
    """Where a Sparkplug B source finds the tag: a metric of an edge node, or of one of its devices.
    Any part left out comes from the source's `sparkplug` templates (which are filled from the
    tag's ISA-95 path)."""

    group: str | None = Field(default=None, min_length=1)
    edge_node: str | None = Field(default=None, min_length=1)
    # None: take the source's device template; "" (empty): the metric belongs to the edge node itself.
    device: str | None = None
    metric: str | None = Field(default=None, min_length=1)

    @field_validator("group", "edge_node", "device")
    @classmethod
    def _one_topic_level(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in "/+#"):
            raise ValueError("a Sparkplug group, edge node or device id is one topic level: no '/', '+' or '#'")
        return value


class MqttBinding(Strict):
    """Where an MQTT source finds the tag. JSON payloads: a topic and a field path in the payload
    (dots go deeper); the topic may come from the source's `topic_template` and the field defaults
    to the source's `value_field`, else the tag id, so `mqtt: {}` is a complete binding under a
    template. Sparkplug B: `sparkplug: {group, edge_node, device, metric}` (see SparkplugBinding)."""

    topic: str | None = Field(default=None, min_length=1)
    field: str | None = Field(default=None, min_length=1)
    sparkplug: SparkplugBinding | None = None

    @field_validator("topic")
    @classmethod
    def _no_wildcards(cls, topic: str | None) -> str | None:
        if topic is not None and ("+" in topic or "#" in topic):
            raise ValueError("a tag binding names one topic; wildcards (+, #) are not allowed here")
        return topic

    @model_validator(mode="after")
    def _json_or_sparkplug(self) -> MqttBinding:
        if self.sparkplug is not None and (self.topic is not None or self.field is not None):
            raise ValueError("a binding is either JSON (topic, field) or sparkplug, not both")
        return self


class SpcCentre(Strict):
    """A tag's SPC centre line and sigma pinned by hand (e.g. a validated set point and the process
    sigma of a qualification run): the Nelson, EWMA and CUSUM charts use it over a stored `spc`
    model (`controltower model fit --kind spc`)."""

    centre: float
    sigma: float = Field(gt=0.0)


class Tag(Strict):
    id: Identifier
    description: str = ""
    unit: str = ""  # engineering unit, e.g. "degC", "bar", "g"
    data_type: DataType = DataType.FLOAT
    limits: Limits = Limits()
    spc: SpcCentre | None = None  # pinned centre line of the SPC charts (else the stored spc model's)
    # Which configured source delivers it; may be left out when only one source of the binding's kind exists.
    source: str | None = None
    opcua: OpcUaBinding | None = None
    mqtt: MqttBinding | None = None

    @model_validator(mode="after")
    def _one_binding(self) -> Tag:
        if (self.opcua is None) == (self.mqtt is None):
            raise ValueError("a tag needs exactly one binding: either 'opcua' or 'mqtt'")
        return self

    @property
    def binding_kind(self) -> Literal["opcua", "mqtt"]:
        return "opcua" if self.opcua is not None else "mqtt"


# An OPC-UA node id as text: `ns=2;s=...`, `ns=3;i=42`, `i=2258`, `g=...`, `b=...`. Not `nsu=`
# (a namespace URI): asyncua reads it as namespace 0, so a write would go to another node.
NODE_ID_PATTERN = r"^(ns=\d+;)?[isgb]=.+$"


class Setpoint(Strict):
    """A value the control tower may write to the plant (`controltower.setpoint_api`): an OPC-UA
    node, the range an operator may write (checked before writing; the server may be stricter)
    and its engineering unit. Writes need the `setpoint.write` permission and are audited."""

    id: Identifier
    description: str = ""
    node_id: str
    unit: str = ""  # engineering unit, e.g. "degC"
    low: float
    high: float
    # The OPC-UA source whose url, security and user the write uses; may be left out when the
    # site has one OPC-UA source.
    source: str | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, node_id: str) -> str:
        if not re.match(NODE_ID_PATTERN, node_id):
            raise ValueError(f"{node_id[:80]!r} is not an OPC-UA node id with a namespace index; write it as e.g. "
                             "\"ns=2;s=plant.unit.sp.name\" (nsu= namespace URIs are not supported)")
        return node_id

    @model_validator(mode="after")
    def _range(self) -> Setpoint:
        if not (self.low == self.low and self.high == self.high) or self.low >= self.high:  # NaN compares false
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class Unit(Strict):
    id: Identifier
    name: str = ""
    # The process model a simulator runs for this unit (e.g. "bioreactor"); ignored by collectors.
    kind: str | None = None
    # Optional OPC-UA node holding the unit's current batch id; its value is stamped on the unit's samples.
    batch_node_id: str | None = None
    # Optional OPC-UA node holding the unit's current ISA-88 phase: with the batch id node, its
    # changes become batch events (start, phase change, end) stored as phase spans.
    phase_node_id: str | None = None
    # What the unit's batches make and by which recipe (ISA-88); the simulator announces them with
    # its batches (a unit of a known kind without them gets its model's).
    product: str | None = Field(default=None, min_length=1)
    recipe: str | None = Field(default=None, min_length=1)
    tags: list[Tag] = Field(min_length=1)
    # Setpoints an operator may change from the control tower (see Setpoint); none by default.
    setpoints: list[Setpoint] = []

    @model_validator(mode="after")
    def _unique_tags(self) -> Unit:
        _reject_duplicates("tag", [t.id for t in self.tags])
        _reject_duplicates("setpoint", [s.id for s in self.setpoints])
        return self


class Line(Strict):
    id: Identifier
    name: str = ""
    units: list[Unit] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_units(self) -> Line:
        _reject_duplicates("unit", [u.id for u in self.units])
        return self


class Area(Strict):
    id: Identifier
    name: str = ""
    lines: list[Line] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_lines(self) -> Area:
        _reject_duplicates("line", [ln.id for ln in self.lines])
        return self


class Site(Strict):
    id: Identifier
    name: str = ""
    areas: list[Area] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_areas(self) -> Site:
        _reject_duplicates("area", [a.id for a in self.areas])
        return self


class OpcUaSourceConfig(Strict):
    kind: Literal["opcua"]
    name: Identifier
    url: str = Field(pattern=r"^opc\.tcp://")
    publishing_interval_ms: int = Field(default=500, ge=10, le=60_000)
    # Defaults of the tags' monitoring settings (a tag's own `opcua:` settings win): sampling
    # interval (None: half the publishing interval), queue size, and no deadband.
    sampling_interval_ms: float | None = Field(default=None, ge=0, le=3_600_000)
    queue_size: int = Field(default=10, ge=1, le=10_000)
    deadband_abs: float | None = Field(default=None, ge=0)
    deadband_percent: float | None = Field(default=None, ge=0, le=100)
    # Connection loss: no publish response (data or keep-alive) for this long ends the session.
    publish_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    # Accumulate samples into one columnar batch for at most this long, or this many samples.
    flush_interval_ms: int = Field(default=500, ge=10, le=60_000)
    flush_max_samples: int = Field(default=10_000, ge=1)
    # Message security. "None" sends in the clear; any other policy needs a mode. The collector's
    # certificate is created on first run under `certificate_dir`; server certificates are
    # accepted only from `trusted_server_certificates` (both relative to the data directory).
    security_policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] | None = None
    certificate_dir: str = "pki"
    trusted_server_certificates: str = "pki/trusted"
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password

    @field_validator("security_policy", mode="before")
    @classmethod
    def _null_is_none(cls, value: Any) -> Any:
        return "None" if value is None else value  # YAML `null` reads as the policy None

    @model_validator(mode="after")
    def _security_consistent(self) -> OpcUaSourceConfig:
        if self.security_policy != "None" and self.security_mode is None:
            raise ValueError(f"security_policy {self.security_policy} needs security_mode: Sign or SignAndEncrypt")
        if self.security_policy == "None" and self.security_mode is not None:
            raise ValueError(f"security_mode {self.security_mode} needs a security_policy other than None")
        if self.password_env is not None and not self.username:
            raise ValueError("password_env is set but username is not")
        _one_deadband(self.deadband_abs, self.deadband_percent)
        return self


class MqttTlsConfig(Strict):
    """TLS towards the broker. Paths are absolute or relative to the data directory. Without
    `ca_file` the system's trusted CAs check the broker; `cert_file` + `key_file` give a client
    certificate (mutual TLS)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Accept any broker certificate and host name: for a first test only, never in production.
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _cert_and_key(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


class MqttBatchedJsonConfig(Strict):
    """`payload: batched_json`: one message carries many samples in a list, e.g.
    `{"samples": [{"tag": "fill_weight", "ts": 1764410400.5, "value": 2.001, "quality": "good"}, ...]}`.
    Each item's `tag_field` names the tag as its binding's field does (by default the tag id)."""

    samples_field: str = Field(default="samples", min_length=1)  # path to the list (dots go deeper)
    tag_field: str = Field(default="tag", min_length=1)
    value_field: str = Field(default="value", min_length=1)
    timestamp_field: str | None = "ts"  # absent in an item: the message's timestamp_field, else receive time
    quality_field: str | None = "quality"


class MqttSparkplugConfig(Strict):
    """`payload: sparkplug_b`: how a tag's ISA-95 path names its Sparkplug metric, for bindings that
    leave parts out. Templates use {site}, {area}, {line}, {unit}, {tag}; `device: ""` puts metrics
    on the edge node itself."""

    group: str = "{site}"
    edge_node: str = "{area}-{line}"
    device: str = "{unit}"
    metric: str = "{tag}"
    # Request a rebirth (NCMD "Node Control/Rebirth") at most this often per edge node.
    rebirth_min_interval_s: float = Field(default=5.0, ge=0)

    @field_validator("group", "edge_node", "device", "metric")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        return _check_template(template, {"site", "area", "line", "unit", "tag"})


_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def _check_template(template: str, allowed: set[str]) -> str:
    unknown = sorted({name for name in _TEMPLATE_FIELD.findall(template)} - allowed)
    if unknown:
        raise ValueError(f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; use {sorted(allowed)}")
    if "+" in template or "#" in template:
        raise ValueError("wildcards (+, #) are not allowed in a template")
    return template


class MqttSourceConfig(Strict):
    kind: Literal["mqtt"]
    name: Identifier
    url: str = Field(pattern=r"^mqtts?://")
    # MQTT protocol version; "5" adds session expiry. YAML `5` (a number) is read as "5".
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    qos: Literal[0, 1, 2] = 1
    # Persistent session: with clean_start false the broker keeps the subscriptions and queues QoS 1/2
    # messages while the collector is away. Default: persistent when client_id is set, clean otherwise.
    clean_start: bool | None = None
    # MQTT 5: how long the broker keeps the session after a disconnect (0: ends with the connection).
    session_expiry_s: int = Field(default=3600, ge=0, le=4_294_967_295)
    # Subscribe as $share/<group>/<topic>: the collectors of one group split the messages.
    shared_group: Identifier | None = None
    # TLS: on for mqtts:// URLs or when this block is given (default port 8883 then).
    tls: MqttTlsConfig | None = None
    # What a payload is: "json" (one object, tag values at field paths), "batched_json"
    # (a list of samples, see `batched_json`) or "sparkplug_b" (see `sparkplug`).
    payload: Literal["json", "batched_json", "sparkplug_b"] = "json"
    # The topic of a tag whose binding names none, from {prefix} {site} {area} {line} {unit} {tag}.
    topic_template: str | None = None
    topic_prefix: str = ""
    # The field of a tag whose binding names none (None: the tag id).
    value_field: str | None = None
    batched_json: MqttBatchedJsonConfig = MqttBatchedJsonConfig()
    sparkplug: MqttSparkplugConfig = MqttSparkplugConfig()
    # Field paths in the JSON payload for the sample time and batch id (absent: receive time, no batch).
    timestamp_field: str | None = "ts"
    batch_field: str | None = "batch_id"
    # Topic of each unit's batch events (batch_start / phase_change / batch_end JSON objects), from
    # {prefix} {site} {area} {line} {unit}, e.g. "{prefix}/{site}/{area}/{line}/{unit}/_batch"; None: none.
    batch_event_topic: str | None = None
    quality_field: str | None = "quality"
    flush_interval_ms: int = Field(default=500, ge=10, le=60_000)
    flush_max_samples: int = Field(default=10_000, ge=1)
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("topic_template")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        return None if template is None else _check_template(template, {"prefix", "site", "area", "line", "unit", "tag"})

    @field_validator("batch_event_topic")
    @classmethod
    def _batch_event_template(cls, template: str | None) -> str | None:
        return None if template is None else _check_template(template, {"prefix", "site", "area", "line", "unit"})

    @model_validator(mode="after")
    def _consistent(self) -> MqttSourceConfig:
        if self.clean_start is False and self.client_id is None:
            raise ValueError("client_id: a persistent session (clean_start: false) needs a client_id the broker can find it by")
        if self.password_env is not None and not self.username:
            raise ValueError("password_env is set but username is not")
        return self

    @property
    def persistent_session(self) -> bool:
        return self.clean_start is False or (self.clean_start is None and self.client_id is not None)

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("mqtts://") or self.tls is not None


SourceConfig = Annotated[OpcUaSourceConfig | MqttSourceConfig, Field(discriminator="kind")]


class DuckDbHistorianConfig(Strict):
    kind: Literal["duckdb"] = "duckdb"
    # Relative paths are under the data directory.
    path: str = "historian.duckdb"


class InfluxDbHistorianConfig(Strict):
    kind: Literal["influxdb"]
    url: str = Field(pattern=r"^https?://")
    # "v2": influxdb-client's /api/v2/write (InfluxDB 2.x/3.x, 1.8+ compat, VictoriaMetrics);
    # "v1": /write with a database and retention policy (InfluxDB 1.x before 1.8).
    api: Literal["v1", "v2"] = "v2"
    org: str = "-"
    bucket: str = "controltower"  # v1: database[/retention_policy]
    token_env: str | None = "INFLUXDB_TOKEN"  # v1: "user:password" is accepted here too
    token_file: str | None = None
    measurement: Identifier = "process_values"
    timeout_s: float = Field(default=10.0, gt=0)


HistorianConfig = Annotated[DuckDbHistorianConfig | InfluxDbHistorianConfig, Field(discriminator="kind")]


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def _byte_size(value: Any) -> Any:
    """`1073741824`, `"512MiB"`, `"2 GB"` -> bytes; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
        raise ValueError(f"not a size: {value!r} (write bytes, or a number with KiB, MiB, GiB, kB, MB or GB)")
    return value


class StoreAndForwardConfig(Strict):
    """Store and forward (`collector.spool`): every batch is written and fsynced to an on-disk
    queue before the pipeline takes it, and leaves it once the historian has stored it, so an
    outage or a `kill -9` loses nothing. Sizes in bytes or with a unit ("1GiB", "16MiB")."""

    enabled: bool = True
    dir: str = "spool"  # relative paths are under the data directory
    # Bound on the spool's files; when a batch does not fit, `overflow` decides: drop_oldest drops
    # the oldest segment (counted and logged: recent data matters most in a control room), block
    # makes the sources wait for the historian (their own buffers, then the server's, hold the rest).
    max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    segment_bytes: int = Field(default=16 << 20, ge=64 << 10)
    overflow: Literal["drop_oldest", "block"] = "drop_oldest"

    @field_validator("max_bytes", "segment_bytes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return _byte_size(value)

    @model_validator(mode="after")
    def _segments_fit(self) -> StoreAndForwardConfig:
        if self.max_bytes < 4 * self.segment_bytes:
            raise ValueError(
                f"max_bytes ({self.max_bytes}) must be at least 4 x segment_bytes ({self.segment_bytes}), "
                "so that dropping the oldest segment frees at most a quarter of the spool"
            )
        return self


class ZScoreConfig(Strict):
    enabled: bool = True
    window: int = Field(default=120, ge=10)
    threshold: float = Field(default=8.0, gt=0)
    # Floor on the rolling standard deviation, as a fraction of the tag's alarm span, so a
    # near-constant signal does not turn its last decimal into an alert.
    min_std_fraction: float = Field(default=0.01, ge=0)


class LimitsDetectorConfig(Strict):
    enabled: bool = True


class FlatlineConfig(Strict):
    enabled: bool = True
    # Consecutive samples holding the same value (within `tolerance`) before a sensor is called stuck.
    min_run: int = Field(default=30, ge=2)
    tolerance: float = Field(default=0.0, ge=0)


class QualityDetectorConfig(Strict):
    enabled: bool = True
    # Consecutive bad-quality or null samples before a dropout is reported.
    min_run: int = Field(default=10, ge=1)


class RateOfChangeConfig(Strict):
    # Checks the tags whose limits set `rate_of_change`; on by default (only those tags are scored).
    enabled: bool = True


class NelsonConfig(Strict):
    # SPC run rules against the centre line and sigma learned from normal history (`fit`): off by
    # default, since without a fitted history they have nothing to compare with.
    enabled: bool = False
    rules: list[Literal[1, 2, 3, 4, 5, 6, 7, 8]] = [1, 2, 3, 4, 5, 6, 7, 8]
    # Rule 2's run on one side of the centre: 9 (Nelson), 8 (Western Electric rule 4).
    same_side_run: int = Field(default=9, ge=2)


class EwmaConfig(Strict):
    enabled: bool = False  # needs a fitted centre and sigma, like the Nelson rules
    lam: float = Field(default=0.2, gt=0, le=1)  # weight of the newest sample
    L: float = Field(default=3.0, gt=0)  # limit width, in sigmas of the EWMA statistic
    exact_limits: bool = True  # time-varying limits from the first sample (else asymptotic)


class CusumConfig(Strict):
    enabled: bool = False  # needs a fitted centre and sigma, like the Nelson rules
    k: float = Field(default=0.5, ge=0)  # allowance, in sigmas
    h: float = Field(default=5.0, gt=0)  # decision interval, in sigmas


class RobustZScoreConfig(Strict):
    # Rolling median / MAD z-score: off by default (the mean / std z-score is on).
    enabled: bool = False
    window: int = Field(default=120, ge=10)
    threshold: float = Field(default=8.0, gt=0)
    min_std_fraction: float = Field(default=0.01, ge=0)


class StaleConfig(Strict):
    enabled: bool = True
    # A tag with no sample for this long is stale, unless its limits set `stale_after_s`.
    after_s: float = Field(default=60.0, gt=0)


class ModelsConfig(Strict):
    """Stored multivariate models (`controltower model fit`): the live engine loads, per unit and
    kind (pca, dpca, iforest, knn, wpca, wknn, golden, spc), the newest version under `dir`, or the version
    `pin` names: `pin: {lyon.usp.bio1.br101: {pca: 3}}`. Every `reload_s` seconds (0: never) it
    looks for a newer version of the kinds not pinned and swaps it in without a restart
    (`analytics.model_reload`)."""

    enabled: bool = True
    dir: str = "models"  # relative paths are under the data directory
    pin: dict[str, dict[Literal["pca", "dpca", "iforest", "knn", "wpca", "wknn", "golden", "spc"], int]] = {}
    reload_s: float = Field(default=10.0, ge=0)
    # Consecutive rows over the limit before an alert is raised (the limit alone lets about
    # alpha of normal rows through), and the score (1 = at the limit) from which it is an alarm.
    on_delay_rows: int = Field(default=5, ge=1)
    alarm_score: float = Field(default=3.0, gt=1.0)


class DetectorsConfig(Strict):
    limits: LimitsDetectorConfig = LimitsDetectorConfig()
    zscore: ZScoreConfig = ZScoreConfig()
    flatline: FlatlineConfig = FlatlineConfig()
    quality: QualityDetectorConfig = QualityDetectorConfig()
    rate_of_change: RateOfChangeConfig = RateOfChangeConfig()
    nelson: NelsonConfig = NelsonConfig()
    ewma: EwmaConfig = EwmaConfig()
    cusum: CusumConfig = CusumConfig()
    robust_zscore: RobustZScoreConfig = RobustZScoreConfig()
    stale: StaleConfig = StaleConfig()
    models: ModelsConfig = ModelsConfig()


class AuthConfig(Strict):
    """Who may use the screen and the API (`controltower.auth`, docs/security.md). On by default;
    `enabled: false` (the demo site) serves everyone, and only on a loopback address."""

    enabled: bool = True
    # The users file (`controltower users add ...`); relative paths are under the data directory.
    users_file: str = "users.yaml"
    # A session ends after this long without a request, and at the latest max_age after login.
    idle_timeout_s: float = Field(default=1800.0, gt=0)
    max_age_s: float = Field(default=12 * 3600.0, gt=0)
    # Mark the session cookie Secure: set it when the screen is reached over HTTPS (a TLS reverse
    # proxy); a Secure cookie is not sent back over plain HTTP, so login would not stick.
    secure_cookies: bool = False
    # A user name or a client address is locked for lockout_s after max_failed_logins failures
    # within lockout_s.
    max_failed_logins: int = Field(default=5, ge=1, le=100)
    lockout_s: float = Field(default=900.0, gt=0)
    # /api/health and /metrics answer without login (load balancers, Prometheus).
    public_probes: bool = True
    # Reverse proxies in front of the screen (a TLS terminator: 1) whose X-Forwarded-For, -Proto
    # and -Host are believed: the client address for the login lockout and the audit, the host for
    # the origin check. 0 (the default) believes none, right when the screen is reached directly.
    proxy_hops: int = Field(default=0, ge=0, le=5)


class ScreenConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8050, ge=1, le=65535)
    refresh_ms: int = Field(default=1000, ge=200, le=60_000)
    # A line with no sample for this long is shown as stale.
    stale_after_s: float = Field(default=10.0, gt=0)
    trend_window_s: float = Field(default=600.0, gt=0)
    auth: AuthConfig = AuthConfig()

    @model_validator(mode="after")
    def _no_open_screen_on_the_network(self) -> ScreenConfig:
        if not self.auth.enabled and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"auth.enabled is false but host is {self.host!r}: without authentication the screen may only "
                f"listen on a loopback address ({', '.join(LOOPBACK_HOSTS)}); enable auth or bind 127.0.0.1"
            )
        return self


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


SENSOR_FAULT_KINDS = ("spike", "drift", "stuck", "bias", "noise", "dropout", "oscillation")
# Process faults, and the unit kinds whose simulator models have them (each model's
# PROCESS_FAULTS in simulators/units/<kind>.py; tests/simulators checks the two agree).
PROCESS_FAULT_UNIT_KINDS: dict[str, tuple[str, ...]] = {
    "cooling_failure": ("bioreactor",),
    "feed_pump_failure": ("bioreactor",),
    "contamination": ("bioreactor",),
    "vacuum_leak": ("freeze_dryer",),
}


class FaultConfig(Strict):
    """A fault the simulator injects: `start_s`/`duration_s` in simulated seconds from plant start.

    A sensor fault (spike ... oscillation) names its `tag` (full id site.area.line.unit.tag);
    a process fault (cooling_failure, feed_pump_failure, contamination, vacuum_leak) names its
    `unit` (site.area.line.unit), whose kind must have it (PROCESS_FAULT_UNIT_KINDS)."""

    tag: str | None = None
    unit: str | None = None
    kind: Literal[
        "spike",
        "drift",
        "stuck",
        "bias",
        "noise",
        "dropout",
        "oscillation",
        "cooling_failure",
        "feed_pump_failure",
        "contamination",
        "vacuum_leak",
    ]
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    # spike, bias: offset added; drift: offset reached at the end (linear); noise: standard
    # deviation added; oscillation: amplitude; stuck, dropout: ignored. Process faults: the
    # severity, a fraction in (0, 1] (simulators/faults.py says what 1 means for each).
    magnitude: float = 0.0
    # oscillation: period in simulated seconds.
    period_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _target_fits_kind(self) -> FaultConfig:
        process = self.kind in PROCESS_FAULT_UNIT_KINDS
        if self.tag is not None and self.unit is not None:
            raise ValueError("give 'tag' (a sensor fault) or 'unit' (a process fault), not both")
        if process and self.unit is None:
            raise ValueError(
                f"'unit': {self.kind} is a process fault; name its unit (site.area.line.unit) under 'unit'"
                + (", not 'tag'" if self.tag is not None else "")
            )
        if not process and self.tag is None:
            raise ValueError(
                f"'tag': {self.kind} is a sensor fault; name its tag (site.area.line.unit.tag) under 'tag'"
                + (", not 'unit'" if self.unit is not None else "")
            )
        if process and not 0.0 < self.magnitude <= 1.0:
            raise ValueError(
                f"'magnitude': a process fault's magnitude is its severity, a fraction in (0, 1]; got {self.magnitude:g}"
            )
        return self

    @property
    def target(self) -> str:
        """The tag (sensor fault) or the unit path (process fault)."""
        target = self.unit if self.kind in PROCESS_FAULT_UNIT_KINDS else self.tag
        assert target is not None  # checked by the validator
        return target


class SimulationConfig(Strict):
    """How `controltower simulate` serves this site. Ignored by collectors."""

    seed: int = 42
    speed: float = Field(default=1.0, gt=0, le=1000)
    tick_ms: int = Field(default=500, ge=10, le=60_000)
    opcua_url: str | None = "opc.tcp://127.0.0.1:4840/controltower/sim"
    mqtt_url: str | None = "mqtt://127.0.0.1:1883"
    mqtt_topic_prefix: str = "plant"
    # How the simulator publishes over MQTT (a collector source reads each with the payload in brackets):
    #   json_unit     one JSON object per unit per tick, a field per tag, on {prefix}/{site}/{area}/{line}/{unit}
    #                 (payload: json, topic_template {prefix}/{site}/{area}/{line}/{unit})
    #   json_tag      one JSON object per tag per tick, {"ts", "value", "quality", "batch_id"}, on .../{unit}/{tag}
    #                 (payload: json, topic_template {prefix}/{site}/{area}/{line}/{unit}/{tag}, value_field: value)
    #   batched_json  one message per unit per tick, {"ts", "batch_id", "samples": [{tag, value, ts, quality}]}
    #                 (payload: batched_json, topic_template {prefix}/{site}/{area}/{line}/{unit})
    #   sparkplug_b   Sparkplug B: group {site}, edge node {area}-{line}, device {unit} (payload: sparkplug_b)
    mqtt_payload: Literal["json_unit", "json_tag", "batched_json", "sparkplug_b"] = "json_unit"
    # Per line ("site.area.line") the payload, when it differs from mqtt_payload.
    mqtt_payloads: dict[str, Literal["json_unit", "json_tag", "batched_json", "sparkplug_b"]] = {}
    # Every fault injected, appended as CSV; a path ending in .parquet also writes Parquet (with
    # the CSV beside it). Columns and formats: simulators/README.md.
    ground_truth_path: str = "ground_truth.csv"
    faults: list[FaultConfig] = []


class UnsConfig(Strict):
    """The unified namespace on MQTT between `controltower collect`, `analyse` and `serve`
    (docs/uns.md): where the broker is and how values are partitioned. Off for `controltower run`."""

    enabled: bool = False
    # mqtts:// (default port 8883) or a `tls` block: TLS to the broker, as for an MQTT source.
    url: str = Field(default="mqtt://127.0.0.1:1883", pattern=r"^mqtts?://")
    # Topics are {root}/v1/...; a root of its own per plant network keeps two towers apart.
    root: str = Field(default="ct", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    # Units are hashed into this many partitions; analytics workers split the partitions among
    # themselves, so a unit's values always reach one worker. Changing it re-shuffles the units.
    partitions: int = Field(default=16, ge=1, le=1024)
    qos: Literal[0, 1] = 1
    # Batches waiting for the broker per collector; beyond it the oldest is dropped (and counted):
    # the historian has them, the live path prefers fresh values to a stall.
    queue_batches: int = Field(default=1000, ge=1, le=1_000_000)
    # A worker that stops answering is taken out after 1.5 keep-alives: the failover delay.
    keepalive_s: int = Field(default=5, ge=2, le=600)
    client_id_prefix: str = Field(default="controltower", min_length=1, max_length=64)
    tls: MqttTlsConfig | None = None  # CA, client certificate + key; relative paths under the data directory
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password
    password_file: str | None = None  # or a file holding it (a Docker/Kubernetes secret), stripped
    # A worker taking over a partition first runs the detectors over this much of its units'
    # history (from the historian), so their windows are full before live values are scored. 0: off.
    warmup_s: float = Field(default=300.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _login(self) -> UnsConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if (self.password_env is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password (password_env or password_file) needs a username")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("mqtts://") or self.tls is not None


class SiteConfig(Strict):
    """A whole site file: the ISA-95 hierarchy and how the control tower runs for it."""

    enterprise: str = Field(min_length=1)
    sites: list[Site] = Field(min_length=1)
    sources: list[SourceConfig] = []
    historian: HistorianConfig = DuckDbHistorianConfig()
    detectors: DetectorsConfig = DetectorsConfig()
    screen: ScreenConfig = ScreenConfig()
    simulation: SimulationConfig | None = None
    spool: StoreAndForwardConfig = StoreAndForwardConfig()
    uns: UnsConfig = UnsConfig()
    data_dir: str = "data"

    @model_validator(mode="after")
    def _consistent(self) -> SiteConfig:
        _reject_duplicates("site", [s.id for s in self.sites])
        _reject_duplicates("source", [s.name for s in self.sources])
        by_name = {s.name: s for s in self.sources}
        for path, tag in self.iter_tags():
            if tag.source is not None:
                src = by_name.get(tag.source)
                if src is None:
                    raise ValueError(f"tag {path}: source {tag.source!r} is not among sources {sorted(by_name)}")
                if src.kind != tag.binding_kind:
                    raise ValueError(
                        f"tag {path}: source {tag.source!r} is {src.kind} but the tag has a {tag.binding_kind} binding"
                    )
            elif self.sources:
                candidates = [s.name for s in self.sources if s.kind == tag.binding_kind]
                if len(candidates) != 1:
                    raise ValueError(
                        f"tag {path}: its {tag.binding_kind} binding needs 'source' to name one of "
                        f"{candidates or 'the sources (there is no ' + tag.binding_kind + ' source)'}"
                    )
        for key, path, setpoint in self._iter_setpoint_keys():
            if self.sources:  # as for tags: a file without sources (the simulator's alone) binds nothing
                self._setpoint_source(setpoint, f"{key}.source", path)
        known = {p for p, _ in self.iter_tags()}
        if self.simulation is not None:
            unit_kinds = {
                f"{s.id}.{a.id}.{ln.id}.{u.id}": u.kind for s in self.sites for a in s.areas for ln in a.lines for u in ln.units
            }
            for i, fault in enumerate(self.simulation.faults):
                if fault.unit is None:
                    if fault.tag not in known:
                        raise ValueError(f"simulation.faults[{i}].tag: simulation fault on unknown tag {fault.tag!r}")
                    continue
                if fault.unit not in unit_kinds:
                    raise ValueError(
                        f"simulation.faults[{i}].unit: simulation fault on unknown unit {fault.unit!r} "
                        "(a unit path site.area.line.unit)"
                    )
                kinds = PROCESS_FAULT_UNIT_KINDS[fault.kind]
                if unit_kinds[fault.unit] not in kinds:
                    raise ValueError(
                        f"simulation.faults[{i}].kind: unit {fault.unit!r} is of kind {unit_kinds[fault.unit]!r}, "
                        f"which has no {fault.kind} process fault (units of kind {', '.join(kinds)} have it)"
                    )
            lines = {f"{s.id}.{a.id}.{ln.id}" for s in self.sites for a in s.areas for ln in a.lines}
            for line in self.simulation.mqtt_payloads:
                if line not in lines:
                    raise ValueError(
                        f"simulation.mqtt_payloads: {line!r} is not a line of this site (site.area.line); "
                        f"lines: {sorted(lines)}"
                    )
        return self

    def iter_tags(self) -> Iterator[tuple[str, Tag]]:
        """Every tag with its full id `site.area.line.unit.tag`."""
        for site in self.sites:
            for area in site.areas:
                for line in area.lines:
                    for unit in line.units:
                        for tag in unit.tags:
                            yield f"{site.id}.{area.id}.{line.id}.{unit.id}.{tag.id}", tag

    def _iter_setpoint_keys(self) -> Iterator[tuple[str, str, Setpoint]]:
        """(key path in the file, full id site.area.line.unit.setpoint, setpoint) of every setpoint."""
        for i, site in enumerate(self.sites):
            for j, area in enumerate(site.areas):
                for k, line in enumerate(area.lines):
                    for m, unit in enumerate(line.units):
                        for n, setpoint in enumerate(unit.setpoints):
                            yield (f"sites[{i}].areas[{j}].lines[{k}].units[{m}].setpoints[{n}]",
                                   f"{site.id}.{area.id}.{line.id}.{unit.id}.{setpoint.id}", setpoint)

    def unit_setpoints(self) -> dict[str, list[Setpoint]]:
        """The setpoints of every unit that has some, by unit path site.area.line.unit."""
        found: dict[str, list[Setpoint]] = {}
        for _, path, setpoint in self._iter_setpoint_keys():
            found.setdefault(path.rsplit(".", 1)[0], []).append(setpoint)
        return found

    def setpoint_source(self, setpoint: Setpoint) -> OpcUaSourceConfig:
        """The OPC-UA source a setpoint is written through (checked when the file was read)."""
        return self._setpoint_source(setpoint, "source", setpoint.id)

    def _setpoint_source(self, setpoint: Setpoint, key: str, path: str) -> OpcUaSourceConfig:
        opcua = [s for s in self.sources if s.kind == "opcua"]
        if setpoint.source is not None:
            found = next((s for s in self.sources if s.name == setpoint.source), None)
            if found is None:
                raise ValueError(f"{key}: setpoint {path}: source {setpoint.source!r} is not among sources "
                                 f"{sorted(s.name for s in self.sources)}")
            if found.kind != "opcua":
                raise ValueError(f"{key}: setpoint {path}: source {setpoint.source!r} is {found.kind}; "
                                 "setpoints are written over OPC-UA, name an opcua source")
            return found
        if len(opcua) != 1:
            raise ValueError(f"{key}: setpoint {path}: name the OPC-UA source to write through, one of "
                             f"{[s.name for s in opcua] or '(there is no opcua source)'}")
        return opcua[0]

    def tag_table(self) -> list[TagInfo]:
        """One flat record per tag: its full id, ISA-95 path, limits and binding."""
        rows: list[TagInfo] = []
        for site in self.sites:
            for area in site.areas:
                for line in area.lines:
                    for unit in line.units:
                        for tag in unit.tags:
                            rows.append(
                                TagInfo(
                                    tag_id=f"{site.id}.{area.id}.{line.id}.{unit.id}.{tag.id}",
                                    site=site.id,
                                    area=area.id,
                                    line=line.id,
                                    unit=unit.id,
                                    tag=tag,
                                    source=tag.source or self._only_source(tag.binding_kind),
                                )
                            )
        return rows

    def _only_source(self, kind: str) -> str | None:
        names = [s.name for s in self.sources if s.kind == kind]
        return names[0] if len(names) == 1 else None

    def resolve_path(self, path: str, data_dir: Path | None = None) -> Path:
        """A path from the config: absolute as is, relative ones under the data directory."""
        p = Path(path)
        return p if p.is_absolute() else (data_dir or Path(self.data_dir)) / p


class TagInfo(BaseModel):
    """A tag with its place in the hierarchy, as the collectors, detectors and screen see it."""

    model_config = ConfigDict(frozen=True)

    tag_id: str
    site: str
    area: str
    line: str
    unit: str
    tag: Tag
    source: str | None

    @property
    def line_id(self) -> str:
        return f"{self.site}.{self.area}.{self.line}"

    @property
    def unit_id(self) -> str:
        return f"{self.site}.{self.area}.{self.line}.{self.unit}"


class SiteConfigError(Exception):
    """A site file that cannot be used; the message names the file, the key path and the reason."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {key}: {reason}" if key else f"{self.path}: {reason}" for key, reason in problems]
        super().__init__("\n".join(lines))


def _reject_duplicates(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"duplicate {what} id {i!r}")
        seen.add(i)


def _key_path(loc: tuple[Any, ...], data: Any) -> str:
    """`sites[0].areas[1].lines[0].units[2].tags[0].limits` from a pydantic error location."""
    key = ""
    node = data
    for item in loc:
        if isinstance(item, int):
            key += f"[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
        elif isinstance(node, dict) and item not in node and "kind" in node:
            # A discriminated union adds the chosen kind ("opcua") as a step: it is not a key in the file.
            continue
        else:
            key += f".{item}" if key else str(item)
            node = node.get(item) if isinstance(node, dict) else None
    return key


def parse_site_config(data: Any, path: str | Path = "<config>") -> SiteConfig:
    if not isinstance(data, dict):
        raise SiteConfigError(path, [("", f"the top level must be a mapping, found {type(data).__name__}")])
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            reason = err["msg"]
            if err["type"] == "extra_forbidden":
                reason = "unknown key (check its spelling and place)"
            elif err["type"] == "missing":
                reason = "required key is missing"
            elif err.get("input") is not None and err["type"] not in ("value_error", "assertion_error"):
                shown = repr(err["input"]) if not isinstance(err["input"], (dict, list)) else type(err["input"]).__name__
                reason = f"{reason} (got {shown[:80]})"
            problems.append((_key_path(tuple(err["loc"]), data), reason.removeprefix("Value error, ")))
        raise SiteConfigError(path, problems) from None


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate a site YAML file; raise SiteConfigError naming file, key and reason."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SiteConfigError(path, [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SiteConfigError(path, [("", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line}")]) from None
    text = expand_environment(text, path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SiteConfigError(path, [("", f"not valid YAML at {where}: {problem}")]) from None
    except RecursionError:  # found by fuzzing: "[[[[..." deeper than Python's recursion limit
        raise SiteConfigError(path, [("", "not a usable site file: lists or mappings nested too deeply")]) from None
    return parse_site_config(data, path)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(text: str, path: str | Path = "<config>", environ: dict[str, str] | None = None) -> str:
    """Replace `${NAME}` and `${NAME:-default}` with environment values, so one file serves
    several deployments (docker-compose sets them). A `${NAME}` with no value and no default is
    an error naming the variable and its line. Values are never echoed back in errors (they may be secrets)."""
    env = os.environ if environ is None else environ
    problems: list[tuple[str, str]] = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("#"):
            continue

        def substitute(match: re.Match[str], number: int = number) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(("", f"line {number}: environment variable {name} is not set and has no default (${{{name}:-...}})"))
            return ""

        lines[number - 1] = _ENV_REF.sub(substitute, line)
    expanded = "\n".join(lines)
    if problems:
        raise SiteConfigError(path, problems)
    return expanded


def site_json_schema() -> dict[str, Any]:
    return SiteConfig.model_json_schema()


_TAG_ID_RE = re.compile(r"^[^.]+\.[^.]+\.[^.]+\.[^.]+\.[^.]+$")


def is_full_tag_id(text: str) -> bool:
    return bool(_TAG_ID_RE.match(text))
