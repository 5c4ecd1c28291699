"""What every source does the same way: flush its buffer on a timer (or when woken because it
is full), and keep one connection alive, reconnecting with capped, jittered exponential backoff.
The protocol-specific part is the `session` coroutine: connect, subscribe, run until it fails."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from collector.sources import SourceHealth

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STOP_FLUSH_TIMEOUT_S = 10.0


async def flush_periodically(
    interval_s: float, wake: asyncio.Event, flush: Callable[[], Awaitable[None]], stop: asyncio.Event | None = None
) -> None:
    """Call `flush` every `interval_s`, or as soon as `wake` is set; until `stop` is set (then
    return after the flush under way, so a batch is never cut off in the middle of its emit)."""
    while stop is None or not stop.is_set():
        try:
            await asyncio.wait_for(wake.wait(), timeout=interval_s)
        except TimeoutError:
            pass
        wake.clear()
        if stop is not None and stop.is_set():
            return
        await flush()


async def supervise(
    health: SourceHealth,
    session: Callable[[], Awaitable[None]],
    *,
    flush_interval_s: float,
    wake: asyncio.Event,
    flush: Callable[[], Awaitable[None]],
) -> None:
    """Run `session` again and again until cancelled, flushing meanwhile. A session that ends or
    fails marks the source disconnected and is retried after a backoff that resets once a
    session got connected. On cancel, what is still buffered is flushed."""
    stop = asyncio.Event()
    flusher = asyncio.create_task(flush_periodically(flush_interval_s, wake, flush, stop), name=f"{health.name}-flush")
    backoff = BACKOFF_MIN_S
    try:
        while True:
            try:
                await session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the session: record it, back off, reconnect
                health.last_error = f"{type(exc).__name__}: {exc or type(exc).__name__}"[:300]
                log.warning("%s source %s: %s; reconnecting in %.1fs", health.kind, health.name, health.last_error, backoff)
            if health.connected:
                backoff = BACKOFF_MIN_S
            health.connected = False
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            health.reconnects += 1
    finally:
        health.connected = False
        # Let a flush under way finish its emit (bounded), then flush what is left, once.
        stop.set()
        wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(flusher), timeout=STOP_FLUSH_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        await flush()
