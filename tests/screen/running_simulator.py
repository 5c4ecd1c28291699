"""A simulator ticking on its own event loop in a thread, as `controltower demo` runs it beside
the screen's web server: what the demo plant panel and the setpoint writes are tested against."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from simulators.service import SimulatorService


@contextmanager
def ticking_in_a_thread(simulator: SimulatorService, timeout_s: float = 60) -> Iterator[asyncio.AbstractEventLoop]:
    """Start `simulator` and let it tick on a new loop in a daemon thread; yield the loop (to
    hand work to it, as the app does); cancel it and join the thread on exit."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            await simulator.start()
            ready.set()
            await simulator.run(None)

        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(timeout_s), "the simulator did not start"
    try:
        yield loop
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)
