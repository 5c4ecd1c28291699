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


class OpcUaBinding(Strict):
    """Where an OPC-UA source finds the tag: a node id such as `ns=2;s=lyon.usp.bio1.br101.temperature`."""

    node_id: str = Field(min_length=1)


class MqttBinding(Strict):
    """Where an MQTT source finds the tag: a topic and a field path in its JSON payload (dots go deeper)."""

    topic: str = Field(min_length=1)
    field: str = Field(min_length=1)

    @field_validator("topic")
    @classmethod
    def _no_wildcards(cls, topic: str) -> str:
        if "+" in topic or "#" in topic:
            raise ValueError("a tag binding names one topic; wildcards (+, #) are not allowed here")
        return topic


class Tag(Strict):
    id: Identifier
    description: str = ""
    unit: str = ""  # engineering unit, e.g. "degC", "bar", "g"
    data_type: DataType = DataType.FLOAT
    limits: Limits = Limits()
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


class Unit(Strict):
    id: Identifier
    name: str = ""
    # The process model a simulator runs for this unit (e.g. "bioreactor"); ignored by collectors.
    kind: str | None = None
    # Optional OPC-UA node holding the unit's current batch id; its value is stamped on the unit's samples.
    batch_node_id: str | None = None
    tags: list[Tag] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_tags(self) -> Unit:
        _reject_duplicates("tag", [t.id for t in self.tags])
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
        return self


class MqttSourceConfig(Strict):
    kind: Literal["mqtt"]
    name: Identifier
    url: str = Field(pattern=r"^mqtts?://")
    client_id: str | None = None
    qos: Literal[0, 1, 2] = 1
    # Field paths in the JSON payload for the sample time and batch id (absent: receive time, no batch).
    timestamp_field: str | None = "ts"
    batch_field: str | None = "batch_id"
    quality_field: str | None = "quality"
    flush_interval_ms: int = Field(default=500, ge=10, le=60_000)
    flush_max_samples: int = Field(default=10_000, ge=1)
    username: str | None = None
    password_env: str | None = None


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


class DetectorsConfig(Strict):
    limits: LimitsDetectorConfig = LimitsDetectorConfig()
    zscore: ZScoreConfig = ZScoreConfig()
    flatline: FlatlineConfig = FlatlineConfig()


class ScreenConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8050, ge=1, le=65535)
    refresh_ms: int = Field(default=1000, ge=200, le=60_000)
    # A line with no sample for this long is shown as stale.
    stale_after_s: float = Field(default=10.0, gt=0)
    trend_window_s: float = Field(default=600.0, gt=0)


class FaultConfig(Strict):
    """A fault the simulator injects: `start_s`/`duration_s` in simulated seconds from plant start."""

    tag: str
    kind: Literal["spike", "drift", "stuck"]
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    # spike: offset added; drift: offset reached at the end (linear); stuck: ignored.
    magnitude: float = 0.0


class SimulationConfig(Strict):
    """How `controltower simulate` serves this site. Ignored by collectors."""

    seed: int = 42
    speed: float = Field(default=1.0, gt=0, le=1000)
    tick_ms: int = Field(default=500, ge=10, le=60_000)
    opcua_url: str | None = "opc.tcp://127.0.0.1:4840/controltower/sim"
    mqtt_url: str | None = "mqtt://127.0.0.1:1883"
    mqtt_topic_prefix: str = "plant"
    ground_truth_path: str = "ground_truth.csv"
    faults: list[FaultConfig] = []


class SiteConfig(Strict):
    """A whole site file: the ISA-95 hierarchy and how the control tower runs for it."""

    enterprise: str = Field(min_length=1)
    sites: list[Site] = Field(min_length=1)
    sources: list[SourceConfig] = []
    historian: HistorianConfig = DuckDbHistorianConfig()
    detectors: DetectorsConfig = DetectorsConfig()
    screen: ScreenConfig = ScreenConfig()
    simulation: SimulationConfig | None = None
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
        known = {p for p, _ in self.iter_tags()}
        if self.simulation is not None:
            for fault in self.simulation.faults:
                if fault.tag not in known:
                    raise ValueError(f"simulation fault on unknown tag {fault.tag!r}")
        return self

    def iter_tags(self) -> Iterator[tuple[str, Tag]]:
        """Every tag with its full id `site.area.line.unit.tag`."""
        for site in self.sites:
            for area in site.areas:
                for line in area.lines:
                    for unit in line.units:
                        for tag in unit.tags:
                            yield f"{site.id}.{area.id}.{line.id}.{unit.id}.{tag.id}", tag

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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteConfigError(path, [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    text = expand_environment(text, path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SiteConfigError(path, [("", f"not valid YAML at {where}: {problem}")]) from None
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
