"""The acceptor (Paxos Made Simple §2.2, rule P1a) and the learner (§2.3)
of every node: promise, accept, refuse with the higher ballot, and learn
which slots are chosen. A mixin of `PaxosCore`; no state of its own.

What an acceptor answers promises its state, so every answer leaves only
after that state is on disk (§2.5): `Promise`, `Accepted`, `Preempted`,
`HeartbeatAck` are sent after the Ready's persist (node/raft/ready.py).
"""

from __future__ import annotations

from node.paxos.base import PaxosState
from node.paxos.messages import (
    Accept,
    Accepted,
    Heartbeat,
    HeartbeatAck,
    Preempted,
    Prepare,
    PrePrepare,
    PrePromise,
    Promise,
    decree_text,
    is_decree,
)
from node.paxos.slots import is_hole
from node.raft.base import Role
from node.raft.messages import (
    Entry,
    InstallSnapshot,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)


class Acceptor(PaxosState):
    """The rules above, as methods of `PaxosCore` (core.py)."""

    def _accept_window(self) -> int:
        """How far past the end of its slots an acceptor takes a value: as
        far as a leader's pipeline to it reaches; beyond, the leader has
        lost track of it and starts again from what it knows chosen."""
        return self.config.max_append_entries * self.config.max_inflight_appends

    def _refuse(self, src: str, ballot: int) -> None:
        self._send(Preempted(term=self.promised, src=self.id, dst=src, ballot=ballot))

    # --- before phase 1 ----------------------------------------------------------

    def _on_pre_prepare(self, m: PrePrepare) -> None:
        # A leader this node heard within an election timeout lives: it
        # would preempt that leader for nothing (thesis §9.6, §4.2.3).
        hears_leader = self.role is Role.LEADER or (
            self.leader is not None and self.election_elapsed < self.config.election_ticks)
        granted = m.term > self.promised and not hears_leader
        self._send(PrePromise(term=m.term, src=self.id, dst=m.src, granted=granted,
                              promised=self.promised))

    # --- phase 1 -----------------------------------------------------------------

    def _on_prepare(self, m: Prepare) -> None:
        # P1b: promise never to accept a ballot below m.term, unless one
        # above it was promised already.
        if m.term < self.promised:
            self._refuse(m.src, m.term)
            return
        fresh = m.term > self.promised
        if fresh:
            self.promised = m.term
            self._heard_ballot(m.term, m.src)
            if m.from_slot >= self.log.first_index():
                # A proposer is trying: give it an election timeout to
                # finish. Not one that lacks chosen slots this node has only
                # in its snapshot: it gives up (proposer.py), and this node
                # must not wait for it, or nobody who could lead would try.
                self.election_elapsed = 0
        entries, upto, complete = self._report(m.from_slot)
        self._send(Promise(term=m.term, src=self.id, dst=m.src, from_slot=m.from_slot,
                           upto=upto, commit=self.log.commit, first_slot=self.log.first_index(),
                           entries=entries, complete=complete))
        if fresh:
            self._event("promised", proposer=m.src, ballot=self.describe(m.term),
                        from_slot=m.from_slot, accepted=len(entries), commit=self.log.commit)

    def _report(self, from_slot: int) -> tuple[list[Entry], int, bool]:
        """What this acceptor accepted from `from_slot` on, as much as one
        message holds: the values (holes left out), the last slot covered,
        and whether that is the end of its slots."""
        last = self.log.last_index()
        lo = max(from_slot, self.log.first_index())
        if lo > last:
            return [], last, True
        # As much as a leader may have in flight to one acceptor: one answer
        # for the usual few open slots, pieces only after a long outage.
        got = self.log.slice(lo, last + 1, self.config.max_append_bytes,
                             self._accept_window())
        upto = got[-1].index
        return [e for e in got if not is_hole(e)], upto, upto == last

    # --- phase 2 -----------------------------------------------------------------

    def _on_accept(self, m: Accept) -> None:
        # P2b: accept unless a higher ballot was promised.
        if m.term < self.promised and not self._forget_promises:
            self._refuse(m.src, m.term)
            return
        if m.term > self.promised:
            self.promised = m.term
        self._follow(m.src, m.term)
        entries = m.entries
        if not entries or any(e.term != m.term for e in entries):
            self.counters.dropped_messages += 1  # only a broken leader sends this
            return
        lo, hi = entries[0].index, entries[-1].index
        last = self.log.last_index()
        if lo > last + 1 + self._accept_window():
            self._send(Accepted(term=m.term, src=self.id, dst=m.src, lo=lo, hi=hi,
                                commit=self.log.commit, last=last, refused=True))
            return
        for e in entries:
            # A slot known chosen keeps its value, which is this one too
            # (a leader proposes nothing else there, P2c).
            if e.index > self.log.commit and self.log.put(e) and is_decree(e):
                self._decree_slots.add(e.index)
                self._event("accepted", slot=e.index, ballot=self.describe(e.term),
                            proposer=m.src, value=decree_text(e.data))
        self._learn(m.commit, m.term)
        self._send(Accepted(term=m.term, src=self.id, dst=m.src, lo=lo, hi=hi,
                            commit=self.log.commit, last=self.log.last_index()))

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if m.term < self.promised:
            self._refuse(m.src, m.term)
            return
        self._follow(m.src, m.term)
        self._learn(m.commit, m.term)
        self._send(HeartbeatAck(term=m.term, src=self.id, dst=m.src, seq=m.seq,
                                commit=self.log.commit))

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        """The leader hands over (node/paxos/leader.py): run phase 1 now. A
        ballot below the promise is a deposed leader's, too late to heed."""
        if m.term < self.promised:
            return
        self._event("timeout_now_received", leader=m.src)
        self._campaign("transfer")

    # --- learning ------------------------------------------------------------------

    def _learn(self, commit: int, ballot: int) -> None:
        """The leader of `ballot` knows every slot up to `commit` chosen. A
        slot this acceptor accepted in that very ballot holds the chosen
        value (one ballot proposes one value per slot), so it is chosen
        here too; the first other slot stops the prefix, and the leader
        sends it again."""
        end = min(commit, self.log.last_index())
        s = self.log.commit
        while s < end:
            e = self.log.at(s + 1)
            if e is None or e.term != ballot:
                break
            s += 1
        if s > self.log.commit:
            self._chosen_to(s)

    def _chosen_to(self, index: int) -> None:
        """Every slot up to `index` is known chosen now."""
        self.log.commit_to(index)
        if self._decree_slots:
            for slot in sorted(s for s in self._decree_slots if s <= index):
                self._decree_slots.discard(slot)
                e = self.log.at(slot)
                if e is not None:
                    self._event("chosen", slot=slot, ballot=self.describe(e.term),
                                value=decree_text(e.data))

    # --- snapshots from the leader ----------------------------------------------------

    def _on_snapshot(self, m: InstallSnapshot) -> None:
        if m.term < self.promised:
            self._refuse(m.src, m.term)
            return
        self._follow(m.src, m.term)
        meta = m.meta
        if meta.index <= self.log.commit:
            self._snap_in = None
            self._send(Accepted(term=m.term, src=self.id, dst=m.src, lo=meta.index + 1,
                                hi=meta.index, commit=self.log.commit,
                                last=self.log.last_index()))
            return
        if m.offset == 0:
            self._snap_in = (meta, bytearray())
        if self._snap_in is None or self._snap_in[0] != meta or m.offset != len(self._snap_in[1]):
            want = len(self._snap_in[1]) if self._snap_in and self._snap_in[0] == meta else 0
            self._send(InstallSnapshotResponse(term=m.term, src=self.id, dst=m.src, meta=meta,
                                               next_offset=want))
            return
        buf = self._snap_in[1]
        buf.extend(m.data)
        if not m.done:
            self._send(InstallSnapshotResponse(term=m.term, src=self.id, dst=m.src, meta=meta,
                                               next_offset=len(buf)))
            return
        self._snap_in = None
        # The snapshot holds slots chosen in ballots up to the leader's; a
        # node that knows them chosen promises that ballot, so that it never
        # answers a lower one as if it held them (docs/PAXOS_VS_RAFT.md).
        self.promised = max(self.promised, m.term)
        meta = SnapshotMeta(meta.index, meta.term)
        self.log.restore(meta)
        self._decree_slots = {s for s in self._decree_slots if s > meta.index}
        self.snapshot_meta = meta
        self._snap_out = None
        self._pending_snapshot = Snapshot(meta, bytes(buf))
        self._event("snapshot_installed", index=meta.index, snapshot_term=meta.term,
                    bytes=len(buf), leader=m.src)
        self._send(Accepted(term=m.term, src=self.id, dst=m.src, lo=meta.index + 1,
                            hi=meta.index, commit=self.log.commit, last=self.log.last_index()))

    # --- whom to follow ---------------------------------------------------------------

    def _follow(self, leader: str, ballot: int) -> None:
        """A leader of `ballot` (at least our promise) speaks: it leads now."""
        self._heard_ballot(ballot, leader)
        if self.role is not Role.FOLLOWER or self.leader != leader or \
                self.leader_ballot != ballot:
            self._become_follower(leader, ballot)
        self.election_elapsed = 0
