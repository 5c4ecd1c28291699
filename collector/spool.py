r"""Store and forward: an append-only on-disk queue of sample batches, between the sources and
the historian.

    append(batch) --> [segment files under <data_dir>/spool/] --> first_pending() --> historian
                                                                  ack(seq) <-- once it is stored

Layout of the spool directory:

    LOCK                          flock'ed by the one process using the spool
    ack.json                      {"acked_seq": N}: every batch with seq <= N is stored (or was
                                  dropped); replaced atomically (temp file, fsync, rename, fsync dir)
    00000000000000000001.seg      segments, named after the first seq they hold, each a run of
    00000000000000000417.seg      records; a new segment starts once one reaches `segment_bytes`

A record is a 32-byte header and the batch as one Arrow IPC stream (LZ4), written once:

    magic b"CTSP" | payload length u32 | CRC-32 u32 | seq u64 | appended at (ns, wall clock) i64 | rows u32 | payload

The CRC covers everything after itself (seq, time, rows and payload), so a torn or corrupt record is
recognised when the spool is opened: the segment is truncated there, the event counted
(`corrupt_records`) and logged, and the spool opens anyway. Sequence numbers only grow (also across
restarts), so replay is in the order the batches were appended.

Durability: `append` returns after the record is written and the segment fsynced (and the
directory, when a segment was created); `ack` returns after the cursor is durable. A `kill -9` at
any point leaves every appended, unacknowledged batch on disk; the only batches that may be in the
historian already are those of the run being forwarded when the process died (`pending_run`: the
first pending batch and the ones after it, up to a sample bound): its first is `in_doubt_seq`
after a restart, and the pipeline makes the replay of that run idempotent.

Bound: the segment files never hold more than `max_bytes` (a single batch larger than that is
still taken when the spool is otherwise empty). When a batch does not fit, the overflow policy
decides: `drop_oldest` (default: a control room prefers recent data) deletes the oldest segment
(its pending batches are counted in `dropped_batches`/`dropped_samples` and logged) until it fits;
`block` raises `SpoolFull` so the caller waits for the historian to take some (backpressure to
the sources). `max_bytes` is at least 4 x `segment_bytes`, so one drop frees at most a quarter.

Thread-safe: every method takes one lock (the fsyncs happen under it, so appends are in order).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import polars as pl

from collector.sinks import HistorianError
from controltower.samples import conform, empty_samples

if TYPE_CHECKING:
    from controltower.site import StoreAndForwardConfig

log = logging.getLogger(__name__)

OverflowPolicy = Literal["drop_oldest", "block"]

MAGIC = b"CTSP"
# magic, payload length, crc32, seq, appended_at_ns, rows
HEADER = struct.Struct("<4sIIQqI")
_CRC_FROM = 12  # the CRC covers the header from seq on, and the payload
SEGMENT_SUFFIX = ".seg"
CURSOR_NAME = "ack.json"
LOCK_NAME = "LOCK"


class SpoolError(HistorianError):
    """The spool cannot be used (directory in use, unreadable cursor, disk error); names the path."""


class SpoolFull(Exception):
    """`append` under the `block` policy: no room until the historian takes some batches."""


@dataclass(frozen=True)
class SpoolRecord:
    """One spooled batch: its sequence number, the batch (sample schema), when it was appended."""

    seq: int
    batch: pl.DataFrame
    appended_at_ns: int
    nbytes: int


@dataclass
class _Entry:
    seq: int
    segment: int  # first seq of its segment (the segment's key)
    offset: int
    nbytes: int  # header + payload
    rows: int
    appended_at_ns: int


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int
    last_seq: int


def encode_batch(batch: pl.DataFrame) -> bytes:
    """A batch as one Arrow IPC stream, LZ4-compressed (what a record's payload holds)."""
    buf = io.BytesIO()
    batch.write_ipc_stream(buf, compression="lz4")
    return buf.getvalue()


def decode_batch(payload: bytes) -> pl.DataFrame:
    return conform(pl.read_ipc_stream(io.BytesIO(payload)))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}{SEGMENT_SUFFIX}"


def scan_segment(data: bytes, after_seq: int = 0) -> tuple[list[tuple[int, int, int, int, int]], int, str | None]:
    """The valid records at the start of a segment's bytes, as (seq, offset, nbytes, rows,
    appended_at_ns); the length of that valid prefix; and why the rest is not valid (None when
    the whole segment is). Sequence numbers must grow and exceed `after_seq`."""
    records = []
    offset = 0
    last = after_seq
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            return records, offset, f"torn header at byte {offset}"
        magic, length, crc, seq, appended, rows = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if magic != MAGIC:
            return records, offset, f"no record marker at byte {offset}"
        if end > len(data):
            return records, offset, f"torn record at byte {offset} ({len(data) - offset} of {end - offset} bytes)"
        if zlib.crc32(data[offset + _CRC_FROM : end]) != crc:
            return records, offset, f"CRC mismatch in the record at byte {offset}"
        if seq <= last:
            return records, offset, f"sequence {seq} after {last} at byte {offset}"
        records.append((seq, offset, end - offset, rows, appended))
        last = seq
        offset = end
    return records, offset, None


def _read_cursor(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise SpoolError(f"cannot read the spool cursor {path}: {exc.strerror or exc}") from None
    try:
        seq = json.loads(text)["acked_seq"]
        if not isinstance(seq, int) or seq < 0:
            raise ValueError(seq)
    except (ValueError, KeyError, TypeError):
        raise SpoolError(
            f"the spool cursor {path} is not valid ({text[:80]!r}); it is replaced atomically, so this "
            "is not a crash: move the spool directory aside to start afresh"
        ) from None
    return seq


class Spool:
    """The on-disk queue in `directory` (created when missing). See the module docstring.

    max_bytes: bound on the segment files; segment_bytes: size at which a new segment starts;
    overflow: "drop_oldest" or "block"; cache_bytes: pending batches kept in memory as well (up to
    this many payload bytes), so forwarding reads the disk only after a long outage.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        overflow: OverflowPolicy = "drop_oldest",
        cache_bytes: int = 64 << 20,
    ):
        if overflow not in ("drop_oldest", "block"):
            raise ValueError(f"overflow must be 'drop_oldest' or 'block', not {overflow!r}")
        if max_bytes < 4 * segment_bytes:
            raise ValueError(f"max_bytes ({max_bytes}) must be at least 4 x segment_bytes ({segment_bytes})")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.overflow: OverflowPolicy = overflow
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._segments: OrderedDict[int, _Segment] = OrderedDict()
        self._pending: OrderedDict[int, _Entry] = OrderedDict()
        self._cache: dict[int, pl.DataFrame] = {}
        self._cached_bytes = 0
        self._disk_bytes = 0
        self._oldest_pending_ns: int | None = None
        self._active_fd: int | None = None
        self._closed = False
        # Counters since this process opened the spool (for health and metrics).
        self.dropped_batches = 0
        self.dropped_samples = 0
        self.corrupt_records = 0
        self.appended_batches = 0
        self.pending_bytes = 0
        self.pending_samples = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolError(f"the spool directory {self.directory} is in use by another process") from None
            raise SpoolError(f"cannot lock the spool directory {self.directory}: {exc.strerror}") from None
        try:
            self._open()
        except OSError as exc:
            self.close()
            raise SpoolError(f"cannot open the spool {self.directory}: {exc.strerror or exc}") from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config(cls, config: StoreAndForwardConfig, data_dir: str | Path) -> Spool:
        """The spool a site file's `spool:` section describes; a relative `dir` is under `data_dir`."""
        directory = Path(config.dir).expanduser()
        return cls(
            directory if directory.is_absolute() else Path(data_dir) / directory,
            max_bytes=config.max_bytes,
            segment_bytes=config.segment_bytes,
            overflow=config.overflow,
        )

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, {self.pending_batches} pending, {self.overflow})"

    # --- opening -------------------------------------------------------------------------------

    def _open(self) -> None:
        self.acked_seq = _read_cursor(self.directory / CURSOR_NAME)
        highest = 0
        stale: list[Path] = []
        for path in sorted(self.directory.glob("*" + SEGMENT_SUFFIX)):
            try:
                first_seq = int(path.stem)
            except ValueError:
                log.warning("spool %s: ignoring %s (not a segment name)", self.directory, path.name)
                continue
            data = path.read_bytes()
            records, valid, problem = scan_segment(data, after_seq=highest)
            if problem is not None:
                # A crash mid-write leaves a torn last record; anything else is disk damage.
                self.corrupt_records += 1
                log.warning(
                    "spool %s: %s: %s; truncated to %d bytes (%d bytes discarded)",
                    self.directory, path.name, problem, valid, len(data) - valid,
                )
                with open(path, "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            if not records:
                stale.append(path)
                continue
            highest = records[-1][0]
            segment = _Segment(first_seq, path, valid, highest)
            self._add_segment(segment)
            for seq, offset, nbytes, rows, appended in records:
                if seq > self.acked_seq:
                    self._add_pending(_Entry(seq, first_seq, offset, nbytes, rows, appended))
            if highest <= self.acked_seq:
                stale.append(path)
                self._forget_segment(segment)
        for path in stale:
            path.unlink()
        if stale:
            _fsync_dir(self.directory)
        self.next_seq = max(self.acked_seq, highest) + 1
        # The first pending batch may have reached the historian just before a crash, unacknowledged.
        self.in_doubt_seq: int | None = next(iter(self._pending), None)
        if self._pending:
            log.info(
                "spool %s: %d batch(es), %d sample(s) pending from an earlier run (seq %d..%d)",
                self.directory, len(self._pending), self.pending_samples,
                next(iter(self._pending)), next(reversed(self._pending)),
            )

    def _add_segment(self, segment: _Segment) -> None:
        self._segments[segment.first_seq] = segment
        self._disk_bytes += segment.size

    def _forget_segment(self, segment: _Segment) -> None:
        del self._segments[segment.first_seq]
        self._disk_bytes -= segment.size

    def _add_pending(self, entry: _Entry) -> None:
        if not self._pending:
            self._oldest_pending_ns = entry.appended_at_ns
        self._pending[entry.seq] = entry
        self.pending_bytes += entry.nbytes
        self.pending_samples += entry.rows

    def _remove_pending(self, seq: int) -> _Entry:
        entry = self._pending.pop(seq)
        first = next(iter(self._pending.values()), None)
        self._oldest_pending_ns = first.appended_at_ns if first is not None else None
        self.pending_bytes -= entry.nbytes
        self.pending_samples -= entry.rows
        cached = self._cache.pop(seq, None)
        if cached is not None:
            self._cached_bytes -= entry.nbytes
        return entry

    # --- state ---------------------------------------------------------------------------------

    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    @property
    def disk_bytes(self) -> int:
        """Bytes in the segment files (pending records and the acknowledged head of the oldest)."""
        return self._disk_bytes

    def oldest_pending_age_s(self, now_ns: int | None = None) -> float | None:
        """Seconds since the oldest pending batch was appended (None when nothing is pending)."""
        oldest = self._oldest_pending_ns
        if oldest is None:
            return None
        return max(0.0, ((now_ns or time.time_ns()) - oldest) / 1e9)

    def has_room(self, nbytes: int) -> bool:
        return not self._pending or self.disk_bytes + nbytes <= self.max_bytes

    # --- appending -----------------------------------------------------------------------------

    def append(self, batch: pl.DataFrame) -> int:
        """Write a batch and fsync it; return its seq. Once this returns, the batch survives a
        crash. Under `block`, raise SpoolFull when it does not fit (see `wait_for_room`)."""
        payload = encode_batch(batch)
        appended = time.time_ns()
        nbytes = HEADER.size + len(payload)
        with self._lock:
            if self._closed:
                raise SpoolError(f"the spool {self.directory} is closed")
            try:
                if self.disk_bytes + nbytes > self.max_bytes:
                    self._make_room(nbytes)
                return self._append_locked(batch, payload, appended, nbytes)
            except OSError as exc:
                raise SpoolError(f"cannot write to the spool {self.directory}: {exc.strerror or exc}") from None

    def _append_locked(self, batch: pl.DataFrame, payload: bytes, appended: int, nbytes: int) -> int:
        seq = self.next_seq
        body = struct.pack("<QqI", seq, appended, batch.height) + payload
        record = HEADER.pack(MAGIC, len(payload), zlib.crc32(body), seq, appended, batch.height) + payload
        segment = self._active_segment(seq)
        offset = segment.size
        try:
            _write_all(self._active_fd, record)
            os.fsync(self._active_fd)
        except OSError as exc:
            # Leave no partial record behind: the next append starts where this one did.
            try:
                os.ftruncate(self._active_fd, offset)
            except OSError:
                pass
            raise SpoolError(f"cannot write to the spool {segment.path}: {exc.strerror or exc}") from None
        segment.size += nbytes
        self._disk_bytes += nbytes
        segment.last_seq = seq
        self.next_seq = seq + 1
        self.appended_batches += 1
        self._add_pending(_Entry(seq, segment.first_seq, offset, nbytes, batch.height, appended))
        if self._cached_bytes + nbytes <= self.cache_bytes:
            self._cache[seq] = batch
            self._cached_bytes += nbytes
        return seq

    def _make_room(self, nbytes: int) -> None:
        if self.overflow == "block" and self._pending:
            raise SpoolFull(
                f"spool {self.directory} is full ({self.disk_bytes} of {self.max_bytes} bytes, "
                f"{len(self._pending)} batches pending)"
            )
        while self._segments and self.disk_bytes + nbytes > self.max_bytes:
            oldest = next(iter(self._segments.values()))
            if self._active_fd is not None and oldest.first_seq == next(reversed(self._segments)):
                self._close_active()
            dropped = [seq for seq, e in self._pending.items() if e.segment == oldest.first_seq]
            samples = sum(self._pending[s].rows for s in dropped)
            if oldest.last_seq > self.acked_seq:
                self._write_cursor(oldest.last_seq)  # before the unlink: a crash between them replays nothing dropped
            for seq in dropped:
                self._remove_pending(seq)
            self._forget_segment(oldest)
            oldest.path.unlink()
            _fsync_dir(self.directory)
            if dropped:
                self.dropped_batches += len(dropped)
                self.dropped_samples += samples
                log.warning(
                    "spool %s full (max_bytes %d): dropped the oldest %d batch(es), %d sample(s) "
                    "(seq %d..%d); %d dropped since start",
                    self.directory, self.max_bytes, len(dropped), samples, dropped[0], dropped[-1],
                    self.dropped_batches,
                )

    def _active_segment(self, seq: int) -> _Segment:
        if self._active_fd is not None:
            active = next(reversed(self._segments.values()))
            if active.size < self.segment_bytes:
                return active
            self._close_active()
            self._delete_acked_segments()
        path = _segment_path(self.directory, seq)
        self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        _fsync_dir(self.directory)
        segment = _Segment(seq, path, 0, seq - 1)
        self._add_segment(segment)
        return segment

    def _close_active(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None

    def wait_for_room(self, nbytes: int, timeout_s: float | None = None) -> bool:
        """Block until a batch of about `nbytes` fits (for synchronous callers of a `block` spool)."""
        with self._room:
            return self._room.wait_for(lambda: self.has_room(nbytes), timeout=timeout_s)

    # --- forwarding ----------------------------------------------------------------------------

    def first_pending(self) -> SpoolRecord | None:
        """The oldest batch not yet acknowledged, or None. Read from memory when cached, else
        from its segment (its CRC checked again; a record damaged since opening is counted as
        corrupt, skipped and acknowledged)."""
        with self._lock:
            while self._pending:
                entry = next(iter(self._pending.values()))
                batch = self._cache.get(entry.seq)
                if batch is None:
                    try:
                        batch = self._read(entry)
                        if batch is None:
                            self._ack_locked(entry.seq)
                            continue
                    except OSError as exc:
                        raise SpoolError(f"cannot read the spool {self.directory}: {exc.strerror or exc}") from None
                return SpoolRecord(entry.seq, batch, entry.appended_at_ns, entry.nbytes)
            return None

    def pending_run(self, max_samples: int) -> list[SpoolRecord]:
        """The oldest pending batches, in order, as many as hold at most `max_samples` samples
        (always at least one when any is pending): a backlog is stored in few large writes. A
        record found damaged after the first ends the run (`first_pending` then skips it)."""
        first = self.first_pending()
        if first is None:
            return []
        run, samples = [first], first.batch.height
        with self._lock:
            for entry in list(self._pending.values())[1:]:
                if samples + entry.rows > max_samples:
                    break
                batch = self._cache.get(entry.seq)
                if batch is None:
                    try:
                        batch = self._read(entry)
                    except OSError:
                        break  # the next first_pending reports it
                    if batch is None:
                        break
                run.append(SpoolRecord(entry.seq, batch, entry.appended_at_ns, entry.nbytes))
                samples += entry.rows
        return run

    def _read(self, entry: _Entry) -> pl.DataFrame | None:
        segment = self._segments[entry.segment]
        with open(segment.path, "rb") as f:
            f.seek(entry.offset)
            data = f.read(entry.nbytes)
        records, _, problem = scan_segment(data, after_seq=entry.seq - 1)
        if problem is not None or not records:
            self.corrupt_records += 1
            log.error("spool %s: %s: record %d unreadable (%s); skipped", self.directory, segment.path.name, entry.seq, problem)
            return None
        return decode_batch(data[HEADER.size :])

    def ack(self, seq: int) -> None:
        """Every batch up to `seq` is stored: make that durable, then free their segments."""
        with self._lock:
            try:
                self._ack_locked(seq)
            except OSError as exc:
                raise SpoolError(f"cannot write the spool cursor in {self.directory}: {exc.strerror or exc}") from None

    def _ack_locked(self, seq: int) -> None:
        if self._closed:
            raise SpoolError(f"the spool {self.directory} is closed")
        if seq <= self.acked_seq:
            return
        self._write_cursor(seq)
        while self._pending and next(iter(self._pending)) <= seq:
            self._remove_pending(next(iter(self._pending)))
        self._delete_acked_segments()
        self._room.notify_all()

    def _write_cursor(self, seq: int) -> None:
        write_cursor(self.directory / CURSOR_NAME, seq)
        self.acked_seq = seq

    def _delete_acked_segments(self) -> None:
        """Unlink segments all of whose records are acknowledged (never the one being written)."""
        active = next(reversed(self._segments)) if self._active_fd is not None and self._segments else None
        done = [s for k, s in self._segments.items() if s.last_seq <= self.acked_seq and k != active]
        for segment in done:
            self._forget_segment(segment)
            segment.path.unlink(missing_ok=True)
        if done:
            _fsync_dir(self.directory)

    def close(self) -> None:
        """Close the files and release the directory; pending batches stay for the next open."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_active()
            self._cache.clear()
            self._room.notify_all()
        os.close(self._lock_fd)  # releases the flock


def write_cursor(path: Path, seq: int) -> None:
    """Make {"acked_seq": seq} durable at `path`, atomically (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"acked_seq": seq}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_spool(directory: str | Path) -> tuple[int, pl.DataFrame]:
    """Inspect a spool without opening it for use (no lock, nothing changed): the acknowledged
    seq and the pending batches, concatenated in seq order (the sample schema). For tests and
    for looking at what a stopped collector left behind."""
    directory = Path(directory)
    acked = _read_cursor(directory / CURSOR_NAME)
    frames = []
    highest = 0
    for path in sorted(directory.glob("*" + SEGMENT_SUFFIX)):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # deleted by a running collector meanwhile
            continue
        records, _, _ = scan_segment(data, after_seq=highest)
        for seq, offset, nbytes, _, _ in records:
            if seq > acked:
                frames.append(decode_batch(data[offset + HEADER.size : offset + nbytes]))
        if records:
            highest = records[-1][0]
    return acked, pl.concat(frames) if frames else empty_samples()
