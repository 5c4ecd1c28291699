"""Offline detection: fit a multivariate detector on a normal TRAIN table, score a TEST table.

    detect(train, test, method="auto", alpha=0.01, exclude=()) -> one row per TEST row:
        score         Float64  higher = more anomalous (the smoothed score the alarm is decided on)
        alarm         UInt8    0 / 1
        contributors  String   the top variables of the row, most responsible first, `;`-separated

Column rules (the same for both tables):
- numeric columns (integers, floats, booleans excluded) are process variables;
- a column named `timestamp`, `time` or `datetime` (case-insensitive) is the time index: rows are
  sorted by it (strings are parsed) and it is copied to the output; other non-numeric columns
  are ignored; `exclude` removes columns (e.g. label columns) before these rules;
- TRAIN and TEST must have the same variables; at least one variable; at least `MIN_TRAIN_ROWS`
  train rows;
- missing values (null, NaN) are replaced by the TRAIN median of their variable (a variable
  entirely missing in TRAIN is an error). A row of imputed values looks normal in that variable:
  detection does not invent faults from gaps.

The path (`method` picks the detector: pca, dpca (dynamic PCA), iforest (isolation forest), knn
(nearest-neighbour residual, MSET-like), wpca / wknn (PCA / knn of each variable's mean and spread
over the last `window` rows, `multivariate.windows`); "auto" is `AUTO`, chosen on SKAB's
labelled experiments, see `AUTO` and docs/benchmarks.md):
1. held-out scores of normal rows, smoothed (`postprocess.ewma`, half-life `HALFLIFE[method]` or
   `halflife=`):
   - by default the train rows are cut in `N_FOLDS` contiguous blocks, each scored by the
     detector fitted on the others;
   - with `normal=` (a longer anomaly-free recording of the same equipment), the SKAB-like
     replay of it instead: a detector is fitted on each window of len(train) rows (windows start
     every len(train) / 2 rows) and scores the len(test) rows that follow. This measures how far
     normal operation drifts over the test horizon, which a few hundred train rows cannot show
     (on SKAB the train-block threshold alarms on 13-50 % of anomaly-free rows at alpha = 1 %);
2. `QuantileThreshold(alpha)` is calibrated on them: about `alpha` of new normal rows alarm;
   `margin` (default 1) multiplies that threshold, for processes that drift more over the test
   horizon than the train rows show;
3. the detector is fitted on all train rows and scores the test rows, smoothed the same way;
4. alarm = smoothed score > threshold, held for `on_delay` consecutive rows before it raises
   (ISA-18.2 on-delay; default 1 = at once); contributors = the
   `TOP` variables by contribution.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from analytics.multivariate import (
    DynamicPCADetector,
    IsolationForestDetector,
    NearestNeighbourDetector,
    PCADetector,
    QuantileThreshold,
    ewma,
    held_out_scores,
    persist,
)
from analytics.multivariate.windows import WindowKnnDetector, WindowPCADetector

METHODS = ("auto", "pca", "dpca", "iforest", "knn", "wpca", "wknn")
# `auto` = wpca: PCA of each variable's mean and spread over the last 10 rows, a 3-row EWMA of
# the score, the threshold at alpha, no on-delay. The rule declared in bench/skab_lofo.py (round
# 4) picked it on SKAB's 34 experiments: the best F1 among 648 candidates with a false-alarm rate
# of at most 10 %; each experiment's own figure comes from the candidate picked on the 33 others
# (docs/benchmarks.md, "SKAB"). Earlier rounds had picked dpca (rounds 1 and 3, the latter with
# threshold x 2 and a 30-row on-delay) and knn (round 2, FAR 44 % on SKAB's normal test rows).
AUTO = "wpca"
# EWMA half-life of the score, in rows (`--halflife` overrides): dpca 3 and knn 30 from rounds
# 1-2 (anomaly-free replays only), wpca 3 from round 4; wknn 3 as wpca, iforest 10 not tuned.
HALFLIFE = {"pca": 0.0, "dpca": 3.0, "iforest": 10.0, "knn": 30.0, "wpca": 3.0, "wknn": 3.0}
WINDOW = 10  # rows per window of wpca / wknn (`--window`): round 4's pick
N_FOLDS = 5
TOP = 3
MIN_TRAIN_ROWS = 50
TIME_NAMES = ("timestamp", "time", "datetime")


def make_detector(method: str, alpha: float = 0.01, window: int = WINDOW):
    """A fresh detector for `method` (not "auto"); `window` is for wpca and wknn only."""
    if method == "pca":
        return PCADetector(variance=0.9, alpha=alpha)
    if method == "dpca":
        return DynamicPCADetector(lags=2, variance=0.9, alpha=alpha)
    if method == "iforest":
        return IsolationForestDetector(n_estimators=200, random_state=0)
    if method == "knn":
        return NearestNeighbourDetector(n_neighbors=5)
    if method == "wpca":
        return WindowPCADetector(window=window, variance=0.9, alpha=alpha)
    if method == "wknn":
        return WindowKnnDetector(window=window, n_neighbors=5)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def read_table(path: str | Path) -> pl.DataFrame:
    """A CSV (separator `;` or `,`, detected from the header line) or Parquet file as a frame.
    Raises ValueError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pl.read_parquet(path)
        with path.open("r", encoding="utf-8", errors="replace") as f:
            header = f.readline()
        separator = ";" if header.count(";") > header.count(",") else ","
        return pl.read_csv(path, separator=separator, infer_schema_length=10000)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as a table: {e}") from e


@dataclass(frozen=True)
class _Table:
    variables: pl.DataFrame  # Float64 columns, rows in time order
    time: pl.Series | None


def _time_column(frame: pl.DataFrame) -> str | None:
    for c in frame.columns:
        if c.lower() in TIME_NAMES:
            return c
    return None


def _prepare(frame: pl.DataFrame, name: str, exclude: Sequence[str]) -> _Table:
    unknown = [c for c in exclude if c not in frame.columns]
    if unknown:
        raise ValueError(f"{name}: --exclude names columns it does not have: {unknown}")
    frame = frame.drop(list(exclude))
    time_col = _time_column(frame)
    time = None
    if time_col is not None:
        t = frame.get_column(time_col)
        if t.dtype == pl.String:
            try:
                t = t.str.to_datetime(strict=True)
            except pl.exceptions.PolarsError as e:
                raise ValueError(f"{name}: cannot parse the time column {time_col!r}: {e}") from e
        order = t.arg_sort(nulls_last=True)
        frame, time = frame[order], t[order]
    variables = [c for c, dt in frame.schema.items() if c != time_col and dt.is_numeric()]
    if not variables:
        raise ValueError(f"{name}: no numeric column (process variables) to score")
    values = frame.select(pl.col(variables).cast(pl.Float64).fill_nan(None))
    return _Table(values, time)


def _contributors(contrib: pl.DataFrame, top: int = TOP) -> pl.Series:
    """The `top` column names of each row by contribution (largest first), `;`-separated."""
    if contrib.height == 0:
        return pl.Series("contributors", [], pl.String)
    C = contrib.to_numpy()
    k = min(top, C.shape[1])
    idx = np.argsort(-C, axis=1, kind="stable")[:, :k]
    names = np.asarray(contrib.columns, dtype=object)[idx]
    parts = [pl.Series(f"_{i}", names[:, i], pl.String) for i in range(k)]
    return pl.DataFrame(parts).select(pl.concat_str(pl.all(), separator=";").alias("contributors")).to_series()


@dataclass(frozen=True)
class Detection:
    """What `run` learned and produced (`detect` returns only `result`)."""
    result: pl.DataFrame
    method: str
    threshold: float
    detector: object


def run(train: pl.DataFrame, test: pl.DataFrame, *, method: str = "auto", alpha: float = 0.01,
        exclude: Sequence[str] = (), normal: pl.DataFrame | None = None, halflife: float | None = None,
        margin: float = 1.0, on_delay: int = 1, window: int = WINDOW,
        train_name: str = "train", test_name: str = "test", normal_name: str = "normal") -> Detection:
    """`detect`, also returning the fitted detector, the method used and the threshold."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if halflife is not None and not (np.isfinite(halflife) and halflife >= 0):
        raise ValueError(f"halflife must be >= 0 rows, got {halflife}")
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive factor of the threshold, got {margin}")
    if int(on_delay) != on_delay or on_delay < 1:
        raise ValueError(f"on_delay must be a whole number of rows >= 1, got {on_delay}")
    if int(window) != window or window < 2:
        raise ValueError(f"window must be a whole number of rows >= 2, got {window}")
    chosen = AUTO if method == "auto" else method
    tr, te = _prepare(train, train_name, exclude), _prepare(test, test_name, exclude)
    a, b = tr.variables.columns, te.variables.columns
    if set(a) != set(b):
        raise ValueError(f"{train_name} and {test_name} have different variables: only in {train_name} "
                         f"{sorted(set(a) - set(b))}, only in {test_name} {sorted(set(b) - set(a))}")
    if tr.variables.height < MIN_TRAIN_ROWS:
        raise ValueError(f"{train_name}: too few rows to learn normal operation "
                         f"({tr.variables.height} < {MIN_TRAIN_ROWS})")
    medians = tr.variables.median()
    empty = [c for c in a if medians[c][0] is None]
    if empty:
        raise ValueError(f"{train_name}: no value at all in {empty}")
    X_train = tr.variables.with_columns(pl.col(c).fill_null(medians[c][0]) for c in a)
    X_test = te.variables.select(a).with_columns(pl.col(c).fill_null(medians[c][0]) for c in a)

    detector = make_detector(chosen, alpha, int(window))
    halflife = HALFLIFE[chosen] if halflife is None else halflife
    def smooth(s: np.ndarray) -> np.ndarray:
        return ewma(s, halflife)
    try:
        if normal is None:
            calibration = held_out_scores(detector, X_train, N_FOLDS, post=smooth)
        else:
            nt = _prepare(normal, normal_name, [c for c in exclude if c in normal.columns])
            missing = sorted(set(a) - set(nt.variables.columns))
            if missing:
                raise ValueError(f"{normal_name}: lacks the variables {missing}")
            X_normal = nt.variables.select(a).with_columns(pl.col(c).fill_null(medians[c][0]) for c in a)
            calibration = replay_scores(detector, X_normal, X_train.height, te.variables.height, post=smooth)
        threshold = QuantileThreshold(alpha).fit(calibration)
        detector.fit(X_train)
    except ValueError as e:
        raise ValueError(f"{train_name}: {e}") from e
    score = smooth(detector.score_samples(X_test))
    threshold.threshold_ *= margin
    result = pl.DataFrame({
        "score": pl.Series(score, dtype=pl.Float64),
        "alarm": pl.Series(persist(threshold.predict(score), int(on_delay)), dtype=pl.UInt8),
        "contributors": _contributors(detector.contributions(X_test)),
    })
    if te.time is not None:
        result = result.insert_column(0, te.time)
    return Detection(result, chosen, threshold.threshold_, detector)


_REPLAY_CACHE: dict[tuple, list[np.ndarray]] = {}


def replay_scores(detector, normal: pl.DataFrame, n_train: int, horizon: int,
                  post=None) -> np.ndarray:
    """Scores of `normal` replayed like train/test: for windows of `n_train` rows starting every
    n_train // 2 rows, a clone of `detector` fitted on the window scores the `horizon` rows after
    it (fewer when the recording ends first; at least one window is needed). Raw scores are
    cached per (detector params, data, n_train), so replays with other horizons are cheap."""
    from sklearn.base import clone

    if normal.height < n_train + 1:
        raise ValueError(f"the normal recording has {normal.height} rows, fewer than the {n_train} train rows + 1")
    key = (type(detector).__name__, repr(sorted(detector.get_params().items())), tuple(normal.columns),
           int(normal.hash_rows().sum()), normal.height, n_train)
    if key not in _REPLAY_CACHE:
        runs = []
        for start in range(0, normal.height - n_train, max(n_train // 2, 1)):
            model = clone(detector).fit(normal[start: start + n_train])
            runs.append(model.score_samples(normal[start + n_train:]))
        _REPLAY_CACHE.clear()  # one recording at a time is enough
        _REPLAY_CACHE[key] = runs
    runs = _REPLAY_CACHE[key]
    full = [r[:horizon] for r in runs if r.size >= horizon] or [runs[0][:horizon]]
    return np.concatenate([post(r) if post is not None else r for r in full])


def detect(train: pl.DataFrame, test: pl.DataFrame, *, method: str = "auto", alpha: float = 0.01,
           exclude: Sequence[str] = (), normal: pl.DataFrame | None = None,
           halflife: float | None = None, margin: float = 1.0, on_delay: int = 1,
           window: int = WINDOW) -> pl.DataFrame:
    """Score `test` (n rows) with a detector fitted on normal `train`: (n, [time,] score, alarm,
    contributors); `normal` optionally calibrates the threshold (module doc), `halflife` (rows)
    replaces the method's default smoothing `HALFLIFE[method]`; `margin`, `on_delay` and
    `window` as in the module doc. Raises ValueError on bad input."""
    return run(train, test, method=method, alpha=alpha, exclude=exclude, normal=normal, halflife=halflife,
               margin=margin, on_delay=on_delay, window=window).result


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    """The `controltower detect` options."""
    parser.add_argument("--train", required=True, type=Path, help="normal operation: CSV (; or ,) or Parquet")
    parser.add_argument("--test", required=True, type=Path, help="rows to score: CSV or Parquet, same variables")
    parser.add_argument("--out", required=True, type=Path, help="CSV with one row per TEST row: score, alarm, contributors")
    parser.add_argument("--method", default="auto", choices=METHODS, help=f"detector (default auto = {AUTO})")
    parser.add_argument("--alpha", type=float, default=0.01, help="nominal false-alarm rate (default 0.01)")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="COL", help="columns to ignore (e.g. labels)")
    parser.add_argument("--normal", type=Path, default=None,
                        help="optional longer anomaly-free recording to calibrate the threshold for drift")
    parser.add_argument("--halflife", type=float, default=None, metavar="ROWS",
                        help="EWMA half-life of the score in rows, 0 = none (default: per method, "
                             + ", ".join(f"{m} {h:g}" for m, h in HALFLIFE.items()) + ")")
    parser.add_argument("--margin", type=float, default=1.0, metavar="FACTOR",
                        help="multiply the calibrated threshold (default 1)")
    parser.add_argument("--window", type=int, default=WINDOW, metavar="ROWS",
                        help=f"rows per window for wpca and wknn (default {WINDOW})")
    parser.add_argument("--on-delay", type=int, default=1, metavar="ROWS",
                        help="rows in a row over the threshold before an alarm raises (default 1: at once)")


def run_detect(args: argparse.Namespace) -> int:
    """Run `detect` for parsed CLI args, write OUT, print a one-line summary; 0 on success.
    Bad input raises ValueError naming the file."""
    train, test = read_table(args.train), read_table(args.test)
    normal_path = getattr(args, "normal", None)
    normal = read_table(normal_path) if normal_path is not None else None
    det = run(train, test, method=args.method, alpha=args.alpha, exclude=args.exclude, normal=normal,
              halflife=getattr(args, "halflife", None), margin=getattr(args, "margin", 1.0),
              on_delay=getattr(args, "on_delay", 1), window=getattr(args, "window", WINDOW), train_name=str(args.train), test_name=str(args.test), normal_name=str(normal_path))
    out = det.result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.write_csv(args.out)
    alarms = int(out["alarm"].sum())
    print(f"{out.height} rows, {alarms} alarms ({100 * alarms / max(out.height, 1):.1f}%), method {det.method}, "
          f"threshold {det.threshold:.4g} (alpha {args.alpha}) -> {args.out}")
    return 0
