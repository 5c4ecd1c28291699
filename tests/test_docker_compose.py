"""docker-compose.yml cannot be started here (no Docker engine on these machines), so its
structure is checked instead: the services, their health checks, the InfluxDB 2.7 set-up,
loopback-only ports, no secret written in the file, and that every variable the control
tower's config needs is provided."""

from __future__ import annotations

import re

import yaml

from controltower.site import load_site_config
from tests.conftest import REPO


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_health_checks() -> None:
    services = compose()["services"]
    assert {"mosquitto", "influxdb", "simulator", "controltower", "screen"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
        assert service["healthcheck"]["test"], f"{name} health check is empty"
        if name not in ("mosquitto", "influxdb"):
            assert service["build"] == "." and service["image"] == "pharma-controltower:latest", name
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["controltower"]["depends_on"]["influxdb"]["condition"] == "service_healthy"


def commands(role: str) -> dict[str, list[str]]:
    return {name: s["command"] for name, s in compose()["services"].items() if s.get("command", [""])[0] == role}


def test_scaled_out_by_default_collectors_workers_and_a_screen() -> None:
    services = compose()["services"]
    collectors, workers, screens = commands("collect"), commands("analyse"), commands("serve")
    # Two collectors share the MQTT stream (the source's shared group); one reads the OPC-UA server.
    mqtt = [c for c in collectors.values() if c[c.index("--source") + 1] == "plant-mqtt"]
    opcua = [c for c in collectors.values() if c[c.index("--source") + 1] == "plant-opcua"]
    assert len(mqtt) == 2 and len(opcua) == 1
    instances = [c[c.index("--instance") + 1] for c in collectors.values()]
    assert len(set(instances)) == len(instances), "each collector its own instance name (client id, data dir)"
    assert len(workers) == 2 and len({c[c.index("--worker") + 1] for c in workers.values()}) == 2
    assert list(screens) == ["screen"] and services["screen"]["ports"] == ["127.0.0.1:8050:8050"]
    # The single-process layout is there, but only on request.
    assert services["controltower"]["profiles"] == ["single"] and commands("run") == {"controltower": services["controltower"]["command"]}
    # Each service keeps its own data (spool, journal, status): no volume shared between two.
    volumes = [v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith("./")]
    assert len(volumes) == len(set(volumes))
    # The workers' and collectors' health is their status file, rewritten every second.
    for name in [*collectors, *workers]:
        assert "status.json" in " ".join(services[name]["healthcheck"]["test"]), name


def test_the_scaled_services_read_a_config_with_the_unified_namespace_on(monkeypatch) -> None:
    services = compose()["services"]
    for name in [*commands("collect"), *commands("analyse"), *commands("serve")]:
        env = services[name]["environment"]
        assert env["CONTROLTOWER_UNS"] == "true", name
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        site = load_site_config(REPO / "config" / "compose-site.yaml")
        assert site.uns.enabled and site.uns.url == "mqtt://mosquitto:1883", name
        mqtt = next(s for s in site.sources if s.kind == "mqtt")
        assert mqtt.shared_group == "collectors"
        for key in env:
            monkeypatch.delenv(key)
    # Analytics workers read the historian too (warm-up of a partition taken over, uns.warmup_s):
    # the same InfluxDB as the collectors, and they wait for it.
    for name in commands("analyse"):
        for key, value in services[name]["environment"].items():
            monkeypatch.setenv(key, str(value))
        site = load_site_config(REPO / "config" / "compose-site.yaml")
        assert site.uns.warmup_s > 0 and site.historian.url == "http://influxdb:8086", name
        assert "influxdb" in services[name]["depends_on"], name


def test_influxdb_is_2_7_and_initialised() -> None:
    influx = compose()["services"]["influxdb"]
    assert influx["image"] == "influxdb:2.7"
    env = influx["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("DOCKER_INFLUXDB_INIT_ORG", "DOCKER_INFLUXDB_INIT_BUCKET", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"):
        assert env[key], key
    # The token and password come from the environment, never written in the file.
    assert env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"].startswith("${INFLUXDB_TOKEN")
    assert env["DOCKER_INFLUXDB_INIT_PASSWORD"].startswith("${")


def test_published_ports_are_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_controltower_env_fills_its_config(monkeypatch) -> None:
    services = compose()["services"]
    config_path = services["controltower"]["command"][-1].removeprefix("/app/")
    text = (REPO / config_path).read_text()
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    env = services["controltower"]["environment"]
    for var in ("CONTROLTOWER_MQTT_URL", "CONTROLTOWER_OPCUA_URL", "INFLUXDB_URL", "INFLUXDB_TOKEN"):
        assert var in env, var
    assert {"CONTROLTOWER_MQTT_URL", "CONTROLTOWER_OPCUA_URL", "INFLUXDB_URL"} <= needed
    # With compose's values the file validates and points at the compose services.
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    site = load_site_config(REPO / config_path)
    assert site.historian.kind == "influxdb" and site.historian.url == "http://influxdb:8086"
    assert {s.url for s in site.sources} == {"mqtt://mosquitto:1883", "opc.tcp://simulator:4840/controltower/sim"}
    assert site.screen.host == "0.0.0.0"


def test_simulator_gets_no_historian_token() -> None:
    env = compose()["services"]["simulator"]["environment"]
    assert not any("TOKEN" in key or "PASSWORD" in key for key in env)


def test_dockerfile_runs_the_console_script() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["controltower"]' in dockerfile
    assert "USER controltower" in dockerfile, "the service must not run as root"
    assert (REPO / "deploy" / "mosquitto" / "mosquitto.conf").exists()
