"""`controltower users ...` and `controltower audit ...`.

    controltower users add NAME --role operator|quality_engineer|administrator (--config F | --data-dir D)
    controltower users passwd NAME ...      controltower users role NAME --role R ...
    controltower users remove NAME ...      controltower users list ...
    controltower audit verify (--config F | --data-dir D) [--expect-head SEQ:HASH]
    controltower audit show (--config F | --data-dir D) [--limit N]

`controltower history --url` logs in as CONTROLTOWER_USER with CONTROLTOWER_PASSWORD when the
first is set (`api_opener`). A password is never an argument (it would sit in the shell history and the process list): it
comes from the CONTROLTOWER_PASSWORD environment variable, from standard input with
--password-stdin (the first line), or from a prompt asked twice. Each user change is an audit
record under "cli:<the OS user>". `audit verify` exits 0 and prints OK, the record count and the
head (keep it elsewhere: `--expect-head` later proves nothing was cut off), or prints the first
broken record and its line and exits 1.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from controltower.audit import AuditError, audit_key_from_env, open_trail, parse_head, verify_trail
from controltower.auth import ROLES, UserError, UserStore

PASSWORD_ENV = "CONTROLTOWER_PASSWORD"
USER_ENV = "CONTROLTOWER_USER"


def _where(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which control tower")
    group.add_argument("--config", type=Path, help="the site file (its data_dir and screen.auth.users_file)")
    group.add_argument("--data-dir", type=Path, help="the data directory (overrides the site file's)")


def add_users_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="users_command", required=True)
    for name, text in (("add", "add a user"), ("passwd", "set a user's password"), ("role", "change a user's role"),
                       ("remove", "remove a user"), ("list", "list users and roles")):
        cmd = sub.add_parser(name, help=text)
        if name != "list":
            cmd.add_argument("username")
        if name in ("add", "role"):
            cmd.add_argument("--role", required=True, choices=ROLES)
        if name in ("add", "passwd"):
            cmd.add_argument("--password-stdin", action="store_true",
                             help=f"read the password from standard input (else ${PASSWORD_ENV}, else a prompt)")
        _where(cmd)


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="check the audit trail's hash chain (exit 1 when broken)")
    verify.add_argument("--expect-head", type=parse_head, metavar="SEQ:HASH",
                        help="a head printed by an earlier verify: fails if that record is gone or differs")
    _where(verify)
    show = sub.add_parser("show", help="print the last audit records")
    show.add_argument("--limit", type=int, default=50)
    _where(show)


def data_dir_and_users_file(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.config is None and args.data_dir is None:
        raise ValueError("give --config FILE or --data-dir DIR (where the control tower keeps its data)")
    users_name = "users.yaml"
    data_dir = args.data_dir
    if args.config is not None:
        from controltower.site import load_site_config

        site = load_site_config(args.config)
        users_name = site.screen.auth.users_file
        data_dir = data_dir or Path(site.data_dir)
    users_file = Path(users_name)
    return data_dir, users_file if users_file.is_absolute() else data_dir / users_file


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the passwords differ")
    return first


def run_users(args: argparse.Namespace) -> int:
    data_dir, users_file = data_dir_and_users_file(args)
    store = UserStore(users_file)
    actor = f"cli:{getpass.getuser()}"
    trail = open_trail(data_dir)
    try:
        if args.users_command == "list":
            for user in store.list():
                print(f"{user.username}\t{user.role}" + ("\tdisabled" if user.disabled else ""))
            return 0
        if args.users_command == "add":
            user = store.add(args.username, args.role, read_password(args))
            trail.record(actor, "user.add", user.username, new=user.role)
            print(f"added {user.username} ({user.role}) to {users_file}")
        elif args.users_command == "passwd":
            user = store.set_password(args.username, read_password(args))
            trail.record(actor, "user.passwd", user.username, reason="password set")
            print(f"password of {user.username} set")
        elif args.users_command == "role":
            old = store.get(args.username)
            user = store.set_role(args.username, args.role)
            trail.record(actor, "user.role", user.username, old=old.role if old else None, new=user.role)
            print(f"{user.username} is now {user.role}")
        elif args.users_command == "remove":
            user = store.remove(args.username)
            trail.record(actor, "user.remove", user.username, old=user.role)
            print(f"removed {user.username}")
    except UserError as exc:
        raise ValueError(str(exc)) from None
    except AuditError as exc:
        print(f"controltower: {exc}", file=sys.stderr)
        return 1
    return 0


def run_audit(args: argparse.Namespace) -> int:
    data_dir, _ = data_dir_and_users_file(args)
    path = data_dir / "audit.jsonl"
    if args.audit_command == "show":
        records = open_trail(data_dir).records()[-args.limit:]
        for r in records:
            change = f" {r['old']!r} -> {r['new']!r}" if r.get("old") is not None or r.get("new") is not None else ""
            why = f" ({r['reason']})" if r.get("reason") else ""
            print(f"{r['seq']:>6} {r['ts']} {r['actor']} {r['action']} {r.get('target') or ''}{change}{why}")
        return 0
    try:
        key = audit_key_from_env()
    except AuditError as exc:
        print(f"controltower: {exc}", file=sys.stderr)
        return 1
    result = verify_trail(path, key=key, expect_head=args.expect_head)
    print(result.text(path), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def api_opener(base_url: str):
    """A urllib opener for a control tower's API: logged in (a session cookie) when
    CONTROLTOWER_USER is set, with the password from CONTROLTOWER_PASSWORD; else anonymous (a
    tower with auth on then answers 401, which the caller reports). Raises urllib's HTTPError
    when the login is refused."""
    import urllib.request
    from http.cookiejar import CookieJar

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    user = os.environ.get(USER_ENV)
    if user:
        body = json.dumps({"username": user, "password": os.environ.get(PASSWORD_ENV, "")}).encode()
        request = urllib.request.Request(base_url.rstrip("/") + "/login", data=body,
                                         headers={"Content-Type": "application/json"})
        with opener.open(request, timeout=30) as response:
            response.read()
    return opener
