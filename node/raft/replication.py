"""Log replication (§5.3) and commitment (§5.4.2): proposals, AppendEntries
and heartbeats on the leader with flow control, the follower's consistency
check, and CheckQuorum (thesis §6.2); commit and CheckQuorum count the
voters of the configuration in force, a majority of each half while joint
(thesis §4.3), and never a learner. A mixin of `RaftCore`."""

from __future__ import annotations

from node.errors import NotLeader, ProposalDropped
from node.raft.base import CoreState, Role
from node.raft.log import entry_size
from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Beat,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    PeerMessage,
    ReadIndex,
    ReadIndexResponse,
    TimeoutNow,
)
from node.raft.progress import FlowState, Progress
from node.raft.quorum import VoteResult


class Replication(CoreState):
    """The rules above, as methods of `RaftCore` (core.py)."""

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                # CheckQuorum (thesis §6.2): a leader that has not heard from a
                # quorum in an election timeout steps down.
                active = {p: True for p, pr in self.progress.items() if pr.recent_active}
                active[self.id] = True
                if self._joint.vote_result(active) is not VoteResult.WON:
                    self._become_follower(self.term, None, reason="check_quorum")
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
            if self.lead_transferee is not None:
                self._event("transfer_aborted", to=self.lead_transferee)
                self.lead_transferee = None
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Beat())

    def _step_follower(self, m: PeerMessage) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            self.election_elapsed = 0
            self.leader = m.src
            if isinstance(m, AppendEntries):
                self._handle_append(m)
            elif isinstance(m, Heartbeat):
                self.log.commit_to(min(m.commit, self.log.last_index()))
                self._send(HeartbeatResponse(term=self.term, src=self.id, dst=m.src, seq=m.seq))
            else:
                self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            self._event("timeout_now_received", leader=m.src)
            self._hup(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            if m.src == self.leader:
                self._read_index_answered(m.ctx, m.ok, m.index)
        elif isinstance(m, ReadIndex):
            self._read_index_from_follower(m.ctx, m.src)

    def _step_leader(self, m: PeerMessage) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        if isinstance(m, AppendEntriesResponse):
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is FlowState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
                pr.inflight.popleft()
            if pr.match < self.log.last_index():
                self._maybe_send_append(m.src, send_if_empty=True)
            if self.config.read_mode == "lease":
                self._note_heartbeat_answer(pr, m.seq)
            if m.seq > pr.read_seq:
                pr.read_seq = m.seq
                self._confirm_reads()
        elif isinstance(m, ReadIndex):
            self._read_index_from_follower(m.ctx, m.src)
        elif isinstance(m, InstallSnapshotResponse):
            pr.recent_active = True
            if pr.state is FlowState.SNAPSHOT and pr.snap_meta == m.meta:
                pr.snap_want = m.next_offset
                if m.next_offset > pr.snap_offset:
                    pr.snap_offset = m.next_offset
                    pr.snap_progressed = True
                    self._send_snapshot_chunk(m.src, pr)

    def _handle_append(self, m: AppendEntries) -> None:
        prev_index, prev_term, entries = m.prev_index, m.prev_term, m.entries
        if prev_index < self.log.commit:
            # Entries up to our commit are already ours (§5.4 Leader
            # Completeness); skip them and check consistency at the commit.
            entries = [e for e in entries if e.index > self.log.commit]
            prev_index = self.log.commit
            prev_term = self.log.term(prev_index) or 0
            if not entries:
                self._send(AppendEntriesResponse(
                    term=self.term, src=self.id, dst=m.src, success=True, index=self.log.commit))
                return
        last_new = self.log.maybe_append(prev_index, prev_term, m.commit, entries)
        if last_new is not None and self._membership.synced(self.log, entries):
            self._conf_changed()
        if last_new is not None:
            self._send(AppendEntriesResponse(
                term=self.term, src=self.id, dst=m.src, success=True, index=last_new))
            return
        # Reject, with a hint for fast back-tracking (§5.3, "optimization").
        conflict_term = self.log.term(prev_index)
        if conflict_term is None:
            hint = AppendEntriesResponse(
                term=self.term, src=self.id, dst=m.src, success=False, index=prev_index,
                last_index=self.log.last_index())
        else:
            hint = AppendEntriesResponse(
                term=self.term, src=self.id, dst=m.src, success=False, index=prev_index,
                last_index=self.log.last_index(), conflict_term=conflict_term,
                conflict_index=self.log.first_index_of_term(prev_index))
        self._event("append_rejected", leader=m.src, prev_index=prev_index,
                    prev_term=prev_term, last_index=self.log.last_index(),
                    conflict_term=hint.conflict_term)
        self._send(hint)

    def _propose(self, data: bytes) -> None:
        taken, why = self.propose_many([data])
        if not taken:
            raise ProposalDropped(why or "dropped")

    def propose_many(self, datas: list[bytes]) -> tuple[int, str | None]:
        """Append `datas` as normal entries, in order, as long as they fit
        under the bound on uncommitted bytes: how many were taken and, if
        not all, why the rest were not (one log append for them all)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is moving to {self.lead_transferee}")
        limit = self.config.max_uncommitted_bytes
        used = self.uncommitted_bytes
        term, index = self.term, self.log.last_index()
        entries: list[Entry] = []
        why = None
        for data in datas:
            index += 1
            e = Entry(term, index, EntryKind.NORMAL, data)
            size = entry_size(e)
            if used and used + size > limit:
                self.counters.proposals_refused += len(datas) - len(entries)
                why = (f"overloaded: {used} bytes of writes wait for their commit "
                       f"(limit {limit}); retry shortly")
                break
            entries.append(e)
            used += size
        if entries:
            self._append_entries(entries)
            self.uncommitted_bytes = used
        return len(entries), why

    def _append_entries(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        if self._membership.appended(entries):
            self._conf_changed()

    def _any_append_due(self) -> bool:
        last = self.log.last_index()
        return any(pr.next <= last and not pr.is_paused() for pr in self.progress.values())

    def _flush_leader(self) -> None:
        for p in self.peers:
            self._maybe_send_append(p, send_if_empty=False)
        if self._read_round_due:
            self._read_round_due = False
            self._new_heartbeat_seq()
            for p in self.peers:
                self._send_heartbeat(p)

    def _maybe_send_append(self, to: str, send_if_empty: bool) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None or pr.next < self.log.first_index():
            self._start_snapshot(to, pr)
            return False
        entries: list[Entry] = []
        if pr.next <= self.log.last_index():
            entries = self.log.slice(
                pr.next, self.log.last_index() + 1,
                self.config.max_append_bytes, self.config.max_append_entries)
        if not entries and not send_if_empty:
            return False
        self._send(AppendEntries(
            term=self.term, src=self.id, dst=to, prev_index=prev_index, prev_term=prev_term,
            entries=entries, commit=self.log.commit))
        pr.sent(entries[-1].index if entries else prev_index)
        return True

    def _handle_append_response(self, m: AppendEntriesResponse, pr: Progress) -> None:
        if not m.success:
            if (pr.state is FlowState.PROBE and m.index == pr.next - 1
                    and m.last_index < pr.match):
                # The follower acknowledged entries up to `match` and now holds
                # fewer: its disk lost them (Raft assumes it cannot). Probing
                # never goes below match + 1, so start over from what it has.
                self._event("follower_lost_data", follower=m.src, match=pr.match,
                            last_index=m.last_index)
                pr.restart_from(m.last_index)
                self._maybe_send_append(m.src, send_if_empty=True)
                return
            if m.conflict_term == 0:
                hint_next = m.last_index + 1
            else:
                last_of_term = self.log.last_index_of_term(m.conflict_term)
                hint_next = last_of_term + 1 if last_of_term is not None else m.conflict_index
            if pr.maybe_decrease(m.index, hint_next):
                if pr.state is FlowState.REPLICATE:
                    pr.become_probe()
                self._maybe_send_append(m.src, send_if_empty=True)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is FlowState.PROBE:
            pr.become_replicate()
        elif pr.state is FlowState.SNAPSHOT:
            if pr.snap_meta is None or pr.match >= pr.snap_meta.index:
                pr.become_replicate()
        else:
            pr.free_to(m.index)
        # A new commit index travels with the next append or heartbeat (at
        # most heartbeat_ticks away), not in a broadcast of its own: that
        # would double the messages per write, and no follower waits for it.
        self._maybe_commit()
        if self.role is not Role.LEADER or m.src not in self.progress:
            # It committed C_new, which it (thesis §4.2.2) or the sender is not in.
            return
        if was_paused:
            self._maybe_send_append(m.src, send_if_empty=False)
        while self._maybe_send_append(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.src)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to the highest index a majority of each
        half of the configuration holds, but only if that entry is of the
        current term (§5.4.2, Figure 8)."""
        acked = {p: pr.match for p, pr in self.progress.items()}
        # The leader counts only what it has on disk: its replication may
        # leave before its own persist (node/raft/ready.py), so an entry held by
        # followers alone must not be counted as on the leader too.
        acked[self.id] = self.log.stable_index
        index = self._joint.committed_index(acked)
        if index <= self.log.commit or index > self.log.last_index() \
                or self.log.term(index) != self.term:
            return False
        first_of_term = self.log.term(self.log.commit) != self.term
        if self.uncommitted_bytes:
            # As etcd does: every newly committed entry counts, at most down
            # to zero. Entries inherited from an earlier term make it drop
            # early, which only admits more.
            freed = sum(map(entry_size, self.log.entries_between(self.log.commit + 1, index + 1)))
            self.uncommitted_bytes = max(0, self.uncommitted_bytes - freed)
        self.log.commit_to(index)
        if first_of_term and self._reads_awaiting_commit:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for ctx, src in waiting:
                self._start_read(ctx, src)
        self._after_commit()
        return True

    def _broadcast_heartbeat(self) -> None:
        if self.config.read_mode == "lease":
            # Each round its own number, so an answer dates the lease.
            self._new_heartbeat_seq()
        for p in self.peers:
            pr = self.progress[p]
            if pr.state is FlowState.SNAPSHOT:
                if not pr.snap_progressed:
                    # No answer for a whole heartbeat: the chunk or its answer
                    # was lost, or the follower restarted; resend what it wants.
                    pr.snap_offset = pr.snap_want
                    self._send_snapshot_chunk(p, pr)
                pr.snap_progressed = False
            self._send_heartbeat(p)

    def _send_heartbeat(self, to: str) -> None:
        pr = self.progress[to]
        self._send(Heartbeat(
            term=self.term, src=self.id, dst=to,
            commit=min(pr.match, self.log.commit), seq=self._read_seq))
