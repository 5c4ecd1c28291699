"""The batch deviation report lists the batch's ISA-88 phases (from the stored batch events), in
the HTML page and as CSV; a batch without stored events says its phases are not known."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import polars as pl

from controltower.batch_report import report_csv, report_html
from controltower.batch_review import review_batch
from tests.analytics.simulated_unit import UNIT
from tests.analytics.test_golden_phases import PHASES, SITE
from tests.screen.test_batch_review_phases import FAR, START, phased_history  # noqa: F401 - the fixture

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def test_the_report_lists_the_phases_with_their_spans(phased_history) -> None:  # noqa: F811 - fixture
    historian, store, _ = phased_history
    review = review_batch(historian, SITE, UNIT, "BR101-0006", since=START, until=FAR, models=store)
    page = report_html(review, enterprise="Test", generated_by="qa", generated_at=NOW)
    section = page.split("<h2>Phases</h2>", 1)[1].split("<h2>", 1)[0]
    assert [p for p in PHASES if f"<td>{p}</td>" in section] == PHASES
    first = review.phases.row(0, named=True)
    assert first["start"].strftime("%Y-%m-%d %H:%M:%S UTC") in section
    minutes = round((first["end"] - first["start"]).total_seconds() / 60, 1)
    assert f"<td>{minutes:.4g}</td>" in section

    csv = pl.read_csv(io.BytesIO(report_csv(review, "phases")))
    assert csv.columns == ["unit_id", "batch_id", "phase", "start", "end"]
    assert csv["phase"].to_list() == PHASES
    assert csv["start"][0] == first["start"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_batch_without_stored_events_says_its_phases_are_not_known(phased_history, tmp_path) -> None:  # noqa: F811
    from collector.sinks.duckdb import DuckDbHistorian

    historian, store, _ = phased_history
    bare = DuckDbHistorian(tmp_path / "bare.duckdb")
    try:
        bare.write_sync(historian.read([t.tag_id for t in SITE.tag_table()], START, FAR))
        review = review_batch(bare, SITE, UNIT, "BR101-0006", since=START, until=FAR, models=store)
    finally:
        bare.close()
    page = report_html(review, enterprise="Test", generated_by=None, generated_at=NOW)
    assert "No batch event stored for this batch: its phases are not known." in page
    assert report_csv(review, "phases").decode().strip() == "unit_id,batch_id,phase,start,end"
