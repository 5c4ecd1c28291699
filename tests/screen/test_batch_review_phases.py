"""Batch review with the batch's ISA-88 phases: simulated bioreactor batches and the batch events
the simulator announces for them in a DuckDB historian, a golden model fitted by phase from the
historian (`model_command.phased_samples`). The review lists the batch's phase spans, scores each
sample against its own phase's envelope, and the page shows the phases (list, shaded trends)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from analytics.model_command import phased_samples
from analytics.models import ModelStore, fit_unit_model
from collector.sinks.duckdb import DuckDbHistorian
from controltower.batch_events import phase_spans
from controltower.batch_review import review_batch
from controltower.screen.batches import phases_children, summary_children, trends_figure
from tests.analytics.simulated_unit import START, UNIT, batch_seconds, simulate
from tests.analytics.test_golden_phases import PHASES, SEED, SITE, announced_events

FAR = START + timedelta(days=30)
GOOD = [f"BR101-{n:04d}" for n in range(2, 6)]


@pytest.fixture(scope="module")
def phased_history(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-phases")
    seconds = 6.2 * batch_seconds(SITE)
    historian = DuckDbHistorian(root / "historian.duckdb")
    historian.write_sync(simulate(SITE, seed=SEED, seconds=seconds))
    events = announced_events(seconds)
    historian.write_batch_events_sync(events)
    good = historian.read([t.tag_id for t in SITE.tag_table()], START, FAR).filter(pl.col("batch_id").is_in(GOOD))
    store = ModelStore(root / "models")
    store.save(fit_unit_model("golden", phased_samples(historian, UNIT, good), unit=UNIT,
                              variables=tuple(sorted(good["tag_id"].unique())), training={"batches": GOOD}))
    yield historian, store, events
    historian.close()


def test_the_review_lists_the_batch_phases_and_scores_by_phase(phased_history) -> None:
    historian, store, events = phased_history
    review = review_batch(historian, SITE, UNIT, "BR101-0006", since=START, until=FAR, models=store)
    want = phase_spans(events).filter(pl.col("batch_id") == "BR101-0006")
    assert review.phases["phase"].to_list() == PHASES
    assert review.phases.equals(want)
    assert "aligned by phase: inoculation, growth, production, harvest" in review.model_note
    # Every row is scored against its own phase's envelope (none falls back to a whole-batch phase).
    assert review.score.rows["phase"].unique().sort().to_list() == sorted(PHASES)
    assert review.score.rows["envelope_z"].is_not_null().mean() > 0.95
    verdict = review.verdict
    assert verdict["model"] and not verdict["batch_alarm"], verdict

    text = str(summary_children(review))
    assert "Phases (UTC)" in text and "growth" in text and "harvest" in text
    shapes = [s.name for s in trends_figure(review).layout.shapes if (s.name or "").startswith("phase ")]
    assert shapes == [f"phase {p}" for p in PHASES]


def test_a_batch_without_stored_phases_says_so(phased_history, tmp_path) -> None:
    _, store, _ = phased_history
    bare = DuckDbHistorian(tmp_path / "bare.duckdb")
    try:
        bare.write_sync(simulate(SITE, seed=SEED, seconds=2.2 * batch_seconds(SITE)))
        review = review_batch(bare, SITE, UNIT, "BR101-0002", since=START, until=FAR, models=store)
        assert review.phases.is_empty()
        assert "no phases of this batch" in review.model_note
        assert "none stored" in str(phases_children(review))
    finally:
        bare.close()
