"""The model store: fitted multivariate models of a unit, saved as plain data with a manifest.

    <root>/<unit path>/<kind>/v0001/manifest.json   what the model is (below)
                                    arrays.npz      its learned arrays (NumPy, loaded with allow_pickle=False)

Kinds: `pca`, `dpca`, `iforest`, `knn`, `wpca`, `wknn` (per-row monitors on the unit's wide
rows, `rows.wide_rows`; knn is the MSET-like nearest-neighbour residual of `controltower detect
--method knn`, its memory capped at `KNN_MEMORY` rows; wpca / wknn model each tag's mean and
spread over the last `offline.WINDOW` rows, `multivariate.windows`, wpca being what `detect
--method auto` uses; knn, wpca and wknn scores are smoothed by the EWMA of `controltower detect`,
`offline.HALFLIFE[kind]` rows, before the threshold: `limits.halflife`), `golden` (`analytics.golden.GoldenBatch`) and `spc` (`analytics.detectors.spc.SpcCentres`: the
centre line and sigma per tag of the SPC charts, mean and MR-bar / 1.128, over the training range
and per ISA-88 phase when the samples carry one; not a monitor, the charts take it). Nothing is
pickled: the isolation forest's trees are arrays too (`multivariate.iforest.IsolationTrees`).

Manifest: kind, unit, variables, version (1, 2, ... per unit and kind), created_at, training
(from, to, batches, samples, rows), fingerprint (sha256 of the training samples' canonical
bytes, `fingerprint`), parameters, alpha, limits (the calibrated ones), state (how the
learned attributes map to the arrays), files (sha256 of arrays.npz), manifest_sha256 (of the
manifest itself without it) and, when CONTROLTOWER_MODEL_KEY is set, signature (HMAC-SHA256
of the manifest with that key). Loading checks the file hash and the manifest hash (catching
corruption and hand edits) and, with the key set, requires a valid signature (catching
someone who rewrote both); it refuses the model otherwise (`ModelStoreError`).

A version directory is written under a temporary name and renamed into place: a reader never
sees half a model, and two writers cannot take the same version.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from analytics.detectors.spc import SpcCentres
from analytics.golden import GoldenBatch
from analytics.multivariate import (
    DynamicPCADetector,
    IsolationForestDetector,
    NearestNeighbourDetector,
    PCADetector,
    QuantileThreshold,
    ewma,
)
from analytics.multivariate.iforest import IsolationTrees
from analytics.multivariate.rows import wide_rows
from analytics.multivariate.threshold import held_out_scores
from analytics.multivariate.windows import WindowKnnDetector, WindowPCADetector
from analytics.offline import HALFLIFE, WINDOW  # the smoothing and window `controltower detect` uses

KINDS = ("pca", "dpca", "iforest", "knn", "wpca", "wknn", "golden")  # what the live monitors score (`analytics.monitors`)
ROW_KINDS = ("pca", "dpca", "iforest", "knn", "wpca", "wknn")
SMOOTHED_KINDS = ("knn", "wpca", "wknn")  # scores smoothed by an EWMA of `offline.HALFLIFE[kind]` rows
SPC = "spc"  # centre lines of the SPC charts, loaded by `controltower.runtime.load_unit_monitors`
STORE_KINDS = (*KINDS, SPC)
FORMAT = 1
MANIFEST, ARRAYS = "manifest.json", "arrays.npz"
KEY_ENV = "CONTROLTOWER_MODEL_KEY"
N_FOLDS = 5
ROW_S = 1.0
# The nearest-neighbour memory at most: a scored row compares with every remembered one (about
# 10-13 µs per row at 4,000 rows, bench/unit_models.py), and 4,000 rows spread over the training range (plus each
# tag's extremes) cover a unit's operating envelope.
KNN_MEMORY = 4000
CLASSES = {"pca": PCADetector, "dpca": DynamicPCADetector, "iforest": IsolationForestDetector,
           "knn": NearestNeighbourDetector, "wpca": WindowPCADetector, "wknn": WindowKnnDetector,
           "golden": GoldenBatch, SPC: SpcCentres}
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class ModelStoreError(ValueError):
    """A model that cannot be stored or loaded; the message names the path and the reason."""


# --- fitting -------------------------------------------------------------------------------------


def make_model(kind: str, alpha: float = 0.01, **params: Any):
    """A fresh, unfitted model of `kind` (ValueError for an unknown kind)."""
    if kind == "pca":
        return PCADetector(**({"variance": 0.9, "alpha": alpha} | params))
    if kind == "dpca":
        return DynamicPCADetector(**({"lags": 2, "variance": 0.9, "alpha": alpha} | params))
    if kind == "iforest":
        return IsolationForestDetector(**({"n_estimators": 200, "random_state": 0} | params))
    if kind == "knn":
        return NearestNeighbourDetector(**({"n_neighbors": 5, "max_memory": KNN_MEMORY} | params))
    if kind == "wpca":
        return WindowPCADetector(**({"window": WINDOW, "variance": 0.9, "alpha": alpha} | params))
    if kind == "wknn":
        return WindowKnnDetector(**({"window": WINDOW, "n_neighbors": 5, "max_memory": KNN_MEMORY} | params))
    if kind == "golden":
        return GoldenBatch(**({"alpha": alpha} | params))
    if kind == SPC:
        return SpcCentres(**params)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(STORE_KINDS)}")


@dataclass
class FittedModel:
    """A fitted model and what the manifest says of it."""

    kind: str
    unit: str
    variables: tuple[str, ...]
    model: Any
    alpha: float
    limits: dict[str, Any]
    training: dict[str, Any]
    fingerprint: str
    manifest: dict[str, Any] | None = None  # once stored or loaded

    @property
    def threshold(self) -> float:
        """The alarm threshold on `model.score_samples` (row kinds), smoothed by `halflife`."""
        return float(self.limits["threshold"])

    @property
    def halflife(self) -> float:
        """EWMA half-life in rows of the score the threshold applies to (0: the raw score)."""
        return float(self.limits.get("halflife", 0.0))


def fit_unit_model(kind: str, samples: pl.DataFrame, *, unit: str, variables: tuple[str, ...], alpha: float = 0.01,
                   params: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> FittedModel:
    """Fit a `kind` model on a unit's samples (sample schema). Row kinds: on its wide rows, with
    the alarm threshold calibrated on held-out blocks (`threshold.held_out_scores`) at `alpha`;
    spc: centre and sigma per tag, and per (tag, phase) when `samples` has a `phase` column (no
    limits: the charts' widths are in the site file). knn, wpca, wknn: the threshold is calibrated on the
    held-out scores smoothed by an EWMA of `params["halflife"]` rows (default: as `controltower
    detect`), which the live monitor applies too. Raises ValueError naming the reason (no rows,
    too few rows or batches)."""
    params = dict(params or {})
    halflife = float(params.pop("halflife", HALFLIFE[kind])) if kind in SMOOTHED_KINDS else 0.0
    model = make_model(kind, alpha, **params)
    training = dict(training or {})
    training["samples"] = samples.height
    if kind == "golden":
        model.fit(samples, variables)
        limits = {"k": model.k_, "t2": model.t2_limit_.tolist(), "spe": model.spe_limit_.tolist(),
                  "batch_t2": model.batch_t2_limit_, "batch_spe": model.batch_spe_limit_}
        training["batches"] = list(model.batches_)
        training["left_out_partial"] = list(model.partial_)
        training["phases"] = list(model.phases_)  # ["batch"]: aligned on time into the whole batch
        training["rows"] = model.n_rows_
    elif kind == SPC:
        model.fit(samples, variables)
        limits = {"centres": {t: {"centre": float(c), "sigma": float(s)}
                              for t, c, s in zip(model.tag_ids_, model.centre_, model.sigma_)}}
        phases = model.phase_centres().with_columns(n=model.phase_n_, batches=model.phase_batches_)
        limits["phases"] = {t: {r["phase"]: {k: r[k] for k in ("centre", "sigma", "n", "batches")}
                                for r in rows.iter_rows(named=True)}
                            for (t,), rows in phases.partition_by("tag_id", as_dict=True).items()}
        training["rows"] = int(model.n_.sum())
        training["left_out"] = sorted(set(variables) - set(model.tag_ids_))  # too few samples or constant
        training["phases"] = sorted(set(model.phase_names_))  # those with a centre for some tag
    else:
        X = wide_rows(samples, variables, row_s=ROW_S).drop("ts")
        if X.height == 0:
            raise ValueError(f"unit {unit}: no complete row (every tag at one time) in the training samples")
        smooth = (lambda s: ewma(s, halflife)) if halflife > 0 else None
        threshold = QuantileThreshold(alpha).fit(held_out_scores(model, X, N_FOLDS, post=smooth))
        model.fit(X)
        limits = {"threshold": threshold.threshold_}
        if kind in SMOOTHED_KINDS:
            limits["halflife"] = halflife
        if kind in ("pca", "dpca", "wpca"):
            limits |= {"t2": model.t2_limit_, "spe": model.spe_limit_}
        training["rows"] = X.height
    return FittedModel(kind, unit, tuple(variables), model, alpha, limits, training, fingerprint(samples))


def fingerprint(samples: pl.DataFrame) -> str:
    """sha256 of the samples' canonical bytes: rows sorted by (tag_id, ts), then ts (int64 ns,
    little-endian), value (float64, null as NaN), quality, tag_id and batch_id (UTF-8, one
    separator between values, a mark for null). Independent of row order and extra columns."""
    frame = samples.select(
        pl.col("tag_id").cast(pl.String), pl.col("ts").dt.epoch("ns").cast(pl.Int64),
        pl.col("value").cast(pl.Float64).fill_null(float("nan")),
        (pl.col("quality").cast(pl.String) if "quality" in samples.columns else pl.lit("good")).alias("quality"),
        (pl.col("batch_id").cast(pl.String) if "batch_id" in samples.columns else pl.lit(None, pl.String)).alias("batch_id"),
    ).sort("tag_id", "ts", "batch_id", nulls_last=True)
    h = hashlib.sha256(b"controltower-samples-v1\0")
    h.update(np.ascontiguousarray(frame["ts"].to_numpy(), dtype="<i8").tobytes())
    values = np.ascontiguousarray(frame["value"].to_numpy(), dtype="<f8")
    h.update(np.where(np.isnan(values), np.float64("nan"), values).astype("<f8").tobytes())
    for column in ("quality", "tag_id", "batch_id"):
        text = frame.select(pl.col(column).fill_null("\x00").str.join("\x1f")).item() if frame.height else ""
        h.update(column.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return h.hexdigest()


# --- state as plain data -------------------------------------------------------------------------


def _put(name: str, value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON description of `value`, its arrays put in `arrays` under names starting with `name`."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ModelStoreError(f"{name}: object arrays are not stored")
        arrays[name] = value
        return {"array": name}
    if isinstance(value, IsolationTrees):
        for field, array in value.arrays().items():
            arrays[f"{name}.{field}"] = array
        return {"trees": name, "depth": value.depth, "norm": value.norm}
    if isinstance(value, dict):
        return {"dict": {str(k): _put(f"{name}.{k}", v, arrays) for k, v in value.items()}}
    if isinstance(value, list):
        return {"list": [_put(f"{name}.{i}", v, arrays) for i, v in enumerate(value)]}
    if isinstance(value, tuple):
        return {"tuple": [_put(f"{name}.{i}", v, arrays) for i, v in enumerate(value)]}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise ModelStoreError(f"{name}: cannot store a {type(value).__name__}")


def _get(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    if "array" in spec:
        return arrays[spec["array"]]
    if "trees" in spec:
        name = spec["trees"]
        parts = {f: arrays[f"{name}.{f}"] for f in IsolationTrees.FIELDS}
        return IsolationTrees(**parts, depth=spec["depth"], norm=spec["norm"])
    if "dict" in spec:
        return {k: _get(v, arrays) for k, v in spec["dict"].items()}
    if "list" in spec:
        return [_get(v, arrays) for v in spec["list"]]
    if "tuple" in spec:
        return tuple(_get(v, arrays) for v in spec["tuple"])
    return spec["value"]


def learned_state(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON state, arrays) of a fitted model's learned attributes (names ending in `_`)."""
    arrays: dict[str, np.ndarray] = {}
    state = {name: _put(name, value, arrays) for name, value in vars(model).items()
             if name.endswith("_") and not name.startswith("_")}
    return state, arrays


# --- the store -----------------------------------------------------------------------------------


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "signature")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _key() -> bytes | None:
    key = os.environ.get(KEY_ENV)
    return key.encode() if key else None


class ModelStore:
    """Stored models under `root` (see the module doc)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, unit: str, kind: str) -> Path:
        if kind not in STORE_KINDS:
            raise ModelStoreError(f"unknown model kind {kind!r}; choose one of {', '.join(STORE_KINDS)}")
        if not unit or "/" in unit or unit.startswith("."):
            raise ModelStoreError(f"bad unit path {unit!r}")
        return self.root / unit / kind

    def versions(self, unit: str, kind: str) -> list[int]:
        """Stored versions of (unit, kind), ascending."""
        d = self._dir(unit, kind)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _VERSION_DIR.match(p.name)) and p.is_dir())

    def save(self, fitted: FittedModel) -> dict[str, Any]:
        """Store `fitted` as the next version of its unit and kind; return the manifest."""
        state, arrays = learned_state(fitted.model)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
        d = self._dir(fitted.unit, fitted.kind)
        d.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            version = (self.versions(fitted.unit, fitted.kind) or [0])[-1] + 1
            manifest: dict[str, Any] = {
                "format": FORMAT, "kind": fitted.kind, "unit": fitted.unit, "variables": list(fitted.variables),
                "version": version, "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "training": fitted.training, "fingerprint": fitted.fingerprint,
                "parameters": fitted.model.get_params(), "alpha": fitted.alpha, "limits": fitted.limits,
                "class": type(fitted.model).__name__, "state": state,
                "files": {ARRAYS: hashlib.sha256(payload).hexdigest()},
            }
            manifest = json.loads(json.dumps(manifest))  # as it will read back (tuples -> lists)
            manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
            key = _key()
            if key is not None:
                manifest["signature"] = hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()
            tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=d))
            (tmp / ARRAYS).write_bytes(payload)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            for f in (tmp / ARRAYS, tmp / MANIFEST):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.rename(tmp, d / f"v{version:04d}")  # fails if another writer took this version
            except OSError:
                for f in tmp.iterdir():
                    f.unlink()
                tmp.rmdir()
                continue
            fitted.manifest = manifest
            return manifest
        raise ModelStoreError(f"{d}: could not take a new version")

    def manifest(self, unit: str, kind: str, version: int | None = None) -> dict[str, Any]:
        """The manifest of a stored version (the newest when None), unverified."""
        path = self._version_path(unit, kind, version) / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelStoreError(f"{path}: cannot read the manifest: {exc}") from None

    def _version_path(self, unit: str, kind: str, version: int | None) -> Path:
        versions = self.versions(unit, kind)
        if not versions:
            raise ModelStoreError(f"{self._dir(unit, kind)}: no stored {kind} model of unit {unit}")
        if version is None:
            version = versions[-1]
        if version not in versions:
            raise ModelStoreError(f"{self._dir(unit, kind)}: no version {version} (stored: {versions})")
        return self._dir(unit, kind) / f"v{version:04d}"

    def load(self, unit: str, kind: str, version: int | None = None) -> FittedModel:
        """The stored model (newest version when None), verified (module doc); ModelStoreError
        naming the path and the reason when it is missing, altered or unreadable."""
        where = self._version_path(unit, kind, version)
        manifest = self.manifest(unit, kind, version)
        if manifest.get("format") != FORMAT or manifest.get("kind") != kind or manifest.get("unit") != unit:
            raise ModelStoreError(f"{where}: the manifest is not a format {FORMAT} {kind} model of {unit}")
        if manifest.get("manifest_sha256") != hashlib.sha256(_canonical(manifest)).hexdigest():
            raise ModelStoreError(f"{where}/{MANIFEST}: the manifest was altered (its hash does not match)")
        key = _key()
        if key is not None:
            want = hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(str(manifest.get("signature", "")), want):
                raise ModelStoreError(f"{where}/{MANIFEST}: missing or bad signature for the key in {KEY_ENV}")
        try:
            payload = (where / ARRAYS).read_bytes()
        except OSError as exc:
            raise ModelStoreError(f"{where}/{ARRAYS}: cannot read it: {exc}") from None
        if hashlib.sha256(payload).hexdigest() != manifest["files"].get(ARRAYS):
            raise ModelStoreError(f"{where}/{ARRAYS}: the file was altered (its sha256 differs from the manifest's)")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            model = CLASSES[kind](**manifest["parameters"])
            for name, spec in manifest["state"].items():
                setattr(model, name, _get(spec, arrays))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStoreError(f"{where}: cannot restore the model: {exc}") from None
        return FittedModel(kind, unit, tuple(manifest["variables"]), model, manifest["alpha"], manifest["limits"],
                           manifest["training"], manifest["fingerprint"], manifest)

    def list(self) -> list[dict[str, Any]]:
        """The manifest of every stored version, by unit, kind and version."""
        out = []
        if not self.root.is_dir():
            return out
        for unit_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for kind in STORE_KINDS:
                for version in self.versions(unit_dir.name, kind):
                    try:
                        out.append(self.manifest(unit_dir.name, kind, version))
                    except ModelStoreError as exc:
                        out.append({"unit": unit_dir.name, "kind": kind, "version": version, "error": str(exc)})
        return out
