"""Heap hygiene for the long-running commands (run, demo, collect, analyse, serve).

The collector and the detectors allocate and free large columnar buffers from several threads
(Polars' pool, DuckDB's workers, the historian writer, asyncio's executor). glibc gives threads
that contend for the heap arenas of their own, up to eight per core, and hands freed memory back
to the system only from the top of each heap, so a process that leaks nothing still creeps up in
resident memory as its arenas fragment (the hour-long soak, docs/reliability.md). Fewer arenas
and a periodic `malloc_trim` keep the resident size near what is in use; the cost is a little
lock contention on allocation and a few milliseconds per trim.

Where the C library is not glibc (musl, macOS) neither call exists and both are no-ops.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2
TRIM_INTERVAL_S = 60.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def cap_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas from now on (True when the C library took it)."""
    return bool(_LIBC is not None and _LIBC.mallopt(M_ARENA_MAX, arenas) == 1)


def trim() -> bool:
    """Give the free memory at the top of every heap back to the system (True when glibc did so)."""
    return bool(_LIBC is not None and _LIBC.malloc_trim(0) == 1)


async def trim_every(interval_s: float = TRIM_INTERVAL_S) -> None:
    """`trim()` every `interval_s` until cancelled, in a worker thread (a trim walks the heaps)."""
    if _LIBC is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)
