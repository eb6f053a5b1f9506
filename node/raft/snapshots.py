"""Snapshots (§7): local compaction with a catch-up tail, sending a
snapshot in chunks to a follower behind the log, and installing one. A mixin
of `RaftCore`."""

from __future__ import annotations

from node.raft.base import CoreState
from node.raft.messages import (
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
)
from node.raft.progress import Progress


class Snapshots(CoreState):
    """The rules above, as methods of `RaftCore` (core.py)."""

    def compact(self, meta: SnapshotMeta) -> None:
        """Storage now holds a snapshot at `meta`: forget the entries it
        covers but the last `catchup_entries`, so that a follower a little
        behind is caught up by appends, not a whole snapshot (etcd keeps
        5,000 too)."""
        if meta.index <= self.snapshot_meta.index:
            return
        self.snapshot_meta = meta
        self._snap_out = None
        keep_from = meta.index - self.config.catchup_entries
        term = self.log.term(keep_from)
        if keep_from > self.log.snapshot.index and term is not None:
            self.log.compact(SnapshotMeta(keep_from, term))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self.log.commit:
            self._snap_in = None
            self._send(AppendEntriesResponse(
                term=self.term, src=self.id, dst=m.src, success=True, index=self.log.commit))
            return
        if m.offset == 0:
            self._snap_in = (meta, bytearray())
        if self._snap_in is None or self._snap_in[0] != meta or m.offset != len(self._snap_in[1]):
            want = len(self._snap_in[1]) if self._snap_in and self._snap_in[0] == meta else 0
            self._send(InstallSnapshotResponse(
                term=self.term, src=self.id, dst=m.src, meta=meta, next_offset=want))
            return
        buf = self._snap_in[1]
        buf.extend(m.data)
        if not m.done:
            self._send(InstallSnapshotResponse(
                term=self.term, src=self.id, dst=m.src, meta=meta, next_offset=len(buf)))
            return
        self._snap_in = None
        self.log.restore(meta)
        self.snapshot_meta = meta
        self._snap_out = None
        self._pending_snapshot = Snapshot(meta, bytes(buf))
        self._event("snapshot_installed", index=meta.index, snapshot_term=meta.term,
                    bytes=len(buf), leader=m.src)
        self._send(AppendEntriesResponse(
            term=self.term, src=self.id, dst=m.src, success=True, index=meta.index))

    def _start_snapshot(self, to: str, pr: Progress) -> None:
        snap = self._outgoing_snapshot()
        if snap.meta.index < self.log.first_index() - 1:
            return
        pr.become_snapshot(snap.meta)
        self._event("snapshot_sent", to=to, index=snap.meta.index, bytes=len(snap.data))
        self._send_snapshot_chunk(to, pr)

    def _outgoing_snapshot(self) -> Snapshot:
        if self._snap_out is None or self._snap_out.meta != self.snapshot_meta:
            self._snap_out = self._storage.snapshot()
        return self._snap_out

    def _send_snapshot_chunk(self, to: str, pr: Progress) -> None:
        snap = self._outgoing_snapshot()
        if pr.snap_meta != snap.meta:
            pr.become_snapshot(snap.meta)
        off = pr.snap_offset
        chunk = snap.data[off : off + self.config.snapshot_chunk_bytes]
        self._send(InstallSnapshot(
            term=self.term, src=self.id, dst=to, meta=snap.meta, offset=off, data=chunk,
            done=off + len(chunk) >= len(snap.data), size=len(snap.data)))
