"""The MQTT source against a real Mosquitto with TLS and authentication: a CA made by the test,
a server certificate for 127.0.0.1/localhost, a client certificate for mutual TLS, and a password
file made by `mosquitto_passwd`. Anonymous or wrong logins are refused with a clear health error
that never holds the password."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import polars as pl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.sources.mqtt import MqttSource
from controltower.site import parse_site_config
from tests.conftest import free_port, require_binary
from tests.integration.conftest import stop_process, wait_for_port

PASSWORD = "s3cret-Pa55word"
TOPIC = "plant/lyon/ff/fill1/filler1"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key, cert: x509.Certificate) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_pki(root: Path) -> None:
    """ca.pem, server.pem/.key (127.0.0.1 and localhost), client.pem/.key, all signed by the CA."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "controltower test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(root / "ca", ca_key, ca)

    def leaf(name: str, usage, san: list[x509.GeneralName] | None) -> None:
        key = _key()
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        _write(root / name, key, builder.sign(ca_key, hashes.SHA256()))

    leaf("server", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, None)


@dataclass
class SecureBroker:
    tls_password_port: int  # TLS (server certificate) + username/password
    mutual_tls_port: int  # TLS with a client certificate required, no password
    pki: Path
    log: Path


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory) -> Iterator[SecureBroker]:
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
    passwd = require_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    root = tmp_path_factory.mktemp("secure-mosquitto")
    make_pki(root)
    subprocess.run([passwd, "-b", "-c", str(root / "passwords"), "collector", PASSWORD], check=True)
    p1, p2 = free_port(), free_port()
    tls = f"cafile {root / 'ca.pem'}\ncertfile {root / 'server.pem'}\nkeyfile {root / 'server.key'}\n"
    (root / "mosquitto.conf").write_text(
        # Started as root, mosquitto would read its files as the `mosquitto` user, who cannot enter pytest's tmp.
        "user root\nper_listener_settings true\npersistence false\n"
        f"log_dest file {root / 'mosquitto.log'}\n"
        f"listener {p1} 127.0.0.1\n{tls}allow_anonymous false\npassword_file {root / 'passwords'}\n"
        f"listener {p2} 127.0.0.1\n{tls}require_certificate true\nallow_anonymous true\n"
    )
    proc = subprocess.Popen([binary, "-c", str(root / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(p1, proc, what="mosquitto")
        wait_for_port(p2, proc, what="mosquitto")
        yield SecureBroker(p1, p2, root, root / "mosquitto.log")
    finally:
        stop_process(proc)


def site_with(**source):
    return parse_site_config({
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": [{"id": "fill_weight", "mqtt": {}}]},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "secure", "topic_template": "plant/{site}/{area}/{line}/{unit}",
                     "flush_interval_ms": 50, **source}],
    })


def client_tls(pki: Path, *, client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client_cert:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


async def run_until(source: MqttSource, check, timeout: float = 10.0) -> list[pl.DataFrame]:
    """Run the source until `check(batches)` holds or `timeout`; return what it emitted."""
    batches: list[pl.DataFrame] = []

    async def emit(batch: pl.DataFrame) -> None:
        batches.append(batch)

    task = asyncio.create_task(source.run(emit))
    try:
        for _ in range(int(timeout / 0.05)):
            if check(batches):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return batches


async def publish_when_connected(source: MqttSource, port: int, tls: ssl.SSLContext, **login) -> None:
    for _ in range(200):
        if source.health.connected:
            break
        await asyncio.sleep(0.05)
    assert source.health.connected, source.health.last_error
    async with aiomqtt.Client("127.0.0.1", port, tls_context=tls, **login) as pub:
        await pub.publish(TOPIC, json.dumps({"fill_weight": 2.001}).encode(), qos=1)


async def test_tls_with_username_and_password(secure_broker: SecureBroker, monkeypatch) -> None:
    monkeypatch.setenv("MQTT_TEST_PASSWORD", PASSWORD)
    site = site_with(url=f"mqtts://127.0.0.1:{secure_broker.tls_password_port}", tls={"ca_file": "ca.pem"},
                     username="collector", password_env="MQTT_TEST_PASSWORD")
    source = MqttSource(site.sources[0], site.tag_table(), data_dir=secure_broker.pki)
    publisher = asyncio.create_task(publish_when_connected(
        source, secure_broker.tls_password_port, client_tls(secure_broker.pki, client_cert=False),
        username="collector", password=PASSWORD))
    batches = await run_until(source, lambda b: b)
    await publisher
    assert pl.concat(batches)["value"].to_list() == [2.001]
    assert PASSWORD not in repr(site.sources[0]) and PASSWORD not in repr(source.health)


async def test_mutual_tls_with_a_client_certificate(secure_broker: SecureBroker) -> None:
    pki = secure_broker.pki
    site = site_with(url=f"mqtt://localhost:{secure_broker.mutual_tls_port}",  # a tls block turns TLS on
                     tls={"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"),
                          "key_file": str(pki / "client.key")})
    source = MqttSource(site.sources[0], site.tag_table())
    publisher = asyncio.create_task(publish_when_connected(
        source, secure_broker.mutual_tls_port, client_tls(pki, client_cert=True)))
    batches = await run_until(source, lambda b: b)
    await publisher
    assert pl.concat(batches)["value"].to_list() == [2.001]

    # Without a client certificate the broker ends the TLS 1.3 session before CONNACK: never connected.
    # (aiomqtt reports it only when its 10 s connect timeout runs out; not waited for here.)
    bare = site_with(url=f"mqtts://127.0.0.1:{secure_broker.mutual_tls_port}", tls={"ca_file": str(pki / "ca.pem")})
    source = MqttSource(bare.sources[0], bare.tag_table())
    seen_connected = []
    await run_until(source, lambda b: seen_connected.append(source.health.connected), timeout=1.5)
    assert not any(seen_connected)


async def test_anonymous_and_wrong_password_are_refused_clearly(secure_broker: SecureBroker, monkeypatch) -> None:
    url = f"mqtts://127.0.0.1:{secure_broker.tls_password_port}"
    ca = {"ca_file": str(secure_broker.pki / "ca.pem")}
    anonymous = site_with(url=url, tls=ca)
    source = MqttSource(anonymous.sources[0], anonymous.tag_table())
    await run_until(source, lambda b: source.health.last_error, timeout=5)
    assert not source.health.connected
    assert "refused the connection" in source.health.last_error and "Not authorized" in source.health.last_error

    wrong = "wrong-" + PASSWORD
    monkeypatch.setenv("MQTT_TEST_PASSWORD", wrong)
    login = site_with(url=url, tls=ca, username="collector", password_env="MQTT_TEST_PASSWORD")
    source = MqttSource(login.sources[0], login.tag_table())
    await run_until(source, lambda b: source.health.last_error, timeout=5)
    error = source.health.last_error
    assert "refused the connection" in error and "MQTT_TEST_PASSWORD" in error, error
    assert wrong not in error and PASSWORD not in error

    # An untrusted broker certificate (no CA given: the system store does not know the test CA).
    untrusted = site_with(url=url)
    source = MqttSource(untrusted.sources[0], untrusted.tag_table())
    await run_until(source, lambda b: source.health.last_error, timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in source.health.last_error or "certificate" in source.health.last_error.lower()
