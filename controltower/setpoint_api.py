"""The setpoint API, beside `controltower.api` on the same Flask server: read a unit's setpoints
from the plant, and change one, confirmed and audited.

    GET  /api/setpoints?unit=<site.area.line.unit>
         -> {"unit", "setpoints": [{id, description, node_id, unit, low, high, source,
                                    value, status, writable, error}]}   (read from the server now)
    POST /api/setpoints/<unit>/<name>   body {"value", "reason", "expected_old"}
         -> {"unit", "setpoint", "old", "new", "requested", "status", "unit_of_measure"}

Setpoints are declared per unit in the site file (`controltower.site.Setpoint`) and written
over OPC-UA by `collector.setpoints.SetpointWriter`, through the source's connection settings.
Reading needs `view`, writing `setpoint.write` (operator, administrator). A write needs a
non-empty `reason` and the `expected_old` value the operator confirmed: when the value is no
longer that (someone changed it in between) nothing is written (409). A value outside the
configured range is refused before writing (400). Every write that gets that far is an audit
record `setpoint.write` (actor, unit.setpoint, old, new, reason, details: node, requested
value, OPC-UA status, result "written" or "failed" with the error) -- failures too.

Errors as in `controltower.api`: JSON {"error"} (plus "status", the OPC-UA status or what
failed, for a write) with 400, 401/403, 404 (unknown unit or setpoint), 409 (stale
confirmation), 502 (the server refused the write or could not be reached).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, request

from collector.setpoints import (
    DEFAULT_TIMEOUT_S,
    SetpointError,
    SetpointOutOfRange,
    SetpointWriter,
    StaleSetpoint,
    WriteResult,
)
from controltower.api import BadParameter, _body, _error, _json
from controltower.audit import AuditError
from controltower.websecurity import NotAllowed, acting_user, audit_record

if TYPE_CHECKING:
    from controltower.site import Setpoint, SiteConfig

MAX_REASON = 500
ACTION = "setpoint.write"


class SetpointNotFound(LookupError):
    """No such unit with setpoints, or no such setpoint on it; the message says which exist."""


class SetpointWriteFailed(Exception):
    """A write that was attempted (and audited) and failed: `http_status`, and the writer's error."""

    def __init__(self, error: SetpointError, http_status: int):
        super().__init__(str(error))
        self.error = error
        self.http_status = http_status


class Setpoints:
    """The site's setpoints and the writers that reach them (one per OPC-UA source)."""

    def __init__(self, site: SiteConfig, data_dir: str | Path, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.site = site
        self.by_unit = site.unit_setpoints()
        self._writers = {s.name: SetpointWriter(s, data_dir, timeout_s=timeout_s)
                         for s in site.sources if s.kind == "opcua"}

    def find(self, unit: str, name: str) -> Setpoint:
        setpoint = next((s for s in self.setpoints_of(unit) if s.id == name), None)
        if setpoint is None:
            raise SetpointNotFound(f"unit {unit} has no setpoint {name!r}; it has "
                                   f"{[s.id for s in self.by_unit[unit]]}")
        return setpoint

    def setpoints_of(self, unit: str) -> list[Setpoint]:
        if unit not in self.by_unit:
            raise SetpointNotFound(f"unit {unit!r} has no setpoints; units with setpoints: {sorted(self.by_unit)}")
        return self.by_unit[unit]

    def writer(self, setpoint: Setpoint) -> SetpointWriter:
        return self._writers[self.site.setpoint_source(setpoint).name]

    def current(self, unit: str) -> list[dict[str, Any]]:
        """Each setpoint of `unit` with its configuration and its value read from the server now.
        A source that cannot be reached gives value None and the error on its setpoints."""
        setpoints = self.setpoints_of(unit)
        rows = []
        by_source: dict[str, list[Setpoint]] = {}
        for s in setpoints:
            by_source.setdefault(self.site.setpoint_source(s).name, []).append(s)
        values: dict[str, Any] = {}
        for source, group in by_source.items():
            try:
                values.update(self._writers[source].read_sync([s.node_id for s in group]))
            except SetpointError as exc:
                values.update({s.node_id: exc for s in group})
        for s in setpoints:
            read = values[s.node_id]
            failed = isinstance(read, SetpointError)
            rows.append({
                "id": s.id, "description": s.description, "node_id": s.node_id, "unit": s.unit,
                "low": s.low, "high": s.high, "source": self.site.setpoint_source(s).name,
                "value": None if failed else read.value,
                "status": read.status,
                "writable": False if failed else read.writable,
                "error": str(read) if failed else read.error,
            })
        return rows


def change_setpoint(setpoints: Setpoints, unit: str, name: str, body: dict[str, Any]) -> tuple[str, WriteResult]:
    """Change a setpoint from a request body (the API's or the screen's confirmation): the user
    checked (`setpoint.write`), the reason and the confirmed old value required, written through
    the writer, audited whatever the result. Returns (user, result). BadParameter for a bad
    field, NotAllowed, SetpointNotFound, SetpointWriteFailed (audited) for a failed write."""
    # With authentication off (the demo) the body's `user`, if any, names who wrote.
    user = acting_user(ACTION, body.get("user")) or "anonymous (authentication off)"
    setpoint = setpoints.find(unit, name)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadParameter("reason: required, say why the setpoint is changed (it goes into the audit trail)")
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise BadParameter(f"reason: at most {MAX_REASON} characters")
    value = _number(body, "value")
    expected_old = _number(body, "expected_old")
    target = f"{unit}.{setpoint.id}"
    details = {"node_id": setpoint.node_id, "source": setpoints.site.setpoint_source(setpoint).name,
               "unit": setpoint.unit, "requested": value, "confirmed_old": expected_old}
    try:
        result = setpoints.writer(setpoint).write_sync(setpoint, value, expected_old=expected_old)
    except SetpointError as exc:
        old = exc.current if isinstance(exc, StaleSetpoint) else expected_old
        audit_record(user, ACTION, target, old=old, new=value, reason=reason,
                     details={**details, "result": "failed", "status": exc.status, "error": str(exc)})
        status = 400 if isinstance(exc, SetpointOutOfRange) else 409 if isinstance(exc, StaleSetpoint) else 502
        raise SetpointWriteFailed(exc, status) from None
    audit_record(user, ACTION, target, old=result.old, new=result.new, reason=reason,
                 details={**details, "result": "written", "status": result.status})
    return user, result


def _number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(value):
                    return value
        what = "the new value" if key == "value" else "the current value the change was confirmed against"
        raise BadParameter(f"{key}: required, a finite number ({what}); got {value!r}"[:200])
    return float(value)


def register_setpoint_api(server: Flask, setpoints: Setpoints) -> Blueprint:
    """Add the /api/setpoints routes to `server`."""
    bp = Blueprint("controltower_setpoints", __name__)

    @bp.get("/api/setpoints")
    def current() -> Response:
        acting_user("view")
        unit = request.args.get("unit") or ""
        if not unit:
            raise BadParameter(f"unit: required, one of {sorted(setpoints.by_unit)}")
        return _json({"unit": unit, "setpoints": setpoints.current(unit)})

    @bp.post("/api/setpoints/<unit>/<name>")
    def change(unit: str, name: str) -> Response:
        _, result = change_setpoint(setpoints, unit, name, _body())
        return _json({"unit": unit, "setpoint": name, "old": result.old, "new": result.new,
                      "requested": result.requested, "status": result.status,
                      "unit_of_measure": setpoints.find(unit, name).unit})

    @bp.errorhandler(BadParameter)
    def bad_parameter(exc: BadParameter) -> Response:
        return _error(400, str(exc))

    @bp.errorhandler(SetpointNotFound)
    def not_found(exc: SetpointNotFound) -> Response:
        return _error(404, str(exc.args[0]))

    @bp.errorhandler(SetpointWriteFailed)
    def failed(exc: SetpointWriteFailed) -> Response:
        return _json({"error": str(exc.error), "status": exc.error.status}, exc.http_status)

    @bp.errorhandler(NotAllowed)
    def not_allowed(exc: NotAllowed) -> Response:
        return _error(exc.status, exc.message)

    @bp.errorhandler(AuditError)
    def audit_failed(exc: AuditError) -> Response:
        return _error(500, f"the write's outcome could not be recorded in the audit trail: {exc}")

    server.register_blueprint(bp)
    return bp
