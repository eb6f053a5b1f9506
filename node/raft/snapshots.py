"""Snapshots (§7): local compaction with a catch-up tail, sending a
snapshot in chunks to a follower behind the log, and installing one; the
configuration in force at the snapshot's last entry travels with it. A mixin
of `RaftCore`."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgspec

from node.raft.base import CoreState
from node.raft.messages import (
    AppendEntriesResponse,
    ConfState,
    Entry,
    InstallSnapshot,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
)
from node.raft.progress import Progress

# What an InstallSnapshot stream holds: u32 length of the configuration
# (msgpack), the configuration, then the state machine's image. In the
# stream, not in each chunk's header: chunks keep their size, which a UDP
# cluster fits to one datagram.
_CONF_LEN = struct.Struct("<I")
_conf_encoder = msgspec.msgpack.Encoder()
_conf_decoder = msgspec.msgpack.Decoder(ConfState)


def stream_head(conf: ConfState) -> bytes:
    """What a stream holds before the image."""
    head = _conf_encoder.encode(conf)
    return _CONF_LEN.pack(len(head)) + head


def unpack_stream(data: bytes | bytearray) -> tuple[ConfState, bytes] | None:
    """The configuration and image of a received stream; None if malformed.
    The image is the one copy made of the stream's bytes."""
    if len(data) < _CONF_LEN.size:
        return None
    (n,) = _CONF_LEN.unpack_from(data)
    end = _CONF_LEN.size + n
    view = memoryview(data)
    try:
        conf = _conf_decoder.decode(view[_CONF_LEN.size : end])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return conf, bytes(view[end:])


@dataclass(frozen=True, slots=True)
class OutgoingSnapshot:
    """The stored snapshot as a leader streams it: index and term in each
    chunk's header; in the stream `head` (the configuration), then the
    image, read from storage a chunk at a time (never held whole)."""

    meta: SnapshotMeta
    head: bytes
    size: int


class Snapshots(CoreState):
    """The rules above, as methods of `RaftCore` (core.py)."""

    def compact(self, meta: SnapshotMeta) -> list[Entry]:
        """Storage now holds a snapshot at `meta`: forget the entries it
        covers but the last `catchup_entries`, so that a follower a little
        behind is caught up by appends, not a whole snapshot (etcd keeps
        5,000 too). Returns the entries forgotten: freeing a snapshot
        interval of them at once held a loop for tens of milliseconds, so
        the caller frees them a few at a time."""
        if meta.index <= self.snapshot_meta.index:
            return []
        self.snapshot_meta = meta
        self._snap_out = None
        # Entries evicted from memory up to the snapshot cannot be read back
        # any more (storage dropped them with it): they go too.
        keep_from = max(meta.index - self.config.catchup_entries,
                        min(self.log.mem_base, meta.index))
        return self._compact_log(keep_from)

    def _compact_log(self, keep_from: int) -> list[Entry]:
        term = self.log.term(keep_from)
        if keep_from > self.log.snapshot.index and term is not None:
            dropped = self.log.compact(SnapshotMeta(keep_from, term))
            self._membership.compacted(keep_from)
            return dropped
        return []

    def evict_log(self) -> list[Entry]:
        """Stop holding in memory the applied entries beyond the newest
        `log_cache_entries` (in batches of an eighth of that); storage
        reads them back for a follower that lags. Entries at or below the
        stored snapshot cannot be read back: the catch-up tail kept before
        it goes first. Returns what was dropped, for the caller to free."""
        cache = self.config.log_cache_entries
        if cache is None:
            return []
        log = self.log
        upto = min(log.applied, log.stable_index, log.last_index() - cache)
        if upto - max(log.mem_base, self.snapshot_meta.index) < max(1, cache // 8):
            return []
        dropped = self._compact_log(self.snapshot_meta.index)
        return dropped + log.evict(upto)

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
        got = unpack_stream(buf)
        del buf
        if got is None:
            # Only a broken leader sends this; take nothing from it.
            self.counters.dropped_messages += 1
            return
        conf, image = got
        self.log.restore(meta)
        meta = SnapshotMeta(meta.index, meta.term, conf)
        if self._membership.restored(meta, self._base, self.log):
            self._conf_changed()
        self.snapshot_meta = meta
        self._snap_out = None
        self._pending_snapshot = Snapshot(meta, image)
        self._event("snapshot_installed", index=meta.index, snapshot_term=meta.term,
                    bytes=len(image), leader=m.src)
        self._send(AppendEntriesResponse(
            term=self.term, src=self.id, dst=m.src, success=True, index=meta.index))

    def _start_snapshot(self, to: str, pr: Progress) -> None:
        snap = self._outgoing_snapshot()
        if snap.meta.index < self.log.first_index() - 1:
            return
        pr.become_snapshot(snap.meta)
        self._event("snapshot_sent", to=to, index=snap.meta.index, bytes=snap.size)
        self._send_snapshot_chunk(to, pr)

    def _outgoing_snapshot(self) -> OutgoingSnapshot:
        """The stored snapshot as it is sent (see `OutgoingSnapshot`)."""
        cur = self.snapshot_meta
        out = self._snap_out
        if out is None or (out.meta.index, out.meta.term) != (cur.index, cur.term):
            meta = self._storage.snapshot_meta()
            head = stream_head(meta.conf or self._membership.at(meta.index))
            self._snap_out = out = OutgoingSnapshot(
                SnapshotMeta(meta.index, meta.term), head,
                len(head) + self._storage.snapshot_image_size())
        return out

    def _send_snapshot_chunk(self, to: str, pr: Progress) -> None:
        snap = self._outgoing_snapshot()
        if pr.snap_meta != snap.meta:
            pr.become_snapshot(snap.meta)
        off = pr.snap_offset
        n = self.config.snapshot_chunk_bytes
        chunk = snap.head[off : off + n]
        if len(chunk) < n and off + len(chunk) < snap.size:
            start = max(0, off - len(snap.head))
            chunk += self._storage.read_snapshot_image(start, n - len(chunk))
        self._send(InstallSnapshot(
            term=self.term, src=self.id, dst=to, meta=snap.meta, offset=off, data=chunk,
            done=off + len(chunk) >= snap.size, size=snap.size))
