"""The OPC-UA source against the project's simulator serving Basic256Sha256 (Sign and
SignAndEncrypt) with a username and password: real handshakes, real certificates, no mocks.

Certificates are made once per module (RSA key generation is slow on small machines) and
copied into each test's data directory."""

from __future__ import annotations

import asyncio
import logging
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from collector.sources.opcua import OpcUaSource
from collector.sources.opcua_security import (
    COLLECTOR_APPLICATION_URI,
    Pki,
    TrustList,
    UntrustedServerCertificate,
    ensure_application_certificate,
)
from controltower.site import OpcUaSourceConfig, SiteConfig, load_site_config
from simulators.opcua_server import PlantOpcUaServer
from simulators.plant import Plant
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "operator", "s3cret-Pa55word!"
PASSWORD_ENV = "CT_TEST_OPCUA_PASSWORD"
OPCUA_TAGS = {"lyon.usp.bio1.br101.temperature", "lyon.usp.bio1.br101.ph"}


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    return load_site_config(REPO / "config" / "demo-site.yaml")


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory) -> tuple[Path, Path]:
    """The simulator's certificate and key, made once for the module."""
    root = tmp_path_factory.mktemp("server-pki")
    cert, key = root / "server.der", root / "server.pem"
    ensure_application_certificate(
        cert,
        key,
        application_uri="urn:pharma-controltower:simulator:server",
        common_name="simulator",
        hostnames=["127.0.0.1"],
        server=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def collector_pki(tmp_path_factory) -> Path:
    """A collector certificate directory (own certificate and key), made once for the module."""
    root = tmp_path_factory.mktemp("collector-pki") / "pki"
    pki = Pki.under(root)
    ensure_application_certificate(
        pki.certificate, pki.private_key, application_uri=COLLECTOR_APPLICATION_URI, common_name="collector"
    )
    return root


def data_dir_with(tmp_path: Path, collector_pki: Path, trusted: Path | None = None) -> Path:
    data = tmp_path / "data"
    shutil.copytree(collector_pki, data / "pki")
    if trusted is not None:
        (data / "pki" / "trusted").mkdir(parents=True, exist_ok=True)
        shutil.copy(trusted, data / "pki" / "trusted" / trusted.name)
    return data


async def start_server(site: SiteConfig, server_pki: tuple[Path, Path], **kwargs) -> PlantOpcUaServer:
    server = PlantOpcUaServer(
        site,
        url=f"opc.tcp://127.0.0.1:{free_port()}/sim",
        security=kwargs.pop("security", ["Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]),
        certificate=server_pki[0],
        private_key=server_pki[1],
        users={USER: PASSWORD},
        **kwargs,
    )
    await server.start()
    return server


def source_for(site: SiteConfig, url: str, data_dir: Path, **security) -> OpcUaSource:
    config = OpcUaSourceConfig(
        kind="opcua", name="secure", url=url, publishing_interval_ms=100, flush_interval_ms=100, **security
    )
    tags = [t for t in site.tag_table() if t.tag_id in OPCUA_TAGS]
    tags = [t.model_copy(update={"source": "secure"}) for t in tags]
    return OpcUaSource(config, tags, data_dir=data_dir)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class Collected:
    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    async def __call__(self, frame: pl.DataFrame) -> None:
        self.frames.append(frame)

    @property
    def good_tags(self) -> set[str]:
        return {t for f in self.frames for t in f.filter(pl.col("quality") == "good")["tag_id"].to_list()}


async def run_plant(server: PlantOpcUaServer, site: SiteConfig) -> None:
    """Publish the plant's values every 0.1 s until cancelled."""
    plant = Plant(site, seed=3)
    while True:
        await server.publish(plant.step(0.1), plant.unit_states())
        await asyncio.sleep(0.1)


@pytest.fixture
def password(monkeypatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return PASSWORD


async def test_sign_and_encrypt_with_username_collects_values(
    site, server_pki, collector_pki, tmp_path, password
):
    server = await start_server(site, server_pki)
    data = data_dir_with(tmp_path, collector_pki, trusted=server_pki[0])
    source = source_for(
        site,
        server.url,
        data,
        security_policy="Basic256Sha256",
        security_mode="SignAndEncrypt",
        username=USER,
        password_env=PASSWORD_ENV,
    )
    collected = Collected()
    plant = asyncio.create_task(run_plant(server, site))
    task = asyncio.create_task(source.run(collected))
    try:
        await until(lambda: source.health.connected, 15, f"a secure session (health: {source.health})")
        assert source.session_security == ("Basic256Sha256", "SignAndEncrypt")
        # The server side agrees: the collector's channel is encrypted.
        assert server.channel_security() == [(SecurityPolicyBasic256Sha256.URI, "SignAndEncrypt")]
        await until(lambda: collected.good_tags == OPCUA_TAGS, 10, f"good samples of {OPCUA_TAGS}")
        assert source.health.last_error is None
        assert password not in repr(source.security) and password not in repr(source.config)
    finally:
        task.cancel()
        plant.cancel()
        await asyncio.gather(task, plant, return_exceptions=True)
        await server.stop()


async def test_untrusted_server_is_rejected_until_its_certificate_is_copied_into_trusted(
    site, server_pki, collector_pki, tmp_path, password
):
    server = await start_server(site, server_pki, security=["Basic256Sha256_Sign"])
    data = data_dir_with(tmp_path, collector_pki)  # nothing trusted yet
    source = source_for(
        site,
        server.url,
        data,
        security_policy="Basic256Sha256",
        security_mode="Sign",
        username=USER,
        password_env=PASSWORD_ENV,
    )
    task = asyncio.create_task(source.run(Collected()))
    try:
        await until(lambda: source.health.last_error is not None, 10, "the rejection")
        error = source.health.last_error
        assert error.startswith("UntrustedServerCertificate: "), error
        rejected = list((data / "pki" / "rejected").iterdir())
        assert len(rejected) == 1 and rejected[0].read_bytes() == server_pki[0].read_bytes()
        trusted_dir = data / "pki" / "trusted"
        pki = (data / "pki").resolve()
        assert f"to trust it, copy rejected/{rejected[0].name} into trusted/ in {pki} (CN=" in error
        assert not source.health.connected

        # The user does what the message says; the collector retries on its own.
        trusted_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(rejected[0], trusted_dir)
        await until(lambda: source.health.connected, 15, f"a session once trusted (health: {source.health})")
        assert source.session_security == ("Basic256Sha256", "Sign")
        assert source.health.last_error is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_wrong_password_fails_with_a_clear_error_without_the_password(
    site, server_pki, collector_pki, tmp_path, monkeypatch, caplog
):
    wrong = "not-the-Right-one-42"
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    server = await start_server(site, server_pki, security=["Basic256Sha256_SignAndEncrypt"])
    data = data_dir_with(tmp_path, collector_pki, trusted=server_pki[0])
    source = source_for(
        site,
        server.url,
        data,
        security_policy="Basic256Sha256",
        security_mode="SignAndEncrypt",
        username=USER,
        password_env=PASSWORD_ENV,
    )
    caplog.set_level(logging.DEBUG)  # asyncua logs every request it sends at DEBUG
    # ...unless a test that ran `controltower.cli.main` in this process quieted asyncua's logger.
    caplog.set_level(logging.DEBUG, logger="asyncua")
    task = asyncio.create_task(source.run(Collected()))
    try:
        await until(lambda: source.health.last_error is not None, 10, "the refusal")
        error = source.health.last_error
        assert error.startswith("AuthenticationFailed: "), error
        assert f"refused user '{USER}' (BadUserAccessDenied)" in error
        assert f"${PASSWORD_ENV}" in error
        assert wrong not in error and PASSWORD not in error
        assert "ActivateSessionRequest(<redacted>)" in caplog.text
        assert wrong not in caplog.text
        assert not source.health.connected
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


async def test_a_server_without_the_policy_names_what_it_offers(site, server_pki, collector_pki, tmp_path):
    server = await start_server(site, server_pki, security=["Basic256Sha256_Sign"])
    data = data_dir_with(tmp_path, collector_pki, trusted=server_pki[0])
    source = source_for(
        site, server.url, data, security_policy="Basic256Sha256", security_mode="SignAndEncrypt"
    )
    task = asyncio.create_task(source.run(Collected()))
    try:
        await until(lambda: source.health.last_error is not None, 10, "the error")
        assert source.health.last_error == (
            f"NoMatchingEndpoint: server {server.url} has no Basic256Sha256/SignAndEncrypt endpoint; "
            "it offers Basic256Sha256/Sign"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


def test_client_certificate_is_created_on_first_run_with_a_private_key_only_its_owner_reads(tmp_path):
    pki = Pki.under(tmp_path / "pki")
    assert ensure_application_certificate(
        pki.certificate, pki.private_key, application_uri=COLLECTOR_APPLICATION_URI, common_name="collector"
    )
    assert stat.S_IMODE(pki.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.private_key.parent.stat().st_mode) == 0o700
    cert = x509.load_der_x509_certificate(pki.certificate.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [COLLECTOR_APPLICATION_URI]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (
        usage.digital_signature
        and usage.content_commitment
        and usage.key_encipherment
        and usage.data_encipherment
    )
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    # A second run keeps them.
    before = pki.certificate.read_bytes()
    assert not ensure_application_certificate(
        pki.certificate, pki.private_key, application_uri=COLLECTOR_APPLICATION_URI, common_name="collector"
    )
    assert pki.certificate.read_bytes() == before


async def test_source_creates_its_certificate_on_first_run(site, server_pki, tmp_path, password):
    """The collector's first connection makes its certificate; the server then sees it."""
    server = await start_server(site, server_pki, security=["Basic256Sha256_SignAndEncrypt"])
    data = tmp_path / "data"
    (data / "pki" / "trusted").mkdir(parents=True)
    shutil.copy(server_pki[0], data / "pki" / "trusted")
    source = source_for(
        site,
        server.url,
        data,
        security_policy="Basic256Sha256",
        security_mode="SignAndEncrypt",
        username=USER,
        password_env=PASSWORD_ENV,
    )
    task = asyncio.create_task(source.run(Collected()))
    try:
        await until(lambda: source.health.connected, 20, f"a session (health: {source.health})")
        key = data / "pki" / "own" / "private" / "private_key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert (data / "pki" / "own" / "certificate.der").is_file()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


def test_trust_list_accepts_a_server_certificate_copied_into_trusted(tmp_path, server_pki):
    trust = TrustList(tmp_path / "trusted", tmp_path / "rejected")
    with pytest.raises(UntrustedServerCertificate) as raised:
        trust.check(server_pki[0].read_bytes(), url="opc.tcp://x:1")
    assert raised.value.rejected_path.read_bytes() == server_pki[0].read_bytes()
    (tmp_path / "trusted").mkdir()
    shutil.copy(server_pki[0], tmp_path / "trusted" / "server.der")
    trust.check(server_pki[0].read_bytes(), url="opc.tcp://x:1")


def test_missing_password_variable_fails_at_start_naming_it(site, monkeypatch, tmp_path):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(
        ValueError, match=f"password_env names the environment variable {PASSWORD_ENV}, which is not set"
    ):
        source_for(site, "opc.tcp://127.0.0.1:1/x", tmp_path, username=USER, password_env=PASSWORD_ENV)


def test_trust_list_accepts_a_server_certificate_issued_by_a_trusted_ca(tmp_path):
    from asyncua.crypto import cert_gen
    from cryptography.hazmat.primitives.serialization import Encoding

    ca_key = cert_gen.generate_private_key()
    ca = cert_gen.generate_self_signed_app_certificate(
        ca_key, "Site CA", {}, [x509.UniformResourceIdentifier("urn:site:ca")], extended=[]
    )
    leaf_key = cert_gen.generate_private_key()
    csr = cert_gen.generate_app_certificate_signing_request(
        leaf_key,
        "plc",
        {},
        [x509.UniformResourceIdentifier("urn:site:plc")],
        [ExtendedKeyUsageOID.SERVER_AUTH],
    )
    leaf = cert_gen.sign_certificate_request(csr, ca, ca_key).public_bytes(Encoding.DER)
    trust = TrustList(tmp_path / "trusted", tmp_path / "rejected")
    with pytest.raises(UntrustedServerCertificate):
        trust.check(leaf, url="opc.tcp://plc:4840")
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "site-ca.der").write_bytes(ca.public_bytes(Encoding.DER))
    trust.check(leaf, url="opc.tcp://plc:4840")


async def test_aes_policies_connect_where_asyncua_supports_them(
    site, server_pki, collector_pki, tmp_path, password
):
    from collector.sources.opcua_security import ClientSecurity, connect, negotiated_security, secure_client

    server = await start_server(
        site, server_pki, security=["Aes128Sha256RsaOaep_SignAndEncrypt", "Aes256Sha256RsaPss_Sign"]
    )
    data = data_dir_with(tmp_path, collector_pki, trusted=server_pki[0])
    try:
        for policy, mode in (("Aes128Sha256RsaOaep", "SignAndEncrypt"), ("Aes256Sha256RsaPss", "Sign")):
            security = ClientSecurity(
                policy=policy, mode=mode, pki=Pki.under(data / "pki"), username=USER, password=password
            )
            client = await secure_client(server.url, security)
            await connect(client, security)
            try:
                assert negotiated_security(client) == (policy, mode)
                name = await client.get_node("ns=2;s=lyon.usp.bio1.br101.temperature").read_display_name()
                assert name.Text == "temperature"
            finally:
                await client.disconnect()
    finally:
        await server.stop()
