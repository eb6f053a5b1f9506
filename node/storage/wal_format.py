"""On-disk format of a node's write-ahead log, and reading it back: records
of length+CRC framing in segment files, their kinds, and the scan that
replays a segment and tells a torn tail from corruption. The writing side
(group commit, preallocation, rollover) is wal.py's.
"""

from __future__ import annotations

import bisect
import enum
import errno
import fcntl
import os
import re
import struct
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
HEADER = struct.Struct("<II")
HEADER_BYTES = HEADER.size


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

KINDS = frozenset(int(k) for k in RecordKind)
DECODERS: dict[int, msgspec.msgpack.Decoder[Any]] = {
    RecordKind.ENTRY: msgspec.msgpack.Decoder(Entry),
    RecordKind.HARD_STATE: msgspec.msgpack.Decoder(HardState),
    RecordKind.TRUNCATE: msgspec.msgpack.Decoder(Truncate),
    RecordKind.SNAPSHOT: msgspec.msgpack.Decoder(SnapshotMark),
}
NONZERO = re.compile(rb"[^\x00]")
SEGMENT_NAME = re.compile(r"wal-([0-9a-f]{16})\.log")

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


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)
    while n < len(view):
        n += os.write(fd, view[n:])


def segment_paths_in(directory: Path) -> list[Path]:
    """The WAL segment files in `directory`, by name."""
    return sorted(directory / n for n in os.listdir(directory) if SEGMENT_NAME.fullmatch(n))


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
    seqs: list[int] = field(default_factory=list)
    firsts: list[int] = field(default_factory=list)
    last_mark: SnapshotMark | None = None

    def where(self, k: int) -> tuple[Path, int]:
        """The segment file and byte offset of record `k`."""
        seg = bisect.bisect_right(self.firsts, k) - 1
        return self.paths[seg], self.offsets[k]

    def seq_of(self, k: int) -> int:
        """The sequence number of the segment holding record `k`."""
        return self.seqs[bisect.bisect_right(self.firsts, k) - 1]


def _record_follows(data: bytes, start: int) -> bool:
    """Is there an intact record anywhere after byte `start`? If not, the damage
    at `start` is the last record: a torn tail, not corruption."""
    view = memoryview(data)
    size = len(data)
    p = start + 1
    while p + HEADER_BYTES < size:
        length, crc = HEADER.unpack_from(data, p)
        if length == 0:
            # Zero-filled space (a crash can leave it) cannot start a record: skip
            # to where a non-zero length field could begin.
            m = NONZERO.search(data, p)
            if m is None:
                return False
            p = max(p + 1, m.start() - 3)
            continue
        end = p + HEADER_BYTES + length
        if (
            end <= size
            and data[p + HEADER_BYTES] in KINDS
            and zlib.crc32(view[p + HEADER_BYTES : end]) == crc
        ):
            return True
        p += 1
    return False


def scan(data: bytes, path: Path, last: bool, out: Replay) -> tuple[int, int, int | None]:
    """Decode the records of one segment into `out`. Returns the end of the
    last whole record, the highest log index named, and the last snapshot mark's
    index. Damage is corruption unless it is the tail of the last segment."""
    view = memoryview(data)
    size = len(data)
    records = out.records
    offsets = out.offsets
    unpack = HEADER.unpack_from
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
        decoder = DECODERS.get(kind)
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
