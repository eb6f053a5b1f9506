"""The `Storage` protocol and `MemoryStorage`, its in-memory implementation.

Storage keeps what a node must not forget: hard state, log entries and the
latest snapshot. The core only reads it; the runner writes through it.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from node.messages import Entry, HardState, Snapshot, SnapshotMeta


class StorageError(Exception):
    """Storage cannot be used: corrupt, unreadable or inconsistent."""


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

    def snapshot(self) -> Snapshot:
        """The latest snapshot (an empty one at index 0 if there is none)."""
        ...

    def sync(self) -> None:
        """Make every write so far durable."""
        ...

    def close(self) -> None: ...


class MemoryStorage:
    """Storage held in memory: for tests and the simulator."""

    def __init__(self) -> None:
        self._hs = HardState()
        self._snap = Snapshot(SnapshotMeta(), b"")
        self._entries: list[Entry] = []

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
        base = self._snap.meta.index + 1
        if meta.index < base - 1:
            raise StorageError(f"snapshot at {meta.index} is older than {base - 1}")
        pos = meta.index - base
        if pos >= len(self._entries):
            raise StorageError(f"snapshot at {meta.index} is beyond the log")
        if pos >= 0 and self._entries[pos].term != meta.term:
            raise StorageError(f"snapshot term {meta.term} disagrees with the log at {meta.index}")
        self._entries = self._entries[pos + 1 :]
        self._snap = Snapshot(meta, data)

    def snapshot(self) -> Snapshot:
        return self._snap

    def sync(self) -> None:
        """Nothing to do: memory is as durable as it gets."""

    def close(self) -> None:
        """Nothing to release."""
