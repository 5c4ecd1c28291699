"""Centre line and sigma per tag for the SPC charts (Nelson rules, EWMA, CUSUM).

`fit_centres(history, tags)` learns them from normal history: the mean and the sample standard
deviation of each known tag's usable samples. `given` pins some tags to values set by hand
(e.g. a validated set point and the process sigma of a qualification run); they win over the
history. A tag with fewer than `min_samples` usable samples or a zero sigma is left out: the
charts do not score it.

At run time nobody calls `fit`: the charts take their centres from, in this order,
  1. the site file: a tag's `spc: {centre, sigma}` (pinned by hand, `pinned_centres`), which wins;
  2. the unit's stored `spc` model (`controltower model fit --kind spc`, `SpcCentres`), handed to
     the charts by the engine (`use_stored`, from `runtime.load_unit_monitors`);
  3. nothing: the tag is not scored by the charts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import polars as pl

from analytics.detectors.base import usable
from analytics.detectors.wide import Compacted, WideBatch, aligned_columns
from controltower.site import TagInfo

CENTRES_SCHEMA = {"tag_id": pl.String(), "centre": pl.Float64(), "sigma": pl.Float64()}
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
                         min_samples: int = 10) -> pl.DataFrame:
    """(tag_id, centre, sigma, n) per tag of `tag_ids` from normal history (sample schema): the
    mean of its usable samples, and sigma = MR-bar / 1.128, the mean moving range of consecutive
    samples (by time, within one batch when there is a `batch_id`) over d2: the textbook estimate
    for an individuals chart (Montgomery 6.4). Unlike the overall std it measures the short-term
    noise, so a slow drift or the step between batches in the training data does not widen
    the limits. Tags with fewer than `min_samples` usable samples or a zero sigma are left out."""
    group = ["tag_id", "batch_id"] if "batch_id" in samples.columns else ["tag_id"]
    return (
        samples.filter(usable() & pl.col("tag_id").is_in(list(tag_ids)))
        .sort("tag_id", "ts")
        .with_columns(pl.col("value").diff().abs().over(group).alias("_mr"))
        .group_by("tag_id")
        .agg(pl.col("value").mean().alias("centre"), (pl.col("_mr").mean() / D2).alias("sigma"),
             pl.len().alias("n"))
        .filter((pl.col("n") >= min_samples) & (pl.col("sigma") > 0))
        .sort("tag_id")
    )


class SpcCentres:
    """The `spc` model kind of the model store (`analytics.models`): a unit's centre line and
    sigma per tag (`moving_range_centres`), frozen as plain arrays: `tag_ids_`, `centre_`,
    `sigma_`, `n_` (usable samples behind each). One centre per tag fits tags held at a steady
    value; a tag that follows a batch trajectory leaves it on normal batches (README, "SPC centre
    lines"): the golden model is the one for those."""

    def __init__(self, min_samples: int = 10):
        self.min_samples = min_samples

    def get_params(self) -> dict[str, Any]:
        return {"min_samples": self.min_samples}

    def fit(self, samples: pl.DataFrame, variables: list[str] | tuple[str, ...]) -> Self:
        """Learn the centres of `variables` from `samples`; ValueError when no tag has enough."""
        found = moving_range_centres(samples, variables, self.min_samples)
        if found.is_empty():
            raise ValueError(f"no tag has {self.min_samples} usable samples with some variation to set a centre line")
        self.tag_ids_ = found["tag_id"].to_list()
        self.centre_ = found["centre"].to_numpy()
        self.sigma_ = found["sigma"].to_numpy()
        self.n_ = found["n"].cast(pl.Int64).to_numpy()
        return self

    def centres(self) -> pl.DataFrame:
        """The fitted centres (CENTRES_SCHEMA)."""
        return pl.DataFrame({"tag_id": list(self.tag_ids_), "centre": self.centre_, "sigma": self.sigma_},
                            schema=CENTRES_SCHEMA)


@dataclass(frozen=True)
class StoredCentres:
    """A unit's stored `spc` model as the live engine takes it (`runtime.load_unit_monitors`
    returns it with the monitors): its centres go to the charts (`CentreLineChart.use_stored`);
    it scores nothing itself."""

    unit: str
    version: int | None
    centres: pl.DataFrame


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
