"""Users, roles, passwords, the login throttle and sessions (controltower.auth), on a real
users file and the real argon2 hasher."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from controltower.auth import (
    ALL_PERMISSIONS,
    PERMISSIONS,
    ROLES,
    LoginThrottle,
    SessionStore,
    UserError,
    UserStore,
    allowed,
)

PASSWORD = "correct-horse-battery"
# Cheap argon2id parameters where a test is not about the default ones (which cost ~64 MiB and
# a good part of a second per hash on purpose).
FAST = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_passwords_are_argon2id_hashes_in_a_private_file(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.yaml")
    store.add("ana", "operator", PASSWORD)
    text = (tmp_path / "users.yaml").read_text()
    assert PASSWORD not in text and "$argon2id$" in text
    assert stat.S_IMODE((tmp_path / "users.yaml").stat().st_mode) == 0o600
    assert store.verify("ana", PASSWORD).role == "operator"
    assert store.verify("ana", PASSWORD + "x") is None
    assert store.verify("nobody", PASSWORD) is None
    assert PASSWORD not in repr(store.get("ana")) and "argon2" not in repr(store.get("ana"))


def test_user_changes_are_seen_by_another_store_on_the_same_file(tmp_path: Path) -> None:
    server, cli = UserStore(tmp_path / "users.yaml", hasher=FAST), UserStore(tmp_path / "users.yaml", hasher=FAST)
    cli.add("ana", "operator", PASSWORD)
    assert server.verify("ana", PASSWORD) is not None
    cli.set_role("ana", "quality_engineer")
    assert server.get("ana").role == "quality_engineer"
    cli.set_password("ana", "another-long-secret")
    assert server.verify("ana", PASSWORD) is None and server.verify("ana", "another-long-secret")
    cli.remove("ana")
    assert server.get("ana") is None and server.list() == []


def test_bad_user_input_is_refused_with_the_reason(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.yaml", hasher=FAST)
    with pytest.raises(UserError, match="at least 10"):
        store.add("ana", "operator", "short")
    with pytest.raises(UserError, match="role: 'boss'"):
        store.add("ana", "boss", PASSWORD)
    with pytest.raises(UserError, match="username"):
        store.add("ana smith", "operator", PASSWORD)
    store.add("ana", "operator", PASSWORD)
    with pytest.raises(UserError, match="exists already"):
        store.add("ana", "administrator", PASSWORD)
    with pytest.raises(UserError, match="no user 'bob'"):
        store.remove("bob")
    (tmp_path / "bad.yaml").write_text("users:\n- username: x\n  role: king\n  password_hash: y\n")
    with pytest.raises(UserError, match=r"bad.yaml: users\[0\].role: 'king'"):
        UserStore(tmp_path / "bad.yaml", hasher=FAST).list()


def test_the_permission_table() -> None:
    assert set(PERMISSIONS) == set(ROLES)
    assert allowed("operator", "alarm.ack") and allowed("operator", "alarm.shelve")
    assert allowed("operator", "setpoint.write")
    assert not allowed("operator", "tag.suppress") and not allowed("operator", "users.manage")
    assert not allowed("operator", "deviation.record")
    assert allowed("quality_engineer", "deviation.record") and allowed("quality_engineer", "alarm.ack")
    assert not allowed("quality_engineer", "alarm.shelve") and not allowed("quality_engineer", "tag.suppress")
    assert PERMISSIONS["administrator"] == ALL_PERMISSIONS
    assert not allowed(None, "view") and not allowed("guest", "view")
    with pytest.raises(KeyError, match="unknown permission 'alarm.eat'"):
        allowed("administrator", "alarm.eat")


def test_lockout_after_repeated_failures_then_release() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=60, lockout_s=300, clock=clock)
    assert not throttle.failed("user:ana") and not throttle.failed("user:ana")
    assert throttle.locked_for("user:ana") == 0
    assert throttle.failed("user:ana")  # the third
    assert throttle.locked_for("user:ana", "addr:1.2.3.4") == pytest.approx(300)
    assert throttle.locked_for("user:bob") == 0
    clock.t += 301
    assert throttle.locked_for("user:ana") <= 0
    # Failures spread wider than the window do not add up.
    for _ in range(5):
        clock.t += 61
        assert not throttle.failed("user:ana")


def test_sessions_expire_when_idle_and_at_max_age(tmp_path: Path) -> None:
    clock = Clock()
    store = UserStore(tmp_path / "users.yaml", hasher=FAST)
    user = store.add("ana", "operator", PASSWORD)
    sessions = SessionStore(idle_s=60, max_age_s=300, clock=clock)
    s = sessions.create(user)
    assert len(s.token) >= 40 and s.token != s.csrf_token and s.token not in repr(s)
    for _ in range(4):
        clock.t += 59
        assert sessions.get(s.token) is s  # kept alive by use
    clock.t += 70
    assert sessions.get(s.token) is None  # max age, however active
    s2 = sessions.create(user)
    clock.t += 61
    assert sessions.get(s2.token) is None  # idle
    s3 = sessions.create(user)
    assert sessions.end_user("ana") == 1 and sessions.get(s3.token) is None
    assert sessions.get(None) is None and sessions.get("forged") is None


def test_a_hash_with_old_parameters_is_upgraded_at_the_next_good_login(tmp_path: Path) -> None:
    UserStore(tmp_path / "users.yaml", hasher=FAST).add("ana", "operator", PASSWORD)
    weak = (tmp_path / "users.yaml").read_text()
    assert "m=8192,t=1" in weak
    store = UserStore(tmp_path / "users.yaml")  # argon2-cffi's default parameters
    assert store.verify("ana", PASSWORD + "!") is None and (tmp_path / "users.yaml").read_text() == weak
    assert store.verify("ana", PASSWORD) is not None
    assert "m=8192,t=1" not in (tmp_path / "users.yaml").read_text()
    assert store.verify("ana", PASSWORD) is not None
