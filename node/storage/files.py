"""The `Storage` protocol, `MemoryStorage` (in memory) and `FileStorage` (a
WAL and snapshot files in a directory, see docs/STORAGE.md).

Storage keeps what a node must not forget: hard state, log entries and the
latest snapshot. The core only reads it; the runner writes through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import msgspec

from node.config import FSYNC_POLICIES, WAL_SEGMENT_BYTES
from node.raft.messages import Entry, HardState, Snapshot, SnapshotMeta
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
    read_snapshot,
    remove_temp_files,
    segment_paths_in,
    snapshot_files,
    snapshot_name,
    write_snapshot,
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
        """The latest snapshot (an empty one at index 0 if there is none)."""
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

    def sync(self) -> None:
        """Nothing to do: memory is as durable as it gets."""

    def close(self) -> None:
        """Nothing to release."""


class FileStorage:
    """Storage in a directory: a WAL of framed records and snapshot files.

    The entries after the snapshot are also kept in memory, as in
    `MemoryStorage`; the WAL is read only when the storage is opened. Not
    thread-safe, except `write_snapshot_file`. With `fsync="never"` nothing is
    fsynced: a crash of the machine (not of the process) can lose acknowledged
    writes. `recovery` says what opening found (a torn tail cut, and where).
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
        self._entries: list[Entry] = []
        self._snap: Snapshot | None = None
        self._snap_path: Path | None = None
        # A snapshot was installed: old files go once its mark is durable.
        self._cleanup_due = False
        try:
            self._wal, replay = Wal.open(
                self.directory, sync=self._sync, segment_bytes=segment_bytes)
            self.recovery: Recovery = self._wal.recovery
            try:
                self._replay(replay)
                self._synced = (self._meta.index + len(self._entries), self._hs.term)
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
        for k, rec in enumerate(replay.records):
            if isinstance(rec, Entry):
                pos = rec.index - base - 1
                if pos < 0:
                    continue
                if pos < len(entries):
                    del entries[pos:]
                elif pos > len(entries):
                    path, off = replay.where(k)
                    raise corruption(path, off, f"entry {rec.index} follows a gap after "
                                                f"{base + len(entries)} (a segment is missing)")
                entries.append(rec)
            elif isinstance(rec, HardState):
                hs = rec
            elif isinstance(rec, Truncate):
                del entries[max(0, rec.index - base - 1) :]
            else:
                lo = max(rec.meta.index, base) - base
                entries = entries[lo : max(lo, rec.last - base)]
                hs = rec.hard_state
        self._hs = hs
        self._entries = entries
        if mark is not None:
            self._meta = mark.meta
            self._snap_path = self.directory / snapshot_name(mark.meta)
            self._snap = Snapshot(mark.meta, read_snapshot(self._snap_path, mark.meta))

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
        return InitialState(self._hs, self._meta, list(self._entries))

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        base = self._meta.index + 1
        last = base + len(self._entries) - 1
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
            del self._entries[first - base :]
        self._wal.add_entries(entries)
        self._entries.extend(entries)

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
        pos = meta.index - self._meta.index - 1
        if 0 <= pos < len(self._entries) and self._entries[pos].term == meta.term:
            kept = self._entries[pos + 1 :]
        else:
            kept = []
        self.write_snapshot_file(meta, snap.data)
        self._install(meta, kept, snap)

    def create_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        kept = self._entries_after_local(meta)
        self.write_snapshot_file(meta, data)
        self._install(meta, kept, Snapshot(meta, data))

    def write_snapshot_file(self, meta: SnapshotMeta, data: bytes) -> str:
        """As the protocol says; a full disk raises NoSpace, and leaves
        nothing behind."""
        try:
            return str(write_snapshot(self.directory, meta, data, sync=self._sync))
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise NoSpace(f"the snapshot at {meta.index} cannot be written: {e}") from e
            raise

    def install_local_snapshot(self, meta: SnapshotMeta) -> None:
        kept = self._entries_after_local(meta)
        if not (self.directory / snapshot_name(meta)).is_file():
            raise StorageError(f"no snapshot file was written for {meta}")
        self._install(meta, kept, None)

    def snapshot(self) -> Snapshot:
        if self._snap is None:
            if self._snap_path is None:
                return Snapshot(SnapshotMeta(), b"")
            self._snap = Snapshot(self._meta, read_snapshot(self._snap_path, self._meta))
        return self._snap

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
        self._synced = (self._meta.index + len(self._entries), self._hs.term)
        if self._cleanup_due:
            self._remove_replaced_snapshots()

    def _remove_replaced_snapshots(self) -> None:
        """Once the mark of a new snapshot is durable, the files it replaced can
        go, and so can images written for snapshots at or below it that were
        never installed (a leader's snapshot overtook a local one). Newer
        images may still be waiting for `install_local_snapshot`."""
        self._cleanup_due = False
        removed = False
        for path, meta in snapshot_files(self.directory).items():
            if path != self._snap_path and meta.index <= self._meta.index:
                path.unlink(missing_ok=True)
                removed = True
        if removed and self._sync:
            fsync_dir(self.directory)

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
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def segment_paths(self) -> list[Path]:
        """The WAL segment files, oldest first."""
        return self._wal.segment_paths()

    def _entries_after_local(self, meta: SnapshotMeta) -> list[Entry]:
        """The entries a local snapshot at `meta` keeps."""
        return entries_after_local_snapshot(self._entries, self._meta, meta)

    def _install(self, meta: SnapshotMeta, kept: list[Entry], snap: Snapshot | None) -> None:
        self._wal.add(
            RecordKind.SNAPSHOT, SnapshotMark(meta, meta.index + len(kept), self._hs))
        self._cleanup_due = True
        self._snap_path = self.directory / snapshot_name(meta)
        self._meta = meta
        self._entries = kept
        self._snap = snap
