"""`controltower model fit` and `controltower model list`: build a unit's models from the
historian and store them (`analytics.models.ModelStore`), or show the stored ones.

    controltower model fit --config SITE --unit site.area.line.unit --kind pca|dpca|iforest|knn|wpca|wknn|golden|spc
                           (--from T --to T | --batches ID,ID,...) [--alpha 0.001] [--out DIR] [--data-dir DIR]
    controltower model list --config SITE [--out DIR] [--data-dir DIR] [--json]

The historian is the site's (`historian:`; DuckDB or InfluxDB, both read a tag and time
range). The embedded DuckDB file is locked while a control tower runs on it: fit from a copy,
or while the tower is stopped. `--batches` reads the unit's samples of those batch ids (within
--from/--to when given, else from the start of the historian). A golden model is given each
sample's ISA-88 phase from the historian's batch events (`controltower.batch_events`), so it
aligns batches by phase; without stored phases it aligns whole batches. The store defaults to the
site's `detectors.models.dir` under the data directory, where the live engine looks. An `spc`
model holds the centre line and sigma per tag of the SPC charts (Nelson rules, EWMA, CUSUM),
mean and MR-bar / 1.128 over the training samples and, where the historian holds batch events,
per (tag, ISA-88 phase) from the samples inside that phase's spans (at least 30 samples from
2 batches, `SpcCentres`); the live charts follow the running phase. A tag's `spc:` in the
site file still wins. A `knn` model is the nearest-neighbour residual (MSET-like) of
`controltower detect --method knn`, and `wpca` / `wknn` those of `--method wpca` / `wknn` (each
tag's mean and spread over the last 10 rows; wpca is what `--method auto` uses), each with its EWMA
smoothing; the threshold is calibrated on the smoothed held-out scores. A running tower (and each analytics worker) swaps the new
version in within `detectors.models.reload_s` seconds, unless the site file pins a version.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from analytics.models import SPC, STORE_KINDS, ModelStore, fit_unit_model
from controltower.site import SiteConfig, load_site_config
from controltower.timeparse import parse_time

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The `controltower model` subcommands and their options."""
    sub = parser.add_subparsers(dest="model_command", required=True)
    fit = sub.add_parser("fit", help="fit a unit's model on historian data and store it")
    fit.add_argument("--config", type=Path, required=True, help="the site file (names the historian)")
    fit.add_argument("--unit", required=True, help="the unit's path site.area.line.unit")
    fit.add_argument("--kind", required=True, choices=STORE_KINDS,
                     help="pca, dpca, iforest, knn, wpca, wknn: multivariate models of the unit's rows (knn: the "
                          "nearest-neighbour residual of detect --method knn; wpca, wknn: PCA / knn of each tag's "
                          "mean and spread over the last 10 rows, wpca being detect --method auto); golden: the golden batch "
                          "(by phase where the historian holds batch events); spc: the SPC charts' centre line "
                          "and sigma per tag, and per tag and ISA-88 phase where the historian holds batch events "
                          "(a phase needs 30 samples from 2 batches)")
    fit.add_argument("--from", dest="since", help="start of the training range (ISO-8601 or -2h)")
    fit.add_argument("--to", dest="until", help="end of the training range (default: now)")
    fit.add_argument("--batches", help="comma-separated ids of good batches to train on")
    # Per row: at 1 % the over-limit rows of a batch unit cluster into a false alert every few hours.
    fit.add_argument("--alpha", type=float, default=0.001,
                     help="nominal false-alarm rate of the limits, per row (default 0.001)")
    fit.add_argument("--out", type=Path, help="model store directory (default: detectors.models.dir under the data dir)")
    fit.add_argument("--data-dir", type=Path, help="overrides data_dir from the config")
    show = sub.add_parser("list", help="list the stored models")
    show.add_argument("--config", type=Path, help="the site file (for its data dir and models dir)")
    show.add_argument("--out", type=Path, help="model store directory")
    show.add_argument("--data-dir", type=Path, help="overrides data_dir from the config")
    show.add_argument("--json", action="store_true", help="print the manifests as JSON")


def store_dir(site: SiteConfig | None, out: Path | None, data_dir: Path | None) -> Path:
    """Where models live: --out, else the site's models dir under its (or the given) data dir."""
    if out is not None:
        return out
    if site is None:
        raise ValueError("give --out DIR or --config SITE (to find the model store)")
    models = getattr(site.detectors, "models", None)
    return site.resolve_path(models.dir if models is not None else "models", data_dir)


def unit_tags(site: SiteConfig, unit: str) -> tuple[str, ...]:
    """The full tag ids of `unit` (site.area.line.unit); ValueError listing the known units."""
    tags = tuple(t.tag_id for t in site.tag_table() if t.unit_id == unit)
    if not tags:
        known = sorted({t.unit_id for t in site.tag_table()})
        raise ValueError(f"unknown unit {unit!r}; known units: {', '.join(known)}")
    return tags


def read_training(site: SiteConfig, data_dir: Path, unit: str, since: datetime | None, until: datetime | None,
                  batches: list[str] | None, *, phases: bool = False, outside_phases: bool = False) -> pl.DataFrame:
    """The unit's samples for training, from the site's historian; ValueError when there are none
    or a named batch is not there. With `phases`, a `phase` column from the stored batch events
    (`phased_samples`; with `outside_phases` the samples outside every phase span are kept, their
    phase null)."""
    from collector.sinks import open_historian

    tags = unit_tags(site, unit)
    historian = open_historian(site.historian, data_dir)
    where = f"between {since.isoformat() if since else 'the start'} and {until.isoformat() if until else 'now'}"
    try:
        samples = historian.read(list(tags), since or EPOCH, until)
        if batches:
            samples = samples.filter(pl.col("batch_id").is_in(batches))
            found = set(samples.get_column("batch_id").unique().to_list())
            missing = [b for b in batches if b not in found]
            if missing:
                raise ValueError(f"no samples of unit {unit} for batch(es) {', '.join(missing)} {where} "
                                 f"in the {historian.name} historian")
        if samples.is_empty():
            raise ValueError(f"no samples of unit {unit} {where} in the {historian.name} historian")
        if phases:
            samples = phased_samples(historian, unit, samples, keep_outside=outside_phases)
            if samples.is_empty():
                raise ValueError(f"no samples of unit {unit} {where} fall in a stored phase span")
    finally:
        historian.close()
    return samples


def phased_samples(historian: Any, unit: str, samples: pl.DataFrame, keep_outside: bool = False) -> pl.DataFrame:
    """`samples` of `unit` with the phase of each (an as-of join on the unit's phase spans over
    their time range). When the historian knows phases there, the samples outside every phase
    span are left out (they would make a phase of their own) unless `keep_outside` (their phase
    null); otherwise every phase is null."""
    from controltower.batch_events import read_phase_spans, with_phases

    spans = read_phase_spans(historian, unit, samples["ts"].min(), samples["ts"].max() + timedelta(microseconds=1))
    joined = with_phases(samples, spans)
    return joined.filter(pl.col("phase").is_not_null()) if spans.height and not keep_outside else joined


def run_model(args: argparse.Namespace) -> int:
    """Run `controltower model fit|list` for parsed args; 0 on success, ValueError on bad input."""
    if args.model_command == "list":
        site = load_site_config(args.config) if args.config else None
        root = store_dir(site, args.out, args.data_dir or (Path(site.data_dir) if site else None))
        manifests = ModelStore(root).list()
        if args.json:
            print(json.dumps(manifests, indent=2))
        elif not manifests:
            print(f"no models in {root}")
        else:
            for m in manifests:
                print(_summary(m))
        return 0
    site = load_site_config(args.config)
    data_dir = args.data_dir or Path(site.data_dir)
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    batches = [b.strip() for b in args.batches.split(",") if b.strip()] if args.batches else None
    if since is None and not batches:
        raise ValueError("give a training range (--from T [--to T]) or good batches (--batches ID,ID,...)")
    if since is not None and until is not None and until <= since:
        raise ValueError(f"--to ({until.isoformat()}) must be after --from ({since.isoformat()})")
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    # spc: the whole-range centres take every sample, the per-phase ones those inside a phase span.
    samples = read_training(site, data_dir, args.unit, since, until, batches, phases=args.kind in ("golden", SPC),
                            outside_phases=args.kind == SPC)
    training: dict[str, Any] = {"from": since.isoformat() if since else None,
                                "to": until.isoformat() if until else None, "batches": batches}
    try:
        fitted = fit_unit_model(args.kind, samples, unit=args.unit, variables=unit_tags(site, args.unit),
                                alpha=args.alpha, training=training)
    except ValueError as exc:
        raise ValueError(f"cannot fit a {args.kind} model of {args.unit}: {exc}") from None
    store = ModelStore(store_dir(site, args.out, data_dir))
    previous = store.versions(args.unit, args.kind)
    old = store.manifest(args.unit, args.kind)["fingerprint"] if previous else None
    manifest = store.save(fitted)
    _audit_model_change(data_dir, manifest, old)
    shown = {k: v for k, v in manifest.items() if k != "state"}
    print(json.dumps(shown, indent=2))
    return 0


def _audit_model_change(data_dir: Path, manifest: dict[str, Any], old_fingerprint: str | None) -> None:
    """A new model version is a `model.change` in the tower's audit trail (the live engine loads
    the newest version): who fitted it, the unit and kind, the fingerprints before and after."""
    import getpass

    from controltower.audit import open_trail

    open_trail(data_dir).record(
        f"cli:{getpass.getuser()}", "model.change", f"{manifest['unit']} {manifest['kind']}",
        old=old_fingerprint, new=manifest["fingerprint"],
        reason=f"model fit: version {manifest['version']}",
        details={"version": manifest["version"], "training": manifest.get("training")},
    )


def _summary(m: dict[str, Any]) -> str:
    if "error" in m:
        return f"{m['unit']} {m['kind']} v{m['version']}: {m['error']}"
    t = m.get("training", {})
    span = f"batches {','.join(t['batches'])}" if t.get("batches") else f"{t.get('from')} .. {t.get('to') or 'now'}"
    return (f"{m['unit']} {m['kind']} v{m['version']}  created {m['created_at']}  {len(m['variables'])} tags  "
            f"{t.get('rows')} rows  {span}  fingerprint {m['fingerprint'][:12]}")
