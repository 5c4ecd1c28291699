"""Tags and sample batches for the analytics tests."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from controltower.samples import samples_frame
from controltower.site import Limits, OpcUaBinding, Tag, TagInfo

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


def make_tag(tag_id: str = "lyon.usp.bio1.br101.temperature", description: str = "Broth temperature",
             unit: str = "degC", **limits: float) -> TagInfo:
    site, area, line, unit_id, tag = tag_id.split(".")
    return TagInfo(
        tag_id=tag_id, site=site, area=area, line=line, unit=unit_id, source=None,
        tag=Tag(id=tag, description=description, unit=unit, limits=Limits(**limits),
                opcua=OpcUaBinding(node_id=f"ns=2;s={tag_id}")),
    )


TEMPERATURE = dict(alarm_low=35.0, warning_low=36.0, warning_high=38.0, alarm_high=39.0, deadband=0.2)


def batch(tag_id: str, values: list[float | None], start: int = 0, quality: list[str] | None = None,
          step_s: float = 1.0) -> pl.DataFrame:
    """Samples of one tag at T0 + (start + i) * step_s."""
    ts = [T0 + timedelta(seconds=(start + i) * step_s) for i in range(len(values))]
    return samples_frame(ts=ts, tag_id=[tag_id] * len(values), value=values, quality=quality)


def mixed_batches(tags: list[TagInfo], n_batches: int = 4, per_tag: int = 60, seed: int = 0,
                  bad_fraction: float = 0.05, excursion_rate: float = 0.05) -> list[pl.DataFrame]:
    """Interleaved, shuffled batches of noisy samples with excursions, bad and null samples."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        frames = []
        for i, t in enumerate(tags):
            lim = t.tag.limits
            centre = np.mean([v for v in (lim.warning_low, lim.warning_high) if v is not None] or [10.0 * i])
            values = centre + rng.normal(0, 0.3, per_tag)
            values[rng.random(per_tag) < excursion_rate] += rng.choice([-4.0, 4.0])  # excursions and spikes
            vals: list[float | None] = values.tolist()
            quality = ["bad" if q < bad_fraction else "good" for q in rng.random(per_tag)]
            for j in np.flatnonzero(rng.random(per_tag) < 0.02):
                vals[j] = None
            frames.append(batch(t.tag_id, vals, start=b * per_tag, quality=quality))
        whole = pl.concat(frames)
        out.append(whole.sample(fraction=1.0, shuffle=True, seed=seed + b))
    return out


def assert_close(got: list[float | None], want: list[float | None], rel: float = 1e-9) -> None:
    """Same nulls at the same places, values equal to a relative tolerance."""
    assert [g is None for g in got] == [w is None for w in want]
    for i, (g, w) in enumerate(zip(got, want)):
        if g is not None:
            assert math.isclose(g, w, rel_tol=rel, abs_tol=1e-12), f"row {i}: {g} != {w}"
