"""The plant over OPC-UA: an asyncua server whose address space mirrors the site's ISA-95
hierarchy, with one AnalogItem per tag and the batch id and phase of every unit.

Address space (namespace `urn:pharma-controltower:simulator`, always index 2):
    Objects/<enterprise>/<site>/<area>/<line>/<unit>/          folders, ns=2;s=<path>
        <tag>         AnalogItemType, Double, ns=2;s=site.area.line.unit.tag
                      properties EngineeringUnits (EUInformation) and EURange (Range)
        batch_id      String, ns=2;s=site.area.line.unit.batch_id
        phase         String, ns=2;s=site.area.line.unit.phase
        product, recipe   String, ns=2;s=site.area.line.unit.product|recipe: what its batches make, how
        last_batch_transition        String: batch_start, phase_change or batch_end (SourceTimestamp: when)
        unacknowledged_batch_events  UInt32
        AcknowledgeBatchEvent(Sequence UInt32, Comment String)   method
        Setpoints/    folder ns=2;s=site.area.line.unit.sp (units with a process model)
            <name>    writable AnalogItemType, Double, ns=2;s=site.area.line.unit.sp.<name>, EURange =
                      the range the plant accepts; an out-of-range write is BadOutOfRange, NaN clears
Batch events: BatchEventType (under BaseEventType; fields BatchId, Unit, Phase, PreviousPhase,
Transition, Sequence, Product, Recipe), emitted from the unit's folder and from the Server object.
Every tick writes each value with SourceTimestamp = simulated time, ServerTimestamp = now.

Security: NoSecurity and anonymous by default (fast, for local tests and the demo). Pass
`security=["Basic256Sha256_SignAndEncrypt", ...]` (names of `asyncua.ua.SecurityPolicyType`)
with `certificate`/`private_key` paths (created self-signed if absent, application URI
`urn:pharma-controltower:simulator:server`), and `users={"name": "password"}` to require a
username and password. Any client certificate is accepted: the simulator is a test peer.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import polars as pl
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from controltower.site import Limits, SiteConfig, Tag
from simulators.batch_events import BatchEvent
from simulators.batches import batch_info
from simulators.clock import utc_now
from simulators.plant import Plant

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:pharma-controltower:simulator"
# Not NAMESPACE_URI: the application URI becomes namespace 1 and the plant must stay index 2.
SERVER_APPLICATION_URI = "urn:pharma-controltower:simulator:server"
_UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
# UN/CEFACT Rec. 20 codes of the engineering units pharma sites use most.
_UNECE_CODES = {
    "degC": "CEL",
    "°C": "CEL",
    "K": "KEL",
    "bar": "BAR",
    "barg": "BAR",
    "mbar": "MBR",
    "Pa": "PAL",
    "kPa": "KPA",
    "%": "P1",
    "%sat": "P1",
    "rpm": "RPM",
    "kN": "B47",
    "N": "NEW",
    "mg": "MGM",
    "g": "GRM",
    "kg": "KGM",
    "L": "LTR",
    "mL": "MLT",
    "L/min": "L2",
    "s": "SEC",
    "min": "MIN",
    "h": "HUR",
}
# Unacknowledged batch events kept (a demo may run for weeks with nobody acknowledging): the
# oldest beyond this are dropped, counted in `PlantOpcUaServer.unacknowledged_dropped`.
MAX_UNACKNOWLEDGED = 1000
_QUALITY = {"good": ua.StatusCodes.Good, "uncertain": ua.StatusCodes.Uncertain, "bad": ua.StatusCodes.Bad}


def eu_information(unit: str) -> ua.EUInformation:
    """EUInformation for an engineering unit string; UnitId -1 when it has no UN/CEFACT code."""
    code = _UNECE_CODES.get(unit)
    unit_id = -1
    if code is not None:
        unit_id = 0
        for ch in code:  # OPC UA Part 8: the code's characters packed into an Int32
            unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=_UNECE_URI,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )


def eu_range(limits: Limits) -> ua.Range:
    """The tag's range, from its alarm limits, else warning limits; an open side gets a plausible bound."""
    low = limits.alarm_low if limits.alarm_low is not None else limits.warning_low
    high = limits.alarm_high if limits.alarm_high is not None else limits.warning_high
    if low is None:
        low = 0.0 if high is None or high > 0 else high - 100.0
    if high is None or high <= low:
        high = low + 100.0
    return ua.Range(Low=float(low), High=float(high))


def _make_server_certificate(certificate: Path, private_key: Path, host: str) -> None:
    """A self-signed server certificate (DER) for SERVER_APPLICATION_URI and its key (PEM, 0600)."""
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(SERVER_APPLICATION_URI),
        x509.DNSName(socket.gethostname()),
        x509.DNSName("localhost"),
    ]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "pharma-controltower simulator",
        {"organizationName": "pharma-controltower"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    private_key.parent.mkdir(parents=True, exist_ok=True)
    certificate.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    certificate.write_bytes(cert.public_bytes(Encoding.DER))


class _PasswordUsers:
    """asyncua user manager: a session is activated only with a known username and its password."""

    def __init__(self, users: Mapping[str, str]):
        self._users = dict(users)

    def __repr__(self) -> str:
        return f"_PasswordUsers({sorted(self._users)})"  # names only

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None):
        expected = self._users.get(username or "")
        if expected is None or password is None:
            return None
        if not hmac.compare_digest(expected.encode(), password.encode() if isinstance(password, str) else password):
            return None
        return User(role=UserRole.User, name=username)


_ADMIN = User(role=UserRole.Admin)  # asyncua's default for server-side writes


class _SetpointWriteService(AttributeService):
    """asyncua's attribute service, except that a write of a setpoint variable goes to the
    plant first, which may refuse it with a status of its own (BadOutOfRange): asyncua's value
    setters and write callbacks cannot refuse a write, so the check sits here."""

    def __init__(self, aspace: Any, on_write: Any):
        super().__init__(aspace)
        self._on_write = on_write  # async (node id, attribute id, DataValue) -> StatusCode | None

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results = []
        for item in params.NodesToWrite:
            status = await self._on_write(item.NodeId, item.AttributeId, item.Value)
            if status is None:
                status = (await super().write(ua.WriteParameters(NodesToWrite=[item]), user=user))[0]
            results.append(status)
        return results


class PlantOpcUaServer:
    """Serves a site's tags at `url` (opc.tcp://host:port/path; binds to that host)."""

    def __init__(
        self,
        site: SiteConfig,
        *,
        url: str,
        security: Sequence[str] = ("NoSecurity",),
        certificate: Path | None = None,
        private_key: Path | None = None,
        users: Mapping[str, str] | None = None,
        plant: Plant | None = None,
    ):
        """`plant`: the plant a client's setpoint writes go to (None: no Setpoints folders)."""
        parsed = urlparse(url)
        if parsed.scheme != "opc.tcp" or not parsed.hostname or not parsed.port:
            raise ValueError(f"OPC-UA url must look like opc.tcp://host:port/path, got {url!r}")
        try:
            self._policies = [ua.SecurityPolicyType[name] for name in security]
        except KeyError as exc:
            names = ", ".join(p.name for p in ua.SecurityPolicyType)
            raise ValueError(f"unknown OPC-UA security {exc.args[0]!r}; one of {names}") from None
        if not self._policies:
            raise ValueError("security needs at least one policy (NoSecurity for none)")
        secure = any(p != ua.SecurityPolicyType.NoSecurity for p in self._policies)
        if secure and (certificate is None or private_key is None):
            raise ValueError("a security policy other than NoSecurity needs certificate and private_key paths")
        self.site = site
        self.url = url
        self.certificate = Path(certificate) if secure and certificate is not None else None
        self.private_key = Path(private_key) if secure and private_key is not None else None
        self._users = _PasswordUsers(users) if users else None
        self._server: Server | None = None
        self._ns = 2
        self._tag_nodes: dict[str, ua.NodeId] = {}
        self._unit_nodes: dict[str, tuple[ua.NodeId, ua.NodeId]] = {}
        self.plant = plant
        # Setpoint variable -> (unit path, setpoint name); the last value written to each.
        self._setpoint_nodes: dict[ua.NodeId, tuple[str, str]] = {}
        self._setpoint_shown: dict[ua.NodeId, float] = {}
        # Batch events: per unit its folder, event generator and unacknowledged-count variable.
        self._unit_folders: dict[str, ua.NodeId] = {}
        self._unacked_nodes: dict[str, ua.NodeId] = {}
        self._last_event_nodes: dict[str, ua.NodeId] = {}
        self._unit_events: dict[str, Any] = {}
        self._server_events: Any = None
        # Unacknowledged batch events by sequence number (their unit), and acknowledgements made.
        self.unacknowledged: dict[int, BatchEvent] = {}
        self.acknowledgements: list[tuple[int, str]] = []  # (sequence, comment)
        self.unacknowledged_dropped = 0

    @property
    def namespace_index(self) -> int:
        return self._ns

    async def start(self) -> None:
        """Build the address space and listen. RuntimeError if the namespace is not index 2."""
        server = Server(user_manager=self._users)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("pharma-controltower simulator")
        # By default no certificates to generate at start-up: the simulator is a local test fixture.
        server.set_security_policy(self._policies)
        if self.certificate is not None and self.private_key is not None:
            if not (self.certificate.is_file() and self.private_key.is_file()):
                host = urlparse(self.url).hostname or "localhost"
                await asyncio.to_thread(_make_server_certificate, self.certificate, self.private_key, host)
            await server.set_application_uri(SERVER_APPLICATION_URI)
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        if self._users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        ns = await server.register_namespace(NAMESPACE_URI)
        if ns != 2:
            raise RuntimeError(f"namespace {NAMESPACE_URI} got index {ns}, expected 2")
        self._ns = ns
        self._server = server
        # Client writes of setpoint variables go to the plant (range-checked) before the node.
        server.iserver.attribute_service = _SetpointWriteService(server.iserver.aspace, self._write_setpoint)
        # Under BaseEventType as 2:BatchEventType (asyncua numbers its nodes in the namespace).
        self._event_type = await server.create_custom_event_type(
            ns,
            "BatchEventType",
            ua.ObjectIds.BaseEventType,
            [
                ("BatchId", ua.VariantType.String),
                ("Unit", ua.VariantType.String),
                ("Phase", ua.VariantType.String),
                ("PreviousPhase", ua.VariantType.String),
                ("Transition", ua.VariantType.String),
                ("Sequence", ua.VariantType.UInt32),
                ("Product", ua.VariantType.String),
                ("Recipe", ua.VariantType.String),
            ],
        )
        await self._build(server)
        # One generator per unit (subscribe to the unit) and one on the Server object (subscribe to all).
        for path, folder in self._unit_folders.items():
            self._unit_events[path] = await server.get_event_generator(self._event_type, folder)
        self._server_events = await server.get_event_generator(self._event_type, ua.ObjectIds.Server)
        # Until the first tick the values are not measurements: say so, as a real server does,
        # so a client never takes the placeholder 0.0 for a reading.
        waiting = ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)
        for node in self._tag_nodes.values():
            await server.write_attribute_value(node, ua.DataValue(Value=ua.Variant(0.0, ua.VariantType.Double), StatusCode=waiting))
        await server.start()
        log.info("OPC-UA simulator listening at %s (%d tags)", self.url, len(self._tag_nodes))

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    def channel_security(self) -> list[tuple[str, str]]:
        """(security policy URI, message security mode) of each client connection now open."""
        if self._server is None or self._server.bserver is None:
            return []
        return [
            (proto.processor._connection.security_policy.URI, proto.processor._connection.security_policy.Mode.name)
            for proto in self._server.bserver.clients
            if proto.processor is not None
        ]

    async def publish(
        self,
        frame: pl.DataFrame,
        unit_states: dict[str, tuple[str, str]],
        events: Sequence[BatchEvent] = (),
    ) -> None:
        """Write a step's samples (sample schema), each unit's (batch_id, phase) and effective
        setpoints, and fire the step's batch events."""
        if self._server is None:
            raise RuntimeError("the OPC-UA server is not started")
        server_ts = utc_now()
        write = self._server.write_attribute_value
        for ts, tag_id, value, quality in frame.select("ts", "tag_id", "value", "quality").iter_rows():
            node = self._tag_nodes.get(tag_id)
            if node is None:
                continue
            await write(
                node,
                ua.DataValue(
                    Value=ua.Variant(float("nan") if value is None else value, ua.VariantType.Double),
                    StatusCode=ua.StatusCode(_QUALITY.get(quality, ua.StatusCodes.Bad)),
                    SourceTimestamp=ts,
                    ServerTimestamp=server_ts,
                ),
            )
        sim_ts = frame["ts"][0] if frame.height else server_ts
        for path, (batch_id, phase) in unit_states.items():
            nodes = self._unit_nodes.get(path)
            if nodes is None:
                continue
            for node, text in zip(nodes, (batch_id, phase), strict=True):
                await write(
                    node,
                    ua.DataValue(
                        Value=ua.Variant(text, ua.VariantType.String),
                        SourceTimestamp=sim_ts,
                        ServerTimestamp=server_ts,
                    ),
                )
        await self._show_setpoints()
        for event in events:
            await self._fire(event)

    # --- setpoints --------------------------------------------------------------------------

    async def _show_setpoints(self) -> None:
        """Each setpoint variable shows the unit's effective setpoint (a phase change or the
        end of an operator override changes it); written only when it changed."""
        if self.plant is None or self._server is None:
            return
        effective: dict[str, dict[str, float]] = {}
        for node, (unit, name) in self._setpoint_nodes.items():
            if unit not in effective:
                effective[unit] = self.plant.setpoints(unit)
            value = effective[unit][name]
            if self._setpoint_shown.get(node) != value:
                self._setpoint_shown[node] = value
                await self._server.write_attribute_value(node, ua.DataValue(Value=ua.Variant(value, ua.VariantType.Double)))

    async def _write_setpoint(self, node: ua.NodeId, attribute: int, value: ua.DataValue) -> ua.StatusCode | None:
        """A client's write: None when `node` is not a setpoint (the normal write applies); else
        the plant takes it (Good), or refuses it (BadOutOfRange, BadTypeMismatch) and nothing changes.
        A NaN clears the operator setpoint (back to the recipe's)."""
        target = self._setpoint_nodes.get(node)
        if target is None or attribute != ua.AttributeIds.Value or self.plant is None:
            return None
        unit, name = target
        number = value.Value.Value if value.Value is not None else None
        if isinstance(number, bool) or not isinstance(number, int | float):
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        if math.isnan(number):
            self.plant.clear_setpoint(unit, name)
            log.info("OPC-UA client cleared setpoint %s of %s (recipe value again)", name, unit)
        else:
            try:
                old = self.plant.write_setpoint(unit, name, float(number))
            except ValueError as exc:
                log.warning("OPC-UA client setpoint write refused: %s", exc)
                return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
            log.info("OPC-UA client set %s of %s: %g -> %g", name, unit, old, number)
        await self._show_setpoints()
        return ua.StatusCode(ua.StatusCodes.Good)

    # --- batch events -----------------------------------------------------------------------

    async def _fire(self, event: BatchEvent) -> None:
        generator = self._unit_events.get(event.unit)
        if generator is None:
            return
        self.unacknowledged[event.sequence] = event
        stale_units = set()
        while len(self.unacknowledged) > MAX_UNACKNOWLEDGED:
            oldest = next(iter(self.unacknowledged))  # dicts keep insertion (= sequence) order
            stale_units.add(self.unacknowledged.pop(oldest).unit)
            self.unacknowledged_dropped += 1
        for unit in stale_units - {event.unit}:
            await self._count_unacknowledged(unit)
        message = f"{event.unit}: {event.transition.replace('_', ' ')} {event.batch_id} {event.phase}"
        for gen in (generator, self._server_events):
            e = gen.event
            e.SourceNode = self._unit_folders[event.unit]
            e.SourceName = event.unit
            e.Severity = 100
            e.BatchId = event.batch_id
            e.Unit = event.unit
            e.Phase = event.phase
            e.PreviousPhase = event.previous_phase or ""
            e.Transition = event.transition
            e.Sequence = event.sequence
            e.Product = event.product
            e.Recipe = event.recipe
            await gen.trigger(time_attr=event.at, message=message)
        if self._server is not None:
            await self._server.write_attribute_value(
                self._last_event_nodes[event.unit],
                ua.DataValue(Value=ua.Variant(event.transition, ua.VariantType.String), SourceTimestamp=event.at),
            )
        await self._count_unacknowledged(event.unit)

    async def _count_unacknowledged(self, unit: str) -> None:
        if self._server is None:
            return
        count = sum(1 for e in self.unacknowledged.values() if e.unit == unit)
        await self._server.write_attribute_value(
            self._unacked_nodes[unit], ua.DataValue(Value=ua.Variant(count, ua.VariantType.UInt32))
        )

    def _acknowledge_method(self, unit: str):
        async def acknowledge(parent: ua.NodeId, sequence: ua.Variant, comment: ua.Variant):
            """AcknowledgeBatchEvent(Sequence UInt32, Comment String): BadEventIdUnknown for a
            sequence number that is not an unacknowledged event of this unit."""
            number = sequence.Value
            event = self.unacknowledged.get(number) if isinstance(number, int) else None
            if event is None or event.unit != unit:
                return ua.StatusCode(ua.StatusCodes.BadEventIdUnknown)
            del self.unacknowledged[number]
            text = comment.Value if isinstance(comment.Value, str) else ""
            self.acknowledgements.append((number, text))
            log.info("OPC-UA client acknowledged batch event %d (%s %s): %r", number, unit, event.transition, text)
            await self._count_unacknowledged(unit)
            return []

        return acknowledge

    async def _build(self, server: Server) -> None:
        ns = self._ns
        root = await server.nodes.objects.add_folder(
            ua.NodeId(self.site.enterprise, ns), ua.QualifiedName(self.site.enterprise, ns)
        )
        for s in self.site.sites:
            site_node = await root.add_folder(ua.NodeId(s.id, ns), ua.QualifiedName(s.id, ns))
            for a in s.areas:
                area_path = f"{s.id}.{a.id}"
                area_node = await site_node.add_folder(ua.NodeId(area_path, ns), ua.QualifiedName(a.id, ns))
                for ln in a.lines:
                    line_path = f"{area_path}.{ln.id}"
                    line_node = await area_node.add_folder(
                        ua.NodeId(line_path, ns), ua.QualifiedName(ln.id, ns)
                    )
                    for u in ln.units:
                        unit_path = f"{line_path}.{u.id}"
                        unit_node = await line_node.add_folder(
                            ua.NodeId(unit_path, ns), ua.QualifiedName(u.id, ns)
                        )
                        for tag in u.tags:
                            self._tag_nodes[f"{unit_path}.{tag.id}"] = await self._add_analog_item(
                                server, unit_node.nodeid, f"{unit_path}.{tag.id}", tag
                            )
                        batch = await unit_node.add_variable(
                            ua.NodeId(f"{unit_path}.batch_id", ns),
                            ua.QualifiedName("batch_id", ns),
                            "",
                            ua.VariantType.String,
                        )
                        phase = await unit_node.add_variable(
                            ua.NodeId(f"{unit_path}.phase", ns),
                            ua.QualifiedName("phase", ns),
                            "",
                            ua.VariantType.String,
                        )
                        self._unit_nodes[unit_path] = (batch.nodeid, phase.nodeid)
                        # What its batches make, and by which recipe (ISA-88): fixed for the run.
                        for name, text in zip(("product", "recipe"), batch_info(u), strict=True):
                            await unit_node.add_variable(
                                ua.NodeId(f"{unit_path}.{name}", ns), ua.QualifiedName(name, ns), text,
                                ua.VariantType.String,
                            )
                        await self._build_batch_events(unit_node, unit_path)
                        await self._build_setpoints(server, unit_node, unit_path)

    async def _build_batch_events(self, unit_node: Any, unit_path: str) -> None:
        ns = self._ns
        self._unit_folders[unit_path] = unit_node.nodeid
        unacked = await unit_node.add_variable(
            ua.NodeId(f"{unit_path}.unacknowledged_batch_events", ns),
            ua.QualifiedName("unacknowledged_batch_events", ns),
            0,
            ua.VariantType.UInt32,
        )
        self._unacked_nodes[unit_path] = unacked.nodeid
        last = await unit_node.add_variable(
            ua.NodeId(f"{unit_path}.last_batch_transition", ns),
            ua.QualifiedName("last_batch_transition", ns),
            "",
            ua.VariantType.String,
        )
        self._last_event_nodes[unit_path] = last.nodeid
        sequence = ua.Argument(
            Name="Sequence", DataType=ua.NodeId(ua.ObjectIds.UInt32), ValueRank=ua.ValueRank.Scalar,
            Description=ua.LocalizedText("the batch event's Sequence field"),
        )
        comment = ua.Argument(
            Name="Comment", DataType=ua.NodeId(ua.ObjectIds.String), ValueRank=ua.ValueRank.Scalar,
            Description=ua.LocalizedText("why, by whom"),
        )
        await unit_node.add_method(
            ua.NodeId(f"{unit_path}.AcknowledgeBatchEvent", ns),
            ua.QualifiedName("AcknowledgeBatchEvent", ns),
            self._acknowledge_method(unit_path),
            [sequence, comment],
            [],
        )

    async def _build_setpoints(self, server: Server, unit_node: Any, unit_path: str) -> None:
        """A `Setpoints` folder of writable AnalogItems, one per operator setpoint of the unit."""
        if self.plant is None:
            return
        ranges = self.plant.setpoint_ranges(unit_path)
        if not ranges:
            return
        ns = self._ns
        units = self.plant.setpoint_units(unit_path)
        current = self.plant.setpoints(unit_path)
        folder = await unit_node.add_folder(ua.NodeId(f"{unit_path}.sp", ns), ua.QualifiedName("Setpoints", ns))
        for name, (low, high) in ranges.items():
            node = await self._analog_item(
                server,
                folder.nodeid,
                f"{unit_path}.sp.{name}",
                name,
                f"setpoint {name} of {unit_path} (write to override the recipe until the batch ends; NaN clears)",
                units[name],
                ua.Range(Low=low, High=high),
                writable=True,
                value=current[name],
            )
            self._setpoint_nodes[node] = (unit_path, name)
            self._setpoint_shown[node] = current[name]

    async def _add_analog_item(self, server: Server, parent: ua.NodeId, tag_id: str, tag: Tag) -> ua.NodeId:
        """A tag's read-only AnalogItemType variable."""
        return await self._analog_item(
            server, parent, tag_id, tag.id, tag.description or tag.id, tag.unit, eu_range(tag.limits), writable=False
        )

    async def _analog_item(
        self,
        server: Server,
        parent: ua.NodeId,
        node_id: str,
        name: str,
        description: str,
        unit: str,
        value_range: ua.Range,
        *,
        writable: bool,
        value: float = 0.0,
    ) -> ua.NodeId:
        """An AnalogItemType Double variable with EngineeringUnits and EURange (asyncua's
        add_variable only makes BaseDataVariables)."""
        ns = self._ns
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = ua.NodeId(node_id, ns)
        item.BrowseName = ua.QualifiedName(name, ns)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = parent
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
        item.TypeDefinition = ua.NodeId(ua.ObjectIds.AnalogItemType)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(name)
        attrs.Description = ua.LocalizedText(description)
        attrs.DataType = ua.NodeId(ua.ObjectIds.Double)
        attrs.Value = ua.Variant(value, ua.VariantType.Double)
        attrs.ValueRank = ua.ValueRank.Scalar
        access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
        attrs.AccessLevel = access
        attrs.UserAccessLevel = access
        item.NodeAttributes = attrs
        result = (await server.iserver.isession.add_nodes([item]))[0]
        result.StatusCode.check()
        node = server.get_node(result.AddedNodeId)
        await node.add_property(
            ua.NodeId(f"{node_id}.EngineeringUnits", ns),
            ua.QualifiedName("EngineeringUnits", 0),
            eu_information(unit),
            datatype=ua.NodeId(ua.ObjectIds.EUInformation),
        )
        await node.add_property(
            ua.NodeId(f"{node_id}.EURange", ns),
            ua.QualifiedName("EURange", 0),
            value_range,
            datatype=ua.NodeId(ua.ObjectIds.Range),
        )
        return result.AddedNodeId
