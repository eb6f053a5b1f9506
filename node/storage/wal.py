"""A node's write-ahead log, the writing side: group commit, preallocation,
segment rollover and housekeeping (the record format and reading it back are
wal_format.py's, re-exported here; snapshot files are snapfile.py's). What
the records mean for the Raft log is `node.storage`'s.
"""

from __future__ import annotations

import itertools
import os
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from node.raft.messages import Entry, HardState
from node.storage.wal_format import (
    FULL_ERRNOS,
    HEADER,
    HEADER_BYTES,
    NONZERO,
    SEGMENT_NAME,
    NoSpace,
    Record,
    RecordKind,
    Recovery,
    Replay,
    SnapshotMark,
    StorageError,
    Truncate,
    corruption,
    fsync_dir,
    lock_directory,
    scan,
    segment_name,
    segment_paths_in,
    write_all,
)

__all__ = [
    "FULL_ERRNOS",
    "HEADER_BYTES",
    "NoSpace",
    "Record",
    "RecordKind",
    "Recovery",
    "Replay",
    "SnapshotMark",
    "StorageError",
    "Truncate",
    "corruption",
    "fsync_dir",
    "lock_directory",
    "segment_name",
    "segment_paths_in",
    "write_all",
]

_PREFIX = {k: bytes(HEADER_BYTES) + bytes([k]) for k in RecordKind}
# With fsync on, a segment's blocks are reserved this far ahead of its
# records (zero-filled, as etcd's WAL does): an fdatasync then has no new
# file size to persist (docs/STORAGE.md). Measured on ext4 with one writer:
# write + fdatasync 0.18 -> 0.14 ms, 7 -> 5 context switches.
PREALLOC_BYTES = 4 * 1024 * 1024
# A reservation is extended while less than this is left ahead of the
# records: when the filesystem refuses, what is left still takes the writes
# in flight while the node stops taking new ones (`space_error`).
RESERVE_AHEAD_BYTES = 1024 * 1024


# --- WAL segments: writing ----------------------------------------------------------


class _OutOfSpace(Exception):
    """Internal to `Wal.sync`: a write or a new segment found the disk full
    (the OSError is the cause); nothing of the chunk stays in the file."""


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int
    # The highest log index an entry or truncation record in it names: once a
    # durable snapshot mark in a later segment covers it, the segment is dead.
    max_index: int


@dataclass(slots=True)
class _Chunk:
    """Framed records bound for one segment."""

    buf: bytearray = field(default_factory=bytearray)
    max_index: int = 0
    mark: int | None = None
    # Each entry record's index and where it starts in `buf`, in order.
    entry_index: array[int] = field(default_factory=lambda: array("Q"))
    entry_start: array[int] = field(default_factory=lambda: array("Q"))


class Wal:
    """An append-only log of records in segment files `wal-<seq>.log`.

    Records are framed into a buffer as they come; `sync()` writes the whole
    buffer with one write() per segment and fdatasyncs once (group commit).
    """

    def __init__(self, directory: Path, *, sync: bool, segment_bytes: int) -> None:
        """Use `Wal.open`."""
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.directory = directory
        self._sync = sync
        self._segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd = -1
        self._allocated = 0  # bytes the current segment's file holds, its zero tail included
        self._chunks = [_Chunk()]
        self._room = segment_bytes
        self._encode_into = msgspec.msgpack.Encoder().encode_into
        # (segment seq, snapshot index) of the newest durable snapshot mark.
        self._mark: tuple[int, int] | None = None
        self._failed: OSError | None = None
        # The first remaining chunk starts a new segment: a sync that ran
        # out of space had written the chunks before it.
        self._roll_first = False
        # Blocks are reserved ahead only when they are fsynced, and no more
        # once the filesystem refused for want of support (the reservation
        # is an optimisation). Refused for want of space, it is tried again
        # at each sync, and `space_error` says the disk is nearly full.
        self.reservation_error: OSError | None = None
        self.space_error: OSError | None = None
        self.recovery = Recovery()
        # Where the entry records written since `take_written` lie: index,
        # segment seq and byte offset, in the order they were written.
        self._written_index: array[int] = array("Q")
        self._written_seq: array[int] = array("Q")
        self._written_off: array[int] = array("Q")
        # Runs the removal of dead segments (None: at once); a crash before
        # it ran leaves dead segments, which the next open removes.
        self.remover: Callable[[Callable[[], None]], object] | None = None

    @classmethod
    def open(cls, directory: Path, *, sync: bool, segment_bytes: int) -> tuple[Wal, Replay]:
        """Read every segment, cut a torn tail off the last one, and get ready
        to append. Raises StorageError on any other damage."""
        wal = cls(directory, sync=sync, segment_bytes=segment_bytes)
        replay = Replay()
        seqs = sorted(
            int(m.group(1), 16)
            for m in map(SEGMENT_NAME.fullmatch, os.listdir(directory))
            if m is not None
        )
        for a, b in itertools.pairwise(seqs):
            if b != a + 1:
                missing = directory / segment_name(a + 1)
                raise corruption(missing, 0, "WAL segment is missing")
        cut = (0, "", 0)
        for k, seq in enumerate(seqs):
            path = directory / segment_name(seq)
            data = path.read_bytes()
            replay.paths.append(path)
            replay.seqs.append(seq)
            replay.firsts.append(len(replay.records))
            end, max_index, mark = scan(data, path, k == len(seqs) - 1, replay)
            if mark is not None:
                wal._mark = (seq, mark)
            wal._allocated = len(data)
            # Only the last segment may end early (scan): in zeros, that is
            # its preallocated space; anything else is a torn tail.
            if end < len(data) and NONZERO.search(data, end) is not None:
                # Reported: the torn bytes, not the zeros after them.
                cut = (len(data.rstrip(b"\x00")) - end, str(path), end)
                wal._cut(path, end)
                wal._allocated = end
            wal._segments.append(_Segment(seq, path, end, max_index))
        wal.recovery = Recovery(len(seqs), len(replay.records), *cut)
        if wal._segments:
            last = wal._segments[-1]
            wal._fd = os.open(last.path, os.O_WRONLY)
            os.lseek(wal._fd, last.size, os.SEEK_SET)
            wal._room = segment_bytes - last.size
        else:
            wal._create_segment(1)
        return wal, replay

    def _cut(self, path: Path, end: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            if self._sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _create_segment(self, seq: int) -> None:
        path = self.directory / segment_name(seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._allocated = 0
        self._segments.append(_Segment(seq, path, 0, 0))
        if self._sync:
            fsync_dir(self.directory)

    # --- framing records into the buffer -------------------------------------------

    def add_entries(self, entries: list[Entry]) -> None:
        """Frame one ENTRY record per entry; the hot path, so no helper calls."""
        chunk = self._chunks[-1]
        buf = chunk.buf
        room = self._room
        prefix = _PREFIX[RecordKind.ENTRY]
        encode_into = self._encode_into
        pack_into = HEADER.pack_into
        crc32 = zlib.crc32
        at_index, at_start = chunk.entry_index.append, chunk.entry_start.append
        for e in entries:
            start = len(buf)
            buf += prefix
            encode_into(e, buf, -1)
            end = len(buf)
            pack_into(buf, start, end - start - HEADER_BYTES, crc32(memoryview(buf)[start + 8 :]))
            if end > room and (start > 0 or room < self._segment_bytes):
                # The segment is full: this record opens the next one. The entries
                # before it are at most e.index - 1 (an over-estimate is safe).
                chunk.max_index = max(chunk.max_index, e.index - 1)
                chunk = _Chunk(buf[start:])
                del buf[start:]
                self._chunks.append(chunk)
                buf = chunk.buf
                room = self._segment_bytes
                at_index, at_start = chunk.entry_index.append, chunk.entry_start.append
                start = 0
            at_index(e.index)
            at_start(start)
        if entries:
            chunk.max_index = max(chunk.max_index, entries[-1].index)
        self._room = room

    def add(self, kind: RecordKind, rec: HardState | Truncate | SnapshotMark) -> None:
        """Frame one record of any other kind."""
        chunk = self._chunks[-1]
        buf = chunk.buf
        start = len(buf)
        buf += _PREFIX[kind]
        self._encode_into(rec, buf, -1)
        end = len(buf)
        HEADER.pack_into(
            buf, start, end - start - HEADER_BYTES, zlib.crc32(memoryview(buf)[start + 8 :])
        )
        if end > self._room and (start > 0 or self._room < self._segment_bytes):
            chunk = _Chunk(buf[start:])
            del buf[start:]
            self._chunks.append(chunk)
            self._room = self._segment_bytes
        if isinstance(rec, Truncate):
            chunk.max_index = max(chunk.max_index, rec.index)
        elif isinstance(rec, SnapshotMark):
            chunk.mark = rec.meta.index

    # --- making it durable -------------------------------------------------------------

    def sync(self) -> None:
        """Write every framed record (one write() per segment), fdatasync
        once, then delete the segments a new snapshot mark made dead.

        Out of space (NoSpace), the records not written stay buffered and a
        record cut short is cut off the file: the same sync may be called
        again. Any other failure is final: a failed fsync cannot be retried
        (the kernel may already have dropped the dirty pages)."""
        if self._failed is not None:
            raise StorageError(f"the WAL failed earlier ({self._failed}); the node must stop")
        chunks = self._chunks
        if len(chunks) == 1 and not chunks[0].buf and not self._roll_first:
            return
        marked = False
        done = 0
        try:
            for k, chunk in enumerate(chunks):
                if k > 0 or self._roll_first:
                    self._roll()
                    self._roll_first = False
                seg = self._segments[-1]
                if chunk.buf:
                    at = seg.size
                    self._write_chunk(seg, chunk.buf)
                    n = len(chunk.entry_index)
                    self._written_index.extend(chunk.entry_index)
                    self._written_seq.extend(array("Q", [seg.seq]) * n)
                    self._written_off.extend(array("Q", (at + s for s in chunk.entry_start)))
                seg.max_index = max(seg.max_index, chunk.max_index)
                if chunk.mark is not None:
                    self._mark = (seg.seq, chunk.mark)
                    marked = True
                done = k + 1
            if self._sync:
                os.fdatasync(self._fd)
        except _OutOfSpace as e:
            if done:
                del self._chunks[:done]
                self._roll_first = True
            raise NoSpace(f"the WAL cannot be written: {e.__cause__}") from e.__cause__
        except OSError as e:
            self._failed = e
            raise StorageError(f"writing the WAL failed: {e}; the node must stop") from e
        self._chunks = [_Chunk()]
        self._room = self._segment_bytes - self._segments[-1].size
        if marked:
            self.collect()

    def _write_chunk(self, seg: _Segment, buf: bytearray) -> None:
        """Append `buf` to the current segment, reserving ahead first. Out
        of space, whatever part of it reached the file is cut off again."""
        end = seg.size + len(buf)
        if self._sync and self.reservation_error is None \
                and end + RESERVE_AHEAD_BYTES > self._allocated:
            self._preallocate(end + RESERVE_AHEAD_BYTES)
        try:
            write_all(self._fd, buf)
        except OSError as e:
            if e.errno not in FULL_ERRNOS:
                raise
            self.space_error = e
            # Never synced, so never acknowledged: cut, and write it again later.
            os.ftruncate(self._fd, seg.size)
            os.lseek(self._fd, seg.size, os.SEEK_SET)
            self._allocated = min(self._allocated, seg.size)
            raise _OutOfSpace from e
        seg.size = end

    def _preallocate(self, need: int) -> None:
        """Reserve the current segment's blocks up to `need` bytes and on to
        the next multiple of PREALLOC_BYTES. If the filesystem refuses, writes
        go on without one (the write itself decides whether the disk is
        full): for want of space it says so in `space_error` and is tried
        again next time; for want of support, never again."""
        target = -(-need // PREALLOC_BYTES) * PREALLOC_BYTES
        try:
            os.posix_fallocate(self._fd, self._allocated, target - self._allocated)
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                self.space_error = e
            else:
                self.reservation_error = e
            # It may have grown the file before it failed: those zeros must
            # go at the next roll like any reserved space.
            self._allocated = max(self._allocated, os.fstat(self._fd).st_size)
            return
        self._allocated = target
        self.space_error = None

    def _roll(self) -> None:
        """Start the next segment, then close the current one (durable
        first, without its zero tail). Creating the file comes first: if the
        disk is full, nothing has changed."""
        old = self._segments[-1]
        path = self.directory / segment_name(old.seq + 1)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                self.space_error = e
                raise _OutOfSpace from e
            raise
        if self._allocated > old.size:
            os.ftruncate(self._fd, old.size)
        if self._sync:
            os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = fd
        self._allocated = 0
        self._segments.append(_Segment(old.seq + 1, path, 0, 0))
        if self._sync:
            fsync_dir(self.directory)

    def collect(self) -> None:
        """Delete the oldest segments while every index they name is covered by
        the durable snapshot mark, which lies in a later segment."""
        if self._mark is None:
            return
        mark_seq, mark_index = self._mark
        dead = 0
        for seg in self._segments[:-1]:
            if seg.seq >= mark_seq or seg.max_index > mark_index:
                break
            dead += 1
        if not dead:
            return
        paths = [seg.path for seg in self._segments[:dead]]
        del self._segments[:dead]
        sync = self._sync

        def remove() -> None:
            for path in paths:  # oldest first: what is left stays contiguous
                path.unlink(missing_ok=True)
            if sync:
                fsync_dir(self.directory)

        if self.remover is None:
            remove()
        else:
            self.remover(remove)

    def segment_paths(self) -> list[Path]:
        return [s.path for s in self._segments]

    def take_written(self) -> tuple[array[int], array[int], array[int]]:
        """Where each entry record written since the last call lies (index,
        segment seq, offset), in writing order; a later record for an index
        replaces an earlier one (a truncated suffix written again). Durable
        once `sync` returned."""
        out = (self._written_index, self._written_seq, self._written_off)
        self._written_index, self._written_seq, self._written_off = (
            array("Q"), array("Q"), array("Q"))
        return out

    def close(self) -> None:
        """Write and sync what is buffered, then close the segment."""
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Close without writing the buffer: what a crash would leave."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._chunks = [_Chunk()]
