"""Authentication, roles, CSRF, cookies and headers over real HTTP: the whole app (create_app with
WebSecurity) served by WebServer on a free port, a real users file, a real audit trail."""

from __future__ import annotations

import http.client
import json
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from argon2 import PasswordHasher

from controltower.audit import AuditTrail, verify_trail
from controltower.auth import LoginThrottle, UserStore
from controltower.site import AuthConfig
from controltower.websecurity import WebSecurity
from controltower.webserver import WebServer
from tests.screen.conftest import NOW
from tests.screen.demo_context import FILL, plant_history
from tests.screen.test_auth import FAST

PASSWORDS = {"olga": "operator-pass-1", "quinn": "quality-pass-1", "adam": "admin-pass-12"}
FW = f"{FILL}.filler1.fill_weight"


class Client:
    """An HTTP client with its own cookie jar; no redirects followed."""

    def __init__(self, url: str):
        self.host, self.port = urlsplit(url).hostname, urlsplit(url).port
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []
        self.csrf: str | None = None

    def call(self, method: str, path: str, body: object = None, *, form: dict | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, object]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if form is not None:
            from urllib.parse import urlencode

            data, h["Content-Type"] = urlencode(form), "application/x-www-form-urlencoded"
        elif body is not None:
            data, h["Content-Type"] = json.dumps(body), "application/json"
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        raw = resp.read()
        for header in resp.headers.get_all("Set-Cookie") or []:
            self.set_cookie_headers.append(header)
            cookie = SimpleCookie(header)
            for name, morsel in cookie.items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        conn.close()
        ctype = resp.headers.get("Content-Type", "")
        return resp.status, resp.headers, json.loads(raw) if ctype.startswith("application/json") else raw.decode()

    def login(self, user: str, password: str | None = None) -> dict:
        status, _, body = self.call("POST", "/login", {"username": user, "password": password or PASSWORDS[user]})
        assert status == 200, body
        self.csrf = body["csrf_token"]
        return body

    def post(self, path: str, body: object = None, **kw):
        headers = {"X-CSRF-Token": self.csrf} if self.csrf else {}
        return self.call("POST", path, body if body is not None else {}, headers=headers, **kw)


@pytest.fixture
def site(ctx, tmp_path: Path):
    from controltower.screen import create_app

    users = UserStore(tmp_path / "users.yaml", hasher=FAST)
    for name, role in (("olga", "operator"), ("quinn", "quality_engineer"), ("adam", "administrator")):
        users.add(name, role, PASSWORDS[name])
    config = AuthConfig(enabled=True, max_failed_logins=3, lockout_s=60)
    ctx.site = ctx.site.model_copy(update={"screen": ctx.site.screen.model_copy(update={"auth": config})})
    ctx.feed(plant_history(ctx, NOW, seconds=120))
    ctx.event(NOW - timedelta(seconds=30), FW, 2, 2.08, 2.06, reason="above alarm high")
    trail = AuditTrail(tmp_path / "audit.jsonl")
    security = WebSecurity(config, users=users, audit=trail,
                           throttle=LoginThrottle(config.max_failed_logins, 60, 60))
    app = create_app(ctx, clock=lambda: NOW, security=security)
    with WebServer(app, port=0) as web:
        yield ctx, web.url, trail


def alarm_id(ctx) -> str:
    return next(a.id for a in ctx.alerts.alarm_list() if a.tag_id == FW)


def test_without_a_session_pages_redirect_to_login_and_data_is_401(site) -> None:
    _, url, _ = site
    c = Client(url)
    status, headers, _ = c.call("GET", "/alarms/")
    assert status == 302 and headers["Location"].startswith("/login?next=/alarms/")
    for path in ("/api/lines", "/api/alerts", "/api/journal", "/_dash-layout", "/alarms/_dash-layout",
                 "/auth/session"):
        status, _, body = c.call("GET", path)
        assert status == 401 and "login required" in body["error"], path
    status, _, body = c.call("POST", "/_dash-update-component", {"output": "x"})
    assert status == 401
    # Probes and the screen's static files stay reachable.
    assert c.call("GET", "/api/health")[0] == 200 and c.call("GET", "/metrics")[0] == 200
    status, _, page = c.call("GET", "/login")
    assert status == 200 and 'name="password"' in page


def test_login_sets_httponly_samesite_cookies_and_logout_ends_the_session(site) -> None:
    _, url, trail = site
    c = Client(url)
    body = c.login("olga")
    assert body["role"] == "operator" and body["user"] == "olga"
    session_cookie = next(h for h in c.set_cookie_headers if h.startswith("ct_session="))
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/" in session_cookie
    assert "Secure" not in session_cookie  # plain HTTP here; secure_cookies: true adds it
    csrf_cookie = next(h for h in c.set_cookie_headers if h.startswith("_csrf_token="))
    assert "HttpOnly" not in csrf_cookie and "SameSite=Strict" in csrf_cookie
    assert c.call("GET", "/api/lines")[0] == 200
    status, _, info = c.call("GET", "/auth/session")
    assert info["user"] == "olga" and "alarm.ack" in info["permissions"] and "tag.suppress" not in info["permissions"]
    old_cookie = c.cookies["ct_session"]
    status, _, _ = c.call("POST", "/logout", form={"csrf_token": c.csrf})
    assert status == 302
    replay = Client(url)
    replay.cookies["ct_session"] = old_cookie  # the old cookie is dead server-side
    assert replay.call("GET", "/api/lines")[0] == 401
    actions = [r["action"] for r in trail.records()]
    assert actions == ["login", "logout"]


def test_roles_are_enforced_on_the_api(site) -> None:
    ctx, url, trail = site
    operator, quality, admin = Client(url), Client(url), Client(url)
    operator.login("olga"), quality.login("quinn"), admin.login("adam")
    status, _, body = operator.post(f"/api/tags/{FW}/suppress", {"reason": "sensor swap"})
    assert status == 403 and "olga (operator) may not tag.suppress" in body["error"]
    assert FW not in ctx.alerts.suppressed_tags()
    status, _, body = quality.post(f"/api/alerts/{alarm_id(ctx)}/shelve", {"minutes": 30, "reason": "x"})
    assert status == 403 and "quality engineer" in body["error"]
    # The acting user is the session's: a body naming someone else is refused, none is fine.
    status, _, body = operator.post(f"/api/alerts/{alarm_id(ctx)}/ack", {"user": "adam", "comment": "me"})
    assert status == 403 and "logged-in user 'olga'" in body["error"]
    status, _, body = operator.post(f"/api/alerts/{alarm_id(ctx)}/ack", {"comment": "checked the filler"})
    assert status == 200 and body["alert"]["acknowledged_by"] == "olga"
    status, _, body = admin.post(f"/api/tags/{FW}/suppress", {"reason": "sensor swap"})
    assert status == 200 and FW in ctx.alerts.suppressed_tags()
    records = [r for r in trail.records() if not r["action"].startswith("login")]
    assert [(r["actor"], r["action"]) for r in records] == [("olga", "alarm.ack"), ("adam", "tag.suppress")]
    ack = records[0]
    assert ack["old"] == "active-unacknowledged" and ack["new"] == "active-acknowledged"
    assert ack["reason"] == "checked the filler" and FW in ack["target"]
    assert verify_trail(trail.path).ok


def test_state_changes_need_the_csrf_token_and_the_same_origin(site) -> None:
    ctx, url, _ = site
    c = Client(url)
    c.login("olga")
    path = f"/api/alerts/{alarm_id(ctx)}/ack"
    status, _, body = c.call("POST", path, {"comment": "x"})
    assert status == 403 and "CSRF" in body["error"]
    status, _, body = c.call("POST", path, {"comment": "x"}, headers={"X-CSRF-Token": "forged"})
    assert status == 403
    status, _, body = c.call("POST", path, {"comment": "x"},
                             headers={"X-CSRF-Token": c.csrf, "Origin": "http://evil.example"})
    assert status == 403 and "another origin" in body["error"]
    status, _, body = c.call("POST", path, {"comment": "x"},
                             headers={"X-CSRFToken": c.csrf, "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert ctx.alerts.get(alarm_id(ctx)).acknowledged_by is None
    # Dash's header name works too (dash-renderer sends X-CSRFToken from the _csrf_token cookie).
    status, _, _ = c.call("POST", path, {"comment": "x"}, headers={"X-CSRFToken": c.csrf, "Origin": url})
    assert status == 200
    # Logout without the token is refused.
    assert c.call("POST", "/logout", form={})[0] == 403


def test_lockout_after_failed_logins_is_audited(site) -> None:
    _, url, trail = site
    c = Client(url)
    for _ in range(3):
        status, _, _ = c.call("POST", "/login", {"username": "olga", "password": "wrong-password"})
        assert status == 401
    status, _, body = c.call("POST", "/login", {"username": "olga", "password": PASSWORDS["olga"]})
    assert status == 429 and "Too many failed logins" in body["error"]
    actions = [r["action"] for r in trail.records()]
    assert actions == ["login.failed"] * 3 + ["login.refused"]
    assert "wrong-password" not in trail.path.read_text()
    # The form login shows the message on the page, the password never echoed.
    status, _, page = Client(url).call("POST", "/login", form={"username": "quinn", "password": "nope-nope-nope"})
    assert status == 401 and "Wrong user name or password" in page and "nope-nope-nope" not in page
    # A password typed into the name field is not written down.
    Client(url).call("POST", "/login", {"username": "my-Secret-pw", "password": "x"})
    last = trail.records()[-1]
    assert last["action"] == "login.failed" and last["actor"].startswith("unknown:")
    assert "my-Secret-pw" not in trail.path.read_text()


def test_form_login_redirects_to_a_local_next_only(site) -> None:
    _, url, _ = site
    c = Client(url)
    status, headers, _ = c.call("POST", "/login", form={"username": "olga", "password": PASSWORDS["olga"],
                                                        "next": "/alarms/"})
    assert status == 302 and headers["Location"] == "/alarms/"
    status, headers, _ = Client(url).call("POST", "/login", form={
        "username": "olga", "password": PASSWORDS["olga"], "next": "//evil.example/x"})
    assert status == 302 and headers["Location"] == "/"


def test_security_headers_on_every_response(site) -> None:
    _, url, _ = site
    c = Client(url)
    c.login("olga")
    for path in ("/", "/alarms/", "/api/lines", "/login", "/api/nope"):
        _, headers, _ = c.call("GET", path)
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self' 'sha256-" in csp, path
        scripts = csp.split("script-src")[1].split(";")[0]
        assert "'unsafe-inline'" not in scripts  # inline scripts only by hash
        assert "'unsafe-eval'" in scripts  # plotly.js needs it (docs/security.md)
        assert "object-src 'none'" in csp and "form-action 'self'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"


def test_a_removed_user_or_a_changed_password_ends_the_session_at_once(site, tmp_path: Path) -> None:
    _, url, _ = site
    c, q = Client(url), Client(url)
    c.login("olga"), q.login("quinn")
    store = UserStore(tmp_path / "users.yaml", hasher=FAST)  # as `controltower users ...` does
    store.set_role("quinn", "administrator")
    assert q.call("GET", "/auth/session")[2]["role"] == "administrator"  # a role change applies at once
    store.set_password("quinn", "a-new-password-2")
    assert q.call("GET", "/api/lines")[0] == 401
    store.remove("olga")
    assert c.call("GET", "/api/lines")[0] == 401


def test_the_console_callback_checks_the_role_on_the_server(site) -> None:
    """The alarm console's action callback, posted as dash-renderer posts it: an operator may
    acknowledge but a quality engineer may not shelve, whatever the page shows."""
    ctx, url, trail = site
    ident = alarm_id(ctx)

    def act(client: Client, button: str) -> str:
        payload = {
            "output": "..console-result.children...console-result.className...console-version.data..."
                      "console-ack-comment.value...console-shelve-reason.value..",
            "outputs": [{"id": i, "property": p} for i, p in (
                ("console-result", "children"), ("console-result", "className"), ("console-version", "data"),
                ("console-ack-comment", "value"), ("console-shelve-reason", "value"))],
            "inputs": [{"id": b, "property": "n_clicks", "value": 1 if b == button else 0}
                       for b in ("console-ack", "console-shelve", "console-unshelve")],
            "changedPropIds": [f"{button}.n_clicks"],
            "state": [
                {"id": "console-grid", "property": "selectedRows", "value": [{"id": ident}]},
                {"id": "console-user", "property": "value", "value": None},
                {"id": "console-ack-comment", "property": "value", "value": "seen"},
                {"id": "console-shelve-minutes", "property": "value", "value": 30},
                {"id": "console-shelve-reason", "property": "value", "value": "maintenance"},
                {"id": "console-version", "property": "data", "value": 0},
            ],
        }
        status, _, body = client.call("POST", "/alarms/_dash-update-component", payload,
                                      headers={"X-CSRFToken": client.csrf})
        assert status == 200, body
        return json.dumps(body["response"]["console-result"]["children"])

    quality = Client(url)
    quality.login("quinn")
    assert "may not alarm.shelve" in act(quality, "console-shelve")
    assert ctx.alerts.get(ident).shelved_until is None
    operator = Client(url)
    operator.login("olga")
    assert "Acknowledged" in act(operator, "console-ack")
    assert ctx.alerts.get(ident).acknowledged_by == "olga"
    assert [(r["actor"], r["action"]) for r in trail.records() if r["action"].startswith("alarm")] == [
        ("olga", "alarm.ack")]
    # Without the CSRF header the callback does not run at all.
    status, _, _ = operator.call("POST", "/alarms/_dash-update-component", {"output": "x"})
    assert status == 403


def test_the_audit_trail_is_readable_by_quality_and_admin_only(site) -> None:
    _, url, _ = site
    operator, quality = Client(url), Client(url)
    operator.login("olga"), quality.login("quinn")
    status, _, body = operator.call("GET", "/api/audit")
    assert status == 403 and "may not audit.read" in body["error"]
    status, _, body = quality.call("GET", "/api/audit?limit=1")
    assert status == 200 and body["verified"]["ok"] and body["verified"]["count"] == 2
    assert [(r["actor"], r["action"]) for r in body["records"]] == [("quinn", "login")]
    assert quality.call("GET", "/api/audit?limit=0")[0] == 400
    assert Client(url).call("GET", "/api/audit")[0] == 401


def test_a_login_that_upgrades_the_hash_keeps_its_session(site, tmp_path: Path) -> None:
    """The session is tied to the password's hash; the upgrade at login must not end it."""
    _, url, _ = site
    UserStore(tmp_path / "users.yaml", hasher=PasswordHasher(time_cost=1, memory_cost=4096, parallelism=1)
              ).set_password("olga", "older-params-1")
    c = Client(url)
    c.login("olga", "older-params-1")  # the server's store upgrades to its own parameters
    assert "m=4096" not in (tmp_path / "users.yaml").read_text()
    assert c.call("GET", "/api/lines")[0] == 200


def test_behind_a_proxy_the_forwarded_address_and_host_count(ctx, tmp_path: Path) -> None:
    """With proxy_hops: 1 the lockout and the audit see the client's address from X-Forwarded-For,
    and the origin check the public host from X-Forwarded-Host; without it, neither is believed."""
    from controltower.screen import create_app

    users = UserStore(tmp_path / "users.yaml", hasher=FAST)
    users.add("olga", "operator", PASSWORDS["olga"])
    for hops in (1, 0):
        config = AuthConfig(enabled=True, proxy_hops=hops)
        ctx.site = ctx.site.model_copy(update={"screen": ctx.site.screen.model_copy(update={"auth": config})})
        trail = AuditTrail(tmp_path / f"audit-{hops}.jsonl")
        app = create_app(ctx, clock=lambda: NOW, security=WebSecurity(config, users=users, audit=trail))
        with WebServer(app, port=0) as web:
            proxied = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Host": "tower.plant.example",
                       "X-Forwarded-Proto": "https", "Origin": "https://tower.plant.example"}
            status, _, _ = Client(web.url).call("POST", "/login", {"username": "olga", "password": "wrong-password"},
                                                headers=proxied)
            if hops:
                assert status == 401 and trail.records()[-1]["details"]["address"] == "10.1.2.3"
            else:
                assert status == 403  # the forwarded host is not believed: another origin
