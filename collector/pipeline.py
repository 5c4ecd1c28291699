r"""The pipeline joins sources to what consumes their batches.

    sources --emit--> [batch queue] --> consumers (live view, detectors)
                                    \-> [write queue] --> historian (retried with backoff)

Both queues are bounded: when the historian is slow or away, the write queue fills, `emit`
waits, and the sources' own buffers absorb the pressure instead of memory growing without end.
Detectors see a batch before it is stored, so an alert never waits on the historian.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

import polars as pl

from collector.sinks import Historian, HistorianError
from collector.sources import Source
from controltower.metrics import Metrics

log = logging.getLogger(__name__)

Consumer = Callable[[pl.DataFrame], object]


class Pipeline:
    def __init__(
        self,
        sources: Sequence[Source],
        historian: Historian,
        *,
        consumers: Sequence[Consumer] = (),
        metrics: Metrics | None = None,
        queue_batches: int = 256,
        retry_max_s: float = 30.0,
    ):
        self.sources = list(sources)
        self.historian = historian
        self.consumers = list(consumers)
        self.metrics = metrics or Metrics()
        self._batches: asyncio.Queue[pl.DataFrame] = asyncio.Queue(maxsize=queue_batches)
        self._writes: asyncio.Queue[pl.DataFrame] = asyncio.Queue(maxsize=queue_batches)
        self._retry_max_s = retry_max_s
        self.historian_ok = True
        self.historian_error: str | None = None
        self.samples_stored = 0

    def _emit_from(self, source: Source) -> Callable[[pl.DataFrame], object]:
        async def emit(batch: pl.DataFrame) -> None:
            self.metrics.samples_in.labels(source.name).inc(batch.height)
            await self._batches.put(batch)

        return emit

    async def _consume(self) -> None:
        while True:
            batch = await self._batches.get()
            for consume in self.consumers:
                try:
                    consume(batch)
                except Exception:  # one consumer's bug must not stop collection or storage
                    log.exception("batch consumer %r failed", consume)
            await self._writes.put(batch)
            self._batches.task_done()

    async def _write(self) -> None:
        while True:
            batch = await self._writes.get()
            delay = 0.5
            while True:
                started = time.perf_counter()
                try:
                    await self.historian.write(batch)
                except HistorianError as exc:
                    self.historian_ok = False
                    self.historian_error = str(exc)
                    self.metrics.historian_write_errors.inc()
                    log.warning("historian write failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                    delay = min(delay * 2, self._retry_max_s)
                    continue
                self.metrics.historian_write_seconds.observe(time.perf_counter() - started)
                self.historian_ok = True
                self.historian_error = None
                self.samples_stored += batch.height
                break
            self._writes.task_done()

    async def run(self) -> None:
        """Run every source, the consumers and the writer until cancelled; on cancel, the
        batches already taken in are still stored (bounded by `drain_timeout_s` in `stop`)."""
        tasks = [asyncio.create_task(self._consume(), name="pipeline-consume"),
                 asyncio.create_task(self._write(), name="pipeline-write")]
        source_tasks = [
            asyncio.create_task(source.run(self._emit_from(source)), name=f"source-{source.name}")
            for source in self.sources
        ]
        try:
            await asyncio.gather(*source_tasks)
        finally:
            for t in source_tasks:
                t.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            await self._drain(timeout_s=10.0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._batches.join(), timeout=timeout_s)
            await asyncio.wait_for(self._writes.join(), timeout=timeout_s)
        except TimeoutError:
            log.error(
                "stopping with %d batch(es) not stored: the historian did not take them within %.0fs",
                self._batches.qsize() + self._writes.qsize(), timeout_s,
            )
