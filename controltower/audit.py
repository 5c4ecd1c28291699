"""The audit trail (21 CFR Part 11 spirit): an append-only, hash-chained JSON-lines file of who
did what, when, to what, from which value to which, and why.

    trail = AuditTrail(data_dir / "audit.jsonl", key=audit_key_from_env())
    trail.record("ana", "alarm.ack", "lyon.ff.fill1.filler1.fill_weight",
                 old="active-unacknowledged", new="active-acknowledged", reason="QA informed")
    verify_trail(data_dir / "audit.jsonl", key=...)  # VerifyResult(ok, count, ...)

Other parts of the product call `record` for what they change: setpoint writes
(`setpoint.write`, target the tag, old/new the values), deviation records (`deviation.record`),
model changes (`model.change`, target the model's name, old/new its fingerprint), configuration
changes (`config.change`, done by `record_config` at start-up). `actor` is the logged-in user,
"system" for the product itself, "cli:<os user>" for a command run on the host. `old`/`new`
are any JSON values; `details` an optional JSON object. `open_trail(data_dir)` opens the
trail of a data directory with the key from the environment, the way the tower does.

Each record is one line: `seq` (1, 2, ...), `ts` (UTC, ISO-8601 with Z), `actor`, `action`,
`target`, `old`, `new`, `reason`, `details`, `alg`, `prev_hash` (the previous record's `hash`,
64 zeros for the first), and `hash`: SHA-256 of the record's canonical JSON (sorted keys, no
spaces, UTF-8) without `hash` itself, or HMAC-SHA256 with a key (`alg` says which). So an edited
record breaks its own hash, a deleted or reordered one breaks `seq` and `prev_hash`.

What the chain cannot see alone: the tail cut off (the shorter file is a valid chain), and a
whole chain rewritten by someone who can write the file. Against the first, each append also
writes the head (`seq`, `hash`) to `<file>.head`, and `verify` compares; an external copy of the
head (printed by `controltower audit verify`, kept elsewhere) checked with `--expect-head` holds
even if both files are cut. Against the second, the HMAC key (`CONTROLTOWER_AUDIT_KEY_FILE` or
`CONTROLTOWER_AUDIT_KEY`): without it a writer cannot produce valid hashes. The trade-off: the
key must live where the tower runs (readable by its account), so it protects against people who
can write the data directory but not read the key (kept 0400 by another account, or on a
secrets mount); root on the host defeats it. Once a keyed record exists, an unkeyed one after
it fails verification (no downgrade).

Appends are serialised by a lock within the process and by `flock` on the file across processes
(a CLI command and the running tower), each written with flush and fsync before `record` returns.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENESIS = "0" * 64
KEY_ENV = "CONTROLTOWER_AUDIT_KEY"
KEY_FILE_ENV = "CONTROLTOWER_AUDIT_KEY_FILE"
FILE_NAME = "audit.jsonl"
FIELDS = ("seq", "ts", "actor", "action", "target", "old", "new", "reason", "details", "alg", "prev_hash")


class AuditError(RuntimeError):
    """The trail cannot be written (the action it records should then not be done)."""


def audit_key_from_env(environ: dict[str, str] | None = None) -> bytes | None:
    """The HMAC key: the file named by CONTROLTOWER_AUDIT_KEY_FILE, else CONTROLTOWER_AUDIT_KEY,
    else None (plain SHA-256 chain)."""
    env = os.environ if environ is None else environ
    if env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise AuditError(f"{KEY_FILE_ENV}: cannot read {path} ({exc.strerror})") from None
        if not key:
            raise AuditError(f"{KEY_FILE_ENV}: {path} is empty")
        return key
    return env[KEY_ENV].encode() if env.get(KEY_ENV) else None


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def record_hash(record: dict[str, Any], key: bytes | None) -> str:
    """The `hash` of a record (its fields but `hash`), by its `alg`."""
    body = canonical({k: v for k, v in record.items() if k != "hash"})
    if record.get("alg") == "hmac-sha256":
        if key is None:
            raise AuditError("this record is keyed (hmac-sha256): give the audit key to check it")
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


class AuditTrail:
    """Appends records to the chain in `path`. Thread-safe and safe across processes."""

    def __init__(self, path: str | Path, *, key: bytes | None = None):
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._key = key
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:  # never the key
        return f"AuditTrail({str(self.path)!r}, keyed={self._key is not None})"

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def key_for_verify(self) -> bytes | None:
        """The key, for `verify_trail` in this process only (never shown or logged)."""
        return self._key

    def record(self, actor: str, action: str, target: str | None = None, *, old: Any = None, new: Any = None,
               reason: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append one record and return it as written. Raises AuditError when it cannot be written."""
        if not actor or not action:
            raise ValueError("an audit record needs an actor and an action")
        try:
            with self._lock, open(self.path, "a+b") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                seq, prev = _last_link(f)
                rec: dict[str, Any] = {
                    "seq": seq + 1, "ts": _iso(datetime.now(UTC)), "actor": actor, "action": action,
                    "target": target, "old": old, "new": new, "reason": reason, "details": details,
                    "alg": "hmac-sha256" if self._key is not None else "sha256", "prev_hash": prev,
                }
                rec["hash"] = record_hash(rec, self._key)
                f.seek(0, os.SEEK_END)
                f.write(canonical(rec) + b"\n")
                f.flush()
                os.fsync(f.fileno())
                self._write_head(rec["seq"], rec["hash"])
        except OSError as exc:
            raise AuditError(f"cannot append to the audit trail {self.path}: {exc.strerror or exc}") from None
        return rec

    def records(self) -> list[dict[str, Any]]:
        """Every record that parses, in file order (for `show`; `verify_trail` checks them)."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def last(self, action: str) -> dict[str, Any] | None:
        """The latest record of `action`, or None."""
        return next((r for r in reversed(self.records()) if r.get("action") == action), None)

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        tmp.write_text(json.dumps({"seq": seq, "hash": digest}) + "\n")
        os.replace(tmp, self.head_path)


def open_trail(data_dir: str | Path) -> AuditTrail:
    return AuditTrail(Path(data_dir) / FILE_NAME, key=audit_key_from_env())


def record_model_change(trail: AuditTrail, change: Any, *, by: str | None = None) -> dict[str, Any]:
    """A stored model version swapped in (`model.load`) or refused (`model.refuse`) by a running
    engine: `change` is an `analytics.model_reload.Reload`; `by` names the process when it is not
    the tower (e.g. "analytics worker w1")."""
    details = {"version": change.new_version, "previous_version": change.old_version}
    if by is not None:
        details["by"] = by
    return trail.record(
        "system", "model.refuse" if change.error else "model.load", f"{change.unit} {change.kind}",
        old=change.old_fingerprint, new=change.new_fingerprint,
        reason=change.error or f"hot reload: version {change.new_version} replaces {change.old_version}",
        details=details,
    )


def record_config(trail: AuditTrail, config_text: bytes | str, *, source: str, actor: str = "system") -> bool:
    """Record a `config.change` when the configuration's SHA-256 differs from the last recorded
    one (the first start records it too). True when a record was written."""
    data = config_text.encode() if isinstance(config_text, str) else config_text
    digest = hashlib.sha256(data).hexdigest()
    last = trail.last("config.change")
    old = last.get("new") if last else None
    if old == digest:
        return False
    trail.record(actor, "config.change", source, old=old, new=digest,
                 reason="configuration at start-up differs from the last recorded one" if old else "first start")
    return True


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    keyed: int = 0
    head: tuple[int, str] | None = None  # (seq, hash) of the last good record
    line: int | None = None  # 1-based line of the first problem
    problem: str | None = None

    def text(self, path: Path) -> str:
        if self.ok:
            head = f"; head seq {self.head[0]} hash {self.head[1]}" if self.head else ""
            return f"OK {path}: {self.count} records ({self.keyed} keyed){head}"
        where = f" at line {self.line}" if self.line is not None else ""
        return f"BROKEN {path}{where}: {self.problem} ({self.count} records verified before it)"


def verify_trail(path: str | Path, *, key: bytes | None = None, expect_head: tuple[int, str] | None = None,
                 check_head_file: bool = True) -> VerifyResult:
    """Check the whole chain: each line parses, `seq` runs 1, 2, ..., `prev_hash` is the previous
    `hash`, each `hash` matches its record, no unkeyed record after a keyed one; then the head
    file (`<file>.head`) and `expect_head` (seq, hash) if given, which catch a cut tail."""
    path = Path(path)
    count = keyed = 0
    prev, seen_keyed = GENESIS, False
    head: tuple[int, str] | None = None
    if path.exists():
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                where = {"count": count, "keyed": keyed, "head": head, "line": number}
                try:
                    rec = json.loads(line)
                except ValueError:
                    return VerifyResult(False, problem="not a JSON record (torn or edited line)", **where)
                if not isinstance(rec, dict) or set(rec) != set(FIELDS) | {"hash"}:
                    return VerifyResult(False, problem="fields added or missing", **where)
                if rec["seq"] != count + 1:
                    return VerifyResult(False, problem=f"seq {rec['seq']} where {count + 1} was due "
                                                       "(a record deleted, inserted or moved)", **where)
                if rec["prev_hash"] != prev:
                    return VerifyResult(False, problem=f"seq {rec['seq']}: prev_hash does not match the previous "
                                                       "record's hash (a record before it changed or removed)", **where)
                if rec["alg"] not in ("sha256", "hmac-sha256"):
                    return VerifyResult(False, problem=f"seq {rec['seq']}: unknown alg {rec['alg']!r}", **where)
                if rec["alg"] == "sha256" and seen_keyed:
                    return VerifyResult(False, problem=f"seq {rec['seq']}: unkeyed record after keyed ones "
                                                       "(re-chained without the key?)", **where)
                try:
                    expected = record_hash(rec, key)
                except AuditError as exc:
                    return VerifyResult(False, problem=f"seq {rec['seq']}: {exc}", **where)
                if not hmac.compare_digest(expected, str(rec["hash"])):
                    return VerifyResult(False, problem=f"seq {rec['seq']}: hash does not match the record "
                                                       "(the record was edited)", **where)
                seen_keyed = seen_keyed or rec["alg"] == "hmac-sha256"
                count += 1
                keyed += rec["alg"] == "hmac-sha256"
                prev = rec["hash"]
                head = (rec["seq"], rec["hash"])
    done = {"count": count, "keyed": keyed, "head": head}
    head_file = path.with_name(path.name + ".head")
    if check_head_file and head_file.exists():
        try:
            stored = json.loads(head_file.read_text())
            stored_head = (int(stored["seq"]), str(stored["hash"]))
        except (ValueError, KeyError, TypeError):
            return VerifyResult(False, problem=f"{head_file} is unreadable", **done)
        if stored_head != head:
            return VerifyResult(False, problem=f"the head file says seq {stored_head[0]} but the trail ends at "
                                               f"{head[0] if head else 0} (records cut from the end?)", **done)
    elif check_head_file and count:
        return VerifyResult(False, problem=f"{head_file} is missing (it is written with every record)", **done)
    if expect_head is not None:
        if head is None or head[0] < expect_head[0]:
            return VerifyResult(False, problem=f"expected at least seq {expect_head[0]}, the trail ends at "
                                               f"{head[0] if head else 0} (records cut from the end)", **done)
        # The expected head must be a record of this chain, with that hash.
        with open(path, "rb") as f:
            for i, line in enumerate(f, start=1):
                if i == expect_head[0]:
                    if json.loads(line)["hash"] != expect_head[1]:
                        return VerifyResult(False, problem=f"seq {expect_head[0]} has not the expected hash", **done)
                    break
    return VerifyResult(True, **done)


def parse_head(text: str) -> tuple[int, str]:
    """`SEQ:HASH` as printed by `verify`, for --expect-head."""
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise ValueError(f"--expect-head: give SEQ:HASH (64 hex digits), got {text!r}")
    return int(seq), digest


def _last_link(f) -> tuple[int, str]:
    """(seq, hash) of the file's last record, read from its end; (0, GENESIS) when empty."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if end == 0:
        return 0, GENESIS
    chunk = 4096
    data = b""
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            try:
                rec = json.loads(lines[-1])
                return int(rec["seq"]), str(rec["hash"])
            except (ValueError, KeyError, TypeError):
                raise AuditError(f"the last line of {f.name} is not a record: run `controltower audit verify`") from None
        chunk *= 2
    return 0, GENESIS


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
