"""OPC-UA security for the collector: its application instance certificate, the trust list of
server certificates, and a client set up for a policy, a mode and a user.

Certificate directory layout (`certificate_dir`, relative to the data directory):
    own/certificate.der            the collector's certificate (created on first run)
    own/private/private_key.pem    its private key (mode 0600, directory 0700)
    rejected/                      server certificates that were refused, one DER file each
    trusted/                       server certificates (or their issuing CAs) the user trusts
A server certificate is accepted only if it is valid now and either is itself in the trusted
directory or is issued by a CA certificate there. An unknown one is refused, saved under
`rejected/`, and the error says which file to copy where to trust it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import cert_gen, security_policies
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

COLLECTOR_APPLICATION_URI = "urn:pharma-controltower:collector"
COLLECTOR_NAME = "pharma-controltower collector"
PRODUCT_URI = "urn:pharma-controltower"

# Policy names as written in a site file -> asyncua policy classes.
SECURITY_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
SECURITY_MODES: dict[str, ua.MessageSecurityMode] = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_POLICY_NAME_BY_URI = {cls.URI: name for name, cls in SECURITY_POLICIES.items()}
_POLICY_NAME_BY_URI[security_policies.SecurityPolicyNone.URI] = "None"

# Status codes a server answers when it refuses the user, or the collector's certificate.
_AUTH_REFUSED = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenInvalid,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadUserSignatureInvalid,
}
_CERT_REFUSED = {
    ua.StatusCodes.BadCertificateUntrusted,
    ua.StatusCodes.BadSecurityChecksFailed,
    ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadCertificateUriInvalid,
    ua.StatusCodes.BadCertificateUseNotAllowed,
    ua.StatusCodes.BadCertificateTimeInvalid,
    ua.StatusCodes.BadCertificateRevoked,
}


class _RedactActivateSession(logging.Filter):
    """asyncua logs every request it sends at DEBUG; ActivateSession carries the user's password
    (in clear inside an encrypted channel). Keep the record, drop the request's contents."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, ua.ActivateSessionRequest) for a in record.args):
            record.args = tuple(
                "ActivateSessionRequest(<redacted>)" if isinstance(a, ua.ActivateSessionRequest) else a
                for a in record.args
            )
        return True


logging.getLogger("asyncua.client.ua_client.UASocketProtocol").addFilter(_RedactActivateSession())


class OpcUaSecurityError(Exception):
    """A secure connection could not be set up; the message says why and what to do. Never a secret."""


class UntrustedServerCertificate(OpcUaSecurityError):
    def __init__(self, message: str, *, rejected_path: Path, trusted_dir: Path, thumbprint: str):
        super().__init__(message)
        self.rejected_path = rejected_path
        self.trusted_dir = trusted_dir
        self.thumbprint = thumbprint


class NoMatchingEndpoint(OpcUaSecurityError):
    pass


class AuthenticationFailed(OpcUaSecurityError):
    pass


class CertificateRefusedByServer(OpcUaSecurityError):
    pass


# -- certificates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Where one application keeps its certificate, its key and its trust list."""

    root: Path
    trusted_dir: Path

    @classmethod
    def under(cls, root: Path, trusted_dir: Path | None = None) -> Pki:
        return cls(root=root, trusted_dir=trusted_dir if trusted_dir is not None else root / "trusted")

    @property
    def certificate(self) -> Path:
        return self.root / "own" / "certificate.der"

    @property
    def private_key(self) -> Path:
        return self.root / "own" / "private" / "private_key.pem"

    @property
    def rejected_dir(self) -> Path:
        return self.root / "rejected"


def thumbprint(der: bytes) -> str:
    """The OPC-UA certificate thumbprint: SHA-1 of the DER, in hex."""
    return hashlib.sha1(der).hexdigest()  # OPC-UA defines thumbprints as SHA-1


def first_certificate(der: bytes) -> bytes:
    """The leaf of a DER certificate chain (servers may send the chain concatenated)."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    length = der[1]
    if length < 0x80:
        return der[: 2 + length]
    n = length & 0x7F
    return der[: 2 + n + int.from_bytes(der[2 : 2 + n], "big")]


def _subject_alt_names(application_uri: str, hostnames: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in dict.fromkeys([*hostnames, socket.gethostname(), "localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _certificate_fits(cert: x509.Certificate, application_uri: str) -> bool:
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return application_uri in san.get_values_for_type(x509.UniformResourceIdentifier)


def _write_private_key(path: Path, pem: bytes) -> None:
    """Write a key readable by its owner only: created 0600 (never briefly wider), in a 0700 directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_application_certificate(
    certificate: Path,
    private_key: Path,
    *,
    application_uri: str,
    common_name: str,
    hostnames: Sequence[str] = (),
    server: bool = False,
    days: int = 365 * 2,
) -> bool:
    """Create a self-signed OPC-UA application certificate (DER) and its RSA-2048 key (PEM,
    0600) if absent, or the certificate again if it expired or names another application URI.
    Key usages: digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment,
    keyCertSign; extended: clientAuth (and serverAuth for a server). True if anything was made."""
    made = False
    if private_key.is_file():
        if private_key.stat().st_mode & 0o077:
            log.warning("private key %s was readable by others; restricting it to its owner", private_key)
            os.chmod(private_key, 0o600)
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    else:
        key = cert_gen.generate_private_key()
        _write_private_key(private_key, cert_gen.dump_private_key_as_pem(key))
        certificate.unlink(missing_ok=True)  # a new key needs a new certificate
        made = True
    if certificate.is_file():
        cert = x509.load_der_x509_certificate(certificate.read_bytes())
        if _certificate_fits(cert, application_uri) and cert.public_key() == key.public_key():
            return made
        log.warning(
            "certificate %s expired or does not fit %s; creating a new one", certificate, application_uri
        )
    uses = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        common_name,
        {"organizationName": "pharma-controltower"},
        _subject_alt_names(application_uri, hostnames),
        extended=uses,
        days=days,
    )
    certificate.parent.mkdir(parents=True, exist_ok=True)
    tmp = certificate.with_name(certificate.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    os.replace(tmp, certificate)
    log.info("created OPC-UA application certificate %s for %s", certificate, application_uri)
    return True


# -- trust list ----------------------------------------------------------------------------------


def _load_certificates(directory: Path) -> list[tuple[Path, x509.Certificate]]:
    found: list[tuple[Path, x509.Certificate]] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        data = path.read_bytes()
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                found.extend((path, c) for c in x509.load_pem_x509_certificates(data))
            else:
                found.append((path, x509.load_der_x509_certificate(first_certificate(data))))
        except ValueError:
            log.warning("ignoring %s in the trust list: not a certificate", path)
    return found


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"


@dataclass
class TrustList:
    """Server certificates the collector accepts: those in `trusted_dir` or issued by a CA there.
    Re-read at every check, so a certificate copied in is accepted at the next reconnection."""

    trusted_dir: Path
    rejected_dir: Path

    def is_trusted(self, cert: x509.Certificate) -> bool:
        trusted = _load_certificates(self.trusted_dir)
        der = cert.public_bytes(serialization.Encoding.DER)
        if any(t.public_bytes(serialization.Encoding.DER) == der for _, t in trusted):
            return True
        authorities = [t for _, t in trusted if _is_ca(t)]
        if not authorities:
            return False
        verifier = (
            x509.verification.PolicyBuilder()
            .store(x509.verification.Store(authorities))
            .extension_policies(
                # OPC-UA CAs (asyncua's, many vendors') mark BasicConstraints non-critical: accept that.
                ca_policy=x509.verification.ExtensionPolicy.permit_all().require_present(
                    x509.BasicConstraints, x509.verification.Criticality.AGNOSTIC, None
                ),
                ee_policy=x509.verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(cert, [])
        except x509.verification.VerificationError as exc:
            log.debug("server certificate not issued by a trusted CA: %s", exc)
            return False
        return True

    def check(self, der: bytes, *, url: str) -> None:
        """Return if the server certificate `der` is trusted and valid now; otherwise save it under
        `rejected_dir` and raise UntrustedServerCertificate (or OpcUaSecurityError if expired)."""
        der = first_certificate(der)
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise OpcUaSecurityError(f"server {url} sent a certificate that cannot be read: {exc}") from None
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise OpcUaSecurityError(
                f"server {url} certificate (CN={_common_name(cert)}) is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}; the server needs a new one"
            )
        if self.is_trusted(cert):
            return
        print_ = thumbprint(der)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        rejected = self.rejected_dir / f"{print_[:16]}.der"
        if not rejected.exists():
            rejected.write_bytes(der)
        # Kept short (health shows 300 characters): what to copy where first, details after.
        base = Path(os.path.commonpath([self.rejected_dir.resolve(), self.trusted_dir.resolve()]))
        if base != Path(base.anchor):
            what = f"copy {rejected.resolve().relative_to(base)} into {self.trusted_dir.resolve().relative_to(base)}/ in {base}"
        else:
            what = f"copy {rejected} into {self.trusted_dir}/"
        raise UntrustedServerCertificate(
            f"server certificate is not trusted; to trust it, {what} (CN={_common_name(cert)[:60]}, SHA-1 {print_}, from {url})",
            rejected_path=rejected,
            trusted_dir=self.trusted_dir,
            thumbprint=print_,
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca) and (
            cert.issuer != cert.subject
            or cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        )
    except x509.ExtensionNotFound:
        return False


# -- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSecurity:
    """How a client connects: policy and mode (None for no security), where its PKI lives, and
    its user. `password_source` names where the password came from, for error messages."""

    policy: str = "None"
    mode: str | None = None
    pki: Pki | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_source: str = "the configured password"

    def __post_init__(self) -> None:
        if self.policy != "None":
            if self.policy not in SECURITY_POLICIES:
                raise ValueError(
                    f"unknown security policy {self.policy!r}; one of None, {', '.join(SECURITY_POLICIES)}"
                )
            if self.mode not in SECURITY_MODES:
                raise ValueError(f"security policy {self.policy} needs a mode: Sign or SignAndEncrypt")
            if self.pki is None:
                raise ValueError("a security policy needs a certificate directory")


def negotiated_security(client: Client) -> tuple[str, str]:
    """(policy name, mode name) of a connected client's secure channel, e.g. ("Basic256Sha256", "SignAndEncrypt")."""
    policy = client.security_policy
    name = _POLICY_NAME_BY_URI.get(policy.URI, policy.URI)
    mode = {ua.MessageSecurityMode.None_: "None"}.get(
        policy.Mode, getattr(policy.Mode, "name", str(policy.Mode))
    )
    return name, mode


async def secure_client(url: str, security: ClientSecurity, *, timeout: float = 4.0) -> Client:
    """A not yet connected asyncua Client for `url` set up as `security` says. With a policy, the
    collector certificate is created if absent, the server's endpoints are read over an
    unsecured discovery channel, and the certificate of the endpoint with that policy and mode is
    checked against the trust list before any secure channel is opened. Raises OpcUaSecurityError."""
    client = Client(url, timeout=timeout)
    client.application_uri = COLLECTOR_APPLICATION_URI
    client.product_uri = PRODUCT_URI
    client.name = client.description = COLLECTOR_NAME
    if security.policy != "None":
        pki = security.pki
        assert pki is not None and security.mode is not None
        await asyncio.to_thread(
            ensure_application_certificate,
            pki.certificate,
            pki.private_key,
            application_uri=COLLECTOR_APPLICATION_URI,
            common_name=COLLECTOR_NAME,
            hostnames=[socket.gethostname()],
        )
        policy_cls, mode = SECURITY_POLICIES[security.policy], SECURITY_MODES[security.mode]
        endpoint = await _find_endpoint(
            url, policy_cls.URI, mode, timeout, f"{security.policy}/{security.mode}"
        )
        server_der = first_certificate(endpoint.ServerCertificate or b"")
        if not server_der:
            raise OpcUaSecurityError(
                f"server {url} offers {security.policy}/{security.mode} without a certificate"
            )
        await asyncio.to_thread(TrustList(pki.trusted_dir, pki.rejected_dir).check, server_der, url=url)
        await client.set_security(
            policy_cls,
            certificate=str(pki.certificate),
            private_key=str(pki.private_key),
            server_certificate=server_der,
            mode=mode,
        )
    if security.username:
        client.set_user(security.username)
        if security.password is not None:
            client.set_password(security.password)
        if security.policy == "None":
            log.warning("OPC-UA %s: user %s over a channel without security", url, security.username)
    return client


async def _find_endpoint(
    url: str, policy_uri: str, mode: ua.MessageSecurityMode, timeout: float, wanted: str
) -> ua.EndpointDescription:
    discovery = Client(url, timeout=timeout)
    endpoints = await discovery.connect_and_get_server_endpoints()
    for ep in endpoints:
        if ep.SecurityPolicyUri == policy_uri and ep.SecurityMode == mode:
            return ep
    offered = sorted(
        {
            f"{_POLICY_NAME_BY_URI.get(ep.SecurityPolicyUri, ep.SecurityPolicyUri)}/{ep.SecurityMode.name}"
            for ep in endpoints
        }
    )
    raise NoMatchingEndpoint(
        f"server {url} has no {wanted} endpoint; it offers {', '.join(offered) or 'none'}"
    )


async def connect(client: Client, security: ClientSecurity) -> None:
    """`client.connect()`, turning the server's refusals into OpcUaSecurityError messages that say
    what to fix (never containing the password)."""
    try:
        await client.connect()
    except ua.UaStatusCodeError as exc:
        code = exc.code
        # asyncua raises one subclass per known status code, named after it.
        name = type(exc).__name__ if type(exc) is not ua.UaStatusCodeError else hex(code)
        if code in _AUTH_REFUSED:
            who = f"user {security.username!r}" if security.username else "anonymous access"
            hint = (
                f"check the username and {security.password_source}"
                if security.username
                else "configure a username"
            )
            raise AuthenticationFailed(
                f"server {client.server_url.geturl()} refused {who} ({name}): {hint}"
            ) from None
        if code in _CERT_REFUSED and security.pki is not None:
            raise CertificateRefusedByServer(
                f"server {client.server_url.geturl()} refused the collector's certificate ({name}): add "
                f"{security.pki.certificate} to the server's trusted client certificates"
            ) from None
        raise
