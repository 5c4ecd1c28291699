"""Scale out, with real parts and real processes on this machine: Mosquitto, InfluxDB 1.x, the
project's simulator (`controltower simulate`, one scheduled fault), two `controltower collect`
processes sharing the MQTT source subscription, two `controltower analyse` workers, two
`controltower serve` screens, and this test listening to the UNS alert topic.

    every sample the simulator published is in InfluxDB, and the collectors stored it once between them
    the scheduled fault is alerted exactly once across the workers, and nothing else is
    after `kill -9` of one worker the other takes all partitions (all units reach it) and alerts a
    fault injected after the kill on a unit the killed worker owned; restarted, the killed worker
    takes its partitions back with that alert (from the retained alarm state) and clears it
    an acknowledgement on one screen's API (and one sent as a UNS command) reaches the owning
    worker, is published as a transition and in the retained alarm state, and the other screen
    shows it (as does any screen started later); the screen reads history from the historian
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import polars as pl
import yaml

from collector.sinks import open_historian
from collector.sources.mqtt import MqttSource
from controltower.site import load_site_config
from controltower.uns import Topics, assign, partition_of
from tests.conftest import REPO
from tests.integration.conftest import start_influxdb_v1, stop_process, wait_until

WORKERS = ("w1", "w2")
PARTITIONS = 16
LINES = {"fill1": ["filler1", "filler2", "filler3"], "fill2": ["filler4", "filler5", "filler6"]}
FAULT_A_AT_S = 6.0


def filler(unit: str) -> dict:
    limits = {"alarm_low": 1.85, "warning_low": 1.9, "warning_high": 2.1, "alarm_high": 2.15, "deadband": 0.005}
    return {"id": unit, "kind": "filling_line", "tags": [
        {"id": "fill_weight", "unit": "g", "limits": limits, "mqtt": {}},
        {"id": "speed", "unit": "vials/min", "mqtt": {}},
        {"id": "room_dp", "unit": "Pa", "mqtt": {}},
    ]}


def site_file(tmp: Path, mqtt_url: str, influx_url: str, fault_tag: str) -> Path:
    off = {"enabled": False}
    doc = {
        "enterprise": "Scale-out test",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [
            {"id": line, "units": [filler(u) for u in units]} for line, units in LINES.items()]}]}],
        "sources": [{"kind": "mqtt", "name": "plant", "url": mqtt_url, "qos": 1, "client_id": "ct-collect",
                     "shared_group": "collectors", "topic_template": "{prefix}/{site}/{area}/{line}/{unit}",
                     "topic_prefix": "plant", "flush_interval_ms": 200}],
        "historian": {"kind": "influxdb", "url": influx_url, "api": "v1", "bucket": "controltower", "token_env": None},
        # Only the limit detector: every alert is then a fault's, and the counts are exact.
        "detectors": {"zscore": off, "flatline": off, "quality": off, "rate_of_change": off, "stale": off,
                      "models": off},
        "uns": {"enabled": True, "url": mqtt_url, "partitions": PARTITIONS, "keepalive_s": 2},
        "screen": {"auth": {"enabled": False}},  # on 127.0.0.1 only
        "simulation": {"seed": 5, "tick_ms": 250, "opcua_url": None, "mqtt_url": mqtt_url, "mqtt_topic_prefix": "plant",
                       "faults": [{"tag": fault_tag, "kind": "spike", "start_s": FAULT_A_AT_S, "duration_s": 5,
                                   "magnitude": 0.4}]},
        "data_dir": str(tmp / "site"),
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli(*args: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "controltower.cli", "--log-level", "INFO", *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


def status(path: Path) -> dict:
    try:
        return json.loads((path / "status.json").read_text())
    except (OSError, ValueError):
        return {}


async def command(port: int, topics: Topics, unit: str, **body) -> dict:
    """Send an operator's command to the worker owning `unit`, as a screen does; its result."""
    request_id = f"test-{len(body)}-{body['action']}-{datetime.now(UTC).timestamp()}".replace(".", "-")
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topics.command_result(request_id), qos=1)
        await client.publish(topics.command(*unit.split(".")), json.dumps(body | {"request_id": request_id}), qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                return json.loads(message.payload)
    raise AssertionError("no command result")


async def retained_alarm_states(port: int, topics: Topics) -> dict[str, dict]:
    """What a screen starting now reads: every retained alarm state, by alert id."""
    states: dict[str, dict] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topics.alarm_state_filter, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                async for message in client.messages:
                    if message.payload:
                        states[str(message.topic.value).rsplit("/", 1)[1]] = json.loads(message.payload)
    return states


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict | list]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def processes() -> Iterator[dict[str, subprocess.Popen]]:
    procs: dict[str, subprocess.Popen] = {}
    try:
        yield procs
    finally:
        for proc in procs.values():
            stop_process(proc)


async def test_collectors_and_workers_share_the_load_and_fail_over(mosquitto, tmp_path: Path) -> None:
    units = [f"lyon.ff.{line}.{u}" for line, us in LINES.items() for u in us]
    owners = assign(PARTITIONS, set(WORKERS))
    owner_of = {u: next(w for w, ks in owners.items() if partition_of(u, PARTITIONS) in ks) for u in units}
    assert set(owner_of.values()) == set(WORKERS), f"each worker must own some of the units: {owner_of}"
    fault_a_unit = next(u for u in units if owner_of[u] == "w2")  # alerted by w2, which survives
    victim = "w1"
    fault_b_unit = next(u for u in units if owner_of[u] == victim)  # alerted, after the kill, by w2
    fault_a, fault_b = f"{fault_a_unit}.fill_weight", f"{fault_b_unit}.fill_weight"

    influx = start_influxdb_v1(tmp_path / "influx")
    config = site_file(tmp_path, mosquitto.url, influx.url, fault_a)
    site = load_site_config(config)
    topics = Topics.of(site.uns)
    logs = tmp_path / "logs"
    logs.mkdir()
    transitions: list[dict] = []

    async def listen_to_alerts() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-alerts") as client:
            await client.subscribe(topics.alerts_filter, qos=1)
            async for message in client.messages:
                transitions.append(json.loads(message.payload) | {"topic": message.topic.value})

    # The reference: every sample the simulator publishes, decoded by a source of its own.
    reference_config = site.sources[0].model_copy(update={"shared_group": None, "client_id": "test-reference",
                                                          "clean_start": True})
    reference = MqttSource(reference_config, site.tag_table())
    published: list[pl.DataFrame] = []

    async def keep(batch: pl.DataFrame) -> None:
        published.append(batch)

    listener = asyncio.create_task(listen_to_alerts())
    reference_task = asyncio.create_task(reference.run(keep))
    try:
        with processes() as procs:
            for w in WORKERS:
                procs[w] = cli("analyse", "--config", str(config), "--worker", w, "--data-dir", str(tmp_path / w),
                               log=logs / f"{w}.log")
            for i in ("1", "2"):
                procs[f"c{i}"] = cli("collect", "--config", str(config), "--instance", i, "--data-dir",
                                     str(tmp_path / f"c{i}"), log=logs / f"c{i}.log")
            for name in ("s1", "s2"):  # two screens
                procs[name] = cli("serve", "--config", str(config), "--name", name, "--data-dir", str(tmp_path / name),
                                  "--port", "0", log=logs / f"{name}.log")

            def ready() -> bool:
                for name, proc in procs.items():
                    assert proc.poll() is None, f"{name} exited: {(logs / f'{name}.log').read_text()[-3000:]}"
                collectors = all(status(tmp_path / c).get("sources", [{}])[0].get("connected") and
                                 status(tmp_path / c)["uns"]["connected"] for c in ("c1", "c2"))
                workers = all(status(tmp_path / w).get("members") == list(WORKERS) for w in WORKERS)
                screen = all((tmp_path / name / "url").exists() for name in ("s1", "s2"))
                return collectors and workers and screen and reference.health.connected

            # Seven Python processes importing Polars, DuckDB and Dash at once: on a loaded 2-core
            # machine that alone took over a minute.
            await wait_until(ready, 240, "collectors connected and both workers seeing each other")
            assert sorted(status(tmp_path / "w1")["partitions"] + status(tmp_path / "w2")["partitions"]) == \
                list(range(PARTITIONS)), "the workers split the partitions between them, without overlap"

            started = datetime.now(UTC) - timedelta(seconds=5)
            procs["sim"] = cli("simulate", "--config", str(config), "--data-dir", str(tmp_path / "sim"),
                               log=logs / "sim.log")

            def raised(tag: str) -> list[dict]:
                return [t for t in transitions if t["event"] == "raised" and t["tag_id"] == tag]

            await wait_until(lambda: raised(fault_a), FAULT_A_AT_S + 30, f"an alert on {fault_a}")
            # An operator acknowledges it on the screen (`controltower serve`, its API): the command
            # goes to the owning worker's book, and every screen sees the result (the transition,
            # and the retained alarm state).
            alert_a = raised(fault_a)[0]["alert_id"]
            screen = (tmp_path / "s1" / "url").read_text()
            await wait_until(lambda: http("GET", f"{screen}/api/alerts/{alert_a}")[0] == 200, 10,
                             "the screen to show the alert")
            code, ack = await asyncio.to_thread(http, "POST", f"{screen}/api/alerts/{alert_a}/ack",
                                                {"user": "op1", "comment": "seen"})
            assert code == 200 and ack["alert"]["acknowledged_by"] == "op1", (code, ack)
            again = await command(mosquitto.port, topics, fault_a_unit, action="acknowledge", alert_id=alert_a,
                                  user="op2")
            assert not again["ok"] and "already acknowledged" in again["error"]
            await wait_until(lambda: any(t["event"] == "acknowledged" and t["alert_id"] == alert_a for t in transitions),
                             10, "the acknowledgement published as a transition")
            states = await retained_alarm_states(mosquitto.port, topics)
            assert states[alert_a]["state"] in ("active-acknowledged", "normal"), states
            # The other screen shows the acknowledgement made on the first.
            other = (tmp_path / "s2" / "url").read_text()
            await wait_until(lambda: (http("GET", f"{other}/api/alerts/{alert_a}")[1].get("alert") or {})
                             .get("acknowledged_by") == "op1", 10, "the second screen to show the acknowledgement")
            code, again = await asyncio.to_thread(http, "POST", f"{screen}/api/alerts/{alert_a}/ack", {"user": "op2"})
            assert code == 409 and "already acknowledged" in again["error"], (code, again)
            _, journal = await asyncio.to_thread(http, "GET", f"{screen}/api/journal?tag={fault_a}")
            assert {"raised", "acknowledged"} <= {e["event"] for e in journal["entries"]}, journal
            # History comes from the historian (InfluxDB, written by the collectors).
            _, history = await asyncio.to_thread(http, "GET", f"{screen}/api/tags/{fault_a}/history?since=-2m")
            assert len(history) > 10 and max(r["value"] for r in history) > 2.15
            await asyncio.sleep(FAULT_A_AT_S)  # the fault runs its course (5 s) and clears
            await wait_until(lambda: any(t["event"] == "cleared" and t["tag_id"] == fault_a for t in transitions),
                             15, f"{fault_a} to clear")
            await asyncio.sleep(0.5)
            assert alert_a not in await retained_alarm_states(mosquitto.port, topics), \
                "a cleared and acknowledged alarm leaves the alarm state"

            # kill -9 of the worker that owns the unit of the next fault: the broker's last will
            # takes it out after 1.5 keep-alives, and the survivor takes its partitions.
            units_before = dict(status(tmp_path / "w2")["units"])
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait(timeout=10)
            await wait_until(lambda: status(tmp_path / "w2").get("partitions") == list(range(PARTITIONS)), 30,
                             "the surviving worker to own every partition")
            inject = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "controltower.cli", "inject", fault_b, "--kind", "spike", "--duration", "25",
                 "--magnitude", "0.4", "--mqtt-url", mosquitto.url, "--prefix", "plant"],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
            assert inject.returncode == 0, inject.stderr
            await wait_until(lambda: raised(fault_b), 30, f"an alert on {fault_b} after the kill")
            states = await retained_alarm_states(mosquitto.port, topics)
            assert [a["tag_id"] for a in states.values()] == [fault_b], states  # a screen started now shows it
            survivor = status(tmp_path / "w2")
            assert all(survivor["units"].get(u, 0) > units_before.get(u, 0) for u in units), \
                f"every unit reaches the survivor: {units_before} -> {survivor['units']}"

            # The killed worker comes back while fault B is still on: it takes its partitions back,
            # restores fault B's alert from the retained alarm state, and clears that same alert
            # when the fault ends (no second alert is raised: checked at the end).
            alert_b = raised(fault_b)[0]["alert_id"]
            procs[victim] = cli("analyse", "--config", str(config), "--worker", victim, "--data-dir",
                                str(tmp_path / victim), log=logs / f"{victim}-restarted.log")
            await wait_until(lambda: status(tmp_path / victim).get("members") == list(WORKERS) and
                             status(tmp_path / "w2").get("partitions") == owners["w2"], 60,
                             "the restarted worker to take its partitions back")
            assert status(tmp_path / victim)["counts"].get("alerts_restored") == 1
            await wait_until(lambda: any(t["event"] == "cleared" and t["alert_id"] == alert_b and t["worker"] == victim
                                         for t in transitions), 40, "the restarted worker to clear fault B's alert")

            # Stop the plant, then let the collectors store what they took in.
            stop_process(procs.pop("sim"))
            await asyncio.sleep(1.0)
            reference_task.cancel()
            await asyncio.gather(reference_task, return_exceptions=True)
            expected = pl.concat(published).select("tag_id", "ts")

            def all_stored() -> bool:
                stored = sum(status(tmp_path / c)["historian"]["samples_stored"] for c in ("c1", "c2"))
                return stored >= expected.height

            await wait_until(all_stored, 30, f"the collectors to store {expected.height} samples")
            for c in ("c1", "c2"):
                stop_process(procs.pop(c))
            collectors = [status(tmp_path / c) for c in ("c1", "c2")]
    finally:
        listener.cancel()
        reference_task.cancel()
        await asyncio.gather(listener, reference_task, return_exceptions=True)
        if sys.exc_info()[0] is not None:  # failed above: InfluxDB is not stopped below
            stop_process(influx.proc)

    try:
        historian = open_historian(site.historian, tmp_path)
        stored = historian.read([t.tag_id for t in site.tag_table()], started, datetime.now(UTC) + timedelta(minutes=1))
        historian.close()
    finally:
        stop_process(influx.proc)

    # Every value stored, and stored once: each collector wrote only its share of the stream.
    assert expected.height > 1000 and not expected.is_duplicated().any()
    assert stored.select("tag_id", "ts").sort("tag_id", "ts").equals(expected.sort("tag_id", "ts"))
    shares = [c["historian"]["samples_stored"] for c in collectors]
    assert all(shares) and sum(shares) == expected.height, f"collectors stored {shares} of {expected.height}"
    assert all(c["uns"]["dropped_messages"] == 0 and c["uns"]["published_samples"] == s
               for c, s in zip(collectors, shares)), collectors

    # Each fault alerted once, by the worker that owned its unit at the time; nothing else alerted.
    raised_all = [t for t in transitions if t["event"] == "raised"]
    assert [(t["tag_id"], t["worker"]) for t in raised_all] == [(fault_a, "w2"), (fault_b, "w2")], raised_all
    assert raised_all[0]["topic"] == topics.alerts(*fault_a_unit.split("."))
    assert raised_all[0]["alert"]["detector"] == "limits" and raised_all[0]["alert"]["unit"] == fault_a_unit.split(".")[-1]
    assert any(t["event"] == "cleared" and t["tag_id"] == fault_a for t in transitions)
