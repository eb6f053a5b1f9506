"""Snapshot files: written as a stream (a header reserved, the image in
pieces, synced every few MiB, then renamed into place) and read back in
ranges or as one mapped view, checked against their header and CRC. Files
only; what a snapshot means for the log is `node.storage.files`'.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

from node.raft.messages import SnapshotMeta
from node.storage.wal import StorageError, corruption, fsync_dir, write_all

# magic, index, term, image size, CRC32 of the image; the image follows.
_SNAP_HEADER = struct.Struct("<8sQQQI")
SNAP_HEADER_BYTES = _SNAP_HEADER.size
_SNAP_MAGIC = b"RAFTSNP1"
_SNAPSHOT_NAME = re.compile(r"snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap")
_TEMP_PREFIX = ".snap-"
_TEMP_SUFFIX = ".tmp"
# A snapshot being written is fdatasynced every this many bytes: its pages
# reach the disk a few MiB at a time, so a WAL fdatasync on the same disk
# (this node's or a peer's) never waits behind hundreds of MiB of writeback.
# Measured here: 256 MiB written then synced at once held the disk for
# 0.37 s; synced every 4 MiB, no sync took more than 9 ms, but those 9 ms
# still reached the clients: 64 clients writing 1 KiB values while every
# node made a snapshot saw p99 at 4.5-6.4 times p50 (27-34 ms) with syncs
# every 4 MiB, 4.1-4.7 times every 1 MiB, 2.9-3.7 times every 512 KiB, at
# the same throughput (interleaved runs).
SNAPSHOT_SYNC_EVERY_BYTES = 512 * 1024


def snapshot_name(meta: SnapshotMeta) -> str:
    return f"snap-{meta.index:016x}-{meta.term:016x}.snap"


def snapshot_files(directory: Path) -> dict[Path, SnapshotMeta]:
    out: dict[Path, SnapshotMeta] = {}
    for name in os.listdir(directory):
        m = _SNAPSHOT_NAME.fullmatch(name)
        if m:
            out[directory / name] = SnapshotMeta(int(m.group(1), 16), int(m.group(2), 16))
    return out


def remove_temp_files(directory: Path) -> bool:
    """Remove snapshot files a crash left half-written; True if any were."""
    found = False
    for name in os.listdir(directory):
        if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
            (directory / name).unlink(missing_ok=True)
            found = True
    return found


class SnapshotWriter:
    """One snapshot file written as a stream: `write` the image in pieces
    (in order, from one thread at a time), then `finish`, which fills in the
    header, syncs and renames the file into place; a crash leaves the old
    file set or the new one, never half. Touches nothing but its files, so
    it may run on any thread; `abort` removes what was written."""

    def __init__(self, directory: Path, meta: SnapshotMeta, *, sync: bool,
                 sync_every_bytes: int = SNAPSHOT_SYNC_EVERY_BYTES) -> None:
        self.directory = directory
        self.meta = meta
        self._sync = sync
        self._sync_every = sync_every_bytes
        self._size = 0
        self._crc = 0
        self._unsynced = 0
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
        self._fd = fd
        self._tmp = Path(tmp)
        try:
            # The header's size and CRC are known at the end: room now.
            write_all(fd, bytes(SNAP_HEADER_BYTES))
        except BaseException:
            self.abort()
            raise

    @property
    def size(self) -> int:
        """Bytes of image written so far."""
        return self._size

    def write(self, data: bytes | memoryview) -> None:
        write_all(self._fd, data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._unsynced += len(data)
        if self._sync and self._unsynced >= self._sync_every:
            os.fdatasync(self._fd)
            self._unsynced = 0

    def finish(self) -> Path:
        """Header, fdatasync, rename, fsync of the directory: the file is
        now the snapshot's. Removes the temporary file if any step fails."""
        try:
            header = _SNAP_HEADER.pack(_SNAP_MAGIC, self.meta.index, self.meta.term,
                                       self._size, self._crc)
            if os.pwrite(self._fd, header, 0) != len(header):
                raise OSError(f"short write of the header of {self._tmp}")
            if self._sync:
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1
            final = self.directory / snapshot_name(self.meta)
            os.replace(self._tmp, final)
        except BaseException:
            self.abort()
            raise
        if self._sync:
            fsync_dir(self.directory)
        return final

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)


def write_snapshot(directory: Path, meta: SnapshotMeta, data: bytes, *, sync: bool) -> Path:
    """The whole image at once (a `SnapshotWriter` of one piece)."""
    w = SnapshotWriter(directory, meta, sync=sync)
    try:
        view = memoryview(data)
        for start in range(0, len(view), SNAPSHOT_SYNC_EVERY_BYTES):
            w.write(view[start : start + SNAPSHOT_SYNC_EVERY_BYTES])
    except BaseException:
        w.abort()
        raise
    return w.finish()


class SnapshotFile:
    """An open snapshot file whose header matched its name: the image is
    read in ranges (`read`, for sending it to a follower) or mapped whole
    (`view`, for decoding it), without a copy of it on the heap. Every read
    that reaches the end of the image checks the CRC of what was read in
    order from its start; `view` checks it at once."""

    def __init__(self, path: Path, meta: SnapshotMeta) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise corruption(path, 0, "snapshot file named by the WAL is missing") from None
        try:
            raw = os.pread(self._fd, SNAP_HEADER_BYTES, 0)
            if len(raw) < SNAP_HEADER_BYTES:
                raise corruption(path, 0, "snapshot file is shorter than its header")
            magic, index, term, size, crc = _SNAP_HEADER.unpack(raw)
            if magic != _SNAP_MAGIC or (index, term) != (meta.index, meta.term):
                raise corruption(path, 0, "snapshot file header does not match its name")
            have = os.fstat(self._fd).st_size - SNAP_HEADER_BYTES
            if have != size:
                raise corruption(path, SNAP_HEADER_BYTES + have,
                                 f"snapshot file holds {have} of {size} bytes")
        except BaseException:
            os.close(self._fd)
            raise
        self.meta = meta
        self.size: int = size
        self._crc_want: int = crc
        # The CRC of the image's first `_checked` bytes, read in order.
        self._checked = 0
        self._crc = 0

    def read(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes of the image from `offset`."""
        n = max(0, min(n, self.size - offset))
        data = os.pread(self._fd, n, SNAP_HEADER_BYTES + offset)
        if len(data) != n:
            raise corruption(self.path, SNAP_HEADER_BYTES + offset + len(data),
                             "snapshot file ends early")
        if offset <= self._checked < offset + n:
            self._crc = zlib.crc32(memoryview(data)[self._checked - offset :], self._crc)
            self._checked = offset + n
            if self._checked == self.size and self._crc != self._crc_want:
                raise corruption(self.path, SNAP_HEADER_BYTES, "snapshot image fails its CRC")
        return data

    def view(self) -> SnapshotView:
        """The whole image mapped, its CRC checked; close the view when done."""
        return SnapshotView(self)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        return self._fd


class SnapshotView:
    """A read-only mapping of a snapshot file's image (`data`), checked
    against its CRC; its pages belong to the file, not to the heap."""

    def __init__(self, f: SnapshotFile) -> None:
        self._map: mmap.mmap | None = None
        if f.size == 0:
            self.data = memoryview(b"")
        else:
            try:
                self._map = mmap.mmap(f.fileno(), SNAP_HEADER_BYTES + f.size,
                                      prot=mmap.PROT_READ)
                self.data = memoryview(self._map)[SNAP_HEADER_BYTES:]
            except OSError:
                # Some file systems (FUSE ones among them) cannot map a
                # file: read it instead, a copy on the heap for a while.
                self.data = memoryview(f.read(0, f.size))
        if zlib.crc32(self.data) != f._crc_want:
            self.close()
            raise corruption(f.path, SNAP_HEADER_BYTES, "snapshot image fails its CRC")

    def close(self) -> None:
        self.data.release()
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> SnapshotView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_snapshot(path: Path, meta: SnapshotMeta) -> bytes:
    """The image in the snapshot file at `path`, checked against `meta` and its CRC."""
    f = SnapshotFile(path, meta)
    try:
        with f.view() as v:
            return bytes(v.data)
    finally:
        f.close()


__all__ = ["SNAPSHOT_SYNC_EVERY_BYTES", "SnapshotFile", "SnapshotView", "SnapshotWriter",
           "StorageError", "read_snapshot", "remove_temp_files", "snapshot_files",
           "snapshot_name", "write_snapshot"]
