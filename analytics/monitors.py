"""Stored models at work on the live stream: each monitor scores a unit's micro-batches and
returns condition rows the engine turns into alerts (one alert point per unit and model kind,
its tag_id the unit's path, e.g. `lyon.usp.bio1.br101`, its detector the kind).

Row monitors (pca, dpca, iforest, knn): the unit's samples become wide rows (`rows.wide_rows`,
the last row carried for forward fill; dynamic PCA also carries its `lags` previous rows so a
micro-batch boundary does not reset its history). score = model score / calibrated threshold
(1 = at the limit); a model whose threshold was calibrated on a smoothed score (knn: an EWMA,
`FittedModel.halflife`) has its scores and contributions smoothed the same way, the EWMA
carried across micro-batches (`postprocess.StreamingEwma`), so the stream scores as the
whole recording would. A row is over when score > 1; the condition is raised after
`on_delay_rows` consecutive rows over (counted across micro-batches), as a warning, or an
alarm when score >= `alarm_score`; it clears on the first row back under the limit.

The golden-batch monitor scores each row against the envelope and the per-phase PCA
(`GoldenBatch.score`); score = max(envelope max |z| / k, T²/limit, SPE/limit). A model fitted
on whole batches scores a batch once the monitor saw it start (its first sample after another
batch of the unit): its time into the batch must be known. A model fitted by phase learns the
running phase from the unit's batch events (`batch_events`, fed by the collector's pipeline):
each sample gets the phase whose span holds it, and a phase is scored from its start event
on; samples of a phase whose start the monitor did not see are not scored.

A new version of a model replacing a running one (`analytics.model_reload`) takes over what
the old monitor knew of the stream (`take_over`): the carried row, the lag history, the batches
and phases seen, the count of rows over the limit (so an active condition that the new version
also sees does not clear and raise again). What belongs to the old model's scores, the EWMA
of a smoothed score, starts afresh.

Each row names its root-cause hint: `contributors`, the top tags by contribution (envelope
violations first for the golden batch), most responsible first, `;`-separated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from analytics.golden import WHOLE_BATCH, top_names
from analytics.models import KINDS, ROW_KINDS, ROW_S, FittedModel, ModelStore, ModelStoreError
from analytics.multivariate.postprocess import StreamingEwma
from analytics.multivariate.rows import wide_rows
from controltower.batch_events import empty_batch_events, phase_spans, with_phases
from controltower.samples import PATH_COLUMNS

log = logging.getLogger(__name__)

SCORE_COLUMNS = {"tag_id": pl.String(), "ts": pl.Datetime("ns", "UTC"), "level": pl.UInt8(),
                 "score": pl.Float64(), "value": pl.Float64(), "limit": pl.Float64(), "reason": pl.String(),
                 "contributors": pl.String()}


def empty_scores() -> pl.DataFrame:
    return pl.DataFrame(schema=SCORE_COLUMNS)


def on_delay(over: np.ndarray, carried: int, rows: int) -> tuple[np.ndarray, int]:
    """(active (n,) bool, run length at the end): a row is active from the `rows`-th
    consecutive row over, counting the `carried` rows over at the end of the previous call."""
    n = over.size
    if n == 0:
        return np.zeros(0, bool), carried
    idx = np.arange(n)
    last_under = np.maximum.accumulate(np.where(over, -1 - carried, idx))
    run = np.where(over, idx - last_under, 0)
    return run >= rows, int(run[-1])


class _Monitor:
    def __init__(self, fitted: FittedModel, on_delay_rows: int, alarm_score: float):
        self.fitted = fitted
        self.unit = fitted.unit
        self.name = fitted.kind
        self.variables = fitted.variables
        self.version = (fitted.manifest or {}).get("version")
        self.on_delay_rows = on_delay_rows
        self.alarm_score = alarm_score
        self._run = 0

    def take_over(self, previous: _Monitor) -> None:
        """Continue the stream `previous` (an older version of this unit's model) was scoring."""
        self._run = previous._run

    def _conditions(self, ts: pl.Series, score: np.ndarray, contributors: pl.Series, what: str) -> pl.DataFrame:
        over = np.nan_to_num(score, nan=0.0) > 1.0
        active, self._run = on_delay(over, self._run, self.on_delay_rows)
        level = np.where(active, np.where(score >= self.alarm_score, 2, 1), 0).astype(np.uint8)
        frame = pl.DataFrame({
            "tag_id": pl.Series([self.unit] * ts.len(), dtype=pl.String), "ts": ts,
            "level": pl.Series(level, dtype=pl.UInt8), "score": pl.Series(score, dtype=pl.Float64),
            "contributors": contributors,
        })
        return frame.with_columns(
            pl.col("score").alias("value"), pl.lit(1.0).alias("limit"),
            pl.concat_str(pl.lit(f"{what} "), pl.col("score").round(2).cast(pl.String), pl.lit("x limit; top tags: "),
                          pl.col("contributors").fill_null("-")).alias("reason"),
        ).select(pl.col(c).cast(dt) for c, dt in SCORE_COLUMNS.items())


class RowMonitor(_Monitor):
    """A pca, dpca, iforest, knn, wpca or wknn model on a unit's wide rows."""

    def __init__(self, fitted: FittedModel, on_delay_rows: int = 5, alarm_score: float = 3.0):
        super().__init__(fitted, on_delay_rows, alarm_score)
        self.threshold = fitted.threshold
        # Rows before a row that its score depends on (dynamic PCA's lags, a window's earlier rows).
        self.lags = int(getattr(fitted.model, "context_rows", 0))
        self._carry: pl.DataFrame | None = None
        self._history: pl.DataFrame | None = None  # the last `lags` rows, for dynamic PCA and windows
        # Score and contributions smoothed alike: the smoothed contributions still sum to (or
        # rank) the smoothed score the alert is decided on.
        self._smooth = (StreamingEwma(fitted.halflife), StreamingEwma(fitted.halflife)) if fitted.halflife > 0 \
            else None

    def take_over(self, previous: _Monitor) -> None:
        super().take_over(previous)
        if isinstance(previous, RowMonitor) and previous.variables == self.variables:
            self._carry = previous._carry
            history = previous._history if self.lags else None
            self._history = history[-self.lags:] if history is not None else None

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = wide_rows(batch, self.variables, row_s=ROW_S, carry=self._carry)
        if rows.is_empty():
            return empty_scores()
        self._carry = rows[-1:]
        context = 0
        if self.lags:
            if self._history is not None:
                context = self._history.height
                rows = pl.concat([self._history, rows])
            self._history = rows[-self.lags:]
        X = rows.drop("ts")
        model = self.fitted.model
        raw = model.score_samples(X)[context:]
        contrib = model.contributions(X)[context:].to_numpy()
        if self._smooth is not None:
            raw, contrib = self._smooth[0].update(raw), self._smooth[1].update(contrib)
        score = raw / self.threshold
        names = top_names(contrib, self.variables, above=0.0)
        return self._conditions(rows["ts"][context:], score, names, f"{self.name} score")


class GoldenMonitor(_Monitor):
    """A golden-batch model on the batches of a unit that the monitor saw start."""

    def __init__(self, fitted: FittedModel, on_delay_rows: int = 5, alarm_score: float = 3.0):
        super().__init__(fitted, on_delay_rows, alarm_score)
        self._last_batch: str | None = None
        self._starts = pl.DataFrame(schema={"batch_id": pl.String, "phase": pl.String,
                                            "start": pl.Datetime("ns", "UTC")})
        self.by_phase = tuple(fitted.model.phases_) != (WHOLE_BATCH,)
        self._events = empty_batch_events()  # the unit's latest batch events (phase models)

    def take_over(self, previous: _Monitor) -> None:
        super().take_over(previous)
        if isinstance(previous, GoldenMonitor):
            self._last_batch, self._starts, self._events = previous._last_batch, previous._starts, previous._events

    def batch_events(self, events: pl.DataFrame) -> None:
        """Batch events from the collector (`controltower.batch_events` schema); a model fitted
        by phase keeps its unit's latest few, to know the phase of each sample."""
        if not self.by_phase:
            return
        unit = pl.concat_str(*PATH_COLUMNS, separator=".")
        mine = events.filter(unit == self.unit)
        if mine.height:
            self._events = pl.concat([self._events, mine]).sort("ts").tail(50)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        model = self.fitted.model
        mine = batch.filter(pl.col("tag_id").is_in(list(self.variables)) & pl.col("batch_id").is_not_null()) \
            .sort("ts")
        if mine.is_empty():
            return empty_scores()
        if self.by_phase:
            return self._score_by_phase(mine)
        # Batches that start in this micro-batch: the first sample of each batch id after another one.
        firsts = mine.group_by("batch_id", maintain_order=True).agg(pl.col("ts").min().alias("start"))
        previous = [self._last_batch, *firsts["batch_id"].to_list()[:-1]]
        new = firsts.with_columns(pl.Series("_prev", previous, pl.String)).filter(
            pl.col("_prev").is_not_null() & (pl.col("_prev") != pl.col("batch_id"))
            & ~pl.col("batch_id").is_in(self._starts["batch_id"].implode()))
        if new.height:
            self._starts = pl.concat([self._starts, new.select("batch_id", pl.lit(WHOLE_BATCH).alias("phase"),
                                                                  "start")]).tail(100)
        self._last_batch = firsts["batch_id"][-1]
        mine = mine.filter(pl.col("batch_id").is_in(self._starts["batch_id"].implode()))
        if mine.is_empty():
            return empty_scores()
        return self._result(model.score(mine.drop("phase", strict=False), starts=self._starts))

    def _score_by_phase(self, mine: pl.DataFrame) -> pl.DataFrame:
        """Samples in a phase span whose start event the monitor saw, scored from that start."""
        # A phase first seen running (`observed`) began earlier: its time into the phase is unknown.
        observed = self._events.filter(pl.col("transition") == "observed").select(
            "batch_id", "phase", pl.col("ts").alias("start"))
        spans = phase_spans(self._events)
        if spans.is_empty():
            return empty_scores()
        spans = spans.with_columns(
            pl.struct("batch_id", "phase", "start").is_in(observed.to_struct().implode()).alias("_observed"))
        phased = with_phases(mine, spans.drop("_observed"))
        seen_start = spans.filter(~pl.col("_observed")).select("batch_id", "phase", "start")
        phased = phased.join(seen_start.select("batch_id", "phase"), on=["batch_id", "phase"], how="semi",
                             maintain_order="left")
        if phased.is_empty():
            return empty_scores()
        return self._result(self.fitted.model.score(phased, starts=seen_start))

    def _result(self, result) -> pl.DataFrame:
        model = self.fitted.model
        rows = result.rows
        env = (rows["envelope_z"].to_numpy() / model.k_).astype(np.float64)
        mv = rows["score"].to_numpy().astype(np.float64)
        score = np.fmax(np.nan_to_num(env, nan=np.nan), mv)
        names = rows.select(
            pl.concat_str(pl.col("violations").str.replace_all(r":[+-][0-9.]+", ""), pl.col("contributors"),
                          separator=";", ignore_nulls=True)
            .str.split(";").list.unique(maintain_order=True).list.head(3).list.join(";").alias("names")
        ).to_series()
        return self._conditions(rows["ts"], score, names, "golden batch")


def load_monitors(root: Path, units: list[str], *, pin: dict[str, dict[str, int]] | None = None,
                  on_delay_rows: int = 5, alarm_score: float = 3.0,
                  known_tags: set[str] | None = None) -> list[_Monitor]:
    """A monitor per stored (unit, kind) for the given units: the pinned version, else the newest.
    A model that cannot be loaded, or that reads a tag not in `known_tags` (the site's), is
    logged and skipped (the other detectors still run)."""
    store = ModelStore(root)
    monitors: list[_Monitor] = []
    for unit in units:
        for kind in KINDS:
            try:
                if not store.versions(unit, kind):
                    continue
                monitors.append(open_monitor(store, unit, kind, (pin or {}).get(unit, {}).get(kind),
                                             on_delay_rows=on_delay_rows, alarm_score=alarm_score,
                                             known_tags=known_tags))
            except ModelStoreError as exc:
                log.error("model not loaded: %s", exc)
    return monitors


def open_monitor(store: ModelStore, unit: str, kind: str, version: int | None = None, *, on_delay_rows: int = 5,
                 alarm_score: float = 3.0, known_tags: set[str] | None = None) -> _Monitor:
    """The live monitor of a stored model (`version`, else the newest), verified by the store;
    ModelStoreError naming the model and the reason when it cannot be loaded or reads a tag not
    in `known_tags`."""
    fitted = store.load(unit, kind, version)
    unknown = sorted(set(fitted.variables) - known_tags) if known_tags is not None else []
    if unknown:
        raise ModelStoreError(f"{kind} model v{fitted.manifest.get('version')} of {unit} reads tags the site "
                              f"does not have: {', '.join(unknown)}")
    if kind == "golden" and tuple(fitted.model.phases_) != (WHOLE_BATCH,):
        log.info("golden model v%s of %s is aligned by phase (%s): it scores the phases whose start "
                 "the collector announces", fitted.manifest.get("version"), unit, ", ".join(fitted.model.phases_))
    cls = RowMonitor if kind in ROW_KINDS else GoldenMonitor
    log.info("loaded %s model v%s of %s", kind, fitted.manifest.get("version"), unit)
    return cls(fitted, on_delay_rows, alarm_score)
