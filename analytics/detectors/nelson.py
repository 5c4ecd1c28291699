"""SPC run rules (Nelson 1984; Western Electric 1956) against each tag's centre line and sigma.

Catches: the non-random patterns a Shewhart chart shows before a limit is crossed: a shift
(a run on one side), a trend, an oscillation, a mixture or a stratification of the process.
With z = (x - centre) / sigma (`spc.fit_centres`), the rule fires on the sample that completes
the pattern and on every later sample while it lasts:

    1  one point beyond 3 sigma                              |z| > 3
    2  9 points in a row on the same side of the centre      (same_side_run, default 9)
    3  6 points in a row steadily increasing or decreasing   (5 differences of one sign)
    4  14 points in a row alternating up and down            (12 sign changes of the differences)
    5  2 of 3 points in a row beyond 2 sigma, same side      (z > 2, or z < -2)
    6  4 of 5 points in a row beyond 1 sigma, same side
    7  15 points in a row within 1 sigma, either side        (|z| < 1)
    8  8 points in a row beyond 1 sigma, on both sides       (|z| > 1, some above and some below)

Western Electric's four zone rules are Nelson's 1, 5 and 6 and rule 2 with a run of 8:
WE1 = N1, WE2 = N5, WE3 = N6, WE4 ("8 in a row on one side") = N2 with same_side_run=8;
`NelsonRules.western_electric(tags)` builds that set.

Level 1 (warning) while any enabled rule fires; `reason` names the lowest-numbered one, e.g.
"Nelson 2: 9 points in a row above centre"; `limit` is the zone line of that rule on the
sample's side (centre + 3, 2, 1 sigma; the centre for rules 2-4); `score` is |z|.

Vectorised: every rule is a rolling sum of an indicator column per tag, compared with its count.
Streaming: the last samples of each tag (enough for the longest pattern) are put in front of
the next batch, so a run carries across micro-batches.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from analytics.detectors.base import on_flagged, per_tag
from analytics.detectors.spc import CentreLineChart, standardised
from analytics.detectors.stream import LevelMemory, keys_of, new_tails, on_key, split_usable, with_tail
from analytics.detectors.wide import (
    NO_TIME,
    WideBatch,
    WideScores,
    long_reasons,
    memory_scores,
    replace_tails,
    rolling_count,
    stack_tail,
    tail_frame,
)
from controltower.site import TagInfo

_TAIL_SCHEMA = {"tag_id": pl.String(), "ts": pl.Datetime("ns", "UTC"), "value": pl.Float64()}
# Zone line (in sigmas from the centre, on the sample's side) each rule refers to.
ZONE = {1: 3.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 2.0, 6: 1.0, 7: 1.0, 8: 1.0}


def count_in(flag: pl.Expr, window: int) -> pl.Expr:
    """How many of the tag's last `window` samples (this one included) have `flag`; null before
    `window` samples exist."""
    return per_tag(flag.cast(pl.Int32).rolling_sum(window))


def rule_expressions(same_side_run: int) -> dict[int, pl.Expr]:
    """Per rule: the expression that fires it, from the `z` and `d` (difference with the previous
    sample) columns. Per-tag rolling: evaluate on the rows with the carried tail."""
    z, d = pl.col("z"), pl.col("d")
    n = same_side_run
    return {
        1: z.abs() > 3,
        2: (count_in(z > 0, n) == n) | (count_in(z < 0, n) == n),
        3: (count_in(d > 0, 5) == 5) | (count_in(d < 0, 5) == 5),
        4: count_in(d * per_tag(d.shift(1)) < 0, 12) == 12,
        5: (count_in(z > 2, 3) >= 2) | (count_in(z < -2, 3) >= 2),
        6: (count_in(z > 1, 5) >= 4) | (count_in(z < -1, 5) >= 4),
        7: count_in(z.abs() < 1, 15) == 15,
        8: (count_in(z.abs() > 1, 8) == 8) & (count_in(z > 1, 8) >= 1) & (count_in(z < -1, 8) >= 1),
    }


def above_expressions() -> dict[int, pl.Expr]:
    """Per rule with a side: True when it fires above the centre. Rules 1 and 2 end on the sample's
    side; 2 of 3 (rule 5) or 4 of 5 (rule 6) may end on a sample of the other side."""
    z = pl.col("z")
    return {1: z > 0, 2: z > 0, 5: count_in(z > 2, 3) >= 2, 6: count_in(z > 1, 5) >= 4}


def rule_reason(rule: int, same_side_run: int) -> pl.Expr:
    """Reason text of `rule` on a row where it fires (`_above<rule>` columns give the side of
    rules 1, 2, 5, 6); rule 3's direction is the last difference's."""
    d = pl.col("d")
    above = pl.col(f"_above{rule}")
    side = lambda text: pl.when(above).then(pl.lit(text.format("above"))).otherwise(pl.lit(text.format("below")))
    return {
        1: side("Nelson 1: beyond 3 sigma {} centre"),
        2: side(f"Nelson 2: {same_side_run} points in a row {{}} centre"),
        3: pl.when(d > 0).then(pl.lit("Nelson 3: 6 points in a row increasing"))
             .otherwise(pl.lit("Nelson 3: 6 points in a row decreasing")),
        4: pl.lit("Nelson 4: 14 points in a row alternating up and down"),
        5: side("Nelson 5: 2 of 3 points beyond 2 sigma {} centre"),
        6: side("Nelson 6: 4 of 5 points beyond 1 sigma {} centre"),
        7: pl.lit("Nelson 7: 15 points in a row within 1 sigma"),
        8: pl.lit("Nelson 8: 8 points in a row beyond 1 sigma, on both sides"),
    }[rule]


def first_rule_reason(rules: list[int], same_side_run: int) -> pl.Expr:
    """The reason of the lowest-numbered rule that fires, from the `_r<rule>`, `_above<rule>`,
    `z` and `d` columns."""
    reason = pl.when(False).then(pl.lit(None, pl.String))
    for r in rules:
        reason = reason.when(pl.col(f"_r{r}")).then(rule_reason(r, same_side_run))
    return reason.otherwise(None)


def wide_rules(z: np.ndarray, d: np.ndarray, seen: np.ndarray, same_side_run: int, rules: list[int]
               ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """`rule_expressions` and `above_expressions` over (rows x tags) arrays of z and d (NaN
    where the tag has no sample yet; `seen` counts the tag's samples up to each row): the rules
    that fire on each row, and the side of rules 1, 2, 5 and 6."""
    n = same_side_run
    count = rolling_count
    fires, above = {}, {}
    if 1 in rules:
        fires[1], above[1] = np.abs(z) > 3, z > 0
    if 2 in rules:
        high = count(z > 0, n) == n
        fires[2], above[2] = high | (count(z < 0, n) == n), z > 0
    if 3 in rules:
        fires[3] = (count(d > 0, 5) == 5) | (count(d < 0, 5) == 5)
    if 4 in rules:
        turn = np.zeros(d.shape, bool, order="F")
        turn[1:] = d[1:] * d[:-1] < 0
        fires[4] = count(turn, 12) == 12
    if 5 in rules:
        high, low = (count(z > 2, 3) >= 2) & (seen >= 3), (count(z < -2, 3) >= 2) & (seen >= 3)
        fires[5], above[5] = high | low, high
    if 6 in rules:
        high, low = (count(z > 1, 5) >= 4) & (seen >= 5), (count(z < -1, 5) >= 4) & (seen >= 5)
        fires[6], above[6] = high | low, high
    if 7 in rules:
        fires[7] = count(np.abs(z) < 1, 15) == 15
    if 8 in rules:
        wide = np.abs(z) > 1
        fires[8] = (count(wide, 8) == 8) & (count(z > 1, 8) >= 1) & (count(z < -1, 8) >= 1)
    return fires, above


class NelsonRules(CentreLineChart):
    """Level 1 while any of the enabled Nelson `rules` fires on a tag with a fitted centre line.

    `fit(history)` learns each tag's centre and sigma (`spc.fit_centres`; `given` pins some).
    Tags without one score null at level 0.
    """

    name = "nelson"

    def __init__(self, tags: list[TagInfo], rules: tuple[int, ...] | list[int] = (1, 2, 3, 4, 5, 6, 7, 8),
                 same_side_run: int = 9, given: dict[str, tuple[float, float]] | None = None):
        super().__init__(tags, given)
        self.rules = tuple(rules)
        self.same_side_run = same_side_run
        self.reset()

    @classmethod
    def western_electric(cls, tags: list[TagInfo], given: dict[str, tuple[float, float]] | None = None) -> NelsonRules:
        """The four Western Electric zone rules: Nelson 1, 5, 6 and 2 with a run of 8."""
        return cls(tags, rules=(1, 2, 5, 6), same_side_run=8, given=given)

    def reset(self) -> None:
        self._tail = pl.DataFrame(schema=_TAIL_SCHEMA)
        self._levels = LevelMemory()

    def forget(self, tag_ids: list[str]) -> None:
        """Drop the carried tail of the run rules of `tag_ids` (`CentreLineChart.move_centres`)."""
        self._tail = self._tail.filter(~pl.col("tag_id").is_in(tag_ids))

    def _check(self) -> None:
        if not self.rules or not set(self.rules) <= set(ZONE) or self.same_side_run < 2:
            raise ValueError(f"rules must be among 1-8 and same_side_run >= 2, got {self.rules}, {self.same_side_run}")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score a micro-batch (sample schema) -> one row per sample, `SCORE_SCHEMA`, by (tag_id, ts)."""
        self._check()
        rows, fresh = split_usable(batch, self.centres_, self._tail.get_column("tag_id"))
        keys = keys_of(rows)
        stats = (
            with_tail(fresh.select("_row", *_TAIL_SCHEMA, "_tag"), self._tail, keys)
            .pipe(on_key, self.centres_, keys)
            .with_columns(standardised().alias("z"), per_tag(pl.col("value").diff()).alias("d"))
        )
        self._tail = new_tails(self._tail, stats, max(self.same_side_run, 15) - 1)

        exprs = rule_expressions(self.same_side_run)
        fires = {r: exprs[r].fill_null(False).alias(f"_r{r}") for r in sorted(self.rules)}
        sides = {r: e.fill_null(False).alias(f"_above{r}") for r, e in above_expressions().items() if r in fires}
        stats = stats.with_columns(*fires.values(), *sides.values())
        any_rule = pl.any_horizontal(pl.col(f"_r{r}") for r in fires)
        zone = pl.when(False).then(pl.lit(None, pl.Float64))
        for r in fires:  # the lowest-numbered rule that fires names the condition
            zone = zone.when(pl.col(f"_r{r}")).then(pl.lit(ZONE[r]))
        reason = first_rule_reason(list(fires), self.same_side_run)
        above = pl.when(False).then(pl.lit(None, pl.Boolean))
        for r in fires:
            above = above.when(pl.col(f"_r{r}")).then(pl.col(f"_above{r}") if r in sides else pl.col("z") >= 0)
        side = pl.when(above.otherwise(pl.col("z") >= 0)).then(1.0).otherwise(-1.0)
        scored = stats.filter(pl.col("_row").is_not_null()).select(
            "_row", "z", "d", *(f"_r{r}" for r in fires), *(f"_above{r}" for r in sides),
            pl.col("z").abs().alias("score"),
            any_rule.cast(pl.UInt8).alias("level_now"),
            (pl.col("centre") + side * zone.otherwise(None) * pl.col("sigma")).alias("limit_now"),
        )
        scored = on_flagged(scored, pl.col("level_now") > 0, "reason_now", lambda rows: rows.select(reason).to_series())
        scored = scored.select("_row", "score", "level_now", "limit_now", "reason_now")
        return self._levels.merge(rows, scored)

    def score_wide(self, wide: WideBatch) -> WideScores:
        """`score` on a wide batch (`wide.pivot`): every rule is a rolling count (cumulative-sum
        differences) down each tag's column of usable samples, the carried tail on top."""
        self._check()
        ids = wide.tag_ids
        centre, sigma, ok, packed = self.centred_columns(wide)
        known = ~np.isnan(centre)
        depth = max(self.same_side_run, 15) - 1
        times = packed.pack(np.broadcast_to(wide.ts[:, None], ok.shape), NO_TIME)
        stacked, n_tail = stack_tail(self._tail, ids, depth, {"ts": times, "value": packed.x})
        self._tail = replace_tails(self._tail, ids, tail_frame(stacked, _TAIL_SCHEMA, ids, depth, n_tail,
                                                               np.where(known, packed.n, 0), depth))
        x = stacked["value"]
        z = (x - centre) / sigma
        d = np.full(x.shape, np.nan, order="F")
        d[1:] = x[1:] - x[:-1]
        seen = np.arange(x.shape[0])[:, None] - (depth - n_tail) + 1
        rules = sorted(self.rules)
        fires, above = wide_rules(z, d, seen, self.same_side_run, rules)
        fires = {r: f[depth:] for r, f in fires.items()}
        above = {r: a[depth:] for r, a in above.items()}
        z, d = z[depth:], d[depth:]
        level = np.zeros(z.shape, bool, order="F")
        for r in rules:
            level |= fires[r]

        def limits(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            r = packed.row_of(rows, cols)
            zone, up = np.full(rows.size, np.nan), z[r, cols] >= 0
            for q in reversed(rules):  # the lowest-numbered rule that fires names the condition
                hit = fires[q][r, cols]
                zone = np.where(hit, ZONE[q], zone)
                if q in above:
                    up = np.where(hit, above[q][r, cols], up)
                else:
                    up = np.where(hit, z[r, cols] >= 0, up)
            return centre[cols] + np.where(up, 1.0, -1.0) * zone * sigma[cols]

        def reasons(rows: np.ndarray, cols: np.ndarray) -> list:
            r = packed.row_of(rows, cols)
            cells = pl.DataFrame({"z": z[r, cols], "d": d[r, cols], **{f"_r{q}": fires[q][r, cols] for q in rules},
                                  **{f"_above{q}": above[q][r, cols] for q in above}})
            return long_reasons(cells, first_rule_reason(rules, self.same_side_run))

        return memory_scores(self._levels, wide, ok, packed.unpack(np.abs(z)), packed.unpack(level, False), limits,
                             reasons)
