"""Linearizable reads (thesis §6.4): ReadIndex at the leader and for followers
(§6.4.1), or under an opt-in lease (§6.4.1); leadership transfer (§3.10).
A mixin of `RaftCore`; no I/O, no clock but the ticks it is given."""

from __future__ import annotations

from node.errors import NotLeader
from node.raft.base import CoreState, PendingRead, Role
from node.raft.messages import (
    ReadIndex,
    ReadIndexResponse,
    TimeoutNow,
)
from node.raft.progress import Progress
from node.raft.quorum import VoteResult
from node.raft.ready import ReadState


class ReadsAndTransfer(CoreState):
    """The rules above, as methods of `RaftCore` (core.py)."""

    def _read(self, ctx: bytes) -> None:
        if self.role is Role.LEADER:
            self._leader_read(ctx, None)
            return
        if not self.config.follower_reads or self.role is not Role.FOLLOWER \
                or self.leader is None:
            raise NotLeader(self.leader)
        # Thesis §6.4.1: the follower asks the leader for its read index and
        # serves once it has applied that far itself; the reads asked for
        # until its next Ready share one request (one message, one index).
        self._forward_batch.append(ctx)

    def _send_forward_batch(self) -> None:
        batch, self._forward_batch = self._forward_batch, []
        assert self.leader is not None, "a change of leader drops the batch"
        self._forwarded_reads[batch[0]] = (self._ticks, batch)
        self._send(ReadIndex(term=self.term, src=self.id, dst=self.leader, ctx=batch[0]))

    def _leader_read(self, ctx: bytes, src: str | None) -> None:
        if self.log.term(self.log.commit) != self.term:
            # Thesis §6.4 step 1: the leader must have committed an entry of
            # its term before its commit index is known to be current.
            self._reads_awaiting_commit.append((ctx, src))
            return
        self._start_read(ctx, src)

    def _start_read(self, ctx: bytes, src: str | None) -> None:
        if self._joint.vote_result({self.id: True}) is VoteResult.WON or self._lease_holds():
            self._read_confirmed(ctx, self.log.commit, src)
            return
        # Thesis §6.4 step 3: confirm leadership with a round of heartbeats
        # that a quorum answers; reads gathered in one loop share the round,
        # whether this leader's own or asked for by followers.
        self._pending_reads.append(PendingRead(ctx, self.log.commit, self._read_seq + 1, src))
        self._read_round_due = True

    def _read_confirmed(self, ctx: bytes, index: int, src: str | None) -> None:
        if src is None:
            self._ready_reads.append(ReadState(ctx, index))
        else:
            self._send(ReadIndexResponse(term=self.term, src=self.id, dst=src, ctx=ctx,
                                         ok=True, index=index))

    def _confirm_reads(self) -> None:
        while self._pending_reads:
            r = self._pending_reads[0]
            acks = {p: True for p, pr in self.progress.items() if pr.read_seq >= r.seq}
            acks[self.id] = True
            if self._joint.vote_result(acks) is not VoteResult.WON:
                return
            self._pending_reads.pop(0)
            self._read_confirmed(r.ctx, r.index, r.src)

    def _read_index_from_follower(self, ctx: bytes, src: str) -> None:
        if self.role is Role.LEADER:
            self._leader_read(ctx, src)
        else:
            # It took this node for the leader of this term, which it no
            # longer is (CheckQuorum): the read cannot be confirmed here.
            self._send(ReadIndexResponse(term=self.term, src=self.id, dst=src, ctx=ctx,
                                         ok=False))

    def _read_index_answered(self, ctx: bytes, ok: bool, index: int) -> None:
        sent = self._forwarded_reads.pop(ctx, None)
        if sent is None:
            return  # dropped already (timed out)
        if ok:
            self._ready_reads.extend(ReadState(c, index) for c in sent[1])
        else:
            self._dropped_reads.extend(sent[1])

    def _expire_forwarded_reads(self) -> None:
        # An unanswered request or answer was lost, or the leader is cut
        # off: the client hears so within an election timeout, not never.
        oldest = self._ticks - self.config.election_ticks
        expired: list[bytes] = []
        for ctx in [c for c, (at, _) in self._forwarded_reads.items() if at <= oldest]:
            expired += self._forwarded_reads.pop(ctx)[1]
        if expired:
            self._dropped_reads.extend(expired)
            self._event("forwarded_reads_dropped", reads=len(expired), reason="timeout",
                        leader=self.leader)

    def _drop_forwarded_reads(self, reason: str) -> None:
        reads = [c for _, batch in self._forwarded_reads.values() for c in batch]
        reads += self._forward_batch
        if reads:
            self._event("forwarded_reads_dropped", reads=len(reads), reason=reason,
                        leader=self.leader)
            self._dropped_reads.extend(reads)
            self._forwarded_reads = {}
            self._forward_batch = []

    def _drop_reads(self) -> None:
        """Called before the term changes: refusals to followers carry the
        term they asked in, so they are heard rather than ignored as stale."""
        waiting = [(r.ctx, r.src) for r in self._pending_reads] + self._reads_awaiting_commit
        for ctx, src in waiting:
            if src is None:
                self._dropped_reads.append(ctx)
            else:
                self._send(ReadIndexResponse(term=self.term, src=self.id, dst=src, ctx=ctx,
                                             ok=False))
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._read_round_due = False
        self._drop_forwarded_reads("leader_changed")

    # --- lease reads (thesis §6.4.1) ------------------------------------------

    def _new_heartbeat_seq(self) -> int:
        """A fresh round number for heartbeats sent now; with leases, note
        when it was sent (an answer proves contact since then, not since
        it arrived)."""
        self._read_seq += 1
        if self.config.read_mode == "lease":
            self._seq_sent_tick[self._read_seq] = self._ticks
            oldest = self._ticks - self.config.election_ticks
            for seq in [s for s, at in self._seq_sent_tick.items() if at < oldest]:
                del self._seq_sent_tick[seq]
        return self._read_seq

    def _note_heartbeat_answer(self, pr: Progress, seq: int) -> None:
        sent = self._seq_sent_tick.get(seq)
        if sent is not None and (pr.lease_from_tick is None or sent > pr.lease_from_tick):
            pr.lease_from_tick = sent

    def _lease_holds(self) -> bool:
        """A majority answered a heartbeat sent less than (election timeout
        minus the drift margin) ago: each of them refuses votes until a full
        election timeout after it heard this leader (thesis §4.2.3, with
        CheckQuorum), so no other leader can exist yet, if clocks drift no
        more than the margin allows."""
        if self.config.read_mode != "lease" or self._lease_void \
                or self.lead_transferee is not None:
            return False
        newer_than = self._ticks - (self.config.election_ticks - self.config.lease_drift_ticks)
        acks = {p: True for p, pr in self.progress.items()
                if pr.lease_from_tick is not None and pr.lease_from_tick > newer_than}
        acks[self.id] = True
        return self._joint.vote_result(acks) is VoteResult.WON

    # --- leadership transfer --------------------------------------------------

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
        # Votes for its target override the followers' lease, even if the
        # message arrives late: this leader's lease is void for its term.
        self._lease_void = True
        self._send(TimeoutNow(term=self.term, src=self.id, dst=to))
        self._event("leadership_transferred", to=to)
