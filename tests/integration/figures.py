"""The figures of a fault test, for docs/reliability.md (written by bench/reliability.py).

    record("InfluxDB outage", emitted=1200, stored=1200, lost=0, duplicates=0, recovery_s=1.4,
           promise="no loss, no duplicate", notes="90 s outage")

appends one JSON line to the file named by $CONTROLTOWER_RELIABILITY_OUT and does nothing when the
variable is unset (CI). The simulator is the source of truth for `emitted`; `stored` and
`duplicates` are read back from the historian; `lost` = emitted - distinct (tag, ts) stored;
`recovery_s` = seconds from the end of the fault to the first new value stored.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

ENV = "CONTROLTOWER_RELIABILITY_OUT"
KEYS = ["tag_id", "ts"]


def record(scenario: str, *, emitted: int, stored: int, lost: int, duplicates: int, recovery_s: float | None,
           promise: str = "", notes: str = "", **extra: object) -> dict:
    row = {"scenario": scenario, "emitted": int(emitted), "stored": int(stored), "lost": int(lost),
           "duplicates": int(duplicates), "recovery_s": None if recovery_s is None else round(float(recovery_s), 2),
           "promise": promise, "notes": notes, "at": datetime.now(UTC).isoformat(timespec="seconds"), **extra}
    out = os.environ.get(ENV)
    if out:
        with Path(out).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=str) + "\n")
    return row


def compare(emitted: pl.DataFrame, stored: pl.DataFrame) -> dict[str, int]:
    """Emitted (the simulator's samples) against stored (read back), both with tag_id and ts:
    emitted, stored rows, lost = emitted keys missing from stored, duplicates = stored rows beyond
    its distinct keys."""
    want = emitted.select(KEYS).unique()
    got = stored.select(KEYS)
    distinct = got.unique()
    lost = want.join(distinct, on=KEYS, how="anti").height
    return {"emitted": want.height, "stored": got.height, "lost": lost, "duplicates": got.height - distinct.height}


def first_stored_after(stored: pl.DataFrame, moment: datetime) -> float | None:
    """Seconds from `moment` (the end of the fault) to the first sample stored with a later timestamp
    (the sample's own time: the plant's clock runs with the wall clock in these tests)."""
    later = stored.filter(pl.col("ts") > moment)
    if later.is_empty():
        return None
    return (later["ts"].min() - moment).total_seconds()
