r"""The batch-event journal: batch events (`controltower.batch_events`) on disk until the historian
has them, so a collector killed while the historian is down loses none (they are GMP records:
the phases of a batch).

    append(events) --> <spool dir>/batch_events/journal.seg --> pending() --> historian
                                                                ack(seq) <-- once stored

It lives in a directory of the sample spool (`collector.spool`), whose LOCK makes it one
process's, and uses the spool's record format (magic, length, CRC-32, seq, time, rows, Arrow IPC
payload) and cursor (`ack.json`, replaced atomically). It is simpler than the spool because
events are few (a few an hour per unit): one file, no size bound, nothing dropped, everything
pending kept in memory. Once every record is acknowledged the file is emptied; sequence numbers
carry on from the cursor, so they only grow.

Durability: `append` returns after the record is written and fsynced, and the sources
acknowledge their messages only after that (an MQTT QoS 1 PUBACK, as for samples). A torn last
record (a crash mid-write) is cut off at open and counted (`corrupt_records`); it was never
acknowledged to its source. Replay after a crash may write events the historian took just before
it: both historians store an event once per (unit, time, transition), so that is harmless.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import polars as pl

from collector.spool import (
    CURSOR_NAME,
    HEADER,
    MAGIC,
    SpoolError,
    _fsync_dir,
    _read_cursor,
    _write_all,
    encode_batch,
    scan_segment,
    write_cursor,
)
from controltower.batch_events import BATCH_EVENT_SCHEMA

log = logging.getLogger(__name__)

JOURNAL_DIR = "batch_events"
JOURNAL_NAME = "journal.seg"


class EventJournal:
    """The append-only event journal in `directory` (created when missing). Thread-safe."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / JOURNAL_NAME
        self._lock = threading.Lock()
        self._pending: dict[int, pl.DataFrame] = {}
        self.corrupt_records = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise SpoolError(f"cannot open the batch-event journal {self.path}: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        return f"EventJournal({str(self.path)!r}, {len(self._pending)} pending)"

    def _open(self) -> None:
        self.acked_seq = _read_cursor(self.directory / CURSOR_NAME)
        data = self.path.read_bytes() if self.path.exists() else b""
        records, valid, problem = scan_segment(data)
        if problem is not None:
            self.corrupt_records += 1
            log.warning("batch-event journal %s: %s; truncated to %d bytes (%d discarded)",
                        self.path, problem, valid, len(data) - valid)
        for seq, offset, nbytes, _, _ in records:
            if seq > self.acked_seq:
                self._pending[seq] = _decode(data[offset + HEADER.size : offset + nbytes])
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if problem is not None or (records and not self._pending):
            os.ftruncate(self._fd, valid if self._pending else 0)
            os.fsync(self._fd)
        _fsync_dir(self.directory)
        self.next_seq = max([self.acked_seq, *(r[0] for r in records)]) + 1
        if self._pending:
            log.info("batch-event journal %s: %d frame(s), %d event(s) not yet stored from an earlier run",
                     self.path, len(self._pending), self.pending_events)

    @property
    def pending_events(self) -> int:
        return sum(frame.height for frame in self._pending.values())

    def pending(self) -> list[tuple[int, pl.DataFrame]]:
        """The frames not yet acknowledged, oldest first, with their seq."""
        with self._lock:
            return list(self._pending.items())

    def append(self, events: pl.DataFrame) -> int:
        """Write an event frame and fsync it; return its seq. Once this returns, it survives a crash."""
        payload = encode_batch(events)
        appended = time.time_ns()
        with self._lock:
            seq = self.next_seq
            body = struct.pack("<QqI", seq, appended, events.height) + payload
            record = HEADER.pack(MAGIC, len(payload), zlib.crc32(body), seq, appended, events.height) + payload
            offset = os.fstat(self._fd).st_size
            try:
                _write_all(self._fd, record)
                os.fsync(self._fd)
            except OSError as exc:
                try:  # leave no partial record behind
                    os.ftruncate(self._fd, offset)
                except OSError:
                    pass
                raise SpoolError(f"cannot write to the batch-event journal {self.path}: {exc.strerror or exc}") from None
            self.next_seq = seq + 1
            self._pending[seq] = events
            return seq

    def ack(self, seq: int) -> None:
        """Every frame up to `seq` is stored: make that durable; empty the file once nothing is pending."""
        with self._lock:
            if seq <= self.acked_seq:
                return
            try:
                write_cursor(self.directory / CURSOR_NAME, seq)
                self.acked_seq = seq
                for done in [s for s in self._pending if s <= seq]:
                    del self._pending[done]
                if not self._pending:
                    os.ftruncate(self._fd, 0)
                    os.fsync(self._fd)
            except OSError as exc:
                raise SpoolError(f"cannot acknowledge in the batch-event journal {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _decode(payload: bytes) -> pl.DataFrame:
    frame = pl.read_ipc_stream(io.BytesIO(payload))
    return frame.select([pl.col(c).cast(dt) for c, dt in BATCH_EVENT_SCHEMA.items()])


def read_journal(directory: str | Path) -> pl.DataFrame:
    """The events a stopped collector left unstored in a journal directory (nothing changed): for tests."""
    directory = Path(directory)
    acked = _read_cursor(directory / CURSOR_NAME)
    path = directory / JOURNAL_NAME
    data = path.read_bytes() if path.exists() else b""
    records, _, _ = scan_segment(data)
    frames = [_decode(data[o + HEADER.size : o + n]) for seq, o, n, _, _ in records if seq > acked]
    return pl.concat(frames) if frames else pl.DataFrame(schema=BATCH_EVENT_SCHEMA)
