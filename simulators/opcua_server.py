"""The plant over OPC-UA: an asyncua server whose address space mirrors the site's ISA-95
hierarchy, with one AnalogItem per tag and the batch id and phase of every unit.

Address space (namespace `urn:pharma-controltower:simulator`, always index 2):
    Objects/<enterprise>/<site>/<area>/<line>/<unit>/          folders, ns=2;s=<path>
        <tag>         AnalogItemType, Double, ns=2;s=site.area.line.unit.tag
                      properties EngineeringUnits (EUInformation) and EURange (Range)
        batch_id      String, ns=2;s=site.area.line.unit.batch_id
        phase         String, ns=2;s=site.area.line.unit.phase
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
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from controltower.site import Limits, SiteConfig, Tag
from simulators.clock import utc_now

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
    ):
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
        await self._build(server)
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

    async def publish(self, frame: pl.DataFrame, unit_states: dict[str, tuple[str, str]]) -> None:
        """Write a step's samples (sample schema) and each unit's (batch_id, phase)."""
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

    async def _add_analog_item(self, server: Server, parent: ua.NodeId, tag_id: str, tag: Tag) -> ua.NodeId:
        """An AnalogItemType variable (asyncua's add_variable only makes BaseDataVariables)."""
        ns = self._ns
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = ua.NodeId(tag_id, ns)
        item.BrowseName = ua.QualifiedName(tag.id, ns)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = parent
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
        item.TypeDefinition = ua.NodeId(ua.ObjectIds.AnalogItemType)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(tag.id)
        attrs.Description = ua.LocalizedText(tag.description or tag.id)
        attrs.DataType = ua.NodeId(ua.ObjectIds.Double)
        attrs.Value = ua.Variant(0.0, ua.VariantType.Double)
        attrs.ValueRank = ua.ValueRank.Scalar
        attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        item.NodeAttributes = attrs
        result = (await server.iserver.isession.add_nodes([item]))[0]
        result.StatusCode.check()
        node = server.get_node(result.AddedNodeId)
        await node.add_property(
            ua.NodeId(f"{tag_id}.EngineeringUnits", ns),
            ua.QualifiedName("EngineeringUnits", 0),
            eu_information(tag.unit),
            datatype=ua.NodeId(ua.ObjectIds.EUInformation),
        )
        await node.add_property(
            ua.NodeId(f"{tag_id}.EURange", ns),
            ua.QualifiedName("EURange", 0),
            eu_range(tag.limits),
            datatype=ua.NodeId(ua.ObjectIds.Range),
        )
        return result.AddedNodeId
