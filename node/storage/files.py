"""The `Storage` protocol, `MemoryStorage` (in memory) and `FileStorage` (a
WAL and snapshot files in a directory, see docs/STORAGE.md).

Storage keeps what a node must not forget: hard state, log entries and the
latest snapshot. The core only reads it; the runner writes through it.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec

from node.config import FSYNC_POLICIES, WAL_SEGMENT_BYTES
from node.raft.log import entry_size
from node.raft.messages import Entry, HardState, Snapshot, SnapshotMeta
from node.storage.entry_store import EntryStore
from node.storage.snapfile import (
    SnapshotFile,
    SnapshotView,
    SnapshotWriter,
    read_snapshot,
    remove_temp_files,
    snapshot_files,
    snapshot_name,
    write_snapshot,
)
from node.storage.wal import (
    FULL_ERRNOS,
    NoSpace,
    RecordKind,
    Recovery,
    Replay,
    SnapshotMark,
    StorageError,
    Truncate,
    Wal,
    corruption,
    fsync_dir,
    lock_directory,
    segment_paths_in,
)

__all__ = ["FileStorage", "InitialState", "MemoryStorage", "NoSpace", "Storage", "StorageError"]


class InitialState(msgspec.Struct, frozen=True):
    """What a node starts from: hard state, snapshot point and the log after it."""

    hard_state: HardState
    snapshot: SnapshotMeta
    entries: list[Entry]


class Storage(Protocol):
    """Durable state of one node.

    Writes (`append`, `set_hard_state`, `apply_snapshot`, `create_snapshot`)
    may be buffered; they are durable only after `sync()` returns.
    """

    def initial_state(self) -> InitialState:
        """Hard state, snapshot point and every entry after the snapshot."""
        ...

    def append(self, entries: list[Entry]) -> None:
        """Store `entries`, first removing any stored entry at or after
        `entries[0].index` (a conflicting suffix)."""
        ...

    def set_hard_state(self, hs: HardState) -> None: ...

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Install a snapshot received from a leader: entries after it survive
        only if the stored log has an entry at `snap.meta.index` with
        `snap.meta.term`; otherwise the whole log is dropped."""
        ...

    def create_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Record a local snapshot covering entries up to `meta.index` and
        drop those entries from the log."""
        ...

    def write_snapshot_file(self, meta: SnapshotMeta, data: bytes) -> str:
        """First half of `create_snapshot`, the slow one: store the image for
        `meta` durably and return where it is. Thread-safe: it touches no log
        state, so it may run off the event loop while the node goes on."""
        ...

    def install_local_snapshot(self, meta: SnapshotMeta) -> None:
        """Second half of `create_snapshot`, fast, on the loop thread: the image
        written by `write_snapshot_file(meta, ...)` becomes the snapshot and the
        entries it covers are dropped, as `create_snapshot` says."""
        ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot (an empty one at index 0 if there is none),
        its whole image in memory: for tests and the simulator."""
        ...

    def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot's point (index 0 if there is none)."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries lo..hi-1 after the snapshot, at least one if any, within
        `max_bytes`: what a leader sends a follower behind its memory."""
        ...

    def snapshot_image_size(self) -> int:
        """The byte length of the latest snapshot's image."""
        ...

    def read_snapshot_image(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes of the latest snapshot's image from `offset`: a
        leader sends a large image in chunks without holding all of it."""
        ...

    def sync(self) -> None:
        """Make every write so far durable."""
        ...

    def close(self) -> None: ...


def _check_wal_present(directory: Path) -> None:
    """A snapshot file without any WAL segment: the WAL was deleted (the
    storage always keeps the segment a snapshot's mark is in). Opening would
    start an empty log and delete the snapshot as never marked."""
    snaps = snapshot_files(directory)
    if snaps and not segment_paths_in(directory):
        newest = max(snaps, key=lambda p: snaps[p].index)
        raise StorageError(
            f"{directory}: the WAL is missing (no wal-*.log segment) but the snapshot "
            f"{newest.name} is there: the WAL was deleted, and with it the vote, the term and "
            "every entry after the snapshot. The node must not start from what is left; "
            "nothing was changed. Restore the WAL, or move the data directory away and bring "
            "the node back as a new member")


def entries_after_local_snapshot(
    entries: list[Entry], current: SnapshotMeta, meta: SnapshotMeta
) -> list[Entry]:
    """The entries that survive a local snapshot at `meta`, given the log
    `entries` after the `current` snapshot; refuses a snapshot older than
    the current one, beyond the log, or disagreeing with it on the term."""
    base = current.index + 1
    if meta.index < base - 1:
        raise StorageError(f"snapshot at {meta.index} is older than {base - 1}")
    pos = meta.index - base
    if pos >= len(entries):
        raise StorageError(f"snapshot at {meta.index} is beyond the log")
    if pos >= 0 and entries[pos].term != meta.term:
        raise StorageError(f"snapshot term {meta.term} disagrees with the log at {meta.index}")
    return entries[pos + 1 :]


class MemoryStorage:
    """Storage held in memory: for tests and the simulator."""

    def __init__(self) -> None:
        self._hs = HardState()
        self._snap = Snapshot(SnapshotMeta(), b"")
        self._entries: list[Entry] = []
        self._staged: dict[SnapshotMeta, bytes] = {}

    def initial_state(self) -> InitialState:
        return InitialState(self._hs, self._snap.meta, list(self._entries))

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        base = self._snap.meta.index + 1
        last = base + len(self._entries) - 1
        if first < base:
            raise StorageError(f"append at {first} is below the snapshot at {base - 1}")
        if first > last + 1:
            raise StorageError(f"append at {first} leaves a gap after {last}")
        del self._entries[first - base :]
        self._entries.extend(entries)

    def set_hard_state(self, hs: HardState) -> None:
        self._hs = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        meta = snap.meta
        base = self._snap.meta.index + 1
        pos = meta.index - base
        if 0 <= pos < len(self._entries) and self._entries[pos].term == meta.term:
            self._entries = self._entries[pos + 1 :]
        else:
            self._entries = []
        self._snap = snap

    def create_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._entries = entries_after_local_snapshot(self._entries, self._snap.meta, meta)
        self._snap = Snapshot(meta, data)

    def write_snapshot_file(self, meta: SnapshotMeta, data: bytes) -> str:
        self._staged[meta] = data
        return f"memory:{snapshot_name(meta)}"

    def install_local_snapshot(self, meta: SnapshotMeta) -> None:
        data = self._staged.pop(meta, None)
        if data is None:
            raise StorageError(f"no snapshot image was written for {meta}")
        self.create_snapshot(meta, data)

    def snapshot(self) -> Snapshot:
        return self._snap

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snap.meta

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        base = self._snap.meta.index + 1
        if lo < base:
            raise IndexError(f"entry {lo} is at or below the snapshot at {base - 1}")
        out: list[Entry] = []
        size = 0
        for e in self._entries[lo - base : hi - base]:
            size += entry_size(e)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def snapshot_image_size(self) -> int:
        return len(self._snap.data)

    def read_snapshot_image(self, offset: int, n: int) -> bytes:
        return self._snap.data[offset : offset + max(0, n)]

    def sync(self) -> None:
        """Nothing to do: memory is as durable as it gets."""

    def close(self) -> None:
        """Nothing to release."""


class FileStorage:
    """Storage in a directory: a WAL of framed records and snapshot files.

    The entries after the snapshot are also kept in memory, as in
    `MemoryStorage`; the WAL is read only when the storage is opened. The
    snapshot's image is not: it is read from its file when asked for. Not
    thread-safe, except `write_snapshot_file` and a `SnapshotWriter`. With
    `fsync="never"` nothing is fsynced: a crash of the machine (not of the
    process) can lose acknowledged writes. `recovery` says what opening
    found (a torn tail cut, and where).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fsync: str = "always",
        segment_bytes: int = WAL_SEGMENT_BYTES,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.directory = Path(directory)
        self._sync = fsync == "always"
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True)
            if self._sync:
                fsync_dir(self.directory.parent)
        self._lock_fd = lock_directory(self.directory)
        try:
            _check_wal_present(self.directory)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._hs = HardState()
        self._meta = SnapshotMeta()
        self._log = EntryStore(self.directory, 0, [])
        self._snap_path: Path | None = None
        # The current snapshot's file, open for ranged reads once asked.
        self._snap_file: SnapshotFile | None = None
        # A snapshot was installed: old files go once its mark is durable.
        self._cleanup_due = False
        try:
            self._wal, replay = Wal.open(
                self.directory, sync=self._sync, segment_bytes=segment_bytes)
            self.recovery: Recovery = self._wal.recovery
            try:
                self._replay(replay)
                self._synced = (self._log.last_index(), self._hs.term)
                self._wal.collect()
                self._remove_stale_snapshots()
            except BaseException:
                self._wal.abandon()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        fsync: str = "always",
        segment_bytes: int = WAL_SEGMENT_BYTES,
    ) -> FileStorage:
        """Open (or create) the storage in `directory` and recover its state."""
        return cls(directory, fsync, segment_bytes)

    # --- recovery -------------------------------------------------------------

    def _replay(self, replay: Replay) -> None:
        """Rebuild the state from the records. The log starts after the last
        snapshot mark: entries at or below it are covered by its image (and may
        sit in segments already deleted), everything after it is replayed."""
        mark = replay.last_mark
        base = mark.meta.index if mark is not None else 0
        hs = HardState()
        entries: list[Entry] = []
        # The record number of each entry, for where it lies.
        records: list[int] = []
        for k, rec in enumerate(replay.records):
            if isinstance(rec, Entry):
                pos = rec.index - base - 1
                if pos < 0:
                    continue
                if pos < len(entries):
                    del entries[pos:]
                    del records[pos:]
                elif pos > len(entries):
                    path, off = replay.where(k)
                    raise corruption(path, off, f"entry {rec.index} follows a gap after "
                                                f"{base + len(entries)} (a segment is missing)")
                entries.append(rec)
                records.append(k)
            elif isinstance(rec, HardState):
                hs = rec
            elif isinstance(rec, Truncate):
                del entries[max(0, rec.index - base - 1) :]
                del records[max(0, rec.index - base - 1) :]
            else:
                lo = max(rec.meta.index, base) - base
                entries = entries[lo : max(lo, rec.last - base)]
                records = records[lo : max(lo, rec.last - base)]
                hs = rec.hard_state
        self._hs = hs
        self._log = EntryStore(self.directory, base, entries)
        self._log.written(array("Q", (e.index for e in entries)),
                          array("Q", map(replay.seq_of, records)),
                          array("Q", (replay.offsets[k] for k in records)))
        if mark is not None:
            self._meta = mark.meta
            self._snap_path = self.directory / snapshot_name(mark.meta)
            # Checked whole now (header and CRC), as a node starts; not kept.
            f = self._snapshot_file()
            f.view().close()

    def _remove_stale_snapshots(self) -> None:
        """At open, remove every snapshot file but the current one: older ones,
        and newer ones whose mark never became durable (a crash between the two
        phases of a snapshot), and half-written temporary files."""
        removed = remove_temp_files(self.directory)
        for path in snapshot_files(self.directory):
            if path != self._snap_path:
                path.unlink()
                removed = True
        if removed and self._sync:
            fsync_dir(self.directory)

    # --- the Storage protocol -------------------------------------------------------

    def initial_state(self) -> InitialState:
        return InitialState(self._hs, self._meta,
                            self._log.get(self._meta.index + 1, self._log.last_index() + 1))

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries lo..hi-1, at least one if any, within `max_bytes`: those
        evicted from memory are read back from the WAL."""
        return self._log.get(lo, hi, max_bytes)

    def evict(self, upto: int) -> list[Entry]:
        """Stop holding the entries up to `upto` in memory (those synced);
        `entries` reads them from the WAL. Returns them, for the caller to
        free a few at a time."""
        return self._log.evict(upto)

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        base = self._meta.index + 1
        last = self._log.last_index()
        if first < base:
            raise StorageError(f"append at {first} is below the snapshot at {base - 1}")
        if first > last + 1:
            raise StorageError(f"append at {first} leaves a gap after {last}")
        if entries[-1].index != first + len(entries) - 1:
            raise StorageError(f"entries {first}..{entries[-1].index} are not contiguous")
        if first <= last:
            # §5.3: a conflicting suffix goes; the marker reaches disk in the same
            # sync() as the new entries, before they are acknowledged.
            self._wal.add(RecordKind.TRUNCATE, Truncate(first))
            self._log.truncate(first)
        self._wal.add_entries(entries)
        self._log.extend(entries)

    def set_hard_state(self, hs: HardState) -> None:
        self._wal.add(RecordKind.HARD_STATE, hs)
        self._hs = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """As the protocol says; a snapshot older than the stored one is refused
        (the entries it would need back may be gone with their segments)."""
        meta = snap.meta
        if meta.index < self._meta.index:
            raise StorageError(
                f"snapshot at {meta.index} is older than the stored one at {self._meta.index}")
        self.write_snapshot_file(meta, snap.data)
        self._install(meta, keep=self._log.term(meta.index) == meta.term)

    def install_received_snapshot(self, meta: SnapshotMeta) -> None:
        """Second half of `apply_snapshot`, after `write_snapshot_file(meta,
        ...)` (which may run on another thread): the leader's snapshot
        becomes the stored one, as `apply_snapshot` says."""
        if meta.index < self._meta.index:
            raise StorageError(
                f"snapshot at {meta.index} is older than the stored one at {self._meta.index}")
        if not (self.directory / snapshot_name(meta)).is_file():
            raise StorageError(f"no snapshot file was written for {meta}")
        self._install(meta, keep=self._log.term(meta.index) == meta.term)

    def create_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._check_local(meta)
        self.write_snapshot_file(meta, data)
        self._install(meta, keep=True)

    def write_snapshot_file(self, meta: SnapshotMeta, data: bytes) -> str:
        """As the protocol says; a full disk raises NoSpace, and leaves
        nothing behind."""
        try:
            return str(write_snapshot(self.directory, meta, data, sync=self._sync))
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise NoSpace(f"the snapshot at {meta.index} cannot be written: {e}") from e
            raise

    def snapshot_writer(self, meta: SnapshotMeta) -> SnapshotWriter:
        """A stream to write the image for `meta` in pieces (on any
        thread), then `install_local_snapshot(meta)` once it finished."""
        return SnapshotWriter(self.directory, meta, sync=self._sync)

    def install_local_snapshot(self, meta: SnapshotMeta) -> None:
        self._check_local(meta)
        if not (self.directory / snapshot_name(meta)).is_file():
            raise StorageError(f"no snapshot file was written for {meta}")
        self._install(meta, keep=True)

    def snapshot(self) -> Snapshot:
        if self._snap_path is None:
            return Snapshot(SnapshotMeta(), b"")
        return Snapshot(self._meta, read_snapshot(self._snap_path, self._meta))

    def snapshot_meta(self) -> SnapshotMeta:
        return self._meta

    def snapshot_image_size(self) -> int:
        return 0 if self._snap_path is None else self._snapshot_file().size

    def read_snapshot_image(self, offset: int, n: int) -> bytes:
        return b"" if self._snap_path is None else self._snapshot_file().read(offset, n)

    def snapshot_view(self) -> SnapshotView | None:
        """The current snapshot's image mapped whole and checked (None if
        there is none), to decode without a copy of it; close it after."""
        return None if self._snap_path is None else self._snapshot_file().view()

    def _snapshot_file(self) -> SnapshotFile:
        assert self._snap_path is not None
        if self._snap_file is None:
            self._snap_file = SnapshotFile(self._snap_path, self._meta)
        return self._snap_file

    def durable_floor(self, commit: int) -> tuple[int, int]:
        """An index the log durably holds and will always hold (`commit`,
        the commit index known now, or the last synced entry if lower) and
        the synced term (node/membership_mark.py)."""
        return min(commit, self._synced[0]), self._synced[1]

    @property
    def reservation_error(self) -> OSError | None:
        """Why the WAL stopped reserving blocks ahead, if it did."""
        return self._wal.reservation_error

    @property
    def space_error(self) -> OSError | None:
        """Why the last write or reservation found the disk full, until one
        succeeds (or `forget_space_error`): the node should take no new
        writes while it is set."""
        return self._wal.space_error

    def forget_space_error(self) -> None:
        """There is room again, the caller saw: the next sync tries anew."""
        self._wal.space_error = None

    def sync(self) -> None:
        """Make every write durable (one fdatasync), then drop the segments
        and snapshot files that a now durable snapshot mark made dead."""
        self._wal.sync()
        self._log.written(*self._wal.take_written())
        self._synced = (self._log.last_index(), self._hs.term)
        if self._cleanup_due:
            self._remove_replaced_snapshots()

    def _remove_replaced_snapshots(self) -> None:
        """Once the mark of a new snapshot is durable, the files it replaced can
        go, and so can images written for snapshots at or below it that were
        never installed (a leader's snapshot overtook a local one). Newer
        images may still be waiting for `install_local_snapshot`."""
        self._cleanup_due = False
        dead = [path for path, meta in snapshot_files(self.directory).items()
                if path != self._snap_path and meta.index <= self._meta.index]
        if not dead:
            return
        directory, sync = self.directory, self._sync

        def remove() -> None:
            for path in dead:
                path.unlink(missing_ok=True)
            if sync:
                fsync_dir(directory)

        if self._wal.remover is None:
            remove()
        else:
            self._wal.remover(remove)

    def remove_files_with(self, submit: Callable[[Callable[[], None]], object]) -> None:
        """Hand the removal of dead WAL segments and replaced snapshot files
        to `submit` (another thread): unlinking a 100 MiB file took 50 ms
        here, on the loop that also sends heartbeats."""
        self._wal.remover = submit

    def close(self) -> None:
        """Sync what is buffered and release the directory."""
        if self._lock_fd < 0:
            return
        try:
            self.sync()
        finally:
            self.abandon()

    # --- beyond the protocol ------------------------------------------------------

    def abandon(self) -> None:
        """Release the directory without writing what is buffered, as a crash
        would: for tests of recovery."""
        self._wal.abandon()
        self._close_snapshot_file()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def segment_paths(self) -> list[Path]:
        """The WAL segment files, oldest first."""
        return self._wal.segment_paths()

    def _check_local(self, meta: SnapshotMeta) -> None:
        """Refuse a local snapshot as `entries_after_local_snapshot` does."""
        if meta.index < self._meta.index:
            raise StorageError(f"snapshot at {meta.index} is older than {self._meta.index}")
        if meta.index > self._log.last_index():
            raise StorageError(f"snapshot at {meta.index} is beyond the log")
        if meta.index > self._meta.index and self._log.term(meta.index) != meta.term:
            raise StorageError(f"snapshot term {meta.term} disagrees with the log at {meta.index}")

    def _install(self, meta: SnapshotMeta, *, keep: bool) -> None:
        """`meta` becomes the snapshot; the entries after it stay if `keep`."""
        if keep:
            self._log.drop_through(meta.index)
        else:
            self._log.reset(meta.index)
        self._wal.add(RecordKind.SNAPSHOT, SnapshotMark(meta, self._log.last_index(), self._hs))
        self._cleanup_due = True
        self._close_snapshot_file()
        self._snap_path = self.directory / snapshot_name(meta)
        self._meta = meta

    def _close_snapshot_file(self) -> None:
        if self._snap_file is not None:
            self._snap_file.close()
            self._snap_file = None
