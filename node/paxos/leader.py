"""The distinguished proposer's phase 2, slot by slot (Paxos Made Simple §3;
Paxos Made Moderately Complex's commanders): proposals in the next free
slot, Accept batches to each acceptor in slot order with Raft's flow control
(node/raft/progress.py), a slot chosen once a majority accepted it in this
ballot, heartbeats, CheckQuorum, linearizable reads confirmed by a majority
(ReadIndex), hand-over, and snapshots to acceptors behind the compacted
slots. A mixin of `PaxosCore`; no state of its own.
"""

from __future__ import annotations

from node.errors import NotLeader, ProposalDropped
from node.paxos.base import PaxosState
from node.paxos.messages import (
    Accept,
    Accepted,
    Heartbeat,
    HeartbeatAck,
    PaxosMessage,
    Preempted,
    decree_text,
)
from node.paxos.slots import entry_size
from node.raft.base import PendingRead, Role
from node.raft.messages import (
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from node.raft.progress import FlowState, Progress
from node.raft.quorum import VoteResult, committed_index, majority
from node.raft.ready import ReadState


class Leader(PaxosState):
    """The rules above, as methods of `PaxosCore` (core.py)."""

    # --- time --------------------------------------------------------------------

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                # As Raft's CheckQuorum (thesis §6.2): a leader cut off from a
                # majority stops leading, rather than refusing nothing.
                active = 1 + sum(1 for pr in self.progress.values() if pr.recent_active)
                if active < majority(len(self.conf.voters)):
                    self._become_follower(None, 0, reason="check_quorum")
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
            if self.lead_transferee is not None:
                self._event("transfer_aborted", to=self.lead_transferee)
                self.lead_transferee = None
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    # --- proposals ---------------------------------------------------------------

    def _propose(self, data: bytes, kind: EntryKind = EntryKind.NORMAL) -> None:
        taken, why = self.propose_many([data], kind)
        if not taken:
            raise ProposalDropped(why or "dropped")

    def propose_many(self, datas: list[bytes],
                      kind: EntryKind = EntryKind.NORMAL) -> tuple[int, str | None]:
        """Put `datas` in the next free slots, in order, as long as they fit
        under the bound on uncommitted bytes: how many were taken and, if
        not all, why the rest were not."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is moving to {self.lead_transferee}")
        limit = self.config.max_uncommitted_bytes
        taken = 0
        for data in datas:
            entry = Entry(self.ballot, self.log.last_index() + 1, kind, data)
            size = entry_size(entry)
            if self.uncommitted_bytes and self.uncommitted_bytes + size > limit:
                self.counters.proposals_refused += len(datas) - taken
                return taken, (f"overloaded: {self.uncommitted_bytes} bytes of writes wait "
                               f"to be chosen (limit {limit}); retry shortly")
            self.log.put(entry)
            self.uncommitted_bytes += size
            taken += 1
        return taken, None

    def _propose_decree(self, value: bytes) -> None:
        """The decree goes in the next free slot, as a no-op with a value."""
        self._propose(value, EntryKind.NOOP)
        slot = self.log.last_index()
        self._decree_slots.add(slot)
        self._event("accept_sent", slot=slot, ballot=self.describe(self.ballot),
                    value=decree_text(value))

    # --- phase 2 -----------------------------------------------------------------

    def _any_append_due(self) -> bool:
        last = self.log.last_index()
        return any(pr.next <= last and not pr.is_paused() for pr in self.progress.values())

    def _flush_leader(self) -> None:
        for p in self.peers:
            self._maybe_send_accept(p, send_if_empty=False)
        if self._read_round_due:
            self._read_round_due = False
            self._read_seq += 1
            for p in self.peers:
                self._send_heartbeat(p)

    def _maybe_send_accept(self, to: str, send_if_empty: bool) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        if pr.next < self.log.first_index():
            self._start_snapshot(to, pr)
            return False
        if pr.next > self.log.last_index():
            if send_if_empty:
                self._send_heartbeat(to)
            return False
        got = self.log.slice(pr.next, self.log.last_index() + 1,
                             self.config.max_append_bytes, self.config.max_append_entries)
        b = self.ballot
        # Chosen slots a lagging acceptor lacks go again in this ballot: their
        # value is the chosen one, which is what any ballot above the one it
        # was chosen in proposes there (P2c).
        entries = [e if e.term == b else Entry(b, e.index, e.kind, e.data) for e in got]
        self._send(Accept(term=b, src=self.id, dst=to, entries=entries, commit=self.log.commit))
        pr.sent(entries[-1].index)
        return True

    def _step_leader(self, m: PaxosMessage) -> None:
        if isinstance(m, Preempted):
            self._heard_ballot(m.term, m.src)
            return
        pr = self.progress.get(m.src)
        if pr is None or m.term != self.ballot:
            return  # an answer to another ballot of ours
        pr.recent_active = True
        if isinstance(m, Accepted):
            self._on_accepted(m, pr)
        elif isinstance(m, HeartbeatAck):
            pr.probe_sent = False
            if pr.state is FlowState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
                pr.inflight.popleft()
            pr.maybe_update(min(m.commit, self.log.last_index()))
            if pr.match < self.log.commit and pr.next > self.log.last_index() \
                    and pr.state is not FlowState.SNAPSHOT:
                # Nothing is left to send, yet it lacks chosen slots: Accepts
                # were lost, or it missed slots before this ballot; with no new
                # proposal, no refusal would ever say so.
                pr.become_probe()
            if pr.match < self.log.last_index():
                self._maybe_send_accept(m.src, send_if_empty=False)
            if m.seq > pr.read_seq:
                pr.read_seq = m.seq
                self._confirm_reads()
        elif isinstance(m, InstallSnapshotResponse) and pr.state is FlowState.SNAPSHOT \
                and pr.snap_meta == m.meta:
            pr.snap_want = m.next_offset
            if m.next_offset > pr.snap_offset:
                pr.snap_offset = m.next_offset
                pr.snap_progressed = True
                self._send_snapshot_chunk(m.src, pr)

    def _on_accepted(self, m: Accepted, pr: Progress) -> None:
        """The acceptor holds every slot up to its `commit` (known chosen),
        and accepted `lo`..`hi` in this ballot. `match` grows over what it
        holds without a gap; a gap means a batch was lost (or the acceptor
        is behind): send again from after `match`."""
        last = self.log.last_index()
        pr.maybe_update(min(m.commit, last))
        gap = m.refused or (m.hi >= m.lo and m.lo > pr.match + 1)
        if not gap and m.hi >= m.lo:
            pr.maybe_update(min(m.hi, last))
        if gap and pr.state is FlowState.SNAPSHOT:
            return  # answers to Accepts from before the snapshot: it comes first
        if gap:
            if pr.state is not FlowState.PROBE or pr.next > pr.match + 1:
                pr.become_probe()
                self._maybe_send_accept(m.src, send_if_empty=False)
            return
        if pr.state is FlowState.PROBE:
            pr.become_replicate()
        elif pr.state is FlowState.SNAPSHOT:
            if pr.snap_meta is None or pr.match >= pr.snap_meta.index:
                pr.become_replicate()
        else:
            pr.free_to(m.hi)
        self._maybe_commit()
        if self.role is not Role.LEADER:
            return
        while self._maybe_send_accept(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match >= self.log.last_index():
            self._send_timeout_now(m.src)

    def _maybe_commit(self) -> bool:
        """Advance the known-chosen prefix to the highest slot that a majority
        holds: accepted in this ballot (one value per slot and ballot, so a
        majority of them makes it chosen, §2.2) or known chosen already. The
        leader counts only slots on its own disk (its Accepts may leave
        before its persist, node/raft/ready.py)."""
        acked = {p: pr.match for p, pr in self.progress.items()}
        acked[self.id] = self.log.stable_index
        index = min(committed_index(self.conf.voters, acked), self.log.last_index())
        if index <= self.log.commit:
            return False
        if self.uncommitted_bytes:
            freed = sum(map(entry_size, self.log.between(self.log.commit + 1, index + 1)))
            self.uncommitted_bytes = max(0, self.uncommitted_bytes - freed)
        recovered = self.log.commit >= self._recovered_to
        self._chosen_to(index)
        if not recovered and self.log.commit >= self._recovered_to and \
                self._reads_awaiting_commit:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for ctx in waiting:
                self._start_read(ctx)
        return True

    def _broadcast_heartbeat(self) -> None:
        for p in self.peers:
            pr = self.progress[p]
            if pr.state is FlowState.SNAPSHOT:
                if not pr.snap_progressed:
                    # No answer for a whole heartbeat: send what it wants again.
                    pr.snap_offset = pr.snap_want
                    self._send_snapshot_chunk(p, pr)
                pr.snap_progressed = False
            self._send_heartbeat(p)

    def _send_heartbeat(self, to: str) -> None:
        self._send(Heartbeat(term=self.ballot, src=self.id, dst=to, commit=self.log.commit,
                             seq=self._read_seq))

    # --- reads (ReadIndex, as Raft's thesis §6.4) -----------------------------------

    def _read(self, ctx: bytes) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.log.commit < self._recovered_to:
            # Until the slots phase 1 found open are chosen, a write another
            # leader acknowledged may be among them.
            self._reads_awaiting_commit.append(ctx)
            return
        self._start_read(ctx)

    def _start_read(self, ctx: bytes) -> None:
        if majority(len(self.conf.voters)) <= 1:
            self._ready_reads.append(ReadState(ctx, self.log.commit))
            return
        # A majority that answers a heartbeat sent after the read arrived had
        # promised no higher ballot by then: no other leader had chosen a
        # value this one does not know.
        self._pending_reads.append(PendingRead(ctx, self.log.commit, self._read_seq + 1))
        self._read_round_due = True

    def _confirm_reads(self) -> None:
        while self._pending_reads:
            r = self._pending_reads[0]
            acks = {p: True for p, pr in self.progress.items() if pr.read_seq >= r.seq}
            acks[self.id] = True
            if self._vote_result(acks) is not VoteResult.WON:
                return
            self._pending_reads.pop(0)
            self._ready_reads.append(ReadState(r.ctx, r.index))

    def _vote_result(self, acks: dict[str, bool]) -> VoteResult:
        yes = sum(1 for v in self.conf.voters if acks.get(v))
        return VoteResult.WON if yes >= majority(len(self.conf.voters)) else VoteResult.PENDING

    def _drop_reads(self) -> None:
        self._dropped_reads.extend(r.ctx for r in self._pending_reads)
        self._dropped_reads.extend(self._reads_awaiting_commit)
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._read_round_due = False

    # --- hand-over -----------------------------------------------------------------

    def _transfer(self, to: str) -> None:
        """Ask `to` to run phase 1 now. Any node may take over in Paxos, up to
        date or not (phase 1 teaches it the rest), so this waits only for it
        to hold what this leader proposed, to lose as little as possible."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id:
            return
        if to not in self.progress:
            raise ValueError(f"{to} is not a member of this Paxos cluster")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        self._event("transfer_started", to=to)
        if self.progress[to].match >= self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._maybe_send_accept(to, send_if_empty=True)

    def _send_timeout_now(self, to: str) -> None:
        self._send(TimeoutNow(term=self.ballot, src=self.id, dst=to))
        self._event("leadership_transferred", to=to)

    # --- snapshots to acceptors behind the compacted slots ---------------------------

    def compact(self, meta: SnapshotMeta) -> list[Entry]:
        """Storage now holds a snapshot at `meta`: forget the slots it covers
        but the last `catchup_entries` (node/raft/snapshots.py says why).
        The slots go at once: nothing is left for the caller to free."""
        if meta.index <= self.snapshot_meta.index:
            return []
        self.snapshot_meta = meta
        self._snap_out = None
        keep_from = meta.index - self.config.catchup_entries
        term = self.log.term(keep_from)
        if keep_from > self.log.snapshot.index and term is not None:
            self.log.compact(SnapshotMeta(keep_from, term))
        return []

    def evict_log(self) -> list[Entry]:
        """Paxos holds its slots in memory until a snapshot covers them: the
        log cache that serves lagging followers from the WAL is Raft's."""
        return []

    def _start_snapshot(self, to: str, pr: Progress) -> None:
        snap = self._outgoing_snapshot()
        if snap.meta.index < self.log.first_index() - 1:
            return
        pr.become_snapshot(snap.meta)
        self._event("snapshot_sent", to=to, index=snap.meta.index, bytes=len(snap.data))
        self._send_snapshot_chunk(to, pr)

    def _outgoing_snapshot(self) -> Snapshot:
        cur = self.snapshot_meta
        out = self._snap_out
        if out is None or (out.meta.index, out.meta.term) != (cur.index, cur.term):
            snap = self._storage.snapshot()
            self._snap_out = out = Snapshot(SnapshotMeta(snap.meta.index, snap.meta.term),
                                            snap.data)
        return out

    def _send_snapshot_chunk(self, to: str, pr: Progress) -> None:
        snap = self._outgoing_snapshot()
        if pr.snap_meta != snap.meta:
            pr.become_snapshot(snap.meta)
        off = pr.snap_offset
        chunk = snap.data[off : off + self.config.snapshot_chunk_bytes]
        self._send(InstallSnapshot(
            term=self.ballot, src=self.id, dst=to, meta=snap.meta, offset=off, data=chunk,
            done=off + len(chunk) >= len(snap.data), size=len(snap.data)))
