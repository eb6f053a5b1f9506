"""The configurations of one node's log, by the entry that made each (thesis
§4.1: a server uses the latest configuration in its log, committed or not;
a configuration takes effect when appended and is undone when its entry is
truncated). Pure bookkeeping over `RaftLog`; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.raft.confchange import apply_change, decode_change
from node.raft.log import RaftLog
from node.raft.messages import ConfState, Entry, EntryKind, SnapshotMeta


@dataclass(frozen=True, slots=True)
class ConfPoint:
    """The configuration in force from the entry (`index`, `term`) on."""

    index: int
    term: int
    conf: ConfState


class Membership:
    """The first point is the configuration in force where the log starts
    (from its snapshot, else the cluster's initial one); each later point
    is a CONF_CHANGE entry of the log."""

    def __init__(self, start: SnapshotMeta, base: ConfState, entries: Iterable[Entry]) -> None:
        self._points = [ConfPoint(start.index, start.term, start.conf or base)]
        self.appended(entries)

    @property
    def conf(self) -> ConfState:
        """The configuration in force: the latest in the log."""
        return self._points[-1].conf

    @property
    def index(self) -> int:
        """The index of the entry that made the configuration in force (for
        the first point, the log's start)."""
        return self._points[-1].index

    def points(self) -> list[ConfPoint]:
        return list(self._points)

    def at(self, index: int) -> ConfState:
        """The configuration in force at `index` (not below the log's start)."""
        for p in reversed(self._points):
            if p.index <= index:
                return p.conf
        raise IndexError(f"no configuration is known at {index}, before the log's start "
                         f"{self._points[0].index}")

    def appended(self, entries: Iterable[Entry]) -> bool:
        """The log now holds `entries` (in order, after those already here);
        True if one of them changed the configuration. The caller has checked
        that the change is valid (the leader) or takes it from the log as it
        is (a follower: the leader checked it against the same prefix)."""
        changed = False
        for e in entries:
            if e.kind is EntryKind.CONF_CHANGE and e.index > self._points[-1].index:
                conf = apply_change(self.conf, decode_change(e.data))
                self._points.append(ConfPoint(e.index, e.term, conf))
                changed = True
        return changed

    def synced(self, log: RaftLog, entries: list[Entry]) -> bool:
        """After an append that may have truncated a conflicting suffix of
        `log` (§5.3): undo the configurations whose entries are gone, then
        take those of `entries` that are now in the log. True if the
        configuration in force changed."""
        before = self._points[-1]
        while len(self._points) > 1 and log.term(self._points[-1].index) != self._points[-1].term:
            self._points.pop()
        # Only a configuration entry can change it: test the kind before
        # looking the term up (this runs for every entry a follower appends).
        self.appended(e for e in entries
                      if e.kind is EntryKind.CONF_CHANGE and log.term(e.index) == e.term)
        return self._points[-1] != before

    def compacted(self, first_kept: int) -> None:
        """The log no longer reaches before `first_kept`: forget the points
        before it but the one in force there."""
        keep = 0
        for i, p in enumerate(self._points):
            if p.index <= first_kept:
                keep = i
        del self._points[:keep]

    def restored(self, meta: SnapshotMeta, base: ConfState, log: RaftLog) -> bool:
        """A leader's snapshot replaced the log's start (§7): the
        configuration is the snapshot's, then that of any entries kept after
        it. True if the configuration in force changed."""
        before = self.conf
        self._points = [ConfPoint(meta.index, meta.term, meta.conf or base)]
        self.appended(log.entries)
        return self.conf != before
