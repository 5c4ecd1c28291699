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
    GET /metrics                       Prometheus text exposition

Errors are JSON `{"error": "..."}` naming what was wrong: 400 for a bad parameter, 404 for an
unknown tag, line or route under /api.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from controltower import timeparse
from controltower.screen import queries as q

if TYPE_CHECKING:
    from controltower.context import TowerContext

DEFAULT_HISTORY_SINCE = "-10m"
DEFAULT_RECENT_LIMIT = 50
MAX_RECENT_LIMIT = 10_000


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
