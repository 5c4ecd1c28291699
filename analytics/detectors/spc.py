"""Centre line and sigma per tag for the SPC charts (Nelson rules, EWMA, CUSUM).

`fit_centres(history, tags)` learns them from normal history: the mean and the sample standard
deviation of each known tag's usable samples. `given` pins some tags to values set by hand
(e.g. a validated set point and the process sigma of a qualification run); they win over the
history. A tag with fewer than `min_samples` usable samples or a zero sigma is left out: the
charts do not score it.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl

from analytics.detectors.base import usable
from analytics.detectors.wide import Compacted, WideBatch, aligned_columns
from controltower.site import TagInfo

CENTRES_SCHEMA = {"tag_id": pl.String(), "centre": pl.Float64(), "sigma": pl.Float64()}


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
        .select(CENTRES_SCHEMA.keys())
    )
    pinned = pl.DataFrame([(k, float(c), float(s)) for k, (c, s) in (given or {}).items() if k in known and s > 0],
                          schema=CENTRES_SCHEMA, orient="row")
    return pl.concat([learned.join(pinned, on="tag_id", how="anti"), pinned]).sort("tag_id")


class CentreLineChart:
    """What the SPC charts (Nelson rules, EWMA, CUSUM) share: the tags, the centres pinned by hand
    (`given`, tag_id -> (centre, sigma)) and `centres_` (`CENTRES_SCHEMA`), learned by `fit`
    (before it, only the pinned ones). Tags without a centre are not scored."""

    def __init__(self, tags: list[TagInfo], given: dict[str, tuple[float, float]] | None = None):
        self.tags = tags
        self.given = given
        no_history = pl.DataFrame(schema={"tag_id": pl.String(), "value": pl.Float64(), "quality": pl.String()})
        self.centres_ = fit_centres(no_history, tags, given)

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
