"""The scaled-out services' own UNS connection and what moves between workers, with real parts
in this process: Mosquitto (TLS with a CA made by the test, a password file, anonymous refused),
`AnalyticsWorker`s and a `ScreenService`, the collector's `UnsPublisher`, a DuckDB historian.

    collector publisher, worker and screen reach a TLS + password broker; anonymous and a wrong
    password are refused, and the password is in no log line; a bad `uns` setting stops a
    service at start-up naming the key
    a tag taken out of service on the screen reaches the owning worker (journalled with who and
    why), its alerts' alarm state shows it, and a worker that takes the unit over later adopts
    it from the retained command without journalling it again; put back in service likewise
    a worker taking a partition over warms its detectors up from the historian: a z-score jump
    on the first live value is caught (a cold worker is blind to it), and live samples the
    history already held are not scored twice
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import polars as pl
import pytest
import yaml

from analytics.alerts import AlarmTransitionError
from collector.sinks import open_historian
from controltower.cli import main as cli_main
from controltower.samples import samples_frame
from controltower.serve import ScreenService
from controltower.services import AnalyticsWorker
from controltower.site import SiteConfigError, load_site_config, parse_site_config
from controltower.uns import UnsPublisher, uns_login
from tests.conftest import free_port, require_binary
from tests.integration.conftest import stop_process, wait_for_port, wait_until
from tests.integration.test_mqtt_tls_auth import make_pki

PASSWORD = "uns-Pa55word-secret"
TAG = "lyon.ff.fill1.filler1.fill_weight"
LIMITS = {"alarm_low": 1.85, "warning_low": 1.9, "warning_high": 2.1, "alarm_high": 2.15, "deadband": 0.005}
OFF = {"enabled": False}


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """Mosquitto with one TLS listener that wants a username and password (anonymous refused)."""
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
    passwd = require_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    root = tmp_path_factory.mktemp("uns-tls-mosquitto")
    make_pki(root)
    subprocess.run([passwd, "-b", "-c", str(root / "passwords"), "tower", PASSWORD], check=True)
    port = free_port()
    (root / "mosquitto.conf").write_text(
        "user root\nper_listener_settings true\npersistence false\n"
        f"log_dest file {root / 'mosquitto.log'}\n"
        f"listener {port} 127.0.0.1\ncafile {root / 'ca.pem'}\ncertfile {root / 'server.pem'}\n"
        f"keyfile {root / 'server.key'}\nallow_anonymous false\npassword_file {root / 'passwords'}\n")
    proc = subprocess.Popen([binary, "-c", str(root / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc, what="mosquitto")
        yield port, root
    finally:
        stop_process(proc)


def site(tmp: Path, uns: dict, detectors: dict | None = None) -> dict:
    return {
        "enterprise": "UNS services test",
        "sites": [{"id": "lyon", "areas": [{"id": "ff", "lines": [{"id": "fill1", "units": [
            {"id": "filler1", "tags": [{"id": "fill_weight", "unit": "g", "limits": LIMITS, "mqtt": {}}]}]}]}]}],
        "sources": [{"kind": "mqtt", "name": "plant", "url": "mqtt://127.0.0.1:1", "topic_template": "p/{unit}"}],
        "detectors": detectors or {"zscore": OFF, "flatline": OFF, "quality": OFF, "rate_of_change": OFF,
                                   "stale": OFF, "models": OFF},
        "uns": {"enabled": True, "partitions": 4, "keepalive_s": 2, **uns},
        "screen": {"auth": {"enabled": False}},
        "data_dir": str(tmp / "site"),
    }


def samples(values: list[float], times: list[datetime]) -> pl.DataFrame:
    frame = samples_frame(ts=times, tag_id=[TAG] * len(values), value=values)
    return frame.with_columns(pl.lit(v, pl.String).alias(c)
                              for c, v in zip(("site", "area", "line", "unit"), TAG.split(".")[:4]))


def journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_services_over_tls_with_a_password_and_a_tag_out_of_service_across_workers(
        tls_broker, tmp_path: Path, monkeypatch, caplog) -> None:
    port, pki = tls_broker
    monkeypatch.setenv("UNS_TEST_PASSWORD", PASSWORD)
    (tmp_path / "uns-password").write_text(PASSWORD + "\n")
    config = parse_site_config(site(tmp_path, {
        "url": f"mqtts://127.0.0.1:{port}", "tls": {"ca_file": str(pki / "ca.pem")}, "username": "tower",
        "password_env": "UNS_TEST_PASSWORD"}))
    # The screen reads the same password from a file (a Docker secret), relative to its data directory.
    screen_config = config.model_copy(update={"uns": config.uns.model_copy(update={
        "password_env": None, "password_file": "../uns-password"})})
    caplog.set_level(logging.DEBUG)

    # Anonymous is refused by the broker.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", port, tls_context=uns_login(config.uns).tls_context, timeout=5):
            pass

    w1 = AnalyticsWorker(config, data_dir=tmp_path / "w1", name="w1")
    screen = ScreenService(screen_config, data_dir=tmp_path / "s1", name="s1")
    publisher = UnsPublisher(config.uns, client_id="test-collect", login=uns_login(config.uns))
    tasks = [asyncio.create_task(x) for x in (w1.run(), screen.run(), publisher.run())]
    try:
        await wait_until(lambda: w1.owned == set(range(4)) and screen.connected and publisher.stats.connected, 30,
                         "worker, screen and publisher connected over TLS")
        now = datetime.now(UTC)
        publisher.publish_batch(samples([2.0, 2.3], [now - timedelta(seconds=1), now]))  # above alarm_high
        await wait_until(lambda: screen.alerts.active(), 20, "the alert on the screen")
        alert_id = screen.alerts.active()[0].id

        # Out of service from the screen: the owning worker applies it, journals who and why, and
        # the alert's published alarm state says so.
        await asyncio.to_thread(screen.alerts.suppress, TAG, "eng1", "load cell being replaced")
        assert w1.book.suppressed_tags() == {TAG: "load cell being replaced"}
        entries = [e for e in journal(tmp_path / "w1" / "alarm_journal.jsonl") if e["event"] == "suppressed"]
        assert {(e["alert_id"], e["user"], e["comment"]) for e in entries} == {
            (None, "eng1", "load cell being replaced"), (alert_id, "eng1", "load cell being replaced")}
        await wait_until(lambda: (screen.alerts.get(alert_id) or screen.alerts.active()[0]).suppressed, 10,
                         "the alarm state to show the alert out of service")
        assert screen.alerts.suppressed_tags() == {TAG: "load cell being replaced"}
        assert not screen.alerts.active(), "an out-of-service tag's alerts are not annunciated"
        with pytest.raises(AlarmTransitionError):
            await asyncio.to_thread(screen.alerts.suppress, TAG, "eng2", "again")

        # The worker leaves; another takes the unit over and finds the tag out of service in the
        # retained command (applied already, so not journalled again) and the alert in the alarm state.
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        w1.close()
        w2 = AnalyticsWorker(config, data_dir=tmp_path / "w2", name="w2")
        tasks[0] = asyncio.create_task(w2.run())
        await wait_until(lambda: w2.owned == set(range(4)), 30, "the second worker to take every partition")
        await wait_until(lambda: w2.book.suppressed_tags(), 10, "the out-of-service state adopted")
        assert w2.book.suppressed_tags() == {TAG: "load cell being replaced"}
        assert w2.book.get(alert_id).suppressed
        assert not (tmp_path / "w2" / "alarm_journal.jsonl").exists() or not any(
            e["event"] == "suppressed" for e in journal(tmp_path / "w2" / "alarm_journal.jsonl"))

        # Back in service from the screen, through the new owner.
        await asyncio.to_thread(screen.alerts.unsuppress, TAG, "eng2", "new load cell calibrated")
        assert w2.book.suppressed_tags() == {}
        back = [e for e in journal(tmp_path / "w2" / "alarm_journal.jsonl") if e["event"] == "unsuppressed"]
        assert back and all(e["user"] == "eng2" and e["comment"] == "new load cell calibrated" for e in back)
        await wait_until(lambda: screen.alerts.active() and not screen.alerts.suppressed_tags(), 10,
                         "the screen to show the alert annunciated again")
        with pytest.raises(AlarmTransitionError):
            await asyncio.to_thread(screen.alerts.unsuppress, TAG, "eng2", "")
        screen_journal = journal(tmp_path / "s1" / "alarm_journal.jsonl")
        assert {"suppressed", "unsuppressed"} <= {e["event"] for e in screen_journal if e["alert_id"] is None}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        screen.close()

    # A wrong password: refused, the worker stays unconnected, and no secret is logged.
    monkeypatch.setenv("UNS_TEST_PASSWORD", "wrong-Pa55")
    stranger = AnalyticsWorker(config, data_dir=tmp_path / "w3", name="w3")
    task = asyncio.create_task(stranger.run(duration_s=3))
    await asyncio.sleep(2.5)
    assert not stranger.connected
    await asyncio.gather(task, return_exceptions=True)
    stranger.close()
    assert PASSWORD not in caplog.text and "wrong-Pa55" not in caplog.text
    assert PASSWORD not in repr(uns_login(screen_config.uns, tmp_path / "s1"))


def test_a_bad_uns_setting_stops_a_service_naming_the_key(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("UNS_TEST_MISSING", raising=False)
    bad = site(tmp_path, {"url": "mqtts://127.0.0.1:8883", "tls": {"ca_file": str(tmp_path / "nowhere.pem")}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cli_main(["analyse", "--config", str(path), "--worker", "w", "--data-dir", str(tmp_path / "w"),
                     "--duration", "1"]) == 2
    assert f"uns.tls.ca_file: {tmp_path / 'nowhere.pem'} is not a readable file" in capsys.readouterr().err

    config = parse_site_config(site(tmp_path, {"username": "tower", "password_env": "UNS_TEST_MISSING"}))
    with pytest.raises(ValueError, match="uns.password_env: environment variable UNS_TEST_MISSING is not set"):
        ScreenService(config, data_dir=tmp_path / "s", name="s")
    config = parse_site_config(site(tmp_path, {"username": "tower", "password_file": "absent"}))
    with pytest.raises(ValueError, match="uns.password_file: cannot read .*absent"):
        AnalyticsWorker(config, data_dir=tmp_path / "w", name="w")

    path.write_text(yaml.safe_dump(site(tmp_path, {"password_env": "X"})))
    with pytest.raises(SiteConfigError, match=rf"{path}: uns: .*needs a username"):
        load_site_config(path)
    path.write_text(yaml.safe_dump(site(tmp_path, {"username": "u", "password_env": "X", "password_file": "f"})))
    with pytest.raises(SiteConfigError, match="uns: .*not both"):
        load_site_config(path)


async def test_a_partition_taken_over_warms_its_detectors_up_from_the_historian(mosquitto, tmp_path: Path) -> None:
    zscore_only = {"limits": OFF, "zscore": {"window": 30, "threshold": 8.0}, "flatline": OFF, "quality": OFF,
                   "rate_of_change": OFF, "stale": OFF, "models": OFF}
    now = datetime.now(UTC).replace(microsecond=0)
    times = [now - timedelta(seconds=70 - i) for i in range(60)]
    steady = [2.0 + 0.002 * ((i * 7) % 5 - 2) for i in range(60)]  # within a few mg of 2.000 g
    warm_dir, cold_dir = tmp_path / "warm", tmp_path / "cold"
    warm_dir.mkdir()
    warm = parse_site_config(site(tmp_path, {"url": mosquitto.url, "warmup_s": 300}, zscore_only))
    historian = open_historian(warm.historian, warm_dir)
    await historian.write(samples(steady, times))
    historian.close()
    # Live: the last five samples again (the collectors store and publish alike), then a jump of
    # 50 mg: inside the limits, but far outside the unit's last minute.
    live = samples(steady[-5:] + [2.05], times[-5:] + [now])

    async def run(config, data_dir: Path, name: str) -> AnalyticsWorker:
        worker = AnalyticsWorker(config, data_dir=data_dir, name=name)
        publisher = UnsPublisher(config.uns, client_id=f"test-collect-{name}")
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(publisher.run())]
        try:
            await wait_until(lambda: worker.owned == set(range(4)) and publisher.stats.connected, 30, f"{name} ready")
            publisher.publish_batch(live)
            await wait_until(lambda: worker.counts["messages"] == 1 and not worker._pending, 20, f"{name} to score")
            await asyncio.sleep(0.5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            worker.close()
        return worker

    cold = await run(warm.model_copy(update={"uns": warm.uns.model_copy(update={"warmup_s": 0})}), cold_dir, "cold")
    assert cold.counts["samples_detected"] == 6 and cold.counts["alerts_raised"] == 0, \
        f"a cold worker has no window to see the jump against: {cold.counts}"

    hot = await run(warm, warm_dir, "warm")
    assert hot.counts["warmup_samples"] == 60, hot.counts
    assert hot.counts["samples_detected"] == 1, f"the five samples of the history are not scored again: {hot.counts}"
    assert hot.counts["alerts_raised"] == 1, hot.counts
    [alert] = hot.book.recent()
    assert (alert.tag_id, alert.detector, alert.value) == (TAG, "zscore", 2.05)
