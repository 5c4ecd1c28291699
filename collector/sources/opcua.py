"""OPC-UA source: subscriptions (not polling) on an OPC-UA server with asyncua.

The subscription callback only appends the notification's fields to column lists; a flush
task turns them into one sample batch (`controltower.samples`) every `flush_interval_ms` or
`flush_max_samples`. One supervisor loop owns the connection: it connects, subscribes, watches
the session and reconnects with backoff when the server goes away.

Security (see `collector.sources.opcua_security`): with a `security_policy` the collector
creates its certificate on first run, refuses server certificates that are not in its trust
list (saving them under `<certificate_dir>/rejected/` and saying how to trust them), and
authenticates with `username` and the password from `password_env`. Why a connection failed
is in `health.last_error`; the password never is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from asyncua import ua

from collector.sources import Emit, SourceHealth
from collector.sources.opcua_security import ClientSecurity, Pki, connect, negotiated_security, secure_client
from collector.sources.supervisor import supervise
from controltower.samples import QUALITY_DTYPE, quality_expr, samples_frame, tag_paths_frame
from controltower.site import OpcUaSourceConfig, TagInfo

log = logging.getLogger(__name__)

class _ColumnBuffer:
    """Column lists that subscription callbacks append to; swapped out whole at each flush."""

    __slots__ = ("ts", "server_ts", "tag_id", "value", "status")

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

    def __init__(self, config: OpcUaSourceConfig, tags: list[TagInfo], *, data_dir: Path | None = None):
        """`data_dir` anchors the relative `certificate_dir` and `trusted_server_certificates`
        (default `data`, the site file's default). ValueError if `password_env` names an unset variable."""
        self.config = config
        self.name = config.name
        self.health = SourceHealth(name=config.name, kind="opcua")
        self.security = _client_security(config, Path(data_dir) if data_dir is not None else Path("data"))
        # (policy, mode) of the current session's secure channel, e.g. ("Basic256Sha256", "SignAndEncrypt").
        self.session_security: tuple[str, str] | None = None
        self._tags = [t for t in tags if t.source == config.name and t.tag.opcua is not None]
        self._tag_by_node = {ua.NodeId.from_string(t.tag.opcua.node_id): t.tag_id for t in self._tags}
        self._tag_paths = tag_paths_frame(self._tags)
        # Batch id nodes, per unit, from the site config's `batch_node_id`.
        self._unit_by_batch_node: dict[ua.NodeId, str] = {}
        self._batch_by_unit: dict[str, str | None] = {}
        self._buffer = _ColumnBuffer()
        self._flush_now = asyncio.Event()

    def bind_batch_nodes(self, batch_nodes: dict[str, str]) -> None:
        """unit_id -> node id of the unit's batch id variable (only units this source collects)."""
        units = {t.unit_id for t in self._tags}
        for unit_id, node_id in batch_nodes.items():
            if unit_id in units:
                self._unit_by_batch_node[ua.NodeId.from_string(node_id)] = unit_id

    # -- callback side: no I/O, no awaits ------------------------------------------------
    def _on_change(self, node_id: ua.NodeId, value: Any, dv: ua.DataValue) -> None:
        unit_id = self._unit_by_batch_node.get(node_id)
        if unit_id is not None:
            self._batch_by_unit[unit_id] = str(value) if value not in (None, "") else None
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

    async def _flush(self, emit: Emit) -> None:
        batch = self._take_batch()
        if batch is not None:
            self.health.samples_in += batch.height
            self.health.batches_out += 1
            self.health.last_sample_at = datetime.now(UTC)
            await emit(batch)

    async def run(self, emit: Emit) -> None:
        if not self._tags:
            log.warning("OPC-UA source %s has no tags bound to it; idle", self.name)
        await supervise(
            self.health,
            self._session,
            flush_interval_s=self.config.flush_interval_ms / 1000,
            wake=self._flush_now,
            flush=lambda: self._flush(emit),
        )

    async def _session(self) -> None:
        self.session_security = None
        client = await secure_client(self.config.url, self.security, timeout=4)
        await connect(client, self.security)
        try:
            self.session_security = negotiated_security(client)
            self.health.last_error = None  # the reason of an earlier failure no longer holds
            handler = _SubscriptionHandler(self)
            subscription = await client.create_subscription(self.config.publishing_interval_ms, handler)
            nodes = [client.get_node(n) for n in (*self._unit_by_batch_node, *self._tag_by_node)]
            if nodes:
                # Trigger on the timestamp too: a value repeated with a new source timestamp is a new
                # sample (the historian keeps it, and a stuck sensor shows as a flatline, not silence).
                # asyncua's public subscribe_data_change takes no filter, hence its _subscribe.
                results = await subscription._subscribe(
                    nodes,
                    mfilter=ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp),
                    sampling_interval=self.config.publishing_interval_ms / 2,
                    queuesize=10,
                )
                failed = [str(n.nodeid) for n, r in zip(nodes, results) if isinstance(r, ua.StatusCode)]
                if failed:
                    self.health.last_error = f"{len(failed)} node(s) could not be subscribed, e.g. {failed[0]}"
                    log.warning("OPC-UA source %s: %s", self.name, self.health.last_error)
            self.health.connected = True
            log.info("OPC-UA source %s connected to %s, %d nodes", self.name, self.config.url, len(nodes))
            while True:
                await asyncio.sleep(1.0)
                await client.check_connection()
        finally:
            self.session_security = None
            await client.disconnect()


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

