"""Heap hygiene (controltower/memory.py): on glibc, which the CI machine runs, both calls reach
the C library; the trimmer runs until cancelled."""

from __future__ import annotations

import asyncio
import platform

from controltower import memory


def test_glibc_takes_the_arena_cap_and_the_trim() -> None:
    assert platform.libc_ver()[0] == "glibc"
    assert memory.cap_arenas(memory.ARENAS) is True
    blocks = [bytearray(1 << 20) for _ in range(64)]  # 64 MiB freed below: something to give back
    del blocks
    assert isinstance(memory.trim(), bool)


async def test_the_trimmer_trims_until_cancelled(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(1) or True)
    task = asyncio.ensure_future(memory.trim_every(0.01))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(calls) >= 3 and task.cancelled()
