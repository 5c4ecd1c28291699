"""The deviation report of a batch review, as a quality engineer files it: one self-contained
HTML page (no script, no external file: it opens the same in ten years, and prints), and the
batch's data as CSV.

    html = report_html(review, enterprise="Demo Pharma", generated_by="ana", generated_at=now)
    data = report_csv(review)                    # the batch's samples
    data = report_csv(review, "envelope")        # aligned rows beside the golden envelope
    data = report_csv(review, "phases")          # the batch's ISA-88 phase spans

The page holds: what the batch is (unit, batch id, first and last sample); the golden-batch
model used (version, fingerprint, training batches) or why there was none; the batch's ISA-88
phases (from the stored batch events: start, end, duration); the verdict (rows
outside the envelope, T²/SPE so far against their batch limits, top contributors); the deviation
records with their signatures (name, role, meaning, date and time: 21 CFR 11.50); the alarms
raised while the batch ran; the envelope excursions; and one chart per variable against its
envelope plus the T²/SPE score against its limit, drawn as inline SVG (every text is escaped).
"""

from __future__ import annotations

import html
import io
from datetime import datetime

import numpy as np
import polars as pl

from controltower.batch_review import BatchReview
from controltower.screen.downsample import lttb

CHART_W, CHART_H, PAD = 760, 150, 36
CHART_POINTS = 400


def report_csv(review: BatchReview, what: str = "samples") -> bytes:
    """The batch's data as CSV: `samples` (ts, tag_id, value, quality, batch_id, as stored) or
    `envelope` (aligned rows: ts, tag_id, value, mean, low, high, z, outside) or `phases`
    (unit_id, batch_id, phase, start, end: end empty while it runs). ValueError for another
    `what`, or `envelope` without a model."""
    if what == "samples":
        frame = review.samples.select("ts", "tag_id", "value", "quality", "batch_id").sort("tag_id", "ts")
    elif what == "envelope":
        if review.envelope is None:
            raise ValueError(f"no golden-batch envelope for this batch: {review.model_note}")
        frame = review.envelope.sort("tag_id", "ts")
    elif what == "phases":
        frame = review.phases.sort("start")
    else:
        raise ValueError(f"what: {what!r} is not one of samples, envelope, phases")
    out = io.BytesIO()
    frame.with_columns(pl.col(pl.Datetime).dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")).write_csv(out)
    return out.getvalue()


def _t(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[object]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_t(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Axes:
    """Maps times (ns) and values to SVG coordinates of one chart."""

    def __init__(self, t0: int, t1: int, lo: float, hi: float):
        span = hi - lo or 1.0
        self.t0, self.t1 = t0, max(t1, t0 + 1)
        self.lo, self.hi = lo - 0.05 * span, hi + 0.05 * span

    def x(self, t: np.ndarray) -> np.ndarray:
        return PAD + (t - self.t0) / (self.t1 - self.t0) * (CHART_W - 2 * PAD)

    def y(self, v: np.ndarray) -> np.ndarray:
        return CHART_H - PAD / 2 - (v - self.lo) / (self.hi - self.lo) * (CHART_H - PAD)


def _points(xs: np.ndarray, ys: np.ndarray) -> str:
    keep = ~(np.isnan(xs) | np.isnan(ys))
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs[keep], ys[keep], strict=True))


def _svg(title: str, t0: int, t1: int, series: pl.DataFrame, band: pl.DataFrame | None,
         limit: float | None = None, outside: np.ndarray | None = None) -> str:
    """One chart: `series` (t ns, v) as a line, `band` (t, low, high) as a shaded envelope,
    `limit` as a dashed line, `outside` (t ns) marked in red."""
    values = [series["v"].drop_nulls().to_numpy()]
    if band is not None and not band.is_empty():
        values += [band["low"].drop_nulls().to_numpy(), band["high"].drop_nulls().to_numpy()]
    if limit is not None:
        values.append(np.array([limit]))
    flat = np.concatenate([v for v in values if v.size]) if any(v.size for v in values) else np.array([0.0, 1.0])
    ax = _Axes(t0, t1, float(flat.min()), float(flat.max()))
    parts = [f'<svg viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{PAD}" y="12" class="title">{html.escape(title)}</text>']
    if band is not None and not band.is_empty():
        b = band.drop_nulls()
        if b.height:
            bx = ax.x(b["t"].to_numpy().astype(np.float64))
            upper = _points(bx, ax.y(b["high"].to_numpy()))
            lower = _points(bx[::-1], ax.y(b["low"].to_numpy()[::-1]))
            parts.append(f'<polygon class="band" points="{upper} {lower}"/>')
    if limit is not None:
        y = float(ax.y(np.array([limit]))[0])
        parts.append(f'<line class="limit" x1="{PAD}" x2="{CHART_W - PAD}" y1="{y:.1f}" y2="{y:.1f}"/>')
    if series.height:
        parts.append(f'<polyline class="line" points="{_points(ax.x(series["t"].to_numpy().astype(np.float64)), ax.y(series["v"].to_numpy()))}"/>')
    if outside is not None and outside.size:
        for x in ax.x(outside.astype(np.float64))[:: max(1, outside.size // 200)]:
            parts.append(f'<line class="out" x1="{x:.1f}" x2="{x:.1f}" y1="{CHART_H - PAD / 2}" y2="{CHART_H - PAD / 2 - 6}"/>')
    lo, hi = ax.lo, ax.hi
    parts.append(f'<text x="2" y="{CHART_H - PAD / 2}" class="axis">{lo:.4g}</text>'
                 f'<text x="2" y="20" class="axis">{hi:.4g}</text></svg>')
    return "".join(parts)


def _charts(review: BatchReview) -> str:
    t0 = int(review.start.timestamp() * 1e9)
    t1 = int(review.end.timestamp() * 1e9)
    out = []
    samples = lttb(review.samples.select("ts", "tag_id", "value"), CHART_POINTS, by="tag_id")
    for tag in review.tags:
        s = samples.filter(pl.col("tag_id") == tag).select(pl.col("ts").dt.epoch("ns").alias("t"), pl.col("value").alias("v"))
        band = outside = None
        if review.envelope is not None:
            env = review.envelope.filter(pl.col("tag_id") == tag)
            step = max(1, env.height // CHART_POINTS)
            band = env.gather_every(step).select(pl.col("ts").dt.epoch("ns").alias("t"), "low", "high")
            outside = env.filter(pl.col("outside"))["ts"].dt.epoch("ns").to_numpy()
        out.append(_svg(tag, t0, t1, s, band, outside=outside))
    if review.score is not None and not review.score.rows.is_empty():
        score = review.score.rows.select(pl.col("ts").dt.epoch("ns").alias("t"), pl.col("score").alias("v"))
        step = max(1, score.height // CHART_POINTS)
        out.append(_svg("T²/SPE score (1 = control limit)", t0, t1, score.gather_every(step), None, limit=1.0))
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#111;max-width:60em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #999}
table{border-collapse:collapse;font-size:.85em;width:100%}td,th{border:1px solid #bbb;padding:.25em .4em;text-align:left}
th{background:#eee}.empty{color:#555;font-style:italic}dl{display:grid;grid-template-columns:14em auto;gap:.2em}
dt{font-weight:600}svg{width:100%;height:auto;border:1px solid #ddd;margin:.3em 0}
.band{fill:#9ecae1;opacity:.5}.line{fill:none;stroke:#08306b;stroke-width:1.2}
.limit{stroke:#b30000;stroke-dasharray:6 4}.out{stroke:#d7301f;stroke-width:2}
.title{font-size:12px;font-weight:600}.axis{font-size:10px;fill:#555}
.verdict-bad{color:#b30000;font-weight:700}.verdict-ok{color:#006d2c;font-weight:700}
"""


def report_html(review: BatchReview, *, enterprise: str, generated_by: str | None, generated_at: datetime) -> str:
    """The deviation report page of `review` (see the module doc)."""
    verdict = review.verdict
    if verdict.get("model"):
        state = ("outside its golden-batch limits" if verdict["batch_alarm"] else "within its golden-batch limits")
        cls = "verdict-bad" if verdict["batch_alarm"] else "verdict-ok"
        limits = (review.model or {}).get("limits") or {}
        verdict_html = (
            f'<p class="{cls}">The batch is {state}.</p><dl>'
            f"<dt>Rows scored</dt><dd>{verdict['rows']}</dd>"
            f"<dt>Rows outside the envelope</dt><dd>{verdict['envelope_alarms']} (k = {_t(limits.get('k'))} σ)</dd>"
            f"<dt>Rows over the T²/SPE limit</dt><dd>{verdict['mv_alarms']}</dd>"
            f"<dt>Mean T²/limit so far</dt><dd>{_t(verdict['t2_so_far'])} (batch limit {_t(limits.get('batch_t2'))})</dd>"
            f"<dt>Mean SPE/limit so far</dt><dd>{_t(verdict['spe_so_far'])} (batch limit {_t(limits.get('batch_spe'))})</dd>"
            f"<dt>Top contributors (PCA)</dt><dd>{_t((verdict['contributors'] or '').replace(';', ', '))}</dd></dl>"
        )
    else:
        verdict_html = f'<p class="empty">{html.escape(review.model_note)}</p>'
    records = _table(
        ["Record", "Classification", "Comment", "Moment", "Tags", "Signed by", "Meaning", "Signed at (UTC)", "Supersedes"],
        [[r.id, r.classification, r.comment, r.at, ", ".join(r.tags), r.signed_name, r.meaning, r.signed_at, r.supersedes]
         for r in review.deviations],
        "No deviation record for this batch.",
    )
    alarms = _table(
        ["Time", "Event", "Tag", "Detector", "Priority", "State", "User", "Comment", "Message"],
        [[r.get("ts"), r.get("event"), r.get("tag_id"), r.get("detector"), r.get("priority"), r.get("to_state"),
          r.get("user"), r.get("comment"), r.get("message")] for r in review.alarms.iter_rows(named=True)],
        "No alarm was journaled on this unit while the batch ran.",
    )
    excursions = _table(
        ["Tag", "From", "To", "Rows", "Worst |z|"],
        [[r["tag_id"], r["start"], r["end"], r["rows"], r["worst_z"]] for r in review.excursions().iter_rows(named=True)],
        "No excursion outside the envelope." if review.envelope is not None else "No envelope (no golden-batch model).",
    )
    phases = _table(
        ["Phase", "Start", "End", "Duration (min)"],
        [[r["phase"], r["start"], r["end"] if r["end"] is not None else "running",
          round((r["end"] - r["start"]).total_seconds() / 60, 1) if r["end"] is not None else None]
         for r in review.phases.sort("start").iter_rows(named=True)],
        "No batch event stored for this batch: its phases are not known.",
    )
    model = review.model or {}
    training = model.get("training") or {}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Batch {html.escape(review.batch_id)} deviation report</title><style>{_CSS}</style></head><body>
<h1>Batch deviation report: {html.escape(review.batch_id)}</h1>
<dl>
<dt>Enterprise</dt><dd>{html.escape(enterprise)}</dd>
<dt>Unit</dt><dd>{html.escape(review.unit)}</dd>
<dt>Batch</dt><dd>{html.escape(review.batch_id)}</dd>
<dt>First sample</dt><dd>{_t(review.start)}</dd>
<dt>Last sample</dt><dd>{_t(review.end)}</dd>
<dt>Samples</dt><dd>{review.samples.height}</dd>
<dt>Report generated</dt><dd>{_t(generated_at)} by {html.escape(generated_by or "unauthenticated user (authentication off)")}</dd>
</dl>
<h2>Phases</h2>
{phases}
<h2>Golden-batch model</h2>
<p>{html.escape(review.model_note)}</p>
{f"<dl><dt>Version</dt><dd>{_t(model.get('version'))}</dd><dt>Fingerprint</dt><dd>{_t(model.get('fingerprint'))}</dd><dt>Training batches</dt><dd>{_t(', '.join(training.get('batches') or []))}</dd><dt>Created</dt><dd>{_t(model.get('created_at'))}</dd></dl>" if model else ""}
<h2>Verdict</h2>
{verdict_html}
<h2>Deviation records</h2>
{records}
<h2>Alarms during the batch</h2>
{alarms}
<h2>Envelope excursions</h2>
{excursions}
<h2>Variables against the golden envelope</h2>
<p>Line: the batch. Band: mean ± k·σ of the good batches at the same maturity. Ticks: rows outside the envelope.</p>
{_charts(review)}
</body></html>
"""
