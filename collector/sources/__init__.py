"""The `Source` protocol: a long-running task that turns what a server sends into columnar
sample batches (see `controltower.samples`) and hands them to `emit`.

A source owns its connection: it connects, reconnects with backoff and keeps its own health;
its protocol callbacks only enqueue. It stops when its task is cancelled, within a bounded time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import polars as pl

Emit = Callable[[pl.DataFrame], Awaitable[None]]


@dataclass
class SourceHealth:
    """What a source reports about itself, for /api/health and /metrics."""

    name: str
    kind: str
    connected: bool = False
    samples_in: int = 0
    batches_out: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_sample_at: datetime | None = None
    # Payloads that could not be decoded, per reason; they are set aside, never fatal.
    rejected: dict[str, int] = field(default_factory=dict)
    # Protocol events worth counting, e.g. Sparkplug births, deaths, sequence_gaps, rebirths_requested.
    events: dict[str, int] = field(default_factory=dict)
    # Connection lost since then, its tags stale (an open gap); None while values flow.
    stale_since: datetime | None = None
    stale_tags: int = 0
    # Gaps closed since start (see `collector.gaps`) and their total length.
    gaps: int = 0
    gap_seconds: float = 0.0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def as_dict(self) -> dict:
        """What /api/health shows of the source (JSON-ready; `last_error` never holds a secret)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "connected": self.connected,
            "samples_in": self.samples_in,
            "batches_out": self.batches_out,
            "reconnects": self.reconnects,
            "rejected": dict(self.rejected),
            "events": dict(self.events),
            "last_error": self.last_error,
            "last_sample_at": self.last_sample_at.isoformat() if self.last_sample_at else None,
            "stale_since": self.stale_since.isoformat() if self.stale_since else None,
            "stale_tags": self.stale_tags,
            "gaps": self.gaps,
            "gap_seconds": round(self.gap_seconds, 3),
        }


class Source(Protocol):
    name: str
    health: SourceHealth

    async def run(self, emit: Emit) -> None:
        """Collect until cancelled, calling `emit(batch)` for each flushed batch."""
        ...
