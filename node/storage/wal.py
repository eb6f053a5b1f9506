"""On-disk formats of a node's storage: WAL segments of length+CRC framed
records, and snapshot files. Framing, scanning, group commit and file
housekeeping only; what the records mean for the Raft log is `node.storage`'s.
"""

from __future__ import annotations

import bisect
import enum
import errno
import fcntl
import itertools
import os
import re
import struct
import tempfile
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from node.raft.messages import U64, Entry, HardState, SnapshotMeta


class StorageError(Exception):
    """Storage cannot be used: corrupt, unreadable or inconsistent."""


class NoSpace(StorageError):
    """The filesystem is full (or over quota): what was to be written was
    not, nothing durable was lost or damaged, and the same write may be
    tried again once there is room (docs/STORAGE.md, "A full disk")."""


# What "the disk is full" looks like to a write or a reservation.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


# A record: u32 payload length, u32 CRC32 of the payload, then the payload,
# which is one RecordKind byte followed by the msgpack body.
_HEADER = struct.Struct("<II")
HEADER_BYTES = _HEADER.size


class RecordKind(enum.IntEnum):
    ENTRY = 1
    HARD_STATE = 2
    TRUNCATE = 3
    SNAPSHOT = 4


class Truncate(msgspec.Struct, frozen=True, array_like=True):
    """Entries at and after `index` are gone: a conflicting suffix (§5.3)."""

    index: U64


class SnapshotMark(msgspec.Struct, frozen=True, array_like=True):
    """From here on the log starts after `meta`; the entries after it up to
    `last` survive. It repeats the hard state so that the segments before it
    can be deleted without losing the latest one."""

    meta: SnapshotMeta
    last: U64
    hard_state: HardState


Record = Entry | HardState | Truncate | SnapshotMark

_KINDS = frozenset(int(k) for k in RecordKind)
_PREFIX = {k: bytes(HEADER_BYTES) + bytes([k]) for k in RecordKind}
_DECODERS: dict[int, msgspec.msgpack.Decoder[Any]] = {
    RecordKind.ENTRY: msgspec.msgpack.Decoder(Entry),
    RecordKind.HARD_STATE: msgspec.msgpack.Decoder(HardState),
    RecordKind.TRUNCATE: msgspec.msgpack.Decoder(Truncate),
    RecordKind.SNAPSHOT: msgspec.msgpack.Decoder(SnapshotMark),
}
_NONZERO = re.compile(rb"[^\x00]")
# With fsync on, a segment's blocks are reserved this far ahead of its
# records (zero-filled, as etcd's WAL does): an fdatasync then has no new
# file size to persist (docs/STORAGE.md). Measured on ext4 with one writer:
# write + fdatasync 0.18 -> 0.14 ms, 7 -> 5 context switches.
PREALLOC_BYTES = 4 * 1024 * 1024
# A reservation is extended while less than this is left ahead of the
# records: when the filesystem refuses, what is left still takes the writes
# in flight while the node stops taking new ones (`space_error`).
RESERVE_AHEAD_BYTES = 1024 * 1024
_SEGMENT_NAME = re.compile(r"wal-([0-9a-f]{16})\.log")
_SNAPSHOT_NAME = re.compile(r"snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap")
_TEMP_PREFIX = ".snap-"
_TEMP_SUFFIX = ".tmp"

_RECOVER_ADVICE = (
    "The node must not start from it: records after this point cannot be trusted. "
    "Stop the node, move its data directory away and start it again with an empty one "
    "while the rest of the cluster has a leader, which will send it a snapshot "
    "(or copy the data directory of a healthy stopped peer)."
)


def corruption(path: Path, offset: int, what: str) -> StorageError:
    """The error for damaged storage: names the file, the offset and the remedy."""
    return StorageError(f"{path}: {what} at byte {offset}. {_RECOVER_ADVICE}")


def segment_name(seq: int) -> str:
    return f"wal-{seq:016x}.log"


def snapshot_name(meta: SnapshotMeta) -> str:
    return f"snap-{meta.index:016x}-{meta.term:016x}.snap"


def fsync_dir(directory: Path) -> None:
    """Make creations, renames and removals in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_directory(directory: Path) -> int:
    """Take the data directory for this process; returns the lock's fd."""
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{directory} is in use by another process") from None
    return fd


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)
    while n < len(view):
        n += os.write(fd, view[n:])


# --- snapshot files ------------------------------------------------------------

# magic, index, term, image size, CRC32 of the image; the image follows.
_SNAP_HEADER = struct.Struct("<8sQQQI")
_SNAP_MAGIC = b"RAFTSNP1"


def write_snapshot(directory: Path, meta: SnapshotMeta, data: bytes, *, sync: bool) -> Path:
    """Write `data` to a temporary file, fsync it, rename it into place and fsync
    the directory: a crash leaves the old file set or the new one, never half.
    Touches nothing but files, so it may run on any thread."""
    header = _SNAP_HEADER.pack(_SNAP_MAGIC, meta.index, meta.term, len(data), zlib.crc32(data))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
    try:
        try:
            _write_all(fd, header)
            _write_all(fd, data)
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        final = directory / snapshot_name(meta)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(directory)
    return final


def read_snapshot(path: Path, meta: SnapshotMeta) -> bytes:
    """The image in the snapshot file at `path`, checked against `meta` and its CRC."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise corruption(path, 0, "snapshot file named by the WAL is missing") from None
    if len(raw) < _SNAP_HEADER.size:
        raise corruption(path, 0, "snapshot file is shorter than its header")
    magic, index, term, size, crc = _SNAP_HEADER.unpack_from(raw)
    if magic != _SNAP_MAGIC or (index, term) != (meta.index, meta.term):
        raise corruption(path, 0, "snapshot file header does not match its name")
    data = raw[_SNAP_HEADER.size :]
    if len(data) != size:
        raise corruption(path, len(raw), f"snapshot file holds {len(data)} of {size} bytes")
    if zlib.crc32(data) != crc:
        raise corruption(path, _SNAP_HEADER.size, "snapshot image fails its CRC")
    return data


def snapshot_files(directory: Path) -> dict[Path, SnapshotMeta]:
    out: dict[Path, SnapshotMeta] = {}
    for name in os.listdir(directory):
        m = _SNAPSHOT_NAME.fullmatch(name)
        if m:
            out[directory / name] = SnapshotMeta(int(m.group(1), 16), int(m.group(2), 16))
    return out


def segment_paths_in(directory: Path) -> list[Path]:
    """The WAL segment files in `directory`, by name."""
    return sorted(directory / n for n in os.listdir(directory) if _SEGMENT_NAME.fullmatch(n))


def remove_temp_files(directory: Path) -> bool:
    """Remove snapshot files a crash left half-written; True if any were."""
    found = False
    for name in os.listdir(directory):
        if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
            (directory / name).unlink(missing_ok=True)
            found = True
    return found


# --- WAL segments: reading --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the WAL found: whether a torn tail was cut, and where."""

    segments: int = 0
    records: int = 0
    truncated_bytes: int = 0
    file: str = ""
    offset: int = 0


@dataclass(slots=True)
class Replay:
    """Every record of the WAL in order, and where each one lies."""

    records: list[Record] = field(default_factory=list)
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    paths: list[Path] = field(default_factory=list)
    firsts: list[int] = field(default_factory=list)
    last_mark: SnapshotMark | None = None

    def where(self, k: int) -> tuple[Path, int]:
        """The segment file and byte offset of record `k`."""
        seg = bisect.bisect_right(self.firsts, k) - 1
        return self.paths[seg], self.offsets[k]


def _record_follows(data: bytes, start: int) -> bool:
    """Is there an intact record anywhere after byte `start`? If not, the damage
    at `start` is the last record: a torn tail, not corruption."""
    view = memoryview(data)
    size = len(data)
    p = start + 1
    while p + HEADER_BYTES < size:
        length, crc = _HEADER.unpack_from(data, p)
        if length == 0:
            # Zero-filled space (a crash can leave it) cannot start a record: skip
            # to where a non-zero length field could begin.
            m = _NONZERO.search(data, p)
            if m is None:
                return False
            p = max(p + 1, m.start() - 3)
            continue
        end = p + HEADER_BYTES + length
        if (
            end <= size
            and data[p + HEADER_BYTES] in _KINDS
            and zlib.crc32(view[p + HEADER_BYTES : end]) == crc
        ):
            return True
        p += 1
    return False


def _scan(data: bytes, path: Path, last: bool, out: Replay) -> tuple[int, int, int | None]:
    """Decode the records of one segment into `out`. Returns the end of the
    last whole record, the highest log index named, and the last snapshot mark's
    index. Damage is corruption unless it is the tail of the last segment."""
    view = memoryview(data)
    size = len(data)
    records = out.records
    offsets = out.offsets
    unpack = _HEADER.unpack_from
    crc32 = zlib.crc32
    max_index = 0
    mark: int | None = None
    off = 0
    while off < size:
        what = ""
        if off + HEADER_BYTES > size:
            what = "record header cut short"
        else:
            length, crc = unpack(data, off)
            end = off + HEADER_BYTES + length
            if length == 0:
                what = "empty record"
            elif end > size:
                what = f"record of {length} bytes runs past the end of the file"
            elif crc32(view[off + HEADER_BYTES : end]) != crc:
                what = "record fails its CRC"
        if what:
            if last and not _record_follows(data, off):
                return off, max_index, mark
            raise corruption(path, off, what)
        kind = data[off + HEADER_BYTES]
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise corruption(path, off, f"record of unknown kind {kind}")
        try:
            rec = decoder.decode(view[off + HEADER_BYTES + 1 : end])
        except msgspec.DecodeError as e:
            raise corruption(path, off, f"record does not decode ({e})") from None
        if kind == RecordKind.ENTRY or kind == RecordKind.TRUNCATE:
            max_index = max(max_index, rec.index)
        elif kind == RecordKind.SNAPSHOT:
            mark = rec.meta.index
            out.last_mark = rec
        records.append(rec)
        offsets.append(off)
        off = end
    return off, max_index, mark


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

    @classmethod
    def open(cls, directory: Path, *, sync: bool, segment_bytes: int) -> tuple[Wal, Replay]:
        """Read every segment, cut a torn tail off the last one, and get ready
        to append. Raises StorageError on any other damage."""
        wal = cls(directory, sync=sync, segment_bytes=segment_bytes)
        replay = Replay()
        seqs = sorted(
            int(m.group(1), 16)
            for m in map(_SEGMENT_NAME.fullmatch, os.listdir(directory))
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
            replay.firsts.append(len(replay.records))
            end, max_index, mark = _scan(data, path, k == len(seqs) - 1, replay)
            if mark is not None:
                wal._mark = (seq, mark)
            wal._allocated = len(data)
            # Only the last segment may end early (_scan): in zeros, that is
            # its preallocated space; anything else is a torn tail.
            if end < len(data) and _NONZERO.search(data, end) is not None:
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
        pack_into = _HEADER.pack_into
        crc32 = zlib.crc32
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
        _HEADER.pack_into(
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
                    self._write_chunk(seg, chunk.buf)
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
            _write_all(self._fd, buf)
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
        for seg in self._segments[:dead]:
            seg.path.unlink()
        del self._segments[:dead]
        if self._sync:
            fsync_dir(self.directory)

    def segment_paths(self) -> list[Path]:
        return [s.path for s in self._segments]

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
