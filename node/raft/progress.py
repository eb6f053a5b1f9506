"""What a leader knows of each follower's log: match and next index, and the
flow-control state (probe, replicate with a bounded pipeline, snapshot).

Pure bookkeeping, after etcd's `tracker.Progress`.
"""

from __future__ import annotations

import enum
from collections import deque

from node.raft.messages import SnapshotMeta


class FlowState(enum.Enum):
    PROBE = "probe"  # one append at a time until the follower's log matches
    REPLICATE = "replicate"  # pipelined appends, at most `max_inflight` in flight
    SNAPSHOT = "snapshot"  # sending a snapshot; no appends


class Progress:
    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = FlowState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.recent_active = False
        self.read_seq = 0
        # Lease reads (node/raft/reads.py): the leader's tick when it sent the
        # newest heartbeat this follower answered; None: none yet this term.
        self.lease_from_tick: int | None = None
        # Snapshot transfer: which snapshot, the next byte to send, and whether
        # the follower answered since the last heartbeat (else the chunk is resent).
        self.snap_meta: SnapshotMeta | None = None
        self.snap_offset = 0
        self.snap_want = 0
        self.snap_progressed = False

    def is_paused(self) -> bool:
        if self.state is FlowState.PROBE:
            return self.probe_sent
        if self.state is FlowState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def become_probe(self) -> None:
        if self.state is FlowState.SNAPSHOT and self.snap_meta is not None:
            self.next = max(self.match + 1, self.snap_meta.index + 1)
        else:
            self.next = self.match + 1
        self._reset(FlowState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(FlowState.REPLICATE)

    def become_snapshot(self, meta: SnapshotMeta) -> None:
        self._reset(FlowState.SNAPSHOT)
        self.snap_meta = meta
        self.snap_progressed = True

    def _reset(self, state: FlowState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.snap_meta = None
        self.snap_offset = 0
        self.snap_want = 0

    def maybe_update(self, index: int) -> bool:
        """A success up to `index` arrived; True if the match index grew."""
        updated = False
        if self.match < index:
            self.match = index
            self.probe_sent = False
            updated = True
        self.next = max(self.next, index + 1)
        return updated

    def sent(self, last_index: int) -> None:
        """An append ending at `last_index` left for this follower."""
        if self.state is FlowState.REPLICATE:
            # An append without entries (it spreads the commit index) takes no
            # pipeline slot: its ack would not raise `match`, so never free it.
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflight.append(last_index)
        elif self.state is FlowState.PROBE:
            self.probe_sent = True

    def restart_from(self, last_index: int) -> None:
        """The follower lost entries it had acknowledged: forget its match
        and probe again from after its `last_index`."""
        self.match = 0
        self.next = last_index + 1
        self._reset(FlowState.PROBE)

    def free_to(self, index: int) -> None:
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()

    def maybe_decrease(self, rejected: int, hint_next: int) -> bool:
        """A rejection of the append after `rejected`; True if `next` moved back.
        Stale rejections (of appends already superseded) are ignored."""
        if self.state is FlowState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint_next), self.match + 1)
        self.probe_sent = False
        return True
