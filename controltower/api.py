"""The control tower's JSON API and Prometheus metrics, as routes on the Flask server that also
serves the Dash screen. Every route reads a `TowerContext` through `controltower.screen.queries`.

    GET /api/health                    ctx.health(); 200 when status is "ok", 503 otherwise
                                       (so a load balancer or probe sees a degraded tower)
    GET /api/lines                     {"generated_at", "lines": [line, ...]} (see `line_json`)
    GET /api/alerts[?line=&limit=]     {"active": [alert, ...], "recent": [alert, ...]},
                                       alerts as `Alert.to_dict()`; `line` is a line id
                                       `site.area.line`; `limit` bounds `recent` (default 50)
    GET /api/tags/<tag_id>/history[?since=&until=]
                                       [{"ts" (µs, Z), "value", "quality", "batch_id"}, ...], oldest
                                       first; since/until are ISO-8601 (naive = UTC) or
                                       relative to now (`-10m`, `-30s`, `-2h`, `-1d`, `now`);
                                       default since=-10m, until=now
    GET /api/alarms[?view=&line=&limit=]
                                       {"view", "alarms": [alert, ...]}, most urgent first
                                       (priority, unacknowledged, newest); view is `alarms` (the
                                       operator's alarm summary: active and cleared-unacknowledged,
                                       without shelved, out-of-service or flood-grouped ones;
                                       the default), `shelved`, `suppressed` or `recent`
    GET /api/alerts/<id>               {"alert": alert}
    POST /api/alerts/<id>/ack          body {"user", "comment"?}: acknowledge -> {"alert": alert}
    POST /api/alerts/<id>/shelve       body {"user", "minutes", "reason"}: shelve the alarm point
                                       (tag, detector) for 0 < minutes <= 720 -> {"alert": alert}
    POST /api/alerts/<id>/unshelve     body {"user", "comment"?} -> {"alert": alert}
    POST /api/tags/<tag_id>/suppress   body {"user", "reason"}: take the tag out of service
                                       -> {"tag_id", "suppressed": true, "reason"}
    POST /api/tags/<tag_id>/unsuppress body {"user", "comment"?} -> {"tag_id", "suppressed": false}
    GET /api/journal[?tag=&q=&user=&event=&since=&until=&limit=]
                                       {"entries": [entry, ...]} newest first (see
                                       `analytics.journal`); `tag` is a tag id or a path prefix,
                                       `q` free text, since/until as for history; limit default 200
    GET /metrics                       Prometheus text exposition

Alerts (`Alert.to_dict()`) carry `state` (active-unacknowledged, active-acknowledged,
cleared-unacknowledged, normal), `priority` (low, medium, high, critical), `acknowledged_by/at`,
`ack_comment`, `shelved`, `shelved_until`, `shelve_reason`, `suppressed`, `grouped_under` and
`group_count` (flood grouping), besides the condition fields. `/api/alerts` `active` lists the
annunciated alerts whose condition is active (what the line states count); a cleared alarm that
waits for an acknowledgement is in `/api/alarms`.

Who acts: with authentication on (`controltower.websecurity`, docs/security.md) every route
needs a session (POST /login) and every POST the session's CSRF token in `X-CSRF-Token`; an
action is taken as the logged-in user, if their role allows it (`controltower.auth.PERMISSIONS`:
ack/shelve/unshelve need alarm.ack/alarm.shelve/alarm.unshelve, suppress/unsuppress
tag.suppress), else 403; a body `user` naming someone else is refused (403), so it may be left
out. With authentication off (the demo) the body's `user` is taken as given. Each action is
also an audit record (`controltower.audit`): who, what, old and new state, comment or reason.

Errors are JSON `{"error": "..."}` naming what was wrong: 400 for a bad or missing parameter or
body field, 404 for an unknown alert, tag, line or route under /api, 409 for an action the
alarm's state does not allow (acknowledging an acknowledged alarm...), 500 when the journal
cannot record an action (which is then not done), 503 for the journal when the tower keeps none,
401 without a session and 403 for a role that does not allow the action.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from analytics.alerts import AlarmJournalError, AlarmNotFound, AlarmTransitionError
from analytics.journal import EVENTS, entries_json
from controltower import timeparse
from controltower.audit import AuditError
from controltower.screen import queries as q
from controltower.websecurity import NotAllowed, acting_user, audit_record

if TYPE_CHECKING:
    from controltower.context import TowerContext

DEFAULT_HISTORY_SINCE = "-10m"
DEFAULT_RECENT_LIMIT = 50
MAX_RECENT_LIMIT = 10_000
DEFAULT_ALARMS_LIMIT = 500
DEFAULT_JOURNAL_LIMIT = 200
MAX_JOURNAL_LIMIT = 10_000


class BadParameter(ValueError):
    """A query parameter that cannot be used; the message names it."""


def parse_time(text: str, now: datetime, *, name: str = "time") -> datetime:
    """`controltower.timeparse.parse_time`, with the parameter's name in the error."""
    try:
        return timeparse.parse_time(text, now)
    except ValueError as exc:
        raise BadParameter(f"{name}: {exc}") from None


def line_json(row: dict[str, Any]) -> dict[str, Any]:
    """One row of `queries.line_states` as the API shows it."""
    return {
        "id": row["line_id"],
        "site": row["site"],
        "area": row["area"],
        "line": row["line"],
        "name": row["line_name"],
        "area_name": row["area_name"],
        "site_name": row["site_name"],
        "state": row["state"],
        "state_text": row["state_text"],
        "stale": row["stale"],
        "last_sample_time": q.iso_utc(row["last_ts"]),
        "age_s": _finite(row["age_s"]),
        "alerts": {"warning": row["alerts_warning"], "alarm": row["alerts_alarm"]},
        "batch_ids": list(row["batch_ids"] or []),
    }


def register_api(server: Flask, ctx: TowerContext, *, now=None) -> Blueprint:
    """Add the /api routes and /metrics to `server`. `now` (a callable returning an aware
    datetime) replaces the clock, for tests."""
    clock = now or (lambda: datetime.now(UTC))
    bp = Blueprint("controltower_api", __name__)

    @bp.get("/api/health")
    def health() -> Response:
        body = dict(ctx.health())
        status = 200 if body.get("status") == "ok" else 503
        return _json(body, status)

    @bp.get("/api/lines")
    def lines() -> Response:
        at = clock()
        states = q.line_states(ctx, at)
        return _json({"generated_at": q.iso_utc(at), "lines": [line_json(r) for r in states.iter_rows(named=True)]})

    @bp.get("/api/alerts")
    def alerts() -> Response:
        line_id = request.args.get("line") or None
        if line_id is not None and line_id not in set(q.line_catalog(ctx)["line_id"]):
            return _error(404, f"unknown line {line_id!r} (give a line id site.area.line)")
        limit = _int_param("limit", DEFAULT_RECENT_LIMIT, 1, MAX_RECENT_LIMIT)
        return _json(
            {
                "active": [a.to_dict() for a in q.active_alert_objects(ctx, line_id)],
                "recent": [a.to_dict() for a in q.recent_alert_objects(ctx, limit, line_id)],
            }
        )

    @bp.get("/api/alarms")
    def alarms() -> Response:
        line_id = request.args.get("line") or None
        if line_id is not None and line_id not in set(q.line_catalog(ctx)["line_id"]):
            return _error(404, f"unknown line {line_id!r} (give a line id site.area.line)")
        view = request.args.get("view") or "alarms"
        if view not in q.CONSOLE_VIEWS:
            raise BadParameter(f"view: {view!r} is not one of {', '.join(q.CONSOLE_VIEWS)}")
        limit = _int_param("limit", DEFAULT_ALARMS_LIMIT, 1, MAX_RECENT_LIMIT)
        found = q.alarm_list_objects(ctx, line_id, view, limit)
        return _json({"view": view, "alarms": [a.to_dict() for a in found]})

    @bp.get("/api/alerts/<alert_id>")
    def alert(alert_id: str) -> Response:
        found = ctx.alerts.get(alert_id)
        if found is None:
            return _error(404, f"unknown alert {alert_id!r}")
        return _json({"alert": found.to_dict()})

    @bp.post("/api/alerts/<alert_id>/ack")
    def acknowledge(alert_id: str) -> Response:
        body = _body()
        user = acting_user("alarm.ack", body.get("user"))
        before = _state_of(ctx, alert_id)
        return _act(lambda: ctx.alerts.acknowledge(alert_id, user, body.get("comment")),
                    audit=(user, "alarm.ack", before, body.get("comment")))

    @bp.post("/api/alerts/<alert_id>/shelve")
    def shelve(alert_id: str) -> Response:
        body = _body()
        user = acting_user("alarm.shelve", body.get("user"))
        if "minutes" not in body:
            raise BadParameter("minutes: required, the shelving time in minutes")
        before = _state_of(ctx, alert_id)
        return _act(lambda: ctx.alerts.shelve(alert_id, user, body["minutes"], body.get("reason")),
                    audit=(user, "alarm.shelve", before, body.get("reason")))

    @bp.post("/api/alerts/<alert_id>/unshelve")
    def unshelve(alert_id: str) -> Response:
        body = _body()
        user = acting_user("alarm.unshelve", body.get("user"))
        before = _state_of(ctx, alert_id)
        return _act(lambda: ctx.alerts.unshelve(alert_id, user, body.get("comment")),
                    audit=(user, "alarm.unshelve", before, body.get("comment")))

    @bp.post("/api/tags/<tag_id>/suppress")
    def suppress(tag_id: str) -> Response:
        body = _body()
        user = acting_user("tag.suppress", body.get("user"))
        _known_tag(ctx, tag_id)
        _act(lambda: ctx.alerts.suppress(tag_id, user, body.get("reason")))
        _audit(user, "tag.suppress", tag_id, "in service", "out of service", body.get("reason"))
        return _json({"tag_id": tag_id, "suppressed": True, "reason": ctx.alerts.suppressed_tags().get(tag_id)})

    @bp.post("/api/tags/<tag_id>/unsuppress")
    def unsuppress(tag_id: str) -> Response:
        body = _body()
        user = acting_user("tag.suppress", body.get("user"))
        _known_tag(ctx, tag_id)
        _act(lambda: ctx.alerts.unsuppress(tag_id, user, body.get("comment")))
        _audit(user, "tag.unsuppress", tag_id, "out of service", "in service", body.get("comment"))
        return _json({"tag_id": tag_id, "suppressed": False})

    @bp.get("/api/journal")
    def journal() -> Response:
        if ctx.alerts.journal is None:
            return _error(503, "this control tower keeps no alarm journal (no journal file configured)")
        at = clock()
        since = request.args.get("since") or None
        until = request.args.get("until") or None
        since_t = parse_time(since, at, name="since") if since else None
        until_t = parse_time(until, at, name="until") if until else None
        if since_t is not None and until_t is not None and since_t >= until_t:
            raise BadParameter(f"since ({q.iso_utc(since_t)}) must be before until ({q.iso_utc(until_t)})")
        event = request.args.get("event") or None
        if event is not None and event not in EVENTS:
            raise BadParameter(f"event: {event!r} is not one of {', '.join(EVENTS)}")
        frame = ctx.alerts.journal.search(
            tag=request.args.get("tag") or None, text=request.args.get("q") or None, since=since_t,
            until=until_t, user=request.args.get("user") or None, event=event,
            limit=_int_param("limit", DEFAULT_JOURNAL_LIMIT, 1, MAX_JOURNAL_LIMIT),
        )
        return _json({"entries": entries_json(frame)})

    @bp.get("/api/tags/<tag_id>/history")
    def tag_history(tag_id: str) -> Response:
        at = clock()
        since = parse_time(request.args.get("since", DEFAULT_HISTORY_SINCE), at, name="since")
        until = parse_time(request.args.get("until", "now"), at, name="until")
        if since >= until:
            raise BadParameter(f"since ({q.iso_utc(since)}) must be before until ({q.iso_utc(until)})")
        try:
            frame = q.tag_history(ctx, tag_id, since, until)
        except q.UnknownTagError as exc:
            return _error(404, str(exc))
        rows = [
            {"ts": q.iso_utc(r["ts"], "microseconds"), "value": _finite(r["value"]), "quality": r["quality"], "batch_id": r["batch_id"]}
            for r in frame.iter_rows(named=True)
        ]
        return _json(rows)

    @bp.get("/metrics")
    def metrics() -> Response:
        return Response(ctx.metrics.render(), status=200, content_type=ctx.metrics.content_type)

    # Dash serves its page for any other path; under /api an unknown route is a JSON 404.
    @bp.route("/api", defaults={"rest": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @bp.route("/api/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def unknown(rest: str) -> Response:
        return _error(404, f"no API route {request.method} {request.path}")

    @bp.errorhandler(BadParameter)
    def bad_parameter(exc: BadParameter) -> Response:
        return _error(400, str(exc))

    @bp.errorhandler(AlarmNotFound)
    def not_found(exc: AlarmNotFound) -> Response:
        return _error(404, str(exc.args[0] if exc.args else exc))

    @bp.errorhandler(AlarmTransitionError)
    def conflict(exc: AlarmTransitionError) -> Response:
        return _error(409, str(exc))

    @bp.errorhandler(AlarmJournalError)
    def journal_failed(exc: AlarmJournalError) -> Response:
        return _error(500, str(exc))

    @bp.errorhandler(NotAllowed)
    def not_allowed(exc: NotAllowed) -> Response:
        return _error(exc.status, exc.message)

    @bp.errorhandler(AuditError)
    def audit_failed(exc: AuditError) -> Response:
        return _error(500, f"the action was done but could not be recorded in the audit trail: {exc}")

    server.register_blueprint(bp)

    # JSON errors for unknown routes and methods under /api; every other path keeps the
    # server's own error pages (the Dash screen's, for instance).
    def api_http_error(exc: HTTPException):
        if request.path.startswith("/api/") or request.path == "/api":
            return _error(exc.code or 500, f"{exc.name}: {request.method} {request.path}")
        return exc

    server.register_error_handler(404, api_http_error)
    server.register_error_handler(405, api_http_error)
    return bp


def _body() -> dict[str, Any]:
    """The request's JSON object body ({} when there is none)."""
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(force=True, silent=True)
    if body is None:
        raise BadParameter("body: not valid JSON (send a JSON object, Content-Type: application/json)")
    if not isinstance(body, dict):
        raise BadParameter(f"body: expected a JSON object, got {type(body).__name__}")
    return body


def _act(action, audit: tuple[str | None, str, str | None, str | None] | None = None) -> Response:
    """Run an AlertBook action: its ValueError (a bad field, named first in the message) is a 400;
    AlarmNotFound and AlarmTransitionError reach the blueprint's 404 and 409 handlers. `audit`
    (user, action, state before, reason) records the alert's change in the audit trail."""
    try:
        result = action()
    except ValueError as exc:
        raise BadParameter(str(exc)) from None
    if audit is not None and result is not None:
        user, name, before, reason = audit
        _audit(user, name, f"{result.tag_id} alert {result.id}", before, result.display_state, reason)
    return _json({"alert": result.to_dict()}) if result is not None else _json({})


def _state_of(ctx: TowerContext, alert_id: str) -> str | None:
    found = ctx.alerts.get(alert_id)
    return found.display_state if found is not None else None


def _audit(user: str | None, action: str, target: str, old: str | None, new: str | None, reason: str | None) -> None:
    audit_record(user, action, target, old=old, new=new, reason=reason)


def _known_tag(ctx: TowerContext, tag_id: str) -> None:
    try:
        q.find_tag(ctx, tag_id)
    except q.UnknownTagError as exc:
        raise AlarmNotFound(str(exc)) from None


def _int_param(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadParameter(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def _finite(value: float | None) -> float | None:
    """NaN and infinities are not JSON: they become null."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _json(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)
