"""Security settings of an OPC-UA source in a site file: defaults keep old files valid, and an
inconsistent combination fails at load time naming the source and the key."""

from __future__ import annotations

import pytest

from collector.sources.opcua_security import first_certificate
from controltower.site import OpcUaSourceConfig, SiteConfigError, parse_site_config

SITE = {
    "enterprise": "E",
    "sites": [
        {
            "id": "s",
            "areas": [
                {
                    "id": "a",
                    "lines": [
                        {
                            "id": "l",
                            "units": [{"id": "u", "tags": [{"id": "t", "opcua": {"node_id": "ns=2;s=t"}}]}],
                        }
                    ],
                }
            ],
        }
    ],
}


def with_source(**source) -> dict:
    return {**SITE, "sources": [{"kind": "opcua", "name": "plc", "url": "opc.tcp://plc:4840", **source}]}


def test_defaults_are_no_security_and_a_pki_under_the_data_dir():
    config = OpcUaSourceConfig(kind="opcua", name="plc", url="opc.tcp://plc:4840")
    assert (config.security_policy, config.security_mode) == ("None", None)
    assert (config.certificate_dir, config.trusted_server_certificates) == ("pki", "pki/trusted")


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"])
def test_a_policy_with_a_mode_is_accepted(policy):
    site = parse_site_config(with_source(security_policy=policy, security_mode="SignAndEncrypt"))
    assert site.sources[0].security_policy == policy


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ({"security_policy": "Basic256Sha256"}, "security_policy Basic256Sha256 needs security_mode"),
        ({"security_mode": "Sign"}, "security_mode Sign needs a security_policy other than None"),
        (
            {"security_policy": "Basic128Rsa15", "security_mode": "Sign"},
            "Input should be 'None', 'Basic256Sha256'",
        ),
        ({"password_env": "X"}, "password_env is set but username is not"),
    ],
)
def test_inconsistent_security_fails_naming_file_and_key(source, reason):
    with pytest.raises(SiteConfigError) as raised:
        parse_site_config(with_source(**source), "site.yaml")
    assert str(raised.value).startswith("site.yaml: sources[0]")
    assert reason in str(raised.value)


def test_yaml_null_policy_means_none():
    assert parse_site_config(with_source(security_policy=None)).sources[0].security_policy == "None"


def test_first_certificate_of_a_chain():
    leaf = bytes([0x30, 0x82, 0x00, 0x03, 1, 2, 3])
    assert first_certificate(leaf + bytes([0x30, 0x01, 9])) == leaf
    assert first_certificate(bytes([0x30, 0x02, 7, 7, 0x30])) == bytes([0x30, 0x02, 7, 7])
