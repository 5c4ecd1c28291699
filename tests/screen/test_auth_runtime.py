"""How `controltower run` and `controltower demo` apply `screen.auth`: the real ControlTower
(sources built, not started) serving its screen; the `controltower users` command."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controltower.audit import verify_trail
from controltower.runtime import ControlTower
from controltower.site import AuthConfig, SiteConfigError, load_site_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "demo-site.yaml"


def with_auth(site, **auth):
    return site.model_copy(update={"screen": site.screen.model_copy(update={"auth": AuthConfig(**auth)})})


def status_of(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_run_requires_a_login_and_records_the_configuration(tmp_path: Path, monkeypatch, capsys) -> None:
    import io

    from controltower.cli import main

    site = with_auth(load_site_config(DEMO), enabled=True)
    data = tmp_path / "tower"
    monkeypatch.setattr(sys, "stdin", io.StringIO("a-long-password\n"))
    assert main(["users", "add", "ana", "--role", "operator", "--data-dir", str(data), "--password-stdin"]) == 0
    tower = ControlTower(site, data_dir=data)
    try:
        url = tower.start_screen(port=0)
        assert status_of(url + "/api/lines")[0] == 401
        status, body = status_of(url + "/login", json.dumps({"username": "ana", "password": "a-long-password"}).encode(),
                                 {"Content-Type": "application/json"})
        assert status == 200 and json.loads(body)["role"] == "operator"
        # `controltower history --url` logs in from the environment.
        history = ["history", "lyon.usp.bio1.br101.ph", "--since", "1h", "--url", url]
        monkeypatch.delenv("CONTROLTOWER_USER", raising=False)
        assert main(history) == 2
        assert "login required" in capsys.readouterr().err
        monkeypatch.setenv("CONTROLTOWER_USER", "ana")
        monkeypatch.setenv("CONTROLTOWER_PASSWORD", "a-long-password")
        assert main(history) == 0
        assert capsys.readouterr().out.startswith("ts,")
    finally:
        tower.close()
    actions = [r["action"] for r in tower.audit.records()]
    assert actions == ["user.add", "config.change", "login", "login"]
    # The same configuration again: no new record; a changed one: recorded, old and new hashes.
    ControlTower(site, data_dir=data).close()
    assert [r["action"] for r in tower.audit.records()].count("config.change") == 1
    changed = site.model_copy(update={"enterprise": "Other Pharma"})
    ControlTower(changed, data_dir=data).close()
    changes = [r for r in tower.audit.records() if r["action"] == "config.change"]
    assert len(changes) == 2 and changes[1]["old"] == changes[0]["new"]
    assert verify_trail(data / "audit.jsonl").ok


def test_auth_off_only_on_a_loopback_address(tmp_path: Path) -> None:
    text = DEMO.read_text().replace("  host: 127.0.0.1\n  port: 8050", "  host: 0.0.0.0\n  port: 8050")
    wide = tmp_path / "wide.yaml"
    wide.write_text(text)
    with pytest.raises(SiteConfigError, match="auth.enabled is false but host is '0.0.0.0'"):
        load_site_config(wide)
    # A --host override is checked again when the screen starts.
    tower = ControlTower(load_site_config(DEMO), data_dir=tmp_path / "demo")
    try:
        with pytest.raises(ValueError, match="may only listen on a loopback address"):
            tower.start_screen(host="0.0.0.0", port=0)
        url = tower.start_screen(port=0)
        assert status_of(url + "/api/lines")[0] == 200  # the demo: no login
    finally:
        tower.close()


def test_users_command_never_takes_or_prints_the_password(tmp_path: Path, monkeypatch, capsys) -> None:
    import io

    from controltower.cli import main

    def users(*args: str, stdin: str = "") -> tuple[int, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["users", *args, "--data-dir", str(tmp_path)])
        out = capsys.readouterr()
        return code, out.out + out.err

    monkeypatch.setenv("CONTROLTOWER_PASSWORD", "quality-secret-1")
    code, said = users("add", "quinn", "--role", "quality_engineer")
    assert code == 0 and "added quinn" in said and "quality-secret-1" not in said
    monkeypatch.delenv("CONTROLTOWER_PASSWORD")
    code, said = users("add", "bob", "--role", "operator", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 10 characters" in said
    with pytest.raises(SystemExit):  # argparse: not a role
        users("role", "quinn", "--role", "king")
    capsys.readouterr()
    assert users("role", "quinn", "--role", "administrator")[0] == 0
    assert users("list")[1].split() == ["quinn", "administrator"]
    assert users("remove", "quinn")[0] == 0
    everything = "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert "quality-secret-1" not in everything
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["action"] for r in audit] == ["user.add", "user.role", "user.remove"]
    assert audit[1]["old"] == "quality_engineer" and audit[1]["new"] == "administrator"
    assert audit[0]["actor"].startswith("cli:")
