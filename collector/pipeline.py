r"""The pipeline joins sources to what consumes their batches.

With store and forward (the default; `collector.spool`), the spool is a write-ahead log:

    sources --emit--> spool.append (written + fsynced) --> [batch queue] --> consumers (live view, detectors)
                          |
                          +--> forwarder: oldest pending batch --> historian --> spool.ack

Every batch goes through the spool, not only those the historian refused: `emit` returns (the
source's batch is acknowledged) only once the batch is on disk, so a `kill -9` (or a power cut,
on a disk that honours fsync) loses nothing that was emitted, whether the historian was up or
down. What a source holds before it emits (its flush buffer, at most `flush_interval_ms`) is
still its own to keep: an MQTT source acknowledges QoS 1/2 messages to the broker on receipt, so
that window is only closed once it acks after `emit` returns. There is one
path and one order (the spool's sequence) for live and replayed batches alike; and an outage
needs no hand-over between an in-memory and an on-disk queue. The cost is one fsync per batch
on `emit` and two per stored batch (the ack cursor): `bench/spool.py` measures it against writing
straight to DuckDB (docs/benchmarks.md, "Store and forward").

Nothing written twice: the forwarder stores the oldest pending batches (one, or when a backlog
has built up a run of them up to `max_write_samples`, in one write) and acknowledges them before
the next, so after a crash only the run starting at the first pending batch (`Spool.in_doubt_seq`)
can already be in the historian; the replay starts at the same batch with the same bound, so it
covers that run. InfluxDB overwrites a point with the same series and time, so its replay is harmless;
for a historian without that property (DuckDB) the forwarder first reads back the batch's
tags over its time span and writes only the (tag_id, ts) pairs not yet stored.

Without the spool (`spool.enabled: false`) the writer keeps batches in a bounded in-memory queue
and retries with backoff; what is in memory is lost with the process.

Both in-memory queues are bounded: when the consumers or (without the spool) the historian are
slow, `emit` waits and the sources' own buffers absorb the pressure. With the spool, the bound
is `spool.max_bytes` on disk, with its overflow policy: `drop_oldest` (counted, logged) or
`block` (`emit` waits until the historian has taken some: backpressure to the sources).
Detectors see each batch whether or not the historian is there, so an alert never waits on it.

Batch events (`controltower.batch_events`: a unit's batch starting, changing phase, ending) take
a path of their own, beside the samples: a source that announces them has an `on_batch_events`
attribute, which the pipeline sets to a callable taking an event frame; the frames go to the
`event_consumers` (the detection engine, for the golden batch's phase) and to the historian's
`write_batch_events`, retried with backoff until stored, in order. With the spool they are as
durable as samples: each frame is written to the batch-event journal (`collector.event_journal`,
a directory of the spool) and fsynced before the callable returns, so before the source
acknowledges it (MQTT QoS 1); the journal's frames are replayed in order at start-up and
acknowledged once stored (the historians store an event once, so a replay after a crash stores
nothing twice). Without the spool they wait in memory (at most `MAX_PENDING_EVENT_FRAMES` frames,
oldest dropped and counted) and are lost with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import polars as pl

from collector.event_journal import JOURNAL_DIR, EventJournal
from collector.sinks import Historian, HistorianError
from collector.sources import Source
from collector.spool import Spool, SpoolError, SpoolFull
from controltower.metrics import Metrics

log = logging.getLogger(__name__)

# On stop, how long a failing historian may keep failing before the drain leaves the rest on disk.
DRAIN_GIVE_UP_AFTER_FAILING_S = 3.0

Consumer = Callable[[pl.DataFrame], object]
# Batch-event frames waiting for the historian (each one flush of one source: a few events).
MAX_PENDING_EVENT_FRAMES = 10_000

# Historians where writing the same samples again changes nothing (a point is its series and time).
IDEMPOTENT_HISTORIANS = frozenset({"influxdb"})


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
        spool: Spool | None = None,
        drain_timeout_s: float = 10.0,
        max_write_samples: int = 100_000,
        event_consumers: Sequence[Consumer] = (),
    ):
        self.sources = list(sources)
        self.historian = historian
        self.consumers = list(consumers)
        self.metrics = metrics or Metrics()
        self.spool = spool
        self._batches: asyncio.Queue[pl.DataFrame] = asyncio.Queue(maxsize=queue_batches)
        self._writes: asyncio.Queue[pl.DataFrame] = asyncio.Queue(maxsize=queue_batches)
        self._retry_max_s = retry_max_s
        self._drain_timeout_s = drain_timeout_s
        self._max_write_samples = max_write_samples
        self.historian_ok = True
        self.historian_error: str | None = None
        self.samples_stored = 0
        # Spool I/O (fsyncs) runs on one thread of its own, so it never waits behind historian writes.
        self._spool_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool") if spool else None
        self._spooled = asyncio.Event()  # set after an append: wakes the forwarder
        self._room = asyncio.Event()  # set after an ack: wakes emitters blocked on a full spool
        self.emit_blocked_s = 0.0  # total time sources waited on a full spool (`block` policy)
        self.spool_error: str | None = None  # the last append failure (disk full...), None once appends work
        self.metrics.watch_queues(self.queue_depths)
        self.event_consumers = list(event_consumers)
        # Batch-event frames not yet stored, oldest first, with their journal seq (None without the spool).
        self._events: list[tuple[int | None, pl.DataFrame]] = []
        self.journal = EventJournal(spool.directory / JOURNAL_DIR) if spool is not None else None
        self._events.extend(self.journal.pending() if self.journal is not None else ())
        self._events_waiting = asyncio.Event()
        self.batch_events_stored = 0
        self.batch_events_dropped = 0

    def queue_depths(self) -> dict[str, int]:
        """Batches waiting in each in-memory queue: for the consumers, and (without the spool) for the historian."""
        depths = {"consumers": self._batches.qsize()}
        if self.spool is None:
            depths["historian"] = self._writes.qsize()
        return depths

    # --- health --------------------------------------------------------------------------------

    @property
    def spool_batches(self) -> int:
        """Batches in the spool not yet stored by the historian."""
        return self.spool.pending_batches if self.spool else 0

    @property
    def spool_bytes(self) -> int:
        """Bytes of those batches on disk."""
        return self.spool.pending_bytes if self.spool else 0

    @property
    def spool_dropped_batches(self) -> int:
        """Batches the spool dropped when full (`drop_oldest`), since start."""
        return self.spool.dropped_batches if self.spool else 0

    @property
    def spool_oldest_age_s(self) -> float | None:
        """Seconds the oldest pending batch has waited (None when none waits)."""
        return self.spool.oldest_pending_age_s() if self.spool else None

    def spool_health(self) -> dict[str, Any] | None:
        """What /api/health shows of the spool (None when store and forward is off)."""
        spool = self.spool
        if spool is None:
            return None
        age = spool.oldest_pending_age_s()
        return {
            "dir": str(spool.directory),
            "overflow": spool.overflow,
            "pending_batches": spool.pending_batches,
            "pending_samples": spool.pending_samples,
            "pending_bytes": spool.pending_bytes,
            "disk_bytes": spool.disk_bytes,
            "max_bytes": spool.max_bytes,
            "oldest_pending_age_s": None if age is None else round(age, 1),
            "dropped_batches": spool.dropped_batches,
            "dropped_samples": spool.dropped_samples,
            "corrupt_records": spool.corrupt_records,
            "emit_blocked_s": round(self.emit_blocked_s, 1),
            # Batch events in the journal (`collector.event_journal`) not yet stored by the historian.
            "batch_events_pending": sum(frame.height for _, frame in self._events),
            "last_error": self.spool_error,
        }

    # --- sources -> consumers ------------------------------------------------------------------

    def _emit_from(self, source: Source) -> Callable[[pl.DataFrame], object]:
        async def emit(batch: pl.DataFrame) -> None:
            self.metrics.samples_in.labels(source.name).inc(batch.height)
            if self.spool is not None:
                await self._append(batch)  # on disk before the source's batch counts as taken
            await self._batches.put(batch)

        return emit

    async def _take_events(self, events: pl.DataFrame) -> None:
        """A source's batch events: to the event consumers now, to the historian by `_write_events`."""
        if not events.height:
            return
        for consume in self.event_consumers:
            try:
                consume(events)
            except Exception:  # one consumer's bug must not stop collection or storage
                log.exception("batch-event consumer %r failed", consume)
        if getattr(self.historian, "write_batch_events", None) is None:
            return
        seq = await self._journal(events) if self.journal is not None else None
        self._events.append((seq, events))
        if self.journal is None and len(self._events) > MAX_PENDING_EVENT_FRAMES:
            _, dropped = self._events.pop(0)
            self.batch_events_dropped += dropped.height
            log.error("batch events: %d waiting frames, the oldest (%d event(s)) dropped; %d dropped since start",
                      MAX_PENDING_EVENT_FRAMES, dropped.height, self.batch_events_dropped)
        self._events_waiting.set()

    async def _journal(self, events: pl.DataFrame) -> int:
        """Write an event frame to the journal (fsynced), retrying while the disk fails: the
        source waits, and so does its acknowledgement to the server."""
        failures = 0
        while True:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._spool_io, self.journal.append, events)
            except SpoolError as exc:
                self.spool_error = str(exc)
                failures += 1
                delay = min(0.5 * 2**failures, 10.0)
                log.error("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _write_events(self) -> None:
        """Store the waiting batch events, oldest first, retrying with backoff while the historian fails."""
        delay = 0.5
        while True:
            if not self._events:
                self._events_waiting.clear()
                await self._events_waiting.wait()
                continue
            frames = list(self._events)
            events = pl.concat([frame for _, frame in frames], how="vertical_relaxed")
            try:
                await self.historian.write_batch_events(events)
                if frames[-1][0] is not None:
                    await asyncio.get_running_loop().run_in_executor(self._spool_io, self.journal.ack, frames[-1][0])
            except HistorianError as exc:  # SpoolError is one: stored, not acknowledged; stored again, harmlessly
                log.warning("batch events not stored (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = 0.5
            del self._events[: len(frames)]
            self.batch_events_stored += events.height

    async def _append(self, batch: pl.DataFrame) -> None:
        loop = asyncio.get_running_loop()
        blocked_since = None
        failures = 0
        while True:
            self._room.clear()
            try:
                await loop.run_in_executor(self._spool_io, self.spool.append, batch)
                self.spool_error = None
                break
            except SpoolError as exc:  # disk full or failing: hold the source and retry, never drop silently
                self.spool_error = str(exc)
                failures += 1
                delay = min(0.5 * 2**failures, 10.0)
                log.error("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            except SpoolFull as exc:
                if blocked_since is None:
                    blocked_since = time.monotonic()
                    log.warning("%s; the sources wait (overflow: block)", exc)
                try:  # the timeout is a safety net: an ack sets `_room`
                    await asyncio.wait_for(self._room.wait(), timeout=1.0)
                except TimeoutError:
                    pass
        if blocked_since is not None:
            self.emit_blocked_s += time.monotonic() - blocked_since
        self._spooled.set()

    async def _consume(self) -> None:
        while True:
            batch = await self._batches.get()
            for consume in self.consumers:
                try:
                    consume(batch)
                except Exception:  # one consumer's bug must not stop collection or storage
                    log.exception("batch consumer %r failed", consume)
            if self.spool is None:
                await self._writes.put(batch)
            self._batches.task_done()

    # --- historian -----------------------------------------------------------------------------

    def _failed(self, exc: HistorianError, delay: float) -> float:
        self.historian_ok = False
        self.historian_error = str(exc)
        self.metrics.historian_write_errors.inc()
        log.warning("historian write failed (%s); retrying in %.1fs", exc, delay)
        return delay * (0.8 + 0.4 * random.random())

    def _stored(self, samples: int, started: float) -> None:
        self.metrics.historian_write_seconds.observe(time.perf_counter() - started)
        self.historian_ok = True
        self.historian_error = None
        self.samples_stored += samples
        self.metrics.samples_stored.inc(samples)

    async def _write(self) -> None:
        """Without the spool: store batches from the in-memory queue, retrying each until stored."""
        carry: pl.DataFrame | None = None
        while True:
            batches = [carry if carry is not None else await self._writes.get()]
            carry = None
            samples = batches[0].height
            # A backlog is stored in one write (up to `max_write_samples`), as with the spool.
            while not self._writes.empty():
                queued = self._writes.get_nowait()
                if samples + queued.height > self._max_write_samples:
                    carry = queued  # the first of the next write
                    break
                batches.append(queued)
                samples += queued.height
            batch = batches[0] if len(batches) == 1 else pl.concat(batches, how="vertical_relaxed")
            delay = 0.5
            while True:
                started = time.perf_counter()
                try:
                    await self.historian.write(batch)
                except HistorianError as exc:
                    await asyncio.sleep(self._failed(exc, delay))
                    delay = min(delay * 2, self._retry_max_s)
                    continue
                self._stored(batch.height, started)
                break
            for _ in batches:
                self._writes.task_done()

    async def _forward(self) -> None:
        """With the spool: store the oldest pending batches (a run of them, up to
        `max_write_samples`, when a backlog has built up), acknowledge them, repeat; retry with
        backoff while the historian fails. Pending batches of an earlier run go first."""
        loop = asyncio.get_running_loop()
        spool = self.spool
        idempotent = getattr(self.historian, "idempotent_writes", self.historian.name in IDEMPOTENT_HISTORIANS)
        delay = 0.5
        while True:
            try:
                records = await loop.run_in_executor(self._spool_io, spool.pending_run, self._max_write_samples)
            except SpoolError as exc:
                self.spool_error = str(exc)
                log.error("%s; retrying in 5s", exc)
                await asyncio.sleep(5.0)
                continue
            if not records:
                self._spooled.clear()
                if spool.pending_batches == 0:  # an append may have landed since pending_run
                    # Bounded: an append whose emit was cancelled still lands on disk, unannounced.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._spooled.wait(), timeout=1.0)
                continue
            started = time.perf_counter()
            try:
                # One write per run: the historian's per-write cost (a commit, an fsync, a request)
                # is paid once for the backlog, so the forwarder catches up instead of falling behind.
                batch = records[0].batch if len(records) == 1 else pl.concat([r.batch for r in records], how="vertical_relaxed")
                if records[0].seq == spool.in_doubt_seq and not idempotent:
                    batch = await self._not_yet_stored(records[0].seq, batch)
                await self.historian.write(batch)
            except HistorianError as exc:
                await asyncio.sleep(self._failed(exc, delay))
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = 0.5
            try:
                await loop.run_in_executor(self._spool_io, spool.ack, records[-1].seq)
            except SpoolError as exc:
                # Stored but not acknowledged: it will be forwarded again (the same run or a longer
                # one from the same first batch), so as a run in doubt.
                spool.in_doubt_seq = records[0].seq
                self.spool_error = str(exc)
                log.error("%s; the batch is stored, its acknowledgement is retried", exc)
                await asyncio.sleep(1.0)
                continue
            self._stored(batch.height, started)
            self._room.set()

    async def _not_yet_stored(self, seq: int, batch: pl.DataFrame) -> pl.DataFrame:
        """The samples of a replayed run (from spool batch `seq` on) that the historian does not
        hold yet, by (tag_id, ts): it may have been stored just before a crash that came before
        its acknowledgement."""
        if not batch.height:
            return batch
        # Read's bounds are datetimes (microseconds): widen the span so no nanosecond is left out.
        start = batch["ts"].min()
        end = batch["ts"].max() + timedelta(microseconds=1)
        stored = await asyncio.to_thread(self.historian.read, batch["tag_id"].unique().to_list(), start, end)
        fresh = batch.join(stored.select("tag_id", "ts"), on=["tag_id", "ts"], how="anti", maintain_order="left")
        if fresh.height < batch.height:
            log.info(
                "spool batches from %d on were partly or wholly stored before a restart: %d of %d sample(s) "
                "already in the historian, not written again", seq, batch.height - fresh.height, batch.height,
            )
        return fresh

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every source, the consumers and the writer until cancelled; on cancel, the
        batches already taken in are still stored (bounded by `drain_timeout_s`); with the
        spool, what the historian has not taken by then stays on disk for the next start."""
        writer = self._forward() if self.spool is not None else self._write()
        tasks = [asyncio.create_task(self._consume(), name="pipeline-consume"),
                 asyncio.create_task(writer, name="pipeline-write"),
                 asyncio.create_task(self._write_events(), name="pipeline-write-events")]
        for source in self.sources:
            if hasattr(source, "on_batch_events"):
                source.on_batch_events = self._take_events
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
            await self._drain(timeout_s=self._drain_timeout_s)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            await self._drain_events(timeout_s)
        finally:
            await self._drain_samples(deadline)

    async def _drain_events(self, timeout_s: float) -> None:
        """Wait (bounded) for the waiting batch events to be stored."""
        deadline = time.monotonic() + min(timeout_s, DRAIN_GIVE_UP_AFTER_FAILING_S)
        while self._events and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._events:
            kept = f"kept in the journal {self.journal.path} for the next start" if self.journal else "lost"
            log.error("stopping with %d batch event(s) not stored: %s", sum(f.height for _, f in self._events), kept)

    async def _drain_samples(self, deadline: float) -> None:
        timeout_s = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._batches.join(), timeout=timeout_s)
            if self.spool is None:
                await asyncio.wait_for(self._writes.join(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            pass
        if self.spool is not None:
            # They are safe on disk: wait for the historian while it answers. One failed write
            # (a server that just came back) does not end the wait; failing for a while does.
            failing_since: float | None = None
            while self.spool.pending_batches and time.monotonic() < deadline:
                now = time.monotonic()
                failing_since = None if self.historian_ok else (failing_since or now)
                if failing_since is not None and now - failing_since > DRAIN_GIVE_UP_AFTER_FAILING_S:
                    break
                await asyncio.sleep(0.05)
            if self.spool.pending_batches:
                log.warning(
                    "stopping with %d batch(es), %d sample(s) in the spool %s: the historian did not take "
                    "them within %.0fs; they are forwarded at the next start",
                    self.spool.pending_batches, self.spool.pending_samples, self.spool.directory, timeout_s,
                )
        elif self._batches.qsize() + self._writes.qsize():
            log.error(
                "stopping with %d batch(es) not stored: the historian did not take them within %.0fs",
                self._batches.qsize() + self._writes.qsize(), timeout_s,
            )

    def close(self) -> None:
        """Release the spool (its pending batches stay on disk)."""
        if self._spool_io is not None:
            self._spool_io.shutdown(wait=True)
        if self.journal is not None:
            self.journal.close()
        if self.spool is not None:
            self.spool.close()
