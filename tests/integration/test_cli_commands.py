"""The commands a newcomer types, run as real processes: `controltower demo` raises an alert
from its scheduled fault and stops by itself; `controltower history` exports what it stored;
`controltower simulate` and `controltower run` work together on a shipped example config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl

from tests.conftest import REPO, free_port

CONTROLTOWER = [sys.executable, "-m", "controltower.cli", "--log-level", "WARNING"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def poll(url: str, until, timeout_s: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited early with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            last = get_json(url)
            if until(last):
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never satisfied the condition; last answer: {str(last)[:1500]}")


def test_demo_raises_its_scheduled_alert_then_history_exports_it(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "demo"
    # At speed 4, the fill-weight spike scheduled at 40 simulated seconds comes after 10 s.
    proc = subprocess.Popen(
        [*CONTROLTOWER, "demo", "--port", str(port), "--mqtt-port", str(free_port()),
         "--opcua-port", str(free_port()), "--speed", "4", "--duration", "25", "--data-dir", str(data_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        body = poll(
            f"http://127.0.0.1:{port}/api/alerts",
            lambda b: any(a["tag_id"] == "lyon.ff.fill1.filler1.fill_weight" for a in b["active"] + b["recent"]),
            timeout_s=40, proc=proc,
        )
        alert = next(a for a in body["active"] + body["recent"] if a["tag_id"] == "lyon.ff.fill1.filler1.fill_weight")
        assert alert["severity"] == "alarm" and alert["line"] == "fill1"

        # While the demo holds the historian file, history goes through its API.
        live = subprocess.run(
            [*CONTROLTOWER, "history", "lyon.usp.bio1.br101.ph", "--since", "5m", "--until", "2099-01-01",
             "--url", f"http://127.0.0.1:{port}"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert live.returncode == 0, live.stderr
        rows = pl.read_csv(live.stdout.encode())
        assert rows.height >= 10 and rows["tag_id"].unique().to_list() == ["lyon.usp.bio1.br101.ph"]
        assert 6.8 < rows["value"].drop_nulls().median() < 7.2
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert re.search(rf"Demo control tower: http://127\.0\.0\.1:{port}", out)
    truth = pl.read_csv(data_dir / "ground_truth.csv")
    assert "lyon.ff.fill1.filler1.fill_weight" in truth["tag_id"].to_list()

    # The historian file is free again: export what the demo stored.
    history = subprocess.run(
        [*CONTROLTOWER, "history", "lyon.ff.fill1.filler1.fill_weight", "--since", "10m", "--until", "2099-01-01",
         "--data-dir", str(data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert history.returncode == 0, history.stderr
    csv = pl.read_csv(history.stdout.encode())
    assert csv.columns[:5] == ["ts", "server_ts", "tag_id", "value", "quality"]
    assert csv.height >= 20 and csv["value"].max() > 2.06, "the spike is in the export"

    parquet = tmp_path / "fill.parquet"
    exported = subprocess.run(
        [*CONTROLTOWER, "history", "lyon.usp.bio1.br101.temperature", "--since", "10m", "--until", "2099-01-01",
         "--format", "parquet", "--out", str(parquet), "--data-dir", str(data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    frame = pl.read_parquet(parquet)
    assert frame.height >= 20 and frame["batch_id"].drop_nulls().str.starts_with("BR101-").all()


def test_history_names_an_unknown_tag_and_a_bad_time(tmp_path: Path) -> None:
    unknown = subprocess.run([*CONTROLTOWER, "history", "lyon.nope.x.y.z", "--since", "1h", "--data-dir", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown tag 'lyon.nope.x.y.z'" in unknown.stderr
    bad = subprocess.run([*CONTROLTOWER, "history", "lyon.usp.bio1.br101.ph", "--since", "last tuesday",
                          "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'last tuesday' is not a time" in bad.stderr
    unreachable = subprocess.run([*CONTROLTOWER, "history", "lyon.usp.bio1.br101.ph", "--since", "1h",
                                  "--url", f"http://127.0.0.1:{free_port()}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 2 and "cannot reach the control tower at" in unreachable.stderr


def test_simulate_and_run_on_the_mqtt_example(mosquitto, tmp_path: Path) -> None:
    """config/mqtt-site.yaml as shipped, only its broker and screen ports moved to free ones."""
    port = free_port()
    text = (REPO / "config" / "mqtt-site.yaml").read_text()
    text = text.replace("mqtt://127.0.0.1:1884", mosquitto.url).replace("port: 8052", f"port: {port}")
    # The API read without a login (the commands are under test here; auth has its own tests).
    text = text.replace(f"port: {port}", f"port: {port}\n  auth: {{enabled: false}}")
    text = text.replace("data_dir: data/cork", f"data_dir: {tmp_path / 'cork'}")
    config = tmp_path / "mqtt-site.yaml"
    config.write_text(text)

    simulate = subprocess.Popen([*CONTROLTOWER, "simulate", "--config", str(config), "--duration", "30"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = subprocess.Popen([*CONTROLTOWER, "run", "--config", str(config), "--duration", "20"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = poll(
            f"http://127.0.0.1:{port}/api/lines",
            lambda b: b["lines"] and b["lines"][0]["last_sample_time"] is not None,
            timeout_s=30, proc=run,
        )
        line = body["lines"][0]
        assert line["id"] == "cork.ff.fill2" and line["state"] == "normal"
        assert line["batch_ids"] and line["batch_ids"][0].startswith("FILLER2-")
        # Stored a moment after it is seen live (the batch goes through the spool to DuckDB).
        history = poll(f"http://127.0.0.1:{port}/api/tags/cork.ff.fill2.filler2.fill_weight/history?since=-1m",
                       lambda rows: len(rows) > 0, timeout_s=10, proc=run)
        assert 0.98 < history[-1]["value"] < 1.02

        # A fault injected at run time through the simulator's command topic comes back as an alert.
        inject = subprocess.run(
            [*CONTROLTOWER, "inject", "cork.ff.fill2.filler2.fill_weight", "--kind", "spike", "--magnitude", "0.05",
             "--duration", "30", "--mqtt-url", mosquitto.url, "--prefix", "acme"],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )
        assert inject.returncode == 0, inject.stderr
        alerts = poll(f"http://127.0.0.1:{port}/api/alerts",
                      lambda b: any(a["tag_id"] == "cork.ff.fill2.filler2.fill_weight" for a in b["active"]),
                      timeout_s=10, proc=run)
        assert any(a["severity"] == "alarm" for a in alerts["active"])
        _, err = run.communicate(timeout=40)
        assert run.returncode == 0, err[-2000:]
    finally:
        for proc in (run, simulate):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert simulate.returncode == 0, "SIGTERM stops the simulator cleanly"
