"""The batch review API, beside `controltower.api` on the same Flask server.

    GET  /api/batches?unit=&since=&until=        {"unit", "batches": [{batch_id, start, end, samples}]},
                                                 newest first; since default -7d, until now
    GET  /api/batches/<unit>/<batch_id>[?since=&until=]
                                                 the review: {unit, batch_id, start, end, model_note,
                                                 model: {version, fingerprint, training} | null,
                                                 verdict, excursions, alarms, deviations}
    GET  /api/batches/<unit>/<batch_id>/report.html   the deviation report (`batch_report`), as a download
    GET  /api/batches/<unit>/<batch_id>/data.csv[?what=samples|envelope|phases]
    POST /api/batches/<unit>/<batch_id>/deviations
         body {"classification", "meaning", "comment", "password", "at"?, "tags"?, "supersedes"?}
         -> 201 {"deviation": record}

Reading a batch needs `batch.review`, writing a record `deviation.record`
(`controltower.auth.PERMISSIONS`). A deviation record is an electronic signature: with
authentication on, the signer is the logged-in user and must type their password again (a
wrong one is a 403, audited as `signature.failed`); the record and the report export are
audit records (`deviation.record`, `batch.report`). With authentication off (the
demo) the body's `user` signs, and the record says the signature was not authenticated.

Errors as in `controltower.api`: JSON {"error"} with 400 (a bad parameter or field, named),
401/403, 404 (unknown unit or no such batch in the window).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, request

from controltower import timeparse
from controltower.api import BadParameter, _body, _error, _json
from controltower.audit import AuditError
from controltower.batch_report import report_csv, report_html
from controltower.batch_review import BatchNotFound, BatchReview, list_batches, review_batch
from controltower.deviations import FILE_NAME as DEVIATIONS_FILE
from controltower.deviations import DeviationError, DeviationLog, DeviationRecord
from controltower.websecurity import (
    NotAllowed,
    acting_user,
    audit_record,
    auth_enabled,
    current_principal,
    current_security,
)

if TYPE_CHECKING:
    from controltower.context import TowerContext

DEFAULT_SINCE = "-7d"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _rows(frame) -> list[dict[str, Any]]:
    return [{k: _iso(v) if isinstance(v, datetime) else v for k, v in row.items()} for row in frame.iter_rows(named=True)]


def review_json(review: BatchReview) -> dict[str, Any]:
    model = review.model
    return {
        "unit": review.unit,
        "batch_id": review.batch_id,
        "start": _iso(review.start),
        "end": _iso(review.end),
        "samples": review.samples.height,
        "model_note": review.model_note,
        "model": None if model is None else {k: model.get(k) for k in ("version", "fingerprint", "training", "created_at")},
        "verdict": review.verdict,
        "excursions": _rows(review.excursions()),
        "alarms": _rows(review.alarms),
        "deviations": [r.to_dict() for r in review.deviations],
    }


def batch_stores(ctx: TowerContext, data_dir: Path):
    """(model store, deviation log) of the tower whose data directory is `data_dir`."""
    from analytics.models import ModelStore

    return (ModelStore(ctx.site.resolve_path(ctx.site.detectors.models.dir, data_dir)),
            DeviationLog(Path(data_dir) / DEVIATIONS_FILE))


def register_batch_api(server: Flask, ctx: TowerContext, *, data_dir: Path, now=None) -> Blueprint:
    """Add the /api/batches routes to `server`; the model store and the deviation log are the
    ones under `data_dir` (the tower's)."""
    clock = now or (lambda: datetime.now(UTC))
    models, deviations = batch_stores(ctx, data_dir)
    bp = Blueprint("controltower_batches", __name__)

    def window() -> tuple[datetime, datetime]:
        at = clock()
        try:
            since = timeparse.parse_time(request.args.get("since") or DEFAULT_SINCE, at)
            until = timeparse.parse_time(request.args.get("until") or "now", at) + timedelta(seconds=1)
        except OverflowError:  # until within a second of the year 9999's end (found by tests/fuzz/test_api_params)
            raise BadParameter("until: must be before 9999-12-31T23:59:59Z") from None
        except ValueError as exc:
            raise BadParameter(f"since/until: {exc}") from None
        if since >= until:
            raise BadParameter("since must be before until")
        return since, until

    def review(unit: str, batch_id: str) -> BatchReview:
        since, until = window()
        return review_batch(ctx.historian, ctx.site, unit, batch_id, since=since, until=until, models=models,
                            journal=ctx.alerts.journal, deviations=deviations)

    @bp.get("/api/batches")
    def batches() -> Response:
        acting_user("batch.review")
        unit = request.args.get("unit") or ""
        if not unit:
            raise BadParameter("unit: required, the unit's path site.area.line.unit")
        since, until = window()
        return _json({"unit": unit, "batches": _rows(list_batches(ctx.historian, ctx.site, unit, since, until))})

    @bp.get("/api/batches/<unit>/<batch_id>")
    def batch(unit: str, batch_id: str) -> Response:
        acting_user("batch.review")
        return _json(review_json(review(unit, batch_id)))

    @bp.get("/api/batches/<unit>/<batch_id>/report.html")
    def report(unit: str, batch_id: str) -> Response:
        user = acting_user("batch.review")
        found = review(unit, batch_id)
        page = report_html(found, enterprise=ctx.site.enterprise, generated_by=user, generated_at=clock())
        audit_record(user, "batch.report", f"{unit} batch {batch_id}", reason="deviation report exported")
        return Response(page, mimetype="text/html", headers={
            "Content-Disposition": f'attachment; filename="{_filename(batch_id)}-report.html"'})

    @bp.get("/api/batches/<unit>/<batch_id>/data.csv")
    def data(unit: str, batch_id: str) -> Response:
        acting_user("batch.review")
        what = request.args.get("what") or "samples"
        try:
            body = report_csv(review(unit, batch_id), what)
        except ValueError as exc:
            raise BadParameter(str(exc)) from None
        return Response(body, mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{_filename(batch_id)}-{what}.csv"'})

    @bp.post("/api/batches/<unit>/<batch_id>/deviations")
    def add_deviation(unit: str, batch_id: str) -> Response:
        body = _body()
        record = sign_deviation(review(unit, batch_id), deviations, body, clock())
        return _json({"deviation": record.to_dict()}, 201)

    @bp.errorhandler(BadParameter)
    def bad_parameter(exc: BadParameter) -> Response:
        return _error(400, str(exc))

    @bp.errorhandler(BatchNotFound)
    def not_found(exc: BatchNotFound) -> Response:
        return _error(404, str(exc))

    @bp.errorhandler(NotAllowed)
    def not_allowed(exc: NotAllowed) -> Response:
        return _error(exc.status, exc.message)

    @bp.errorhandler(AuditError)
    def audit_failed(exc: AuditError) -> Response:
        return _error(500, f"the record was written but could not be recorded in the audit trail: {exc}")

    server.register_blueprint(bp)
    return bp


def sign_deviation(review: BatchReview, deviations: DeviationLog, body: dict[str, Any], now: datetime) -> DeviationRecord:
    """Sign and append a deviation record about `review`'s batch from a request body (the API's
    or the screen's form): the signer re-authenticated (`_signer`), the fields checked, the
    record written, then audited. BadParameter names a bad field; NotAllowed for the signer."""
    signer, signed_name = _signer(body)
    at = None
    if body.get("at"):
        try:
            at = timeparse.parse_time(str(body["at"]), now)
        except ValueError as exc:
            raise BadParameter(f"at: {exc}") from None
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadParameter("tags: a list of tag ids")
    unknown = [t for t in tags if t not in review.tags]
    if unknown:
        raise BadParameter(f"tags: {', '.join(unknown)} not tag(s) of unit {review.unit}")
    try:
        record = deviations.add(batch_id=review.batch_id, unit=review.unit,
                                classification=str(body.get("classification") or ""),
                                comment=str(body.get("comment") or ""), signed_by=signer, signed_name=signed_name,
                                meaning=str(body.get("meaning") or ""), at=at, tags=tags,
                                supersedes=body.get("supersedes") or None, now=now)
    except DeviationError as exc:
        raise BadParameter(str(exc)) from None
    audit_record(signer, "deviation.record", f"{review.unit} batch {review.batch_id}", new=record.to_dict(),
                 reason=record.comment)
    return record


def _signer(body: dict[str, Any]) -> tuple[str, str]:
    """(user, name as signed) of a deviation record: the logged-in user, re-authenticated by
    the password in the body; with authentication off, the body's `user`."""
    if not auth_enabled():
        user = str(body.get("user") or "").strip()
        if not user:
            raise BadParameter("user: required to sign a record (authentication is off)")
        return user, f"{user} (not authenticated: authentication off)"
    user = acting_user("deviation.record", body.get("user"))
    principal = current_principal()
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise BadParameter("password: required, a deviation record is signed by re-entering your password")
    security = current_security()
    if security is None or security.users is None or security.users.verify(user, password) is None:
        audit_record(user, "signature.failed", "deviation record", reason="wrong password")
        raise NotAllowed(403, "signature: the password does not match the logged-in user")
    return user, f"{user} ({principal.role.replace('_', ' ')})"


def _filename(batch_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in batch_id)
