"""Batch review for quality engineers: one batch of one unit, read back from the historian and
put beside what the control tower knows about it.

    batches = list_batches(historian, site, "lyon.usp.bio1.br101", since, until)
    review = review_batch(historian, site, "lyon.usp.bio1.br101", "BR101-0007",
                          since=since, until=until, models=ModelStore(...), journal=journal,
                          deviations=DeviationLog(...))

A review holds the batch's samples; the unit's golden-batch model (`controltower model fit
--kind golden`, the newest version in the model store), when there is one, with the batch scored
against it (`analytics.golden`): every variable beside its envelope (mean ± k·σ at the same
maturity of the batch), T² and SPE row by row with their limits and per-variable contributions,
and the batch's verdict; the alarms raised on the unit's tags while the batch ran (alarm
journal); and the deviation records written for it. Without a model, the review says so
(and how to fit one) and still shows the data, the alarms and the records.

Batches are found from the samples' `batch_id`: one tag of the unit, read over [since, until),
gives each batch's first and last sample time. The batch's ISA-88 phases are the historian's
batch events (`controltower.batch_events`): the review lists them as spans, and a golden model
fitted by phase scores each sample against its phase's envelope (samples joined to the spans by
time); a model fitted on whole batches (`analytics.golden.WHOLE_BATCH`) ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from controltower.batch_events import empty_phase_spans, read_phase_spans, with_phases
from controltower.deviations import DeviationLog, DeviationRecord

if TYPE_CHECKING:
    from analytics.golden import GoldenBatch, GoldenScore
    from analytics.journal import AlarmJournal
    from analytics.models import ModelStore
    from collector.sinks import Historian
    from controltower.site import SiteConfig

BATCH_SCHEMA = {"batch_id": pl.String, "start": pl.Datetime("ns", "UTC"), "end": pl.Datetime("ns", "UTC"),
                "samples": pl.UInt32}


class BatchNotFound(LookupError):
    """An unknown unit, or a batch with no sample in the window; the message says which."""


def unit_tags(site: SiteConfig, unit: str) -> list[str]:
    """The tag ids of the unit at ISA-95 path `unit` (site.area.line.unit); BatchNotFound if none."""
    tags = [t.tag_id for t in site.tag_table() if t.unit_id == unit]
    if not tags:
        raise BatchNotFound(f"unknown unit {unit!r} (give its path site.area.line.unit)")
    return tags


def units(site: SiteConfig) -> list[tuple[str, str]]:
    """(path, label) of every unit of the site, in configuration order."""
    out: list[tuple[str, str]] = []
    for s in site.sites:
        for a in s.areas:
            for ln in a.lines:
                for u in ln.units:
                    out.append((f"{s.id}.{a.id}.{ln.id}.{u.id}", f"{s.id} · {ln.name or ln.id} · {u.name or u.id}"))
    return out


def list_batches(historian: Historian, site: SiteConfig, unit: str, since: datetime, until: datetime) -> pl.DataFrame:
    """The unit's batches with a sample in [since, until): batch_id, start, end (first and last
    sample), samples (of the probe tag), newest first."""
    probe = unit_tags(site, unit)[0]
    frame = historian.read([probe], since, until)
    if frame.is_empty():
        return pl.DataFrame(schema=BATCH_SCHEMA)
    return (
        frame.filter(pl.col("batch_id").is_not_null())
        .group_by("batch_id")
        .agg(pl.col("ts").min().alias("start"), pl.col("ts").max().alias("end"), pl.len().cast(pl.UInt32).alias("samples"))
        .sort("start", descending=True)
        .select(list(BATCH_SCHEMA))
    )


@dataclass(frozen=True)
class BatchReview:
    unit: str
    batch_id: str
    start: datetime
    end: datetime
    tags: list[str]
    samples: pl.DataFrame  # the unit's samples of the batch (sample schema)
    model: dict[str, Any] | None  # the golden model's manifest (version, fingerprint, training...)
    model_note: str  # why there is no model, or which one is used
    score: GoldenScore | None
    envelope: pl.DataFrame | None  # long: ts, tag_id, value, mean, low, high, z, outside
    alarms: pl.DataFrame  # alarm journal entries on the unit's tags while the batch ran
    deviations: list[DeviationRecord]
    # The batch's phase spans (unit_id, batch_id, phase, start, end; end null while it runs),
    # empty when the historian holds no batch events for it.
    phases: pl.DataFrame = field(default_factory=empty_phase_spans)

    @property
    def verdict(self) -> dict[str, Any]:
        """The batch against its golden model: rows outside the envelope, T²/SPE so far against
        their batch limits, the top contributors; {"model": False} without a model."""
        if self.score is None or self.score.batches.is_empty():
            return {"model": False}
        row = self.score.batches.row(0, named=True)
        rows = self.score.rows
        return {
            "model": True,
            "rows": row["rows"],
            "envelope_alarms": row["envelope_alarms"],
            "mv_alarms": int(rows["mv_alarm"].sum()),
            "t2_so_far": row["t2_so_far"],
            "spe_so_far": row["spe_so_far"],
            "batch_alarm": bool(row["batch_alarm"]),
            "contributors": row["contributors"],
        }

    def excursions(self) -> pl.DataFrame:
        """Intervals where a variable left its envelope: tag_id, start, end, rows, worst_z."""
        schema = {"tag_id": pl.String, "start": pl.Datetime("ns", "UTC"), "end": pl.Datetime("ns", "UTC"),
                  "rows": pl.UInt32, "worst_z": pl.Float64}
        if self.envelope is None or self.envelope.is_empty():
            return pl.DataFrame(schema=schema)
        return (
            self.envelope.sort("tag_id", "ts")
            .with_columns(
                (pl.col("outside") != pl.col("outside").shift(1).over("tag_id")).fill_null(True).cum_sum()
                .over("tag_id").alias("_run")
            )
            .filter(pl.col("outside"))
            .group_by("tag_id", "_run")
            .agg(pl.col("ts").min().alias("start"), pl.col("ts").max().alias("end"),
                 pl.len().cast(pl.UInt32).alias("rows"),
                 pl.col("z").abs().max().alias("worst_z"))
            .sort("start", "tag_id")
            .select(list(schema))
        )

    def contributions_at(self, at: datetime) -> pl.DataFrame:
        """What each variable contributes at the aligned row nearest `at`: tag_id, `z` (its
        deviation from the envelope's mean, in σ) and `contribution` (to T² or SPE, whichever
        is nearer its limit, as a fraction of that limit), sorted by |z|, largest first. The
        envelope z is the first hint: PCA contributions spread a single-variable fault over
        the variables that load on the same components. Empty without a model."""
        schema = {"tag_id": pl.String, "z": pl.Float64, "contribution": pl.Float64}
        if self.score is None or self.score.rows.is_empty():
            return pl.DataFrame(schema=schema)
        ts = self.score.rows.get_column("ts").dt.epoch("ns").to_numpy()
        target = int(pl.Series([at]).cast(pl.Datetime("ns", "UTC")).dt.epoch("ns")[0])
        i = int(np.abs(ts - target).argmin())
        z, contribution = self.score.z.row(i, named=True), self.score.contributions.row(i, named=True)
        return (
            pl.DataFrame({"tag_id": list(z), "z": [z[k] for k in z], "contribution": [contribution[k] for k in z]},
                         schema=schema)
            .sort(pl.col("z").abs(), descending=True, nulls_last=True)
        )


def review_batch(
    historian: Historian,
    site: SiteConfig,
    unit: str,
    batch_id: str,
    *,
    since: datetime,
    until: datetime,
    models: ModelStore | None = None,
    journal: AlarmJournal | None = None,
    deviations: DeviationLog | None = None,
) -> BatchReview:
    """The review of `batch_id` of `unit`, looked for in [since, until). BatchNotFound when the
    unit is unknown or the batch has no sample there."""
    tags = unit_tags(site, unit)
    found = list_batches(historian, site, unit, since, until).filter(pl.col("batch_id") == batch_id)
    if found.is_empty():
        raise BatchNotFound(f"no batch {batch_id!r} of unit {unit} between {since:%Y-%m-%d %H:%M} and "
                            f"{until:%Y-%m-%d %H:%M} UTC")
    start, end = found["start"][0], found["end"][0]
    samples = historian.read(tags, start, end + timedelta(microseconds=1)).filter(pl.col("batch_id") == batch_id)
    phases = read_phase_spans(historian, unit, start, end + timedelta(microseconds=1)).filter(
        pl.col("batch_id") == batch_id)

    model, note, score, envelope = _golden(models, unit, samples, phases)
    alarms = _alarms(journal, unit, start, end)
    records = deviations.for_batch(unit, batch_id) if deviations is not None else []
    return BatchReview(unit, batch_id, start, end, tags, samples, model, note, score, envelope, alarms, records,
                       phases)


def _golden(models: ModelStore | None, unit: str, samples: pl.DataFrame, phases: pl.DataFrame):
    fit_hint = (f"fit one from good batches with `controltower model fit --unit {unit} --kind golden "
                "--batches ID,ID,...`")
    if models is None:
        return None, "no model store configured: batches are shown without a golden envelope", None, None
    from analytics.golden import WHOLE_BATCH
    from analytics.models import ModelStoreError

    try:
        versions = models.versions(unit, "golden")
        if not versions:
            return None, f"no golden-batch model for {unit}: {fit_hint}", None, None
        fitted = models.load(unit, "golden")
    except ModelStoreError as exc:
        return None, f"the golden-batch model of {unit} cannot be used: {exc}", None, None
    golden: GoldenBatch = fitted.model
    by_phase = tuple(golden.phases_) != (WHOLE_BATCH,)
    score = golden.score(with_phases(samples, phases) if by_phase else samples.drop("phase", strict=False))
    envelope = _envelope(golden, score)
    manifest = fitted.manifest
    note = (f"golden-batch model v{manifest.get('version')} (fingerprint {str(manifest.get('fingerprint', ''))[:12]}, "
            f"trained on {len((manifest.get('training') or {}).get('batches') or [])} batches, "
            + (f"aligned by phase: {', '.join(golden.phases_)})" if by_phase else "aligned on whole batches)"))
    if by_phase and phases.is_empty():
        note += "; the historian holds no phases of this batch, so it cannot be scored by phase"
    return manifest, note, score, envelope


def _envelope(golden: GoldenBatch, score: GoldenScore) -> pl.DataFrame:
    """The batch's aligned rows beside the envelope at their point: long, one row per (row, variable)."""
    rows = score.rows
    variables = list(golden.variables_)
    if rows.is_empty():
        return pl.DataFrame(schema={"ts": pl.Datetime("ns", "UTC"), "tag_id": pl.String, "value": pl.Float64,
                                    "mean": pl.Float64, "low": pl.Float64, "high": pl.Float64, "z": pl.Float64,
                                    "outside": pl.Boolean})
    phase_of = {ph: i for i, ph in enumerate(golden.phases_)}
    ph = rows["phase"].replace_strict(phase_of, default=-1, return_dtype=pl.Int64).to_numpy()
    points = np.asarray(golden.points_, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(points)])
    known = (ph >= 0) & (points[np.maximum(ph, 0)] > 0)
    at = np.where(known, offsets[np.maximum(ph, 0)]
                  + np.minimum(rows["point"].to_numpy(), np.maximum(points[np.maximum(ph, 0)] - 1, 0)), 0)
    mean = np.where(known[:, None], golden.mean_[at], np.nan)
    half = golden.k_ * np.where(known[:, None], golden.std_[at], np.nan)
    z = score.z.select(variables).to_numpy().astype(np.float64)
    value = mean + z * (half / golden.k_)
    n, p = mean.shape
    long = pl.DataFrame({
        "ts": np.repeat(rows["ts"].to_numpy(), p),
        "tag_id": np.tile(variables, n),
        "value": value.reshape(-1), "mean": mean.reshape(-1),
        "low": (mean - half).reshape(-1), "high": (mean + half).reshape(-1), "z": z.reshape(-1),
    }).with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC")), pl.col(pl.Float64).fill_nan(None))
    return long.with_columns((pl.col("z").abs() > golden.k_).fill_null(False).alias("outside"))


def _alarms(journal: AlarmJournal | None, unit: str, start: datetime, end: datetime) -> pl.DataFrame:
    columns = ["ts", "event", "tag_id", "detector", "priority", "severity", "to_state", "user", "comment", "message"]
    if journal is None:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    found = journal.search(tag=unit, since=start, until=end + timedelta(seconds=1), limit=10_000)
    return found.select([c for c in columns if c in found.columns]).reverse()
