"""Per-tag OPC-UA monitoring settings: a tag's own settings win over the source's, a deadband
kind set on the tag replaces the source's, and a bad combination fails at load time naming the
file and the key."""

from __future__ import annotations

import pytest
from asyncua import ua

from collector.sources.opcua import data_change_filter, monitoring_of
from controltower.site import OpcUaBinding, OpcUaSourceConfig, SiteConfigError, parse_site_config


def site(tag_binding: dict, **source) -> dict:
    return {
        "enterprise": "E",
        "sites": [{"id": "s", "areas": [{"id": "a", "lines": [{"id": "l", "units": [
            {"id": "u", "tags": [{"id": "t", "opcua": {"node_id": "ns=2;s=t", **tag_binding}}]}]}]}]}],
        "sources": [{"kind": "opcua", "name": "plc", "url": "opc.tcp://plc:4840", **source}],
    }


def source(**settings) -> OpcUaSourceConfig:
    return OpcUaSourceConfig(kind="opcua", name="plc", url="opc.tcp://plc:4840", publishing_interval_ms=400, **settings)


def test_defaults_half_the_publishing_interval_queue_of_ten_no_deadband():
    assert monitoring_of(source(), None) == (200.0, 10, ua.DeadbandType.None_, 0.0)
    assert monitoring_of(source(), OpcUaBinding(node_id="ns=2;s=t")) == (200.0, 10, ua.DeadbandType.None_, 0.0)


def test_tag_settings_win_over_the_source_and_a_tag_deadband_replaces_the_source_kind():
    config = source(sampling_interval_ms=1000, queue_size=5, deadband_percent=2)
    assert monitoring_of(config, OpcUaBinding(node_id="x")) == (1000.0, 5, ua.DeadbandType.Percent, 2.0)
    tag = OpcUaBinding(node_id="x", sampling_interval_ms=50, queue_size=1, deadband_abs=0.1)
    assert monitoring_of(config, tag) == (50.0, 1, ua.DeadbandType.Absolute, 0.1)


def test_trigger_includes_the_timestamp_only_without_a_deadband():
    assert data_change_filter(ua.DeadbandType.None_, 0.0).Trigger == ua.DataChangeTrigger.StatusValueTimestamp
    absolute = data_change_filter(ua.DeadbandType.Absolute, 0.5)
    assert (absolute.Trigger, absolute.DeadbandType, absolute.DeadbandValue) == (
        ua.DataChangeTrigger.StatusValue, ua.DeadbandType.Absolute, 0.5)


@pytest.mark.parametrize(
    ("tag", "src", "key", "reason"),
    [
        ({"deadband_abs": 1, "deadband_percent": 2}, {}, "sites[0].areas[0].lines[0].units[0].tags[0].opcua",
         "deadband_abs (1.0) and deadband_percent (2.0) are exclusive"),
        ({}, {"deadband_abs": 1, "deadband_percent": 2}, "sources[0]", "are exclusive: set one of them"),
        ({"deadband_percent": 150}, {}, "tags[0].opcua.deadband_percent", "less than or equal to 100"),
        ({"queue_size": 0}, {}, "tags[0].opcua.queue_size", "greater than or equal to 1"),
        ({"sampling_interval_ms": -5}, {}, "tags[0].opcua.sampling_interval_ms", "greater than or equal to 0"),
        ({}, {"publish_timeout_s": 0}, "sources[0].publish_timeout_s", "greater than 0"),
    ],
)
def test_bad_settings_fail_naming_file_key_and_reason(tag, src, key, reason):
    with pytest.raises(SiteConfigError) as err:
        parse_site_config(site(tag, **src), "plant.yaml")
    message = str(err.value)
    assert "plant.yaml: " in message and key in message and reason in message, message
