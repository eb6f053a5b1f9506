"""Linearizable reads by ReadIndex (thesis §6.4), confirmed by a majority of
each half of the configuration in force, and leadership transfer (thesis
§3.10) to a voter. A mixin of `RaftCore`."""

from __future__ import annotations

from node.errors import NotLeader
from node.raft.base import CoreState, PendingRead, Role
from node.raft.messages import (
    TimeoutNow,
)
from node.raft.quorum import VoteResult
from node.raft.ready import ReadState


class ReadsAndTransfer(CoreState):
    """The rules above, as methods of `RaftCore` (core.py)."""

    def _read(self, ctx: bytes) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.log.term(self.log.commit) != self.term:
            # Thesis §6.4 step 1: the leader must have committed an entry of
            # its term before its commit index is known to be current.
            self._reads_awaiting_commit.append(ctx)
            return
        self._start_read(ctx)

    def _start_read(self, ctx: bytes) -> None:
        if self._joint.vote_result({self.id: True}) is VoteResult.WON:
            self._ready_reads.append(ReadState(ctx, self.log.commit))
            return
        # Thesis §6.4 step 3: confirm leadership with a round of heartbeats
        # that a quorum answers; reads gathered in one loop share the round.
        self._pending_reads.append(PendingRead(ctx, self.log.commit, self._read_seq + 1))
        self._read_round_due = True

    def _confirm_reads(self) -> None:
        while self._pending_reads:
            r = self._pending_reads[0]
            acks = {p: True for p, pr in self.progress.items() if pr.read_seq >= r.seq}
            acks[self.id] = True
            if self._joint.vote_result(acks) is not VoteResult.WON:
                return
            self._pending_reads.pop(0)
            self._ready_reads.append(ReadState(r.ctx, r.index))

    def _drop_reads(self) -> None:
        self._dropped_reads.extend(r.ctx for r in self._pending_reads)
        self._dropped_reads.extend(self._reads_awaiting_commit)
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._read_round_due = False

    def _transfer(self, to: str) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id:
            return
        if to not in self.progress:
            raise ValueError(f"{to} is not a peer of {self.id}")
        if to not in self.conf.voters:
            raise ValueError(f"{to} is not a voter of the configuration in force, so it "
                             "cannot lead")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        # The transfer must finish within one election timeout (thesis §3.10).
        self.election_elapsed = 0
        self._event("transfer_started", to=to)
        if self.progress[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._maybe_send_append(to, send_if_empty=True)

    def _send_timeout_now(self, to: str) -> None:
        self._send(TimeoutNow(term=self.term, src=self.id, dst=to))
        self._event("leadership_transferred", to=to)
