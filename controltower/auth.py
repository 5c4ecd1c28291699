"""Users, roles, passwords, login throttling and sessions of the control tower's screen and API.

    users = UserStore(data_dir / "users.yaml")
    users.add("ana", "operator", password)          # argon2id hash, file written 0600
    user = users.verify("ana", password)            # a User, or None
    allowed("operator", "tag.suppress")             # False: the one permission table

Roles and what each may do are `PERMISSIONS` (role -> permissions), the only table the API
routes and the screen's callbacks consult (`controltower.websecurity.acting_user`):

    operator          view, alarm.ack, alarm.shelve, alarm.unshelve, setpoint.write,
                      simulation.inject (the demo plant only)
    quality_engineer  view, alarm.ack, deviation.record, batch.review, audit.read
    administrator     all of the above, tag.suppress (out of service), users.manage,
                      model.change, config.change

Passwords are hashed with argon2id (argon2-cffi's `PasswordHasher` defaults, RFC 9106 low-memory
profile); a hash made with older parameters is re-hashed at the next good login. An unknown user
costs the same hash verification as a known one, so the answer time does not say which names
exist. The users file holds hashes only, is written atomically and with 0600 permissions, and is
re-read when it changes on disk (so `controltower users ...` takes effect without a restart).

`LoginThrottle` locks a user name, and separately a client address, after `max_failures`
failed logins within `window_s`, for `lockout_s`; a good login resets the name's count.

`SessionStore` keeps sessions server-side, in memory: the browser's cookie is a random 256-bit
token that indexes it, so a logout or a removed user ends the session at once and no signing
key is needed; a restart logs everyone out. A session expires after `idle_s` without a request
and, whatever the activity, `max_age_s` after the login; a password change ends the user's
sessions opened with the old one. Each session has its own CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("operator", "quality_engineer", "administrator")

_VIEW = frozenset({"view"})
_ALARM = frozenset({"alarm.ack", "alarm.shelve", "alarm.unshelve"})
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": _VIEW | _ALARM | {"setpoint.write", "simulation.inject"},
    "quality_engineer": _VIEW | {"alarm.ack", "deviation.record", "batch.review", "audit.read"},
    "administrator": _VIEW | _ALARM | {
        "setpoint.write", "deviation.record", "batch.review", "audit.read", "tag.suppress", "users.manage",
        "model.change", "config.change", "simulation.inject",
    },
}
ALL_PERMISSIONS = frozenset().union(*PERMISSIONS.values())

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()


def allowed(role: str | None, permission: str) -> bool:
    """Whether `role` holds `permission`. An unknown permission is a programming error."""
    if permission not in ALL_PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}; known: {', '.join(sorted(ALL_PERMISSIONS))}")
    return permission in PERMISSIONS.get(role or "", frozenset())


class UserError(ValueError):
    """A user operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    password_hash: str = field(repr=False)
    disabled: bool = False


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    if password.strip() != password or not password.isprintable():
        raise UserError("password: no leading/trailing spaces or control characters")


class UserStore:
    """Users in a YAML file: `users: [{username, role, password_hash, disabled}]`. Thread-safe.
    `hasher` replaces argon2-cffi's default parameters (tests use cheap ones)."""

    def __init__(self, path: str | Path, *, hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self._hasher = hasher or _hasher
        # Verified against when the user is unknown, so that path costs as much as a real check.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._stamp: tuple[int, int] | None = None

    # --- reading ----------------------------------------------------------------------------

    def _load(self) -> dict[str, User]:
        """The users as on disk (re-read when the file changed); the caller holds the lock."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            return self._users
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._users
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{self.path}: not valid YAML ({exc.__class__.__name__})") from None
        users: dict[str, User] = {}
        for i, row in enumerate(data.get("users") or []):
            where = f"{self.path}: users[{i}]"
            if not isinstance(row, dict) or not {"username", "role", "password_hash"} <= set(row):
                raise UserError(f"{where}: needs username, role and password_hash")
            if row["role"] not in ROLES:
                raise UserError(f"{where}.role: {row['role']!r} is not one of {', '.join(ROLES)}")
            users[str(row["username"])] = User(str(row["username"]), row["role"], str(row["password_hash"]),
                                               bool(row.get("disabled", False)))
        self._users, self._stamp = users, stamp
        return users

    def get(self, username: str) -> User | None:
        with self._lock:
            return self._load().get(username)

    def list(self) -> list[User]:
        with self._lock:
            return sorted(self._load().values(), key=lambda u: u.username)

    def verify(self, username: str, password: str) -> User | None:
        """The user when the name exists, is enabled and the password matches; else None."""
        with self._lock:
            user = self._load().get(username)
        try:
            self._hasher.verify(user.password_hash if user else self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled:
            return None
        if self._hasher.check_needs_rehash(user.password_hash):
            user = self._replace(user, password_hash=self._hasher.hash(password))
        return user

    # --- changing -----------------------------------------------------------------------------

    def add(self, username: str, role: str, password: str) -> User:
        if not USERNAME.match(username):
            raise UserError(f"username: {username!r} must be 1-64 letters, digits, '.', '_', '@' or '-'")
        if role not in ROLES:
            raise UserError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        check_password_strength(password)
        with self._lock:
            users = dict(self._load())
            if username in users:
                raise UserError(f"user {username!r} exists already (use passwd or remove)")
            users[username] = User(username, role, self._hasher.hash(password))
            self._save(users)
            return users[username]

    def set_password(self, username: str, password: str) -> User:
        check_password_strength(password)
        return self._replace(self._require(username), password_hash=self._hasher.hash(password))

    def set_role(self, username: str, role: str) -> User:
        if role not in ROLES:
            raise UserError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        return self._replace(self._require(username), role=role)

    def remove(self, username: str) -> User:
        with self._lock:
            users = dict(self._load())
            if username not in users:
                raise UserError(f"no user {username!r}")
            gone = users.pop(username)
            self._save(users)
            return gone

    def _require(self, username: str) -> User:
        user = self.get(username)
        if user is None:
            raise UserError(f"no user {username!r}")
        return user

    def _replace(self, user: User, **changes) -> User:
        with self._lock:
            users = dict(self._load())
            current = users.get(user.username, user)
            users[user.username] = new = User(
                current.username, changes.get("role", current.role),
                changes.get("password_hash", current.password_hash), current.disabled,
            )
            self._save(users)
            return new

    def _save(self, users: dict[str, User]) -> None:
        """Write atomically (temp file + rename), 0600 from the start; the caller holds the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"users": [
            {"username": u.username, "role": u.role, "password_hash": u.password_hash, "disabled": u.disabled}
            for u in sorted(users.values(), key=lambda u: u.username)
        ]}
        text = "# controltower users: argon2id hashes only; manage with `controltower users`.\n" + yaml.safe_dump(
            body, sort_keys=False)
        fd, tmp = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._users, self._stamp = dict(users), None  # re-stat at the next read


class LoginThrottle:
    """Counts failed logins per key (a user name, a client address); a key with `max_failures`
    failures within `window_s` is locked for `lockout_s`. Thread-safe."""

    def __init__(self, max_failures: int = 5, window_s: float = 900.0, lockout_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.lockout_s = max_failures, window_s, lockout_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked_for(self, *keys: str) -> float:
        """Seconds left of the longest lockout among `keys` (0 when none is locked)."""
        now = self._clock()
        with self._lock:
            return max([0.0, *(self._locked_until.get(k, now) - now for k in keys)])

    def failed(self, *keys: str) -> bool:
        """Count a failure for each key; True when one of them is now locked."""
        now = self._clock()
        locked = False
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < self.window_s] + [now]
                self._failures[key] = recent
                if len(recent) >= self.max_failures:
                    self._locked_until[key] = now + self.lockout_s
                    self._failures[key] = []
                    locked = True
            if len(self._failures) > 10_000:  # bounded memory under a spray of names
                for key in [k for k, ts in self._failures.items() if not ts or now - ts[-1] >= self.window_s]:
                    del self._failures[key]
        return locked

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


@dataclass
class Session:
    token: str = field(repr=False)
    username: str
    role: str
    csrf_token: str = field(repr=False)
    created: float
    last_seen: float
    # Which password the session was opened with (a digest of its hash): a password change
    # ends the user's other sessions.
    credential: str = field(default="", repr=False)

    def opened_with(self, user: User) -> bool:
        return hmac.compare_digest(self.credential, credential_of(user))


def credential_of(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()


class SessionStore:
    """Server-side sessions keyed by a random token (the cookie's value). Thread-safe."""

    def __init__(self, idle_s: float = 1800.0, max_age_s: float = 12 * 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.idle_s, self.max_age_s = idle_s, max_age_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), user.username, user.role, secrets.token_urlsafe(32), now, now,
                          credential_of(user))
        with self._lock:
            self._expire(now)
            self._sessions[session.token] = session
        return session

    def get(self, token: str | None, *, touch: bool = True) -> Session | None:
        """The live session of `token`, its idle clock restarted (`touch`); None when unknown or expired."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_seen > self.idle_s or now - session.created > self.max_age_s:
                del self._sessions[token]
                return None
            if touch:
                session.last_seen = now
            return session

    def end(self, token: str | None) -> Session | None:
        with self._lock:
            return self._sessions.pop(token, None) if token else None

    def end_user(self, username: str) -> int:
        """End every session of `username` (removed, disabled, or role changed); how many."""
        with self._lock:
            gone = [t for t, s in self._sessions.items() if s.username == username]
            for t in gone:
                del self._sessions[t]
            return len(gone)

    def _expire(self, now: float) -> None:
        for t in [t for t, s in self._sessions.items()
                  if now - s.last_seen > self.idle_s or now - s.created > self.max_age_s]:
            del self._sessions[t]


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (False when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())
