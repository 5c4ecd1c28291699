"""Writing setpoints to the plant over OPC-UA: the one place the control tower sends a value back.

    writer = SetpointWriter(site.setpoint_source(sp), data_dir)
    values = writer.read_sync([sp.node_id, ...])          # {node_id: SetpointValue}
    result = writer.write_sync(sp, 38.5, expected_old=37.0)  # WriteResult(old, new, requested, status)

A write uses the source's url, security policy and mode, trust list and user
(`collector.sources.opcua_security`), so it goes over the same kind of secure channel the
collector reads through. Each call opens its own short session (the collector's subscription
session is never blocked by a write), bounded by `timeout_s` from connect to disconnect.

A write: the value is refused here when it is outside the configured [low, high] (before any
connection); the current value is read; if the caller confirmed an `expected_old` that is no
longer the value (someone else changed it since), StaleSetpoint; otherwise the value is written
in the type the node holds (Double, Float, or a whole number for an integer node) and read
back. Every failure is a SetpointError whose message names the node and the OPC-UA status
(BadOutOfRange, BadUserAccessDenied, BadNodeIdUnknown...) or the connection problem, and whose
`status` is that status name: the audit trail records it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asyncua import Client, ua

# The source's own translation of its config (password from the environment, PKI under the
# data directory): one place, so a write can never connect differently from the collector.
from collector.sources.opcua import _client_security
from collector.sources.opcua_security import OpcUaSecurityError, connect, secure_client
from controltower.site import OpcUaSourceConfig, Setpoint

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 8.0
DISCONNECT_TIMEOUT_S = 2.0
# An `expected_old` this close to the current value is the same value (it went through JSON and
# a screen); a real change of a setpoint is far larger.
STALE_REL_TOL = 1e-9
STALE_ABS_TOL = 1e-9

T = TypeVar("T")


class SetpointError(Exception):
    """A setpoint could not be read or written. `status`: the OPC-UA status name (e.g.
    "BadOutOfRange") or what failed ("OutOfRange" locally, "ConnectionFailed", "Timeout",
    "SecurityFailed", "Stale"). The message names the node and never holds a secret."""

    def __init__(self, message: str, *, node_id: str, status: str):
        super().__init__(message)
        self.node_id = node_id
        self.status = status


class SetpointOutOfRange(SetpointError):
    """Refused before writing: the value is outside the setpoint's configured range."""


class StaleSetpoint(SetpointError):
    """The current value is not the one the operator confirmed: it changed in the meantime."""

    def __init__(self, message: str, *, node_id: str, current: float | None):
        super().__init__(message, node_id=node_id, status="Stale")
        self.current = current


@dataclass(frozen=True)
class SetpointValue:
    """A setpoint as read: its value (None when unreadable), the OPC-UA status of the read, and
    whether the server lets the session's user write it (its UserAccessLevel)."""

    node_id: str
    value: float | None
    status: str
    writable: bool
    error: str | None = None
    variant_type: str | None = None  # the OPC-UA type the value came in, e.g. "Double", "Float", "Int32"


@dataclass(frozen=True)
class WriteResult:
    """A completed write: the value before, the value read back after, what was requested, and
    the write's OPC-UA status ("Good")."""

    node_id: str
    old: float | None
    new: float | None
    requested: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "old": self.old, "new": self.new, "requested": self.requested,
                "status": self.status}


def check_range(setpoint: Setpoint, value: Any) -> float:
    """`value` as a float inside the setpoint's [low, high]; SetpointOutOfRange otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SetpointOutOfRange(f"setpoint {setpoint.id} ({setpoint.node_id}): {value!r} is not a number",
                                 node_id=setpoint.node_id, status="OutOfRange") from None
    if isinstance(value, bool) or not math.isfinite(number) or not setpoint.low <= number <= setpoint.high:
        raise SetpointOutOfRange(
            f"setpoint {setpoint.id} ({setpoint.node_id}): {value!r} is outside its range "
            f"[{setpoint.low:g}, {setpoint.high:g}] {setpoint.unit}; not written",
            node_id=setpoint.node_id, status="OutOfRange")
    return number


def _status_name(code: int) -> str:
    return ua.StatusCode(code).name


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class SetpointWriter:
    """Reads and writes setpoint nodes through one OPC-UA source's connection settings.
    `data_dir` is the tower's (the source's certificate directory and trust list are under it)."""

    def __init__(self, source: OpcUaSourceConfig, data_dir: str | Path, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.source = source
        self.data_dir = Path(data_dir)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"SetpointWriter({self.source.name!r}, {self.source.url!r})"

    # --- async -----------------------------------------------------------------------------

    async def read(self, node_ids: list[str]) -> dict[str, SetpointValue]:
        """The current value of each node (one session, one Read request). A node the server
        does not know, or cannot read, has value None and its status; a connection failure is a
        SetpointError naming the first node."""
        if not node_ids:
            return {}

        async def job(client: Client) -> dict[str, SetpointValue]:
            return await _read_values(client, node_ids)

        return await self._session(node_ids[0], job)

    async def write(self, setpoint: Setpoint, value: Any, *, expected_old: float | None = None) -> WriteResult:
        """Write `value` to `setpoint` as described in the module doc; the WriteResult, or a
        SetpointError (SetpointOutOfRange, StaleSetpoint, or the server's refusal)."""
        number = check_range(setpoint, value)
        node_id = setpoint.node_id

        async def job(client: Client) -> WriteResult:
            before = (await _read_values(client, [node_id]))[node_id]
            if before.error is not None:
                hint = " (is the node id right?)" if before.status in ("BadNodeIdUnknown", "BadNodeIdInvalid") else ""
                raise SetpointError(f"setpoint {setpoint.id}: {before.error}{hint}; not written",
                                    node_id=node_id, status=before.status)
            if expected_old is not None and (
                before.value is None
                or not math.isclose(before.value, float(expected_old), rel_tol=STALE_REL_TOL, abs_tol=STALE_ABS_TOL)
            ):
                raise StaleSetpoint(
                    f"setpoint {setpoint.id} ({node_id}) is {before.value!r} now, not {expected_old!r} as confirmed; "
                    "it changed in the meantime: look again and confirm the current value",
                    node_id=node_id, current=before.value)
            params = ua.WriteParameters()
            item = ua.WriteValue()
            item.NodeId = ua.NodeId.from_string(node_id)
            item.AttributeId = ua.AttributeIds.Value
            item.Value = ua.DataValue(_variant_like(before.variant_type, number, setpoint))
            params.NodesToWrite = [item]
            (status,) = await client.uaclient.write(params)
            if not status.is_good():
                name = _status_name(status.value)
                raise SetpointError(
                    f"setpoint {setpoint.id} ({node_id}): the server refused {number:g} {setpoint.unit}: {name}".rstrip(),
                    node_id=node_id, status=name)
            after = (await _read_values(client, [node_id]))[node_id]
            return WriteResult(node_id=node_id, old=before.value, new=after.value, requested=number,
                               status=_status_name(status.value))

        return await self._session(node_id, job)

    async def _session(self, node_id: str, job: Callable[[Client], Awaitable[T]]) -> T:
        """Connect, run `job`, disconnect; all within timeout_s. Failures become SetpointError."""
        url = self.source.url
        where = f"{node_id} on {self.source.name} ({url})"
        try:
            return await asyncio.wait_for(self._connected(job), timeout=self.timeout_s)
        except SetpointError:
            raise
        except TimeoutError:
            raise SetpointError(f"{where}: no answer within {self.timeout_s:g} s", node_id=node_id,
                                status="Timeout") from None
        except OpcUaSecurityError as exc:
            raise SetpointError(f"{where}: {exc}", node_id=node_id, status="SecurityFailed") from None
        except ua.UaStatusCodeError as exc:
            name = _status_name(exc.code)
            raise SetpointError(f"{where}: {name}", node_id=node_id, status=name) from None
        except (OSError, ConnectionError) as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise SetpointError(f"{where}: cannot connect: {reason}", node_id=node_id,
                                status="ConnectionFailed") from None
        except ValueError as exc:  # the source's password variable is unset, a bad node id
            raise SetpointError(f"{where}: {exc}", node_id=node_id, status="ConfigError") from None

    async def _connected(self, job: Callable[[Client], Awaitable[T]]) -> T:
        security = _client_security(self.source, self.data_dir)
        client = await secure_client(self.source.url, security, timeout=min(4.0, self.timeout_s))
        await connect(client, security)
        try:
            return await job(client)
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), timeout=DISCONNECT_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - the session is gone either way; the result stands
                log.debug("OPC-UA %s: disconnect after a setpoint call failed: %s", self.source.url, exc)

    # --- for synchronous callers (Flask request threads, Dash callbacks) -------------------

    def read_sync(self, node_ids: list[str]) -> dict[str, SetpointValue]:
        return _run(self.read(node_ids))

    def write_sync(self, setpoint: Setpoint, value: Any, *, expected_old: float | None = None) -> WriteResult:
        return _run(self.write(setpoint, value, expected_old=expected_old))


async def _read_values(client: Client, node_ids: list[str]) -> dict[str, SetpointValue]:
    params = ua.ReadParameters()
    for node_id in node_ids:
        for attribute in (ua.AttributeIds.Value, ua.AttributeIds.UserAccessLevel):
            item = ua.ReadValueId()
            item.NodeId = ua.NodeId.from_string(node_id)
            item.AttributeId = attribute
            params.NodesToRead.append(item)
    results = await client.uaclient.read(params)
    found: dict[str, SetpointValue] = {}
    for i, node_id in enumerate(node_ids):
        value, access = results[2 * i], results[2 * i + 1]
        if not value.StatusCode.is_good():
            name = _status_name(value.StatusCode.value)
            found[node_id] = SetpointValue(node_id, None, name, False, f"{node_id}: cannot read it: {name}")
            continue
        number = _number(value.Value.Value if value.Value is not None else None)
        writable = bool(access.StatusCode.is_good() and access.Value is not None and access.Value.Value is not None
                        and int(access.Value.Value) & (1 << ua.AccessLevel.CurrentWrite))
        error = None if number is not None else f"{node_id}: its value is not a number"
        variant = value.Value.VariantType.name if value.Value is not None else None
        found[node_id] = SetpointValue(node_id, number, _status_name(value.StatusCode.value), writable, error, variant)
    return found


_FLOAT_TYPES = {"Double", "Float"}
_INTEGER_TYPES = {"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"}


def _variant_like(current: str | None, number: float, setpoint: Setpoint) -> ua.Variant:
    """`number` in the type the node holds now (a PLC's REAL is a Float, a counter an Int32:
    servers refuse another type with BadTypeMismatch); a Double when the type says nothing."""
    if current in _FLOAT_TYPES:
        return ua.Variant(number, ua.VariantType[current])
    if current in _INTEGER_TYPES:
        if not number.is_integer():
            raise SetpointError(f"setpoint {setpoint.id} ({setpoint.node_id}) holds whole numbers ({current}); "
                                f"{number:g} is not one; not written", node_id=setpoint.node_id, status="TypeMismatch")
        return ua.Variant(int(number), ua.VariantType[current])
    return ua.Variant(number, ua.VariantType.Double)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from synchronous code, also from a thread whose loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
