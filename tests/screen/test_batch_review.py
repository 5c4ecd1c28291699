"""Batch review against real parts: simulated bioreactor batches in a DuckDB historian, a
golden-batch model fitted from good ones and stored in the model store, the alarm journal and
the deviation log. A good batch passes; a batch with a pH sensor bias leaves the envelope on
pH, and the contributions at the fault name pH."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from analytics.models import ModelStore, fit_unit_model
from collector.sinks.duckdb import DuckDbHistorian
from controltower.batch_review import BatchNotFound, list_batches, review_batch
from controltower.deviations import DeviationError, DeviationLog
from tests.analytics.simulated_unit import START, UNIT, batch_seconds, bioreactor_site, simulate

SITE = bioreactor_site()
BATCH_S = batch_seconds(SITE)
PH = f"{UNIT}.ph"
FAULT_AT = 5 * BATCH_S + 1500.0  # in batch 6, its growth phase
FAR = START + timedelta(days=30)


@pytest.fixture(scope="module")
def plant_history(tmp_path_factory) -> tuple[DuckDbHistorian, ModelStore]:
    root = tmp_path_factory.mktemp("review")
    historian = DuckDbHistorian(root / "historian.duckdb")
    historian.write_sync(simulate(SITE, seed=31, seconds=6.2 * BATCH_S, faults=[(FAULT_AT, "ph", "bias", 900.0, 0.05)]))
    good = historian.read([t.tag_id for t in SITE.tag_table()], START, FAR)
    good = good.filter(pl.col("batch_id").is_in([f"BR101-{n:04d}" for n in range(2, 5)]))
    store = ModelStore(root / "models")
    variables = tuple(sorted(good["tag_id"].unique()))
    store.save(fit_unit_model("golden", good, unit=UNIT, variables=variables,
                              training={"batches": [f"BR101-{n:04d}" for n in range(2, 5)]}))
    yield historian, store
    historian.close()


def test_lists_the_units_batches_newest_first(plant_history) -> None:
    historian, _ = plant_history
    found = list_batches(historian, SITE, UNIT, START, FAR)
    assert found["batch_id"].to_list()[:6] == [f"BR101-{n:04d}" for n in (7, 6, 5, 4, 3, 2)]
    assert (found["end"] > found["start"]).all()
    assert list_batches(historian, SITE, UNIT, FAR, FAR + timedelta(days=1)).is_empty()


def test_a_good_batch_stays_in_its_envelope(plant_history, tmp_path: Path) -> None:
    historian, store = plant_history
    review = review_batch(historian, SITE, UNIT, "BR101-0005", since=START, until=FAR, models=store)
    assert review.model is not None and review.model["version"] == 1
    assert "golden-batch model v1" in review.model_note
    verdict = review.verdict
    assert verdict["model"] and not verdict["batch_alarm"]
    assert verdict["envelope_alarms"] <= 0.03 * verdict["rows"]
    assert set(review.envelope["tag_id"]) == set(review.tags)
    inside = review.envelope.drop_nulls("mean")
    assert (inside["low"] < inside["mean"]).all() and (inside["mean"] < inside["high"]).all()


def test_a_faulty_batch_leaves_the_envelope_on_the_faulted_tag(plant_history) -> None:
    historian, store = plant_history
    review = review_batch(historian, SITE, UNIT, "BR101-0006", since=START, until=FAR, models=store)
    verdict = review.verdict
    assert verdict["envelope_alarms"] > 20
    excursions = review.excursions()
    assert not excursions.is_empty()
    worst = excursions.sort("rows", descending=True).row(0, named=True)
    assert worst["tag_id"] == PH
    fault_start = START + timedelta(seconds=FAULT_AT)
    assert fault_start - timedelta(minutes=1) <= worst["start"] <= fault_start + timedelta(minutes=15)
    at_fault = review.contributions_at(worst["start"] + timedelta(seconds=30))
    assert at_fault["tag_id"][0] == PH and at_fault["z"][0] > 5
    assert at_fault["contribution"].is_not_null().all()


def test_without_a_model_the_review_says_how_to_fit_one(plant_history, tmp_path: Path) -> None:
    historian, _ = plant_history
    review = review_batch(historian, SITE, UNIT, "BR101-0006", since=START, until=FAR, models=ModelStore(tmp_path / "none"))
    assert review.model is None and review.envelope is None
    assert "controltower model fit" in review.model_note
    assert review.verdict == {"model": False}
    assert review.samples.height > 0 and set(review.samples["batch_id"]) == {"BR101-0006"}


def test_unknown_unit_or_batch_is_a_clear_error(plant_history) -> None:
    historian, store = plant_history
    with pytest.raises(BatchNotFound, match="unknown unit"):
        review_batch(historian, SITE, "lyon.usp.bio1.nope", "BR101-0006", since=START, until=FAR, models=store)
    with pytest.raises(BatchNotFound, match="no batch 'BR101-9999'"):
        review_batch(historian, SITE, UNIT, "BR101-9999", since=START, until=FAR, models=store)


def test_deviation_records_are_signed_appended_and_shown_with_their_batch(plant_history, tmp_path: Path) -> None:
    historian, store = plant_history
    log = DeviationLog(tmp_path / "deviations.jsonl")
    first = log.add(batch_id="BR101-0006", unit=UNIT, classification="major", comment="pH probe bias, recalibrated",
                    signed_by="ana", signed_name="ana (quality engineer)", meaning="reviewed",
                    at=START + timedelta(seconds=FAULT_AT), tags=[PH])
    second = log.add(batch_id="BR101-0006", unit=UNIT, classification="minor", comment="impact assessed: none on CQA",
                     signed_by="ana", meaning="approved", supersedes=first.id)
    assert first.id != second.id and first.id.startswith("DEV-")
    review = review_batch(historian, SITE, UNIT, "BR101-0006", since=START, until=FAR, models=store, deviations=log)
    assert [r.id for r in review.deviations] == [first.id, second.id]
    assert review.deviations[0].signed_name == "ana (quality engineer)" and review.deviations[0].tags == [PH]
    for bad, match in [({"classification": "huge"}, "classification"), ({"comment": " "}, "comment"),
                       ({"meaning": "liked"}, "meaning"), ({"supersedes": "DEV-0"}, "supersedes")]:
        fields = {"batch_id": "BR101-0006", "unit": UNIT, "classification": "minor", "comment": "x",
                  "signed_by": "ana", "meaning": "reviewed"} | bad
        with pytest.raises(DeviationError, match=match):
            log.add(**fields)
    assert len(log.read()) == 2, "a refused record writes nothing"


def test_the_report_is_self_contained_html_with_records_excursions_and_charts(plant_history, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from controltower.batch_report import report_csv, report_html

    historian, store = plant_history
    log = DeviationLog(tmp_path / "deviations.jsonl")
    log.add(batch_id="BR101-0006", unit=UNIT, classification="major", comment="pH <probe> bias & drift",
            signed_by="ana", signed_name="ana (quality engineer)", meaning="reviewed")
    review = review_batch(historian, SITE, UNIT, "BR101-0006", since=START, until=FAR, models=store, deviations=log)
    page = report_html(review, enterprise="Test Pharma", generated_by="ana", generated_at=datetime(2026, 11, 29, tzinfo=UTC))
    assert "<script" not in page and "http" not in page.split("</head>")[0], "no script, no external file"
    assert "pH &lt;probe&gt; bias &amp; drift" in page, "record text is escaped"
    assert "ana (quality engineer)" in page and "reviewed" in page
    assert "outside its golden-batch limits" in page or "within its golden-batch limits" in page
    assert page.count("<svg") == len(review.tags) + 1  # one per variable, and the T²/SPE score
    assert PH in page.split("Envelope excursions")[1].split("<h2>")[0]

    samples = pl.read_csv(report_csv(review))
    assert samples.height == review.samples.height and set(samples["batch_id"]) == {"BR101-0006"}
    envelope = pl.read_csv(report_csv(review, "envelope"))
    assert {"value", "mean", "low", "high", "z", "outside"} <= set(envelope.columns)
    with pytest.raises(ValueError, match="what"):
        report_csv(review, "everything")
