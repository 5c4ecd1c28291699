"""A one-bioreactor site and its batches from the project's simulator, for the multivariate and
golden-batch tests (a 65-minute batch simulates in about 0.1 s at 5 s steps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from collector.sinks.duckdb import DuckDbHistorian
from controltower.batch_events import batch_events_frame
from controltower.site import SiteConfig, parse_site_config
from simulators.batch_events import BatchTransitions
from simulators.plant import Plant

UNIT = "lyon.usp.bio1.br101"
START = datetime(2024, 5, 1, tzinfo=UTC)
_TAGS = {
    "temperature": ("degC", {"alarm_low": 35.0, "warning_low": 36.0, "warning_high": 38.0, "alarm_high": 39.0}),
    "ph": ("pH", {"alarm_low": 6.7, "warning_low": 6.8, "warning_high": 7.2, "alarm_high": 7.3}),
    "dissolved_oxygen": ("%sat", {"alarm_low": 15.0, "warning_low": 25.0, "warning_high": 70.0, "alarm_high": 85.0}),
    "agitation": ("rpm", {"warning_high": 380.0, "alarm_high": 420.0}),
    "pressure": ("barg", {"alarm_low": 0.05, "warning_low": 0.1, "warning_high": 0.5, "alarm_high": 0.6}),
}


def bioreactor_site(data_dir: str = "data") -> SiteConfig:
    """One site, one bioreactor unit (`UNIT`) with five tags, read over OPC-UA, DuckDB historian."""
    tags = [{"id": t, "unit": u, "limits": lim, "opcua": {"node_id": f"ns=2;s={UNIT}.{t}"}}
            for t, (u, lim) in _TAGS.items()]
    return parse_site_config({
        "enterprise": "Test Pharma", "data_dir": data_dir,
        "sites": [{"id": "lyon", "areas": [{"id": "usp", "lines": [{"id": "bio1", "units": [
            {"id": "br101", "kind": "bioreactor", "tags": tags}]}]}]}],
    })


def batch_seconds(site: SiteConfig) -> float:
    """The length of one batch of the unit, from the plant's own recipe."""
    plant = Plant(site, seed=0, start=START)
    return plant._by_path[UNIT].clock.batch_duration_s


# The bioreactor site most model tests share, its batch length, tags and pH tag.
SITE = bioreactor_site()
BATCH_S = batch_seconds(SITE)
TAGS = tuple(t.tag_id for t in SITE.tag_table())
PH = f"{UNIT}.ph"


def simulate(site: SiteConfig, seed: int, seconds: float, dt_s: float = 5.0,
             faults: list[tuple] = ()) -> pl.DataFrame:
    """`seconds` of the plant from START (samples every `dt_s`); `faults`: (at_s, tag, kind,
    duration_s, magnitude) injected at `at_s` seconds; tag None: a process fault of the unit
    (magnitude = severity in (0, 1])."""
    plant = Plant(site, seed=seed, start=START)
    frames, done = [], 0.0
    for at_s, tag, kind, duration_s, magnitude in sorted(faults):
        if at_s > done:
            frames.append(plant.run(at_s - done, dt_s))
            done = at_s
        plant.inject(f"{UNIT}.{tag}" if tag else UNIT, kind, duration_s, magnitude)
    frames.append(plant.run(seconds - done, dt_s))
    return pl.concat(frames)


def batches(frame: pl.DataFrame, first: int, last: int) -> pl.DataFrame:
    """The samples of batch numbers first..last (1-based, as in BR101-0001)."""
    ids = [f"BR101-{n:04d}" for n in range(first, last + 1)]
    return frame.filter(pl.col("batch_id").is_in(ids))


def with_phases(frame: pl.DataFrame, site: SiteConfig, seed: int) -> pl.DataFrame:
    """`frame` (from `simulate` with this seed) plus the unit's phase at each sample, as the
    simulator's batch clock has it (the historian does not store phases; a test may)."""
    clock = Plant(site, seed=seed, start=START)._by_path[UNIT].clock
    times = frame.select(pl.col("ts").unique().sort())
    elapsed = ((times["ts"].dt.epoch("ns") - int(START.timestamp() * 1e9)) / 1e9).to_list()
    phases = pl.Series("phase", [clock.at(s - 1e-9).phase for s in elapsed], pl.String)
    return frame.join(times.with_columns(phases), on="ts", how="left", maintain_order="left")


def announced_events(site: SiteConfig, seed: int, seconds: float, dt_s: float = 5.0) -> pl.DataFrame:
    """The batch events the simulator announces over `seconds` of the plant (`simulate` with this
    seed and step), tick by tick, as the collector stores them."""
    clock = Plant(site, seed=seed, start=START)._by_path[UNIT].clock
    transitions = BatchTransitions()
    rows = []
    for elapsed in np.arange(0.0, seconds + dt_s, dt_s):
        state = clock.at(float(elapsed))
        for e in transitions.update({UNIT: (state.batch_id, state.phase)}, START + timedelta(seconds=float(elapsed))):
            rows.append({"ts": e.at, "unit_id": e.unit, "batch_id": e.batch_id, "phase": e.phase,
                         "transition": e.transition})
    return batch_events_frame(rows)


def historian_site_file(root: Path, site: SiteConfig, samples: pl.DataFrame, events: pl.DataFrame | None = None,
                        **overrides) -> Path:
    """`root`/site.yaml: `site` (plus top-level `overrides`) with its DuckDB historian under
    `root`/data holding `samples` and, when given, the batch `events`."""
    historian = DuckDbHistorian(root / "data" / "historian.duckdb")
    historian.write_sync(samples)
    if events is not None:
        historian.write_batch_events_sync(events)
    historian.close()
    config = site.model_dump(mode="json", exclude_defaults=True) | {"data_dir": str(root / "data")} | overrides
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
