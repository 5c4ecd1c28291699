"""OPC-UA source: subscriptions (not polling) on an OPC-UA server with asyncua.

The subscription callback only appends the notification's fields to column lists; a flush
task turns them into one sample batch (`controltower.samples`) every `flush_interval_ms` or
`flush_max_samples`. One supervisor loop owns the connection: it connects, subscribes, watches
the session and reconnects with backoff when the server goes away.

Monitoring. Each tag's monitored item gets its sampling interval, queue size and deadband from
its binding, else from the source (`OpcUaMonitoring`); tags with equal settings share one
CreateMonitoredItems request. Without a deadband the trigger is StatusValueTimestamp (a value
repeated with a new source timestamp is a new sample: a stuck sensor shows as a flatline, not
silence); with one it is StatusValue, since a deadband exists to suppress small changes. A
percent deadband needs the node's EURange property: a tag whose node has none is not
subscribed, and `health.last_error` says which and why.

Connection loss is detected by asyncua's watchdog (a read of the server state every second),
by the transport closing, and by publish silence: the subscription asks for a keep-alive at
least every third of `publish_timeout_s`, and no publish response for `publish_timeout_s` ends
the session. Then every tag of the source gets a sample with value null and quality bad,
dated the moment of loss (the sample schema has no status column: bad + null means "no value
known", as for a Sparkplug death), the tags count as stale, and a gap is opened; once a new
session has its subscriptions again the gap is closed and written to the gap log
(`collector.gaps`, `<data_dir>/gaps.jsonl`) and counted in `health` (gaps, gap_seconds).

Batch events: a unit's `batch_node_id` (and `phase_node_id`) variables are subscribed as well;
their value changes become batch events (`collector.sources.batch_state`: observed,
batch_start, phase_change, batch_end), handed to `on_batch_events` at each flush when the
pipeline set it. The batch id also stamps the unit's samples.

Security (see `collector.sources.opcua_security`): with a `security_policy` the collector
creates its certificate on first run, refuses server certificates that are not in its trust
list (saving them under `<certificate_dir>/rejected/` and saying how to trust them), and
authenticates with `username` and the password from `password_env`. Why a connection failed
is in `health.last_error`; the password never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from asyncua import ua

from collector.gaps import Gap, GapLog
from collector.sources import Emit, SourceHealth
from collector.sources.batch_state import BatchStateTracker
from collector.sources.opcua_security import ClientSecurity, Pki, connect, negotiated_security, secure_client
from collector.sources.supervisor import supervise
from controltower.samples import QUALITY_DTYPE, quality_expr, samples_frame, tag_paths_frame
from controltower.site import OpcUaMonitoring, OpcUaSourceConfig, TagInfo

log = logging.getLogger(__name__)

# The status a stale sample stands for (quality bad): the connection to the server is lost.
STALE_STATUS = ua.StatusCodes.BadNoCommunication
# How long closing a session may take when the server is gone.
DISCONNECT_TIMEOUT_S = 2.0


# (sampling interval ms, queue size, deadband type, deadband value): the settings of one monitored item.
Monitoring = tuple[float, int, int, float]


def monitoring_of(config: OpcUaSourceConfig, binding: OpcUaMonitoring | None) -> Monitoring:
    """A tag's effective monitoring settings: its binding's, else the source's."""
    def pick(key: str):
        own = getattr(binding, key, None) if binding is not None else None
        return own if own is not None else getattr(config, key)

    sampling = pick("sampling_interval_ms")
    if sampling is None:
        sampling = config.publishing_interval_ms / 2
    own_deadband = binding is not None and (binding.deadband_abs is not None or binding.deadband_percent is not None)
    where = binding if own_deadband else config
    if where.deadband_abs is not None:
        deadband = (ua.DeadbandType.Absolute, where.deadband_abs)
    elif where.deadband_percent is not None:
        deadband = (ua.DeadbandType.Percent, where.deadband_percent)
    else:
        deadband = (ua.DeadbandType.None_, 0.0)
    return (float(sampling), int(pick("queue_size")), int(deadband[0]), float(deadband[1]))


def data_change_filter(deadband_type: int, deadband_value: float) -> ua.DataChangeFilter:
    # Without a deadband, a new source timestamp alone is a change (see the module doc).
    trigger = ua.DataChangeTrigger.StatusValueTimestamp if deadband_type == ua.DeadbandType.None_ else ua.DataChangeTrigger.StatusValue
    return ua.DataChangeFilter(Trigger=trigger, DeadbandType=deadband_type, DeadbandValue=deadband_value)


class _ColumnBuffer:
    """Column lists that subscription callbacks append to; swapped out whole at each flush."""

    __slots__ = ("server_ts", "status", "tag_id", "ts", "value")

    def __init__(self) -> None:
        self.ts: list[datetime | None] = []
        self.server_ts: list[datetime | None] = []
        self.tag_id: list[str] = []
        self.value: list[Any] = []
        self.status: list[int] = []

    def __len__(self) -> int:
        return len(self.tag_id)


class _SubscriptionHandler:
    """asyncua calls `datachange_notification` once per monitored item change: append, nothing else."""

    def __init__(self, source: OpcUaSource):
        self._source = source

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self._source._on_change(node.nodeid, val, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        self._source.health.last_error = f"subscription status changed: {status.Status}"


class OpcUaSource:
    """Collects the tags bound to one OPC-UA endpoint."""

    def __init__(
        self,
        config: OpcUaSourceConfig,
        tags: list[TagInfo],
        *,
        data_dir: Path | None = None,
        gap_log: GapLog | None = None,
    ):
        """`data_dir` anchors the relative `certificate_dir` and `trusted_server_certificates`
        (default `data`, the site file's default); gaps go to `gap_log` (default
        `<data_dir>/gaps.jsonl`). ValueError if `password_env` names an unset variable."""
        self.config = config
        self.name = config.name
        self.health = SourceHealth(name=config.name, kind="opcua")
        data_dir = Path(data_dir) if data_dir is not None else Path("data")
        self.security = _client_security(config, data_dir)
        self.gap_log = gap_log if gap_log is not None else GapLog(data_dir / "gaps.jsonl")
        self._gap_reason: str | None = None
        # (policy, mode) of the current session's secure channel, e.g. ("Basic256Sha256", "SignAndEncrypt").
        self.session_security: tuple[str, str] | None = None
        self._tags = [t for t in tags if t.source == config.name and t.tag.opcua is not None]
        self._tag_by_node = {ua.NodeId.from_string(t.tag.opcua.node_id): t.tag_id for t in self._tags}
        self._monitoring = {
            ua.NodeId.from_string(t.tag.opcua.node_id): monitoring_of(config, t.tag.opcua) for t in self._tags
        }
        # node id -> tag id of the tags subscribed in the current session (those that go stale on loss).
        self._subscribed: dict[ua.NodeId, str] = {}
        self._subscribed_at = 0.0  # time.monotonic() of the last subscription, for publish silence
        self._tag_paths = tag_paths_frame(self._tags)
        # Batch id nodes, per unit, from the site config's `batch_node_id`.
        self._unit_by_batch_node: dict[ua.NodeId, str] = {}
        self._batch_by_unit: dict[str, str | None] = {}
        # Phase nodes, per unit (`phase_node_id`), and the batch events both make.
        self._unit_by_phase_node: dict[ua.NodeId, str] = {}
        self._batch_state = BatchStateTracker()
        self.on_batch_events = None  # set by the pipeline: an async callable taking an event frame
        self._buffer = _ColumnBuffer()
        self._flush_now = asyncio.Event()

    def bind_batch_nodes(self, batch_nodes: dict[str, str], phase_nodes: dict[str, str] | None = None) -> None:
        """unit_id -> node id of the unit's batch id variable, and of its phase variable (only
        units this source collects)."""
        units = {t.unit_id for t in self._tags}
        for unit_id, node_id in batch_nodes.items():
            if unit_id in units:
                self._unit_by_batch_node[ua.NodeId.from_string(node_id)] = unit_id
        for unit_id, node_id in (phase_nodes or {}).items():
            if unit_id in units:
                self._unit_by_phase_node[ua.NodeId.from_string(node_id)] = unit_id

    # -- callback side: no I/O, no awaits ------------------------------------------------
    def _on_change(self, node_id: ua.NodeId, value: Any, dv: ua.DataValue) -> None:
        unit_id = self._unit_by_batch_node.get(node_id)
        if unit_id is not None:
            self._batch_by_unit[unit_id] = str(value) if value not in (None, "") else None
            self._batch_state.note(unit_id, "batch_id", value, dv.SourceTimestamp or dv.ServerTimestamp or datetime.now(UTC))
            return
        unit_id = self._unit_by_phase_node.get(node_id)
        if unit_id is not None:
            self._batch_state.note(unit_id, "phase", value, dv.SourceTimestamp or dv.ServerTimestamp or datetime.now(UTC))
            return
        tag_id = self._tag_by_node.get(node_id)
        if tag_id is None:
            return
        buf = self._buffer
        # A value without timestamps (e.g. BadWaitingForInitialData) is dated when it arrived.
        buf.ts.append(dv.SourceTimestamp or dv.ServerTimestamp or datetime.now(UTC))
        buf.server_ts.append(dv.ServerTimestamp)
        buf.tag_id.append(tag_id)
        buf.value.append(value if isinstance(value, (int, float)) else None)
        buf.status.append(dv.StatusCode.value if dv.StatusCode is not None else 0)
        if len(buf) >= self.config.flush_max_samples:
            self._flush_now.set()

    # -- batch side -------------------------------------------------------------------------
    def _take_batch(self) -> pl.DataFrame | None:
        buf, self._buffer = self._buffer, _ColumnBuffer()
        if not buf:
            return None
        frame = samples_frame(
            ts=buf.ts,
            server_ts=buf.server_ts,
            tag_id=buf.tag_id,
            value=buf.value,
            tag_paths=self._tag_paths,
        )
        status = pl.Series("status", buf.status, pl.UInt32)
        batches = pl.DataFrame(
            {"unit_id": list(self._batch_by_unit), "current_batch": list(self._batch_by_unit.values())},
            schema={"unit_id": pl.String, "current_batch": pl.String},
        )
        return (
            frame.with_columns(
                quality=pl.when(pl.col("value").is_null())
                .then(pl.lit("bad", QUALITY_DTYPE))
                .otherwise(quality_expr(pl.lit(status))),
            )
            .with_columns(unit_id=pl.concat_str("site", "area", "line", "unit", separator="."))
            .join(batches, on="unit_id", how="left", maintain_order="left")
            .with_columns(batch_id=pl.coalesce("batch_id", "current_batch"))
            .drop("unit_id", "current_batch")
        )

    async def _flush(self, emit: Emit, *, everything: bool = False) -> None:
        batch = self._take_batch()
        if batch is not None:
            self.health.samples_in += batch.height
            self.health.batches_out += 1
            self.health.last_sample_at = datetime.now(UTC)
            await emit(batch)
        events = self._batch_state.take(everything=everything)
        if events.height:
            self.health.events["batch_events"] = self.health.events.get("batch_events", 0) + events.height
            if self.on_batch_events is not None:
                await self.on_batch_events(events)

    async def run(self, emit: Emit) -> None:
        if not self._tags:
            log.warning("OPC-UA source %s has no tags bound to it; idle", self.name)
        try:
            await supervise(
                self.health,
                self._session,
                flush_interval_s=self.config.flush_interval_ms / 1000,
                wake=self._flush_now,
                flush=lambda: self._flush(emit),
            )
        finally:
            self._close_gap("stop")  # stopped while disconnected: the gap ends here, on record
            with contextlib.suppress(Exception):  # the batch events held back go out too
                events = self._batch_state.take(everything=True)
                if events.height and self.on_batch_events is not None:
                    await asyncio.shield(self.on_batch_events(events))

    # -- connection loss: stale tags and gaps ------------------------------------------------
    def _mark_stale(self, lost_at: datetime, reason: str) -> None:
        """Every tag subscribed in the lost session gets a null, bad sample at `lost_at`; a gap opens."""
        tags = list(self._subscribed.values())
        self._subscribed = {}
        buf = self._buffer
        n = len(tags)
        buf.ts.extend([lost_at] * n)
        buf.server_ts.extend([None] * n)
        buf.tag_id.extend(tags)
        buf.value.extend([None] * n)
        buf.status.extend([STALE_STATUS] * n)
        self._flush_now.set()
        if self.health.stale_since is None:
            self.health.stale_since = lost_at
            self.health.stale_tags = n
            self._gap_reason = reason
        log.warning("OPC-UA source %s: connection lost (%s); %d tag(s) stale since %s", self.name, reason, n,
                    lost_at.isoformat())

    def _close_gap(self, closed_by: str) -> Gap | None:
        """Values flow again (or the collector stops): record the gap opened by `_mark_stale`."""
        start = self.health.stale_since
        if start is None:
            return None
        gap = Gap(self.name, start, datetime.now(UTC), self.health.stale_tags, self._gap_reason or "", closed_by)
        self.health.stale_since = None
        self.health.stale_tags = 0
        self.health.gaps += 1
        self.health.gap_seconds += gap.duration_s
        try:
            self.gap_log.add(gap)
        except OSError as exc:  # the gap is still counted and logged; the file is not worth a crash
            log.error("OPC-UA source %s: cannot write the gap log %s: %s", self.name, self.gap_log.path, exc)
        log.info("OPC-UA source %s: gap of %.1fs closed (%s), %d tag(s)", self.name, gap.duration_s, closed_by, gap.tags)
        return gap

    # -- session ---------------------------------------------------------------------------------
    async def _session(self) -> None:
        self.session_security = None
        client = await secure_client(self.config.url, self.security, timeout=4)
        lost = asyncio.Event()
        lost_at: list[datetime] = []
        lost_why: list[str] = []

        async def on_connection_lost(exc: Exception) -> None:
            # asyncua's supervisor saw the loss (transport closed, or its server-state probe failed).
            lost_at.append(datetime.now(UTC))
            lost_why.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            lost.set()

        client.connection_lost_callback = on_connection_lost
        await connect(client, self.security)
        try:
            self.session_security = negotiated_security(client)
            self.health.last_error = None  # the reason of an earlier failure no longer holds
            subscription = await self._subscribe(client)
            self.health.connected = True
            self._close_gap("reconnect")
            log.info("OPC-UA source %s connected to %s, %d tag(s) subscribed", self.name, self.config.url,
                     len(self._subscribed))
            timeout_s = self.config.publish_timeout_s
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=1.0)
                if lost.is_set():
                    raise ConnectionError(f"connection lost: {lost_why[0]}")
                await client.check_connection()
                silent_s = time.monotonic() - (subscription.last_publish_at or self._subscribed_at)
                if silent_s > timeout_s:
                    raise TimeoutError(f"no publish response (data or keep-alive) for {silent_s:.0f}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._subscribed:
                self._mark_stale(lost_at[0] if lost_at else datetime.now(UTC), f"{type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            self.health.connected = False
            self.session_security = None
            # Against a server that is gone, closing could wait for answers that never come.
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(client.disconnect(), timeout=DISCONNECT_TIMEOUT_S)

    async def _subscribe(self, client: Any) -> Any:
        """One subscription; one CreateMonitoredItems request per group of tags with equal
        settings (the batch id nodes take the source's defaults, with no deadband)."""
        self._subscribed = {}
        period = self.config.publishing_interval_ms
        # A keep-alive at least every third of the publish timeout, so silence means loss.
        keepalive = max(1, math.floor(self.config.publish_timeout_s * 1000 / 3 / period))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=period,
            RequestedMaxKeepAliveCount=keepalive,
            RequestedLifetimeCount=keepalive * 3,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        subscription = await client.create_subscription(params, _SubscriptionHandler(self))
        self._subscribed_at = time.monotonic()
        groups: dict[Monitoring, list[ua.NodeId]] = {}
        default = monitoring_of(self.config, None)
        batch_default = (default[0], default[1], int(ua.DeadbandType.None_), 0.0)
        self._batch_state.forget()  # what happened while disconnected is not known: observe again
        for node_id in [*self._unit_by_batch_node, *self._unit_by_phase_node]:
            groups.setdefault(batch_default, []).append(node_id)
        refused: list[str] = []
        percent = [n for n, m in self._monitoring.items() if m[2] == ua.DeadbandType.Percent]
        without_range = set(await _without_eu_range(client, percent)) if percent else set()
        for node_id, settings in self._monitoring.items():
            if node_id in without_range:
                refused.append(
                    f"tag {self._tag_by_node[node_id]}: deadband_percent needs the EURange property of node "
                    f"{node_id.to_string()}, which the server does not expose; use deadband_abs"
                )
                continue
            groups.setdefault(settings, []).append(node_id)
        for (sampling, queue, deadband_type, deadband_value), node_ids in groups.items():
            mfilter = data_change_filter(deadband_type, deadband_value)
            requests = [
                subscription._make_monitored_item_request(
                    client.get_node(n), ua.AttributeIds.Value, mfilter, queue, ua.MonitoringMode.Reporting, sampling
                )
                for n in node_ids
            ]
            # asyncua's subscribe_data_change takes no filter: its low-level create_monitored_items does.
            results = await subscription.create_monitored_items(requests)
            for node_id, result in zip(node_ids, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    refused.append(f"node {node_id.to_string()}: {result.name}")
                elif node_id in self._tag_by_node:
                    self._subscribed[node_id] = self._tag_by_node[node_id]
        if refused:
            self.health.last_error = f"{len(refused)} tag(s) not subscribed, e.g. {refused[0]}"[:500]
            for why in refused:
                log.error("OPC-UA source %s: %s", self.name, why)
        return subscription


async def _without_eu_range(client: Any, node_ids: list[ua.NodeId]) -> list[ua.NodeId]:
    """The nodes among `node_ids` that have no EURange property (which a percent deadband needs)."""
    paths = []
    for node_id in node_ids:
        path = ua.BrowsePath()
        path.StartingNode = node_id
        element = ua.RelativePathElement()
        element.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasProperty)
        element.IsInverse = False
        element.IncludeSubtypes = True
        element.TargetName = ua.QualifiedName("EURange", 0)
        path.RelativePath = ua.RelativePath(Elements=[element])
        paths.append(path)
    results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
    return [n for n, r in zip(node_ids, results, strict=True) if not r.StatusCode.is_good() or not r.Targets]


def _client_security(config: OpcUaSourceConfig, data_dir: Path) -> ClientSecurity:
    password = None
    if config.password_env:
        password = os.environ.get(config.password_env)
        if password is None:
            raise ValueError(
                f"OPC-UA source {config.name}: password_env names the environment variable "
                f"{config.password_env}, which is not set"
            )
    pki = None
    if config.security_policy != "None":
        pki = Pki.under(data_dir / config.certificate_dir, data_dir / config.trusted_server_certificates)
    return ClientSecurity(
        policy=config.security_policy,
        mode=config.security_mode,
        pki=pki,
        username=config.username,
        password=password,
        password_source=f"the password in ${config.password_env}" if config.password_env else "the password (none set)",
    )

