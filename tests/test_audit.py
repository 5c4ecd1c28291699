"""The audit trail (controltower.audit): appends, the hash chain, and `controltower audit verify`
catching edited, deleted, reordered and cut-off records."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

from controltower.audit import AuditError, AuditTrail, audit_key_from_env, record_config, verify_trail


def trail_with(tmp_path: Path, n: int = 5, key: bytes | None = None) -> AuditTrail:
    trail = AuditTrail(tmp_path / "audit.jsonl", key=key)
    for i in range(n):
        trail.record(f"user{i}", "alarm.ack", f"tag{i}", old="active-unacknowledged", new="active-acknowledged",
                     reason=f"comment {i}")
    return trail


def lines(trail: AuditTrail) -> list[str]:
    return trail.path.read_text().splitlines(keepends=True)


def write(trail: AuditTrail, rows: list[str]) -> None:
    trail.path.write_text("".join(rows))


def test_records_chain_and_verify_ok(tmp_path: Path) -> None:
    trail = trail_with(tmp_path)
    recs = trail.records()
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0]["prev_hash"] == "0" * 64 and all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(recs))
    assert recs[2]["actor"] == "user2" and recs[2]["ts"].endswith("Z") and recs[2]["reason"] == "comment 2"
    result = verify_trail(trail.path)
    assert result.ok and result.count == 5 and result.head == (5, recs[-1]["hash"])
    # A second trail object (another process) continues the same chain.
    AuditTrail(trail.path).record("admin", "model.change", "pca", old="abc", new="def")
    assert verify_trail(trail.path).count == 6


def test_an_edited_record_is_detected(tmp_path: Path) -> None:
    trail = trail_with(tmp_path)
    rows = lines(trail)
    rows[2] = rows[2].replace('"comment 2"', '"nothing to see"')
    write(trail, rows)
    result = verify_trail(trail.path)
    assert not result.ok and result.line == 3 and "edited" in result.problem and result.count == 2


def test_a_deleted_record_is_detected(tmp_path: Path) -> None:
    trail = trail_with(tmp_path)
    rows = lines(trail)
    del rows[1]
    write(trail, rows)
    result = verify_trail(trail.path)
    assert not result.ok and result.line == 2 and "seq 3 where 2 was due" in result.problem


def test_reordered_records_are_detected(tmp_path: Path) -> None:
    trail = trail_with(tmp_path)
    rows = lines(trail)
    rows[1], rows[2] = rows[2], rows[1]
    write(trail, rows)
    result = verify_trail(trail.path)
    assert not result.ok and result.line == 2


def test_a_rechained_edit_passes_the_plain_chain_but_not_the_keyed_one(tmp_path: Path) -> None:
    """Someone who can write the file can recompute SHA-256 hashes; not HMACs without the key."""
    from controltower.audit import canonical, record_hash

    for key in (None, b"k" * 32):
        folder = tmp_path / ("keyed" if key else "plain")
        trail = trail_with(folder, key=key)
        recs = trail.records()
        recs[1]["reason"] = "rewritten"
        prev = recs[0]["hash"]
        for r in recs[1:]:
            r["prev_hash"] = prev
            r["alg"] = "sha256"  # the forger has no key
            r["hash"] = record_hash(r, None)
            prev = r["hash"]
        write(trail, [canonical(r).decode() + "\n" for r in recs])
        (folder / "audit.jsonl.head").write_text(json.dumps({"seq": 5, "hash": prev}))
        result = verify_trail(trail.path, key=key)
        if key is None:
            assert result.ok  # the documented limit of an unkeyed chain
        else:
            assert not result.ok and "unkeyed record after keyed ones" in result.problem


def test_a_keyed_chain_needs_the_right_key(tmp_path: Path) -> None:
    trail = trail_with(tmp_path, key=b"s" * 32)
    assert verify_trail(trail.path, key=b"s" * 32).keyed == 5
    assert "give the audit key" in verify_trail(trail.path).problem
    assert "edited" in verify_trail(trail.path, key=b"t" * 32).problem
    assert "b'" not in repr(trail) and "sss" not in repr(trail)


def test_a_cut_tail_is_detected_by_the_head_file_and_by_an_external_head(tmp_path: Path) -> None:
    trail = trail_with(tmp_path)
    printed_head = verify_trail(trail.path).head
    write(trail, lines(trail)[:3])
    result = verify_trail(trail.path)
    assert not result.ok and "cut from the end" in result.problem
    # Cut the head file too: only an external copy of the head tells now.
    (tmp_path / "audit.jsonl.head").write_text(json.dumps({"seq": 3, "hash": trail.records()[-1]["hash"]}))
    assert verify_trail(trail.path).ok
    result = verify_trail(trail.path, expect_head=printed_head)
    assert not result.ok and "expected at least seq 5" in result.problem


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    others = [AuditTrail(tmp_path / "audit.jsonl") for _ in range(3)]

    def work(t: AuditTrail, n: int) -> None:
        for i in range(20):
            t.record(f"w{n}", "setpoint.write", "tag", old=i, new=i + 1)

    threads = [threading.Thread(target=work, args=(t, n)) for n, t in enumerate([trail, *others])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify_trail(trail.path)
    assert result.ok and result.count == 80


def test_config_changes_are_recorded_once(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    assert record_config(trail, "a: 1\n", source="site.yaml")
    assert not record_config(trail, "a: 1\n", source="site.yaml")
    assert record_config(trail, "a: 2\n", source="site.yaml")
    changes = [r for r in trail.records() if r["action"] == "config.change"]
    assert len(changes) == 2 and changes[1]["old"] == changes[0]["new"] != changes[1]["new"]


def test_key_from_env_or_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("filekey\n")
    assert audit_key_from_env({"CONTROLTOWER_AUDIT_KEY_FILE": str(tmp_path / "key")}) == b"filekey"
    assert audit_key_from_env({"CONTROLTOWER_AUDIT_KEY": "envkey"}) == b"envkey"
    assert audit_key_from_env({}) is None
    with pytest.raises(AuditError, match="cannot read"):
        audit_key_from_env({"CONTROLTOWER_AUDIT_KEY_FILE": str(tmp_path / "nope")})


def test_cli_verify_exit_codes(tmp_path: Path, capsys) -> None:
    from controltower.cli import main

    def verify(*extra: str) -> tuple[int, str]:
        code = main(["audit", "verify", "--data-dir", str(tmp_path), *extra])
        out = capsys.readouterr()
        return code, out.out + out.err

    trail = trail_with(tmp_path)
    code, said = verify()
    assert code == 0 and said.startswith("OK") and "5 records" in said
    head = said.split("head seq ")[1].split()
    rows = lines(trail)
    rows[3] = rows[3].replace('"user3"', '"mallory"')
    write(trail, rows)
    code, said = verify()
    assert code == 1 and "BROKEN" in said and "line 4" in said
    write(trail, rows[:3])
    assert verify()[0] == 1  # the seq-4 edit is gone with the cut, the head file tells
    (tmp_path / "audit.jsonl.head").write_text(json.dumps({"seq": 3, "hash": trail.records()[-1]["hash"]}))
    assert verify()[0] == 0
    code, said = verify("--expect-head", f"{head[0]}:{head[2]}")
    assert code == 1 and "expected at least seq 5" in said
