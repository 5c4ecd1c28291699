"""MQTT source settings in a site file: defaults keep old files valid, inconsistent settings fail
at load time naming the key, and what can only be checked against the tags or the disk (topics,
TLS files, the password variable) fails when the source is built, naming source, tag or key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.sources.mqtt import MqttBindingError, MqttJsonDecoder, MqttSource
from controltower.site import MqttSourceConfig, SiteConfigError, load_site_config, parse_site_config
from tests.conftest import REPO

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def site(tags: list[dict], **source) -> dict:
    return {
        "enterprise": "E",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": tags},
        ]}]}]}],
        "sources": [{"kind": "mqtt", "name": "m", "url": "mqtt://127.0.0.1:1883", **source}],
    }


def test_defaults() -> None:
    config = MqttSourceConfig(kind="mqtt", name="m", url="mqtt://broker")
    assert (config.protocol, config.qos, config.clean_start, config.session_expiry_s) == ("5", 1, None, 3600)
    assert (config.shared_group, config.tls, config.payload, config.topic_template) == (None, None, "json", None)
    assert not config.persistent_session and not config.uses_tls
    assert MqttSourceConfig(kind="mqtt", name="m", url="mqtt://b", client_id="c").persistent_session
    assert not MqttSourceConfig(kind="mqtt", name="m", url="mqtt://b", client_id="c", clean_start=True).persistent_session
    assert MqttSourceConfig(kind="mqtt", name="m", url="mqtts://b").uses_tls
    assert MqttSourceConfig(kind="mqtt", name="m", url="mqtt://b", protocol=5).protocol == "5"  # YAML number
    load_site_config(REPO / "config" / "demo-site.yaml")  # the demo file is still valid


@pytest.mark.parametrize(
    ("source", "key", "reason"),
    [
        ({"clean_start": False}, "sources[0]", "client_id: a persistent session"),
        ({"protocol": "4"}, "sources[0].protocol", "'5' or '3.1.1'"),
        ({"password_env": "P"}, "sources[0]", "password_env is set but username is not"),
        ({"tls": {"cert_file": "c.pem"}}, "sources[0].tls", "both cert_file and key_file"),
        ({"topic_template": "{prefix}/{plant}"}, "sources[0].topic_template", "{plant}"),
        ({"topic_template": "a/+/{unit}"}, "sources[0].topic_template", "wildcards"),
        ({"shared_group": "a/b"}, "sources[0].shared_group", "pattern"),
        ({"batched_json": {"samples": "x"}}, "sources[0].batched_json.samples", "unknown key"),
    ],
)
def test_inconsistent_settings_name_the_key(source: dict, key: str, reason: str) -> None:
    with pytest.raises(SiteConfigError) as caught:
        parse_site_config(site([{"id": "t", "mqtt": {"topic": "a/b", "field": "t"}}], **source), "site.yaml")
    text = str(caught.value)
    assert text.startswith(f"site.yaml: {key}: ") and reason in text, text


def test_binding_checks_happen_when_the_source_is_built(tmp_path, monkeypatch) -> None:
    config = parse_site_config(site([{"id": "t", "mqtt": {}}]))
    with pytest.raises(MqttBindingError, match="tag lyon.ff.fill1.filler1.t: .*no topic_template"):
        MqttSource(config.sources[0], config.tag_table())

    config = parse_site_config(site([{"id": "t", "mqtt": {}}, {"id": "u", "mqtt": {}}],
                                    topic_template="p/{unit}", value_field="v"))
    with pytest.raises(MqttBindingError, match="both read field 'v' of topic 'p/filler1'"):
        MqttSource(config.sources[0], config.tag_table())

    tagged = [{"id": "t", "mqtt": {"topic": "a/b", "field": "t"}}]
    config = parse_site_config(site(tagged, tls={"ca_file": "missing-ca.pem"}))
    with pytest.raises(MqttBindingError, match=r"tls.ca_file: .*missing-ca.pem is not a readable file"):
        MqttSource(config.sources[0], config.tag_table(), data_dir=tmp_path)
    (tmp_path / "ca.pem").write_text("not a certificate")
    config = parse_site_config(site(tagged, tls={"ca_file": "ca.pem"}))
    with pytest.raises(MqttBindingError, match="tls.ca_file: not usable"):
        MqttSource(config.sources[0], config.tag_table(), data_dir=tmp_path)

    monkeypatch.delenv("MQTT_TEST_PASSWORD", raising=False)
    config = parse_site_config(site(tagged, username="u", password_env="MQTT_TEST_PASSWORD"))
    with pytest.raises(MqttBindingError, match="password_env: environment variable MQTT_TEST_PASSWORD is not set"):
        MqttSource(config.sources[0], config.tag_table())


def test_topic_template_and_value_field_give_bindings() -> None:
    tags = [
        {"id": "fill_weight", "mqtt": {}},
        {"id": "speed", "mqtt": {"field": "machine.speed"}},
        {"id": "room_dp", "mqtt": {"topic": "hvac/room12", "field": "dp"}},  # per-tag binding still wins
    ]
    config = parse_site_config(site(tags, topic_template="{prefix}/{site}/{area}/{line}/{unit}", topic_prefix="plant"))
    decoder = MqttJsonDecoder(config.sources[0], config.tag_table())
    assert sorted(decoder.subscriptions()) == ["hvac/room12", "plant/lyon/ff/fill1/filler1"]
    assert decoder.decode("plant/lyon/ff/fill1/filler1", b'{"fill_weight": 2.0, "machine": {"speed": 301}}', NOW) == 2
    assert decoder.decode("hvac/room12", b'{"dp": 15.2}', NOW) == 1
    batch = decoder.take_batch()
    assert dict(zip(batch["tag_id"], batch["value"])) == {
        "lyon.ff.fill1.filler1.fill_weight": 2.0, "lyon.ff.fill1.filler1.speed": 301.0, "lyon.ff.fill1.filler1.room_dp": 15.2,
    }

    per_tag = parse_site_config(site(tags[:2], topic_template="{site}/{unit}/{tag}", value_field="v"))
    decoder = MqttJsonDecoder(per_tag.sources[0], per_tag.tag_table())
    assert sorted(decoder.subscriptions()) == ["lyon/filler1/fill_weight", "lyon/filler1/speed"]
    assert decoder.decode("lyon/filler1/speed", b'{"machine": {"speed": 300.5}, "v": 1}', NOW) == 1
    assert decoder.take_batch()["value"].to_list() == [300.5]


def test_shared_group_prefixes_every_subscription() -> None:
    config = parse_site_config(site([{"id": "t", "mqtt": {"topic": "a/b", "field": "t"}}], shared_group="collectors"))
    assert MqttSource(config.sources[0], config.tag_table()).subscriptions() == ["$share/collectors/a/b"]
