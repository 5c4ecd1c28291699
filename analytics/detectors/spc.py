"""Centre line and sigma per tag for the SPC charts (Nelson rules, EWMA, CUSUM).

`fit_centres(history, tags)` learns them from normal history: the mean and the sample standard
deviation of each known tag's usable samples. `given` pins some tags to values set by hand
(e.g. a validated set point and the process sigma of a qualification run); they win over the
history. A tag with fewer than `min_samples` usable samples or a zero sigma is left out: the
charts do not score it.

At run time nobody calls `fit`: the charts take their centres from, in this order,
  1. the site file: a tag's `spc: {centre, sigma}` (pinned by hand, `pinned_centres`), which wins;
  2. the unit's stored `spc` model (`controltower model fit --kind spc`, `SpcCentres`), handed to
     the charts by the engine (`use_stored`, from `runtime.load_unit_monitors`): while the unit
     runs an ISA-88 phase the model has a centre for, that phase's centre and sigma
     (`RunningPhases`, which follows the unit's batch events and swaps the centres with
     `move_centres` at each phase change); otherwise, and outside any batch, the centre fitted
     over the whole training range;
  3. nothing: the tag is not scored by the charts.

At a phase change the charts forget the moved tags' run, EWMA and CUSUM state (`forget`): a
history built against the previous phase's centre says nothing about the new one, and carried
over it would alarm at the boundary. A new stored version taken while the engine runs
(`analytics.model_reload`, `RunningPhases.replace`) moves the centres the same way.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from analytics.detectors.base import usable
from analytics.detectors.wide import Compacted, WideBatch, aligned_columns
from controltower.samples import PATH_COLUMNS
from controltower.site import TagInfo

CENTRES_SCHEMA = {"tag_id": pl.String(), "centre": pl.Float64(), "sigma": pl.Float64()}
PHASE_CENTRES_SCHEMA = {"tag_id": pl.String(), "phase": pl.String(), "centre": pl.Float64(), "sigma": pl.Float64()}
D2 = 1.128  # E[|X_t - X_t-1|] / sigma for independent normal X (d2 of a subgroup of 2)


def pinned_centres(tags: list[TagInfo]) -> dict[str, tuple[float, float]]:
    """tag_id -> (centre, sigma) of the tags whose site-file entry pins them (`spc:`)."""
    return {t.tag_id: (t.tag.spc.centre, t.tag.spc.sigma) for t in tags if getattr(t.tag, "spc", None) is not None}


def _with_pinned(learned: pl.DataFrame, tags: list[TagInfo], given: dict[str, tuple[float, float]] | None
                 ) -> pl.DataFrame:
    """`learned` centres of known tags, the `given` ones replacing them (CENTRES_SCHEMA, by tag)."""
    known = [t.tag_id for t in tags]
    pinned = pl.DataFrame([(k, float(c), float(s)) for k, (c, s) in (given or {}).items() if k in known and s > 0],
                          schema=CENTRES_SCHEMA, orient="row")
    learned = learned.select(CENTRES_SCHEMA.keys()).filter(pl.col("tag_id").is_in(known))
    return pl.concat([learned.join(pinned, on="tag_id", how="anti"), pinned]).sort("tag_id")


def fit_centres(history: pl.DataFrame, tags: list[TagInfo], given: dict[str, tuple[float, float]] | None = None,
                min_samples: int = 10) -> pl.DataFrame:
    """(tag_id, centre, sigma) per known tag: `given` (tag_id -> (centre, sigma)) first, else the
    mean and std of the tag's usable samples in `history` (sample schema)."""
    known = [t.tag_id for t in tags]
    learned = (
        history.filter(usable() & pl.col("tag_id").is_in(known))
        .group_by("tag_id")
        .agg(pl.col("value").mean().alias("centre"), pl.col("value").std().alias("sigma"), pl.len().alias("n"))
        .filter((pl.col("n") >= min_samples) & (pl.col("sigma") > 0))
    )
    return _with_pinned(learned, tags, given)


def moving_range_centres(samples: pl.DataFrame, tag_ids: list[str] | tuple[str, ...],
                         min_samples: int = 10, by: tuple[str, ...] = ()) -> pl.DataFrame:
    """(tag_id, *by, centre, sigma, n, batches) per tag of `tag_ids` (and value of the `by`
    columns) from normal history (sample schema): the mean of its usable samples, and sigma =
    MR-bar / 1.128, the mean moving range of consecutive samples (by time, within one batch when
    there is a `batch_id`, and one value of `by`) over d2: the textbook estimate for an
    individuals chart (Montgomery 6.4). Unlike the overall std it measures the short-term noise,
    so a slow drift or the step between batches (or phases) in the training data does not widen
    the limits. `batches` counts the distinct batch ids behind each row. Rows with fewer than
    `min_samples` usable samples or a zero sigma are left out."""
    group = ["tag_id", *by]
    has_batch = "batch_id" in samples.columns
    batches = pl.col("batch_id").drop_nulls().n_unique() if has_batch else pl.lit(0)
    return (
        samples.filter(usable() & pl.col("tag_id").is_in(list(tag_ids)))
        .sort("tag_id", "ts")
        .with_columns(pl.col("value").diff().abs().over([*group, "batch_id"] if has_batch else group).alias("_mr"))
        .group_by(group)
        .agg(pl.col("value").mean().alias("centre"), (pl.col("_mr").mean() / D2).alias("sigma"),
             pl.len().alias("n"), batches.cast(pl.UInt32).alias("batches"))
        .filter((pl.col("n") >= min_samples) & (pl.col("sigma") > 0))
        .sort(group)
    )


def phase_centres(samples: pl.DataFrame, tag_ids: list[str] | tuple[str, ...], min_samples: int = 30,
                  min_batches: int = 2) -> pl.DataFrame:
    """(tag_id, phase, centre, sigma, n, batches): `moving_range_centres` per tag and ISA-88
    phase, from the samples of `samples` (with a `phase` column, `model_command.phased_samples`)
    inside a phase span, the moving range taken within one phase of one batch. A (tag, phase)
    needs `min_samples` usable samples from at least `min_batches` batches: one batch's phase
    would pin the centre on that batch's own level (its offset from batch to batch is part of
    the normal spread the chart must accept)."""
    if "phase" not in samples.columns:
        samples = samples.with_columns(pl.lit(None, pl.String).alias("phase"))
    found = moving_range_centres(samples.filter(pl.col("phase").is_not_null()), tag_ids, min_samples, by=("phase",))
    return found.filter(pl.col("batches") >= min_batches)


class SpcCentres:
    """The `spc` model kind of the model store (`analytics.models`): a unit's centre line and
    sigma per tag (`moving_range_centres`) over the whole training range, frozen as plain arrays:
    `tag_ids_`, `centre_`, `sigma_`, `n_` (usable samples behind each); and, when the training
    samples carry their ISA-88 phase, one per (tag, phase) (`phase_centres`): `phase_tag_ids_`,
    `phase_names_`, `phase_centre_`, `phase_sigma_`, `phase_n_`, `phase_batches_`. One centre per
    tag fits tags held at a steady value; the per-phase ones fit tags held at a setpoint per
    phase. A tag that ramps within a phase still leaves its centre (README, "SPC centre lines"):
    the golden model is the one for those."""

    def __init__(self, min_samples: int = 10, phase_min_samples: int = 30, phase_min_batches: int = 2):
        self.min_samples = min_samples
        self.phase_min_samples = phase_min_samples
        self.phase_min_batches = phase_min_batches

    def get_params(self) -> dict[str, Any]:
        return {"min_samples": self.min_samples, "phase_min_samples": self.phase_min_samples,
                "phase_min_batches": self.phase_min_batches}

    def fit(self, samples: pl.DataFrame, variables: list[str] | tuple[str, ...]) -> Self:
        """Learn the centres of `variables` from `samples` (sample schema; with a `phase` column,
        per phase too); ValueError when no tag has enough samples."""
        found = moving_range_centres(samples, variables, self.min_samples)
        if found.is_empty():
            raise ValueError(f"no tag has {self.min_samples} usable samples with some variation to set a centre line")
        self.tag_ids_ = found["tag_id"].to_list()
        self.centre_ = found["centre"].to_numpy()
        self.sigma_ = found["sigma"].to_numpy()
        self.n_ = found["n"].cast(pl.Int64).to_numpy()
        phased = phase_centres(samples, variables, self.phase_min_samples, self.phase_min_batches)
        self.phase_tag_ids_ = phased["tag_id"].to_list()
        self.phase_names_ = phased["phase"].to_list()
        self.phase_centre_ = phased["centre"].to_numpy()
        self.phase_sigma_ = phased["sigma"].to_numpy()
        self.phase_n_ = phased["n"].cast(pl.Int64).to_numpy()
        self.phase_batches_ = phased["batches"].cast(pl.Int64).to_numpy()
        return self

    def centres(self) -> pl.DataFrame:
        """The centres fitted over the whole training range (CENTRES_SCHEMA)."""
        return pl.DataFrame({"tag_id": list(self.tag_ids_), "centre": self.centre_, "sigma": self.sigma_},
                            schema=CENTRES_SCHEMA)

    def phase_centres(self) -> pl.DataFrame:
        """The centres fitted per ISA-88 phase (PHASE_CENTRES_SCHEMA); none for a model stored
        before they existed, or fitted without phases."""
        if not hasattr(self, "phase_tag_ids_"):
            return pl.DataFrame(schema=PHASE_CENTRES_SCHEMA)
        return pl.DataFrame({"tag_id": list(self.phase_tag_ids_), "phase": list(self.phase_names_),
                             "centre": self.phase_centre_, "sigma": self.phase_sigma_}, schema=PHASE_CENTRES_SCHEMA)


@dataclass(frozen=True)
class StoredCentres:
    """A unit's stored `spc` model as the live engine takes it (`runtime.load_unit_monitors`
    returns it with the monitors, `model_reload` stages a new version): its whole-range centres
    go to the charts (`CentreLineChart.use_stored`), its per-phase ones (`phases`,
    PHASE_CENTRES_SCHEMA) to `RunningPhases`; it scores nothing itself."""

    name: ClassVar[str] = "spc"  # the model kind, as a monitor's name is

    unit: str
    version: int | None
    centres: pl.DataFrame
    phases: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PHASE_CENTRES_SCHEMA))
    fingerprint: str | None = None  # of the training samples (the manifest's), for the audit trail

    @classmethod
    def of(cls, fitted) -> StoredCentres:
        """The centres of a loaded `spc` model (`models.FittedModel` of an `SpcCentres`)."""
        return cls(fitted.unit, (fitted.manifest or {}).get("version"), fitted.model.centres(),
                   fitted.model.phase_centres(), fitted.fingerprint)

    @property
    def tag_ids(self) -> list[str]:
        """The tags it gives a centre, over the whole range or in some phase."""
        return sorted(set(self.centres["tag_id"]) | set(self.phases["tag_id"]))


class RunningPhases:
    """Which centres the SPC charts should hold for each unit with per-phase centres, from the
    unit's batch events (`controltower.batch_events` schema, fed by `batch_events`): while the
    unit runs a phase with fitted centres, those (the whole-range ones for its other tags);
    before any event, after a batch end, or in a phase without fitted centres, the whole-range
    ones. The engine cuts each micro-batch at the phase changes inside it (`cuts`) and, before
    scoring each part, asks `moves(start)` for the units whose phase (as far as centres go)
    changed since the centres it last handed out.

    The events of `units` without per-phase centres are kept too: a new stored version with
    them (`replace`) then knows the phase its unit runs."""

    KEEP_EVENTS = 50  # per unit: the running phase and the changes a late micro-batch may still need

    def __init__(self, stored: list[StoredCentres], units: list[str] | tuple[str, ...] = ()):
        self._tags: dict[str, list[str]] = {}  # per unit with stored centres: the tags they centre
        self._frames: dict[str, dict[str | None, pl.DataFrame]] = {}  # per unit with per-phase centres
        self._held: dict[str, str | None] = {}  # per unit with per-phase centres: the phase the charts hold
        self._events: dict[str, tuple[list[int], list[str | None]]] = {u: ([], []) for u in units}
        for s in stored:
            self._take(s)

    def _take(self, stored: StoredCentres) -> None:
        """Follow `stored` for its unit (in place of what it had), the charts holding its whole-range centres."""
        unit = stored.unit
        self._tags[unit] = stored.tag_ids
        self._events.setdefault(unit, ([], []))
        self._frames.pop(unit, None)
        self._held.pop(unit, None)
        if stored.phases.is_empty():
            return
        whole = stored.centres.select(CENTRES_SCHEMA.keys())
        self._frames[unit] = {None: whole} | {
            phase: pl.concat([whole.join(rows, on="tag_id", how="anti"), rows.select(CENTRES_SCHEMA.keys())])
            for (phase,), rows in stored.phases.partition_by("phase", as_dict=True).items()}
        self._held[unit] = None

    def replace(self, stored: StoredCentres, t_ns: int | None) -> tuple[list[str], pl.DataFrame]:
        """Take a new stored version of a unit's centres, keeping the unit's batch events: returns
        (the tags the old or the new version centres, the centres they should now hold: those of
        the phase the unit runs at `t_ns`, the engine's clock, else the whole-range ones) for the
        charts' `move_centres`; a later phase change is a `moves` as before."""
        before = self._tags.get(stored.unit, [])
        self._take(stored)
        tags = sorted(set(before) | set(self._tags[stored.unit]))
        if stored.unit not in self._frames:
            return tags, stored.centres.select(CENTRES_SCHEMA.keys())
        phase = self.phase_at(stored.unit, t_ns) if t_ns is not None else None
        self._held[stored.unit] = phase
        return tags, self._frames[stored.unit][phase]

    @property
    def units(self) -> list[str]:
        """The units whose charts follow their phase (stored centres per phase)."""
        return sorted(self._frames)

    def batch_events(self, events: pl.DataFrame) -> None:
        """Take a unit's batch events (any order, other units' ignored): each event but a batch
        end starts its phase; a batch end leaves the unit outside any phase."""
        from controltower.batch_events import sort_events

        unit = pl.concat_str(*PATH_COLUMNS, separator=".")
        mine = events.filter(unit.is_in(list(self._events)))
        if mine.is_empty():
            return
        mine = sort_events(mine).select(unit.alias("unit_id"), pl.col("ts").dt.epoch("ns").alias("t"),
                                        pl.when(pl.col("transition") != "batch_end").then(pl.col("phase")))
        for (unit_id,), rows in mine.partition_by("unit_id", as_dict=True).items():
            times, phases = self._events[unit_id]
            merged = sorted(zip(times + rows["t"].to_list(), phases + rows["phase"].to_list(), strict=True),
                            key=lambda e: e[0])  # stable: events of one instant keep their order
            self._events[unit_id] = ([t for t, _ in merged[-self.KEEP_EVENTS:]],
                                     [p for _, p in merged[-self.KEEP_EVENTS:]])

    def cuts(self, first_ns: int, last_ns: int) -> list[int]:
        """The instants in (first_ns, last_ns] where a unit's phase changes: where to cut a batch."""
        return sorted({t for unit, (times, _) in self._events.items() if unit in self._frames
                       for t in times[bisect_right(times, first_ns):bisect_right(times, last_ns)]})

    def phase_at(self, unit: str, t_ns: int) -> str | None:
        """The phase `unit` runs at `t_ns` whose centres the charts should hold (None: the whole-range ones)."""
        times, phases = self._events[unit]
        at = bisect_right(times, t_ns) - 1
        phase = phases[at] if at >= 0 else None
        return phase if phase in self._frames[unit] else None

    def moves(self, t_ns: int) -> list[tuple[list[str], pl.DataFrame]]:
        """(the unit's tags, their centres) of each unit whose centres change at `t_ns`, as now held."""
        out = []
        for unit, held in self._held.items():
            phase = self.phase_at(unit, t_ns)
            if phase != held:
                self._held[unit] = phase
                out.append((self._tags[unit], self._frames[unit][phase]))
        return out


class CentreLineChart:
    """What the SPC charts (Nelson rules, EWMA, CUSUM) share: the tags, the centres pinned by hand
    (`given`, tag_id -> (centre, sigma); by default the site file's, `pinned_centres`) and
    `centres_` (`CENTRES_SCHEMA`): learned by `fit`, or the stored ones (`use_stored`), the
    pinned ones winning over both (before either, only the pinned ones). Tags without a centre
    are not scored."""

    def __init__(self, tags: list[TagInfo], given: dict[str, tuple[float, float]] | None = None):
        self.tags = tags
        self.given = pinned_centres(tags) if given is None else given
        self.centres_ = _with_pinned(pl.DataFrame(schema=CENTRES_SCHEMA), tags, self.given)

    def use_stored(self, centres: pl.DataFrame) -> Self:
        """Take stored centres (CENTRES_SCHEMA, e.g. `SpcCentres.centres()`) for the tags not
        pinned; tags in neither keep no centre."""
        self.centres_ = _with_pinned(centres, self.tags, self.given)
        return self

    def fit(self, history: pl.DataFrame) -> Self:
        """Learn each tag's centre line and sigma from normal history (sample schema)."""
        self.centres_ = fit_centres(history, self.tags, self.given)
        return self

    def move_centres(self, tag_ids: list[str], centres: pl.DataFrame) -> list[str]:
        """Give the tags of `tag_ids` the centres of `centres` (CENTRES_SCHEMA; a tag without a row
        loses its centre), the pinned ones still winning, and forget the streaming state of the
        tags whose centre or sigma moved (their run, EWMA or CUSUM was built against the old
        centre: carried over, it would alarm at the phase change). Returns those tags."""
        before = self.centres_.filter(pl.col("tag_id").is_in(tag_ids))
        kept = self.centres_.filter(~pl.col("tag_id").is_in(tag_ids))
        self.centres_ = _with_pinned(pl.concat([kept, centres.select(CENTRES_SCHEMA.keys()).filter(
            pl.col("tag_id").is_in(tag_ids))]), self.tags, self.given)
        after = self.centres_.filter(pl.col("tag_id").is_in(tag_ids))
        moved = before.join(after, on="tag_id", how="full", coalesce=True, suffix="_new").filter(
            pl.col("centre").ne_missing(pl.col("centre_new")) | pl.col("sigma").ne_missing(pl.col("sigma_new")))
        tags = moved["tag_id"].to_list()
        if tags:
            self.forget(tags)
        return tags

    def forget(self, tag_ids: list[str]) -> None:
        """Drop the streaming state the chart carries for `tag_ids` (each chart knows its own)."""
        raise NotImplementedError

    def centred_columns(self, wide: WideBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, Compacted]:
        """For the wide path: (centre, sigma) per column (NaN for a tag without a centre line),
        the cells scored (usable samples of tags with one) and those samples compacted."""
        cs = aligned_columns(self.centres_, wide.tag_ids, {"centre": None, "sigma": None})
        centre, sigma = cs["centre"].astype(float), cs["sigma"].astype(float)
        ok = wide.usable & ~np.isnan(centre)
        return centre, sigma, ok, Compacted(wide.values, ok)


def standardised() -> pl.Expr:
    """(x - centre) / sigma."""
    return (pl.col("value") - pl.col("centre")) / pl.col("sigma")
