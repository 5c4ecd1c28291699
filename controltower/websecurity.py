"""The web side of security, on the Flask server that carries the screen and the API: the login
page, sessions in cookies, the CSRF and origin checks, the role check every action goes through,
the security headers, and audit records of logins and alarm actions. See docs/security.md.

    security = WebSecurity.from_config(site.screen.auth, data_dir=..., audit=trail)
    security.install(server)                    # before the Dash apps are created on it
    security.set_script_hashes(app.csp_hashes() + console_app.csp_hashes())

    # in an API route or a Dash callback:
    user = acting_user("alarm.ack", claimed=body.get("user"))   # NotAllowed (401/403) if not

With auth enabled every request needs a live session except the login page, the static files
of the screen (JavaScript and CSS, no data) and, when `public_probes`, /api/health and /metrics.
A page asked for without a session is redirected to /login; anything else gets a JSON 401.

CSRF: every POST/PUT/PATCH/DELETE carries the session's CSRF token in the `X-CSRF-Token` (API
clients) or `X-CSRFToken` header, or in a `csrf_token` form field (the logout button); the token
is also in the `_csrf_token` cookie (not HttpOnly) because Dash's renderer sends that cookie's
value as `X-CSRFToken` with every callback by itself. A page on another site cannot read the
cookie, so it cannot forge the header (the synchronizer-token pattern, the token tied to the
server-side session). On top: the session cookie is HttpOnly and SameSite=Strict, and a state-
changing request whose Origin is another host, or whose Sec-Fetch-Site is cross-site, is refused
(also with auth off: a web page the demo user visits cannot post to the demo).

With auth disabled (the demo) there are no sessions: actions are taken under the name given,
and the screen says so.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    current_app,
    g,
    has_app_context,
    has_request_context,
    jsonify,
    redirect,
    request,
)

from controltower.audit import AuditError, AuditTrail
from controltower.auth import LoginThrottle, SessionStore, UserStore, allowed, same_token
from controltower.site import AuthConfig

log = logging.getLogger(__name__)

EXTENSION = "controltower.security"
SESSION_COOKIE = "ct_session"
CSRF_COOKIE = "_csrf_token"  # the name dash-renderer reads
CSRF_HEADERS = ("X-CSRF-Token", "X-CSRFToken")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Static files of the screen: libraries and styles, no plant data.
STATIC_MARKERS = ("/_dash-component-suites/", "/assets/")
STATIC_PATHS = frozenset({"/_favicon.ico", "/favicon.ico"})
PROBES = frozenset({"/api/health", "/metrics"})
MAX_NAME = 64
ADDRESS_FACTOR = 4


class NotAllowed(Exception):
    """The request may not do this: `status` 401 (no session) or 403 (the role does not allow it)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    """Who the request acts as."""

    username: str
    role: str

    def may(self, permission: str) -> bool:
        return allowed(self.role, permission)


class WebSecurity:
    """Everything security on one Flask server; `install` it before the Dash apps."""

    def __init__(self, config: AuthConfig, *, users: UserStore | None = None, audit: AuditTrail | None = None,
                 sessions: SessionStore | None = None, throttle: LoginThrottle | None = None):
        if config.enabled and users is None:
            raise ValueError("auth is enabled: a users file is needed")
        self.config = config
        self.users = users
        self.audit = audit
        self.sessions = sessions or SessionStore(config.idle_timeout_s, config.max_age_s)
        self.throttle = throttle or LoginThrottle(config.max_failed_logins, config.lockout_s, config.lockout_s)
        # Per client address, a wider limit: several users behind one proxy or one control-room
        # PC should not lock each other out, but a password spray from one address stops.
        self.address_throttle = LoginThrottle(config.max_failed_logins * ADDRESS_FACTOR, config.lockout_s,
                                              config.lockout_s)
        self._script_hashes: list[str] = []

    @classmethod
    def from_config(cls, config: AuthConfig, *, data_dir: Path, audit: AuditTrail | None = None) -> WebSecurity:
        users_file = Path(config.users_file)
        users = UserStore(users_file if users_file.is_absolute() else Path(data_dir) / users_file)
        return cls(config, users=users, audit=audit)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def set_script_hashes(self, hashes: list[str]) -> None:
        """CSP hashes of the Dash apps' inline scripts (`Dash.csp_hashes()`), allowed by the policy."""
        self._script_hashes = sorted(set(hashes))

    # --- wiring -------------------------------------------------------------------------------

    def install(self, server: Flask) -> None:
        server.extensions[EXTENSION] = self
        if self.config.proxy_hops:
            from werkzeug.middleware.proxy_fix import ProxyFix

            n = self.config.proxy_hops
            server.wsgi_app = ProxyFix(server.wsgi_app, x_for=n, x_proto=n, x_host=n)
        server.before_request(self._guard)
        server.after_request(self._headers)
        server.add_url_rule("/login", "ct_login_page", self._login_page, methods=["GET"])
        server.add_url_rule("/login", "ct_login", self._login, methods=["POST"])
        server.add_url_rule("/logout", "ct_logout", self._logout, methods=["POST"])
        server.add_url_rule("/auth/session", "ct_session", self._session_info, methods=["GET"])
        server.add_url_rule("/api/audit", "ct_audit", self._audit_records, methods=["GET"])
        if self.enabled:
            n = len(self.users.list())
            log.info("authentication on: %d user(s) in %s", n, self.users.path)
            if n == 0:
                log.warning("no users in %s: nobody can log in; add one with "
                            "`controltower users add NAME --role administrator --data-dir ...`", self.users.path)
        else:
            log.warning("AUTHENTICATION IS OFF (screen.auth.enabled: false): anyone who can reach the screen "
                        "acts under any name; only for a demo on 127.0.0.1")

    # --- every request --------------------------------------------------------------------------

    def _guard(self) -> Response | None:
        path = request.path
        g.ct_principal = None
        g.ct_session = None
        if request.method not in SAFE_METHODS and (cross := self._cross_site()):
            return _refuse(403, cross)
        if not self.enabled or _is_static(path) or path == "/login":
            return None
        if self.config.public_probes and path in PROBES:
            return None
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        user = self.users.get(session.username) if session is not None else None
        if session is not None and (user is None or user.disabled or not session.opened_with(user)):
            self.sessions.end(session.token)  # removed, disabled or password changed since the login
            session = None
        if session is None:
            if request.method == "GET" and _is_page(path):
                return redirect("/login?next=" + _quote_path(request.full_path.rstrip("?")))
            return _refuse(401, "login required: POST /login, then send the session cookie")
        session.role = user.role  # a role changed in the users file applies at once
        g.ct_session = session
        g.ct_principal = Principal(session.username, user.role)
        state_changing = request.method not in SAFE_METHODS and path != "/logout"  # logout: its form field
        if state_changing and not any(same_token(request.headers.get(h), session.csrf_token) for h in CSRF_HEADERS):
            return _refuse(403, "CSRF token missing or wrong: send the X-CSRF-Token header "
                                "(GET /auth/session gives the token)")
        return None

    def _cross_site(self) -> str | None:
        """Why this state-changing request comes from another site, or None."""
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            return "cross-site request refused"
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            return f"request from another origin ({origin[:100]}) refused"
        if origin == "null":
            return "request from an opaque origin refused"
        return None

    def _headers(self, response: Response) -> Response:
        h = response.headers
        scripts = " ".join(["'self'", *(f"'{x.strip(chr(39))}'" for x in self._script_hashes)])
        h.setdefault("Content-Security-Policy", (
            "default-src 'self'; "
            # Inline scripts only by hash (Dash's renderer start-up and clientside callbacks).
            # 'unsafe-eval': the full plotly.js bundle Dash serves builds functions with
            # Function() (plotly/plotly.js#897); without it the trend graphs stay empty.
            f"script-src {scripts} 'unsafe-eval'; "
            # Dash and Plotly set inline styles on elements and inject <style> tags.
            "style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
        ))
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
        if self.config.secure_cookies:
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        if not _is_static(request.path):
            h.setdefault("Cache-Control", "no-store")
        return response

    # --- login and logout -----------------------------------------------------------------------

    def _login_page(self) -> Response:
        if not self.enabled:
            return redirect("/")
        return _page(_login_html(_safe_next(request.args.get("next")), None))

    def _login(self) -> Response:
        if not self.enabled:
            return _refuse(404, "authentication is off on this control tower")
        data = request.get_json(silent=True) if request.is_json else request.form
        data = data if isinstance(data, dict) or hasattr(data, "get") else {}
        username = str(data.get("username") or "").strip()[:MAX_NAME]
        password = str(data.get("password") or "")
        target = _safe_next(data.get("next"))
        address = request.remote_addr or "?"
        user_key, address_key = f"user:{username.lower()}", f"addr:{address}"

        def failed(status: int, message: str) -> Response:
            if request.is_json:
                return _refuse(status, message)
            return _page(_login_html(target, message, username), status)

        wait = max(self.throttle.locked_for(user_key), self.address_throttle.locked_for(address_key))
        if wait > 0:
            named = username if self.users.get(username) is not None else _unknown_name(username)
            self._audit(named, "login.refused", named, reason=f"locked out, {wait:.0f} s left",
                        details={"address": address})
            return failed(429, f"Too many failed logins: try again in {max(1, round(wait / 60))} min.")
        user = self.users.verify(username, password) if username and password else None
        if user is None:
            locked = self.throttle.failed(user_key) | self.address_throttle.failed(address_key)
            # A name that is no user may be a password typed in the wrong field: only a digest of
            # it is recorded (enough to see the same name tried again).
            named = username if self.users.get(username) is not None else _unknown_name(username)
            self._audit(named, "login.failed", named,
                        reason="locked out after this failure" if locked else "bad user name or password",
                        details={"address": address})
            return failed(401, "Wrong user name or password.")
        self.throttle.succeeded(user_key)
        self.sessions.end(request.cookies.get(SESSION_COOKIE))  # no session fixation: always a new token
        session = self.sessions.create(user)
        self._audit(user.username, "login", user.username, new=user.role, details={"address": address})
        if request.is_json:
            response = jsonify({"user": user.username, "role": user.role, "csrf_token": session.csrf_token})
        else:
            response = redirect(target)
        self._set_cookies(response, session.token, session.csrf_token)
        return response

    def _logout(self) -> Response:
        session = g.get("ct_session")
        if self.enabled and session is not None:
            given = request.form.get("csrf_token") or next(
                (request.headers.get(h) for h in CSRF_HEADERS if request.headers.get(h)), None)
            if not same_token(given, session.csrf_token):
                return _refuse(403, "CSRF token missing or wrong")
            self.sessions.end(session.token)
            self._audit(session.username, "logout", session.username)
        response = redirect("/login") if not request.is_json else jsonify({"logged_out": True})
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/", secure=self.config.secure_cookies, samesite="Strict")
        return response

    def _session_info(self) -> Response:
        principal, session = g.get("ct_principal"), g.get("ct_session")
        if not self.enabled:
            return jsonify({"auth": False})
        permissions = sorted(p for p in _all_permissions() if principal.may(p))
        return jsonify({"auth": True, "user": principal.username, "role": principal.role,
                        "permissions": permissions, "csrf_token": session.csrf_token})

    def _audit_records(self) -> Response:
        """GET /api/audit[?limit=200]: {"verified": {ok, count, problem}, "records": newest first};
        needs audit.read (quality engineer, administrator)."""
        try:
            acting_user("audit.read")
        except NotAllowed as exc:
            return _refuse(exc.status, exc.message)
        if self.audit is None:
            return _refuse(503, "this control tower keeps no audit trail")
        raw = request.args.get("limit") or "200"
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            return _refuse(400, f"limit: an integer between 1 and 10000, got {raw[:20]!r}")
        from controltower.audit import verify_trail

        result = verify_trail(self.audit.path, key=self.audit.key_for_verify())
        records = self.audit.records()[-int(raw):][::-1]
        return jsonify({"verified": {"ok": result.ok, "count": result.count, "problem": result.problem},
                        "records": records})

    def _set_cookies(self, response: Response, token: str, csrf: str) -> None:
        secure = self.config.secure_cookies
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")
        # Readable by the page's scripts on purpose: dash-renderer copies it into X-CSRFToken.
        response.set_cookie(CSRF_COOKIE, csrf, httponly=False, samesite="Strict", secure=secure, path="/")

    def _audit(self, actor: str, action: str, target: str | None, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(actor, action, target, **fields)
        except AuditError as exc:
            log.error("audit: %s", exc)


# --- what routes and callbacks call ------------------------------------------------------------


def current_security() -> WebSecurity | None:
    return current_app.extensions.get(EXTENSION) if has_app_context() else None


def current_principal() -> Principal | None:
    """The logged-in user of this request (None with auth off or outside a request)."""
    return g.get("ct_principal") if has_request_context() else None


def current_csrf_token() -> str | None:
    session = g.get("ct_session") if has_request_context() else None
    return session.csrf_token if session is not None else None


def auth_enabled() -> bool:
    security = current_security()
    return security is not None and security.enabled


def acting_user(permission: str, claimed: str | None = None) -> str | None:
    """The name an action is taken and recorded under. With auth on: the logged-in user, when
    their role holds `permission` (else NotAllowed 403; no session: 401); a `claimed` name
    other than theirs is refused (403). With auth off (the demo): `claimed`, as given."""
    allowed("", permission)  # an unknown permission fails loudly, whatever the mode
    if not auth_enabled():
        return claimed
    principal = current_principal()
    if principal is None:
        raise NotAllowed(401, "login required")
    if not principal.may(permission):
        raise NotAllowed(403, f"{principal.username} ({principal.role.replace('_', ' ')}) may not {permission}")
    if claimed and claimed.strip() and claimed.strip() != principal.username:
        raise NotAllowed(403, f"user: actions are taken as the logged-in user {principal.username!r}, "
                              f"not {claimed[:MAX_NAME]!r}")
    return principal.username


def audit_record(actor: str | None, action: str, target: str | None, **fields: Any) -> None:
    """Record in the server's audit trail, when it has one. Raises AuditError when it cannot."""
    security = current_security()
    if security is not None and security.audit is not None:
        security.audit.record(actor or "?", action, target, **fields)


# --- helpers -----------------------------------------------------------------------------------


def _unknown_name(name: str) -> str:
    import hashlib

    return "unknown:" + hashlib.sha256(name.encode()).hexdigest()[:12] if name else "unknown:(empty)"


def _all_permissions() -> frozenset[str]:
    from controltower.auth import ALL_PERMISSIONS

    return ALL_PERMISSIONS


def _is_static(path: str) -> bool:
    return path in STATIC_PATHS or any(m in path for m in STATIC_MARKERS)


def _is_page(path: str) -> bool:
    """A page a browser navigates to (not the API, not a Dash data request)."""
    return not (path.startswith("/api") or "/_dash-" in path or path in ("/metrics", "/auth/session"))


def _safe_next(target: Any) -> str:
    """A local path to go back to after login; anything else (another host, //x) is /."""
    text = str(target or "/")
    if not text.startswith("/") or text.startswith("//") or "\\" in text or any(ord(c) < 32 for c in text):
        return "/"
    return text


def _quote_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _refuse(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _page(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _login_html(target: str, message: str | None, username: str = "") -> str:
    error = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · control tower</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ background:#0b1118; color:#dbe4ee; font-family:Inter, "DejaVu Sans", sans-serif; display:flex;
       justify-content:center; align-items:center; min-height:100vh; margin:0; }}
form {{ background:#111923; border:1px solid #1e2a37; border-radius:6px; padding:28px 32px; width:320px; }}
h1 {{ font-size:18px; margin:0 0 18px; }} label {{ display:block; font-size:12px; color:#8597aa; margin:12px 0 4px; }}
input {{ width:100%; box-sizing:border-box; padding:8px; background:#0d141c; color:#dbe4ee;
        border:1px solid #2a3a4b; border-radius:4px; font-size:14px; }}
button {{ margin-top:20px; width:100%; padding:9px; background:#1f6f9f; color:#fff; border:0; border-radius:4px;
         font-size:14px; cursor:pointer; }}
.error {{ color:#ff8a80; font-size:13px; }}
</style></head>
<body><form method="post" action="/login" id="login-form">
<h1>Control tower · log in</h1>{error}
<input type="hidden" name="next" value="{html.escape(target)}">
<label for="login-username">User name</label>
<input id="login-username" name="username" autocomplete="username" required autofocus value="{html.escape(username)}">
<label for="login-password">Password</label>
<input id="login-password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="login-submit">Log in</button>
</form></body></html>"""
