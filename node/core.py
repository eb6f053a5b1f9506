"""`RaftCore`: the whole Raft algorithm and nothing else.

No sockets, clocks, files, threads or global random. Inputs are `step()`,
`tick()`, `propose()`, `read_index()` and `transfer_leader()`; the output is a
`Ready` (see `node/ready.py`) that the caller handles before `advance()`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.config import CoreConfig
from node.errors import NotLeader, ProposalDropped
from node.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Beat,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Hup,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    PeerMessage,
    Propose,
    ReadIndexRequest,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    TransferLeader,
)
from node.progress import FlowState, Progress
from node.raft_log import RaftLog, entry_size
from node.ready import ReadState, Ready, SoftState
from node.storage import Storage


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class _PendingRead:
    ctx: bytes
    index: int
    seq: int


@dataclass(slots=True)
class _Counters:
    dropped_messages: int = 0
    stale_messages: int = 0
    proposals_refused: int = 0  # over max_uncommitted_bytes
    extra: dict[str, int] = field(default_factory=dict)


class RaftCore:
    """One Raft node's protocol state. Not thread-safe; one caller drives it."""

    def __init__(
        self,
        node_id: str,
        peers: list[str],
        storage: Storage,
        config: CoreConfig,
        rng: random.Random,
    ) -> None:
        if node_id in peers:
            raise ValueError(f"node {node_id} must not be among its own peers")
        self.id = node_id
        self.peers = sorted(peers)
        self._peer_set = frozenset(peers)
        self.config = config
        self._storage = storage
        self._rng = rng
        st = storage.initial_state()
        self.log = RaftLog(st.snapshot, st.entries, st.hard_state.commit, st.snapshot.index)
        # The latest snapshot in storage; the log may reach further back than
        # it (a catch-up tail, `compact`), never less far.
        self.snapshot_meta = st.snapshot
        self.term = st.hard_state.term
        self.vote = st.hard_state.vote
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self.votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self.lead_transferee: str | None = None
        # Bytes of this leader's proposals not yet committed (overload control).
        self.uncommitted_bytes = 0
        self.counters = _Counters()
        self._msgs: list[PeerMessage] = []
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._prev_hs = st.hard_state
        self._prev_soft: SoftState | None = None
        self._pending_reads: list[_PendingRead] = []
        self._reads_awaiting_commit: list[bytes] = []
        self._ready_reads: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._read_seq = 0
        self._read_round_due = False
        self._snap_in: tuple[SnapshotMeta, bytearray] | None = None
        self._snap_out: Snapshot | None = None
        self._pending_snapshot: Snapshot | None = None
        self._tick_fn: Callable[[], None] = self._tick_election
        self._step_fn: Callable[[PeerMessage], None] = self._step_follower
        self._become_follower(self.term, None, log_event=False)

    # --- public inputs ------------------------------------------------------

    def quorum(self) -> int:
        return (len(self.peers) + 1) // 2 + 1

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        self._tick_fn()

    def propose(self, data: bytes) -> int:
        """Append `data` to the log if this node leads; returns its index."""
        self.step(Propose(data))
        return self.log.last_index()

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read: a `ReadState` with `ctx` comes out of
        `ready()` once it is safe (thesis §6.4), or `ctx` is in `dropped_reads`."""
        self.step(ReadIndexRequest(ctx))

    def transfer_leader(self, to: str) -> None:
        self.step(TransferLeader(to))

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

    def step(self, m: Message) -> None:
        """Feed one message, local or from a peer, into the state machine."""
        if isinstance(m, Hup):
            self._hup(m.transfer)
        elif isinstance(m, Beat):
            if self.role is Role.LEADER:
                self._broadcast_heartbeat()
        elif isinstance(m, Propose):
            self._propose(m.data)
        elif isinstance(m, ReadIndexRequest):
            self._read(m.ctx)
        elif isinstance(m, TransferLeader):
            self._transfer(m.to)
        else:
            self._step_peer(m)

    # --- output -------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._events
            or self._ready_reads
            or self._dropped_reads
            or self._pending_snapshot is not None
            or self.log.stable_index < self.log.last_index()
            or self.log.commit > self.log.applied
            or self._read_round_due
            or self._hard_state() != self._prev_hs
            or self._soft_state() != self._prev_soft
            or (self.role is Role.LEADER and self._any_append_due())
        )

    def ready(self) -> Ready:
        """Everything the caller must do now; call `advance()` afterwards."""
        if self.role is Role.LEADER:
            self._flush_leader()
        rd = Ready()
        hs = self._hard_state()
        if hs != self._prev_hs:
            rd.hard_state = hs
            rd.term_or_vote_changed = (hs.term, hs.vote) != (self._prev_hs.term, self._prev_hs.vote)
        rd.entries = self.log.unstable()
        rd.snapshot = self._pending_snapshot
        rd.messages, self._msgs = self._msgs, []
        if self.log.commit > self.log.applied:
            rd.committed_entries = self.log.slice(
                self.log.applied + 1, self.log.commit + 1, self.config.max_apply_bytes, 1 << 62
            )
            if self.role is Role.LEADER and rd.snapshot is None:
                # Already on this leader's disk: may be applied before this
                # Ready's persist (node/ready.py, step 2).
                stable = self.log.stable_index
                n = 0
                for e in rd.committed_entries:
                    if e.index > stable:
                        break
                    n += 1
                rd.apply_early = n
        rd.read_states, self._ready_reads = self._ready_reads, []
        rd.dropped_reads, self._dropped_reads = self._dropped_reads, []
        soft = self._soft_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        rd.events, self._events = self._events, []
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied `rd`."""
        if rd.snapshot is not None and rd.snapshot is self._pending_snapshot:
            self._pending_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            if self.log.term(last.index) == last.term:
                self.log.stable_to(last.index)
                if self.role is Role.LEADER:
                    # Only now does the leader count itself: its replication
                    # may have left before this persist (node/ready.py).
                    self._maybe_commit()
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role.value, self.leader, self.term)

    # --- role changes -------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.config.election_ticks + self._rng.randrange(
            self.config.election_ticks
        )
        self.votes = {}
        self.lead_transferee = None
        self.uncommitted_bytes = 0  # each leadership counts its own proposals
        self._drop_reads()
        nxt = self.log.last_index() + 1
        self.progress = {
            p: Progress(nxt, self.config.max_inflight_appends) for p in self.peers
        }

    def _drop_reads(self) -> None:
        self._dropped_reads.extend(r.ctx for r in self._pending_reads)
        self._dropped_reads.extend(self._reads_awaiting_commit)
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._read_round_due = False

    def _become_follower(
        self, term: int, leader: str | None, log_event: bool = True, reason: str = "higher_term"
    ) -> None:
        was_leader = self.role is Role.LEADER
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader
        self._tick_fn = self._tick_election
        self._step_fn = self._step_follower
        if was_leader:
            self._event("stepped_down", reason=reason)
        if log_event:
            self._event("became_follower", leader=leader)

    def _become_pre_candidate(self) -> None:
        # PreVote (thesis §9.6): ask first, without touching term or vote.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = None
        self._tick_fn = self._tick_election
        self._step_fn = self._step_candidate
        self._event("prevote_started", proposed_term=self.term + 1)

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._tick_fn = self._tick_election
        self._step_fn = self._step_candidate
        self._event("election_started")

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._tick_fn = self._tick_heartbeat
        self._step_fn = self._step_leader
        # Peers start inactive (thesis §6.2): a leader that hears from no
        # majority in its first election timeout steps down at its end.
        # A no-op of the new term lets the leader commit (§5.4.2, §8).
        self._append_entries([Entry(self.term, self.log.last_index() + 1, EntryKind.NOOP)])
        self._event("became_leader", last_index=self.log.last_index())

    # --- ticking ------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self.step(Hup())

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                # CheckQuorum (thesis §6.2): a leader that has not heard from a
                # quorum in an election timeout steps down.
                active = 1 + sum(1 for pr in self.progress.values() if pr.recent_active)
                if active < self.quorum():
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

    # --- campaigning --------------------------------------------------------

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER:
            return
        if self.config.prevote and not transfer:
            self._campaign(prevote=True, transfer=False)
        else:
            self._campaign(prevote=False, transfer=transfer)

    def _campaign(self, prevote: bool, transfer: bool) -> None:
        if prevote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally(prevote):
            return
        for p in self.peers:
            self._send(
                RequestVote(
                    term=term,
                    src=self.id,
                    dst=p,
                    last_index=self.log.last_index(),
                    last_term=self.log.last_term(),
                    prevote=prevote,
                    transfer=transfer,
                )
            )

    def _tally(self, prevote: bool) -> bool:
        """Count votes; act on a decided election. True if decided."""
        granted = sum(1 for v in self.votes.values() if v)
        rejected = len(self.votes) - granted
        if granted >= self.quorum():
            if prevote:
                self._campaign(prevote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if rejected >= self.quorum():
            self._become_follower(self.term, None)
            return True
        return False

    # --- peer messages ------------------------------------------------------

    def _step_peer(self, m: PeerMessage) -> None:
        if m.dst != self.id or m.src not in self._peer_set:
            self.counters.dropped_messages += 1
            return
        if m.term > self.term:
            if isinstance(m, RequestVote):
                in_lease = (
                    self.config.check_quorum
                    and self.leader is not None
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and not m.transfer:
                    # Thesis §4.2.3: a node that hears from a leader ignores
                    # votes until its election timeout passes.
                    self._event("vote_ignored", candidate=m.src, reason="leader_lease",
                                prevote=m.prevote)
                    return
                if not m.prevote:
                    # Figure 2: only a leader's append or a granted vote resets
                    # the election timer. A candidate we may turn down must not
                    # postpone our own campaign, or a stale node timing out
                    # again and again keeps an up-to-date one from starting.
                    elapsed = self.election_elapsed
                    self._become_follower(m.term, None)
                    self.election_elapsed = elapsed
            elif isinstance(m, RequestVoteResponse) and m.prevote and m.granted:
                pass  # a granted pre-vote carries the proposed term, not a real one
            else:
                from_leader = isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot))
                self._become_follower(m.term, m.src if from_leader else None)
        elif m.term < self.term:
            self.counters.stale_messages += 1
            if isinstance(m, (AppendEntries, Heartbeat)) and (
                self.config.check_quorum or self.config.prevote
            ):
                # Tell a stale leader our term so it steps down; with PreVote it
                # could otherwise stay leader of a minority forever.
                self._send(AppendEntriesResponse(
                    term=self.term, src=self.id, dst=m.src, success=False, index=0))
            elif isinstance(m, RequestVote) and m.prevote:
                self._send(RequestVoteResponse(
                    term=self.term, src=self.id, dst=m.src, granted=False, prevote=True))
            return
        if isinstance(m, RequestVote):
            self._handle_vote(m)
        else:
            self._step_fn(m)

    def _handle_vote(self, m: RequestVote) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (m.prevote and m.term > self.term)
        )
        up_to_date = self.log.is_up_to_date(m.last_index, m.last_term)
        if can_vote and up_to_date:
            self._send(RequestVoteResponse(
                term=m.term if m.prevote else self.term, src=self.id, dst=m.src,
                granted=True, prevote=m.prevote))
            if not m.prevote:
                self.election_elapsed = 0
                self.vote = m.src
            self._event("vote_granted", candidate=m.src, prevote=m.prevote)
        else:
            self._send(RequestVoteResponse(
                term=self.term, src=self.id, dst=m.src, granted=False, prevote=m.prevote))
            self._event("vote_rejected", candidate=m.src, prevote=m.prevote,
                        reason="log_behind" if can_vote else "already_voted")

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

    def _step_candidate(self, m: PeerMessage) -> None:
        prevote = self.role is Role.PRE_CANDIDATE
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            # A leader of our term exists: we lost (§5.2).
            self._become_follower(m.term, m.src)
            self._step_follower(m)
        elif isinstance(m, RequestVoteResponse):
            if m.prevote != prevote:
                return
            if prevote and m.granted and m.term != self.term + 1:
                return
            self.votes[m.src] = m.granted
            self._tally(prevote)

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
            if m.seq > pr.read_seq:
                pr.read_seq = m.seq
                self._confirm_reads()
        elif isinstance(m, InstallSnapshotResponse):
            pr.recent_active = True
            if pr.state is FlowState.SNAPSHOT and pr.snap_meta == m.meta:
                pr.snap_want = m.next_offset
                if m.next_offset > pr.snap_offset:
                    pr.snap_offset = m.next_offset
                    pr.snap_progressed = True
                    self._send_snapshot_chunk(m.src, pr)

    # --- replication: follower side ------------------------------------------

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

    # --- replication: leader side -------------------------------------------

    def _propose(self, data: bytes) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is moving to {self.lead_transferee}")
        entry = Entry(self.term, self.log.last_index() + 1, EntryKind.NORMAL, data)
        size = entry_size(entry)
        limit = self.config.max_uncommitted_bytes
        if self.uncommitted_bytes and self.uncommitted_bytes + size > limit:
            self.counters.proposals_refused += 1
            raise ProposalDropped(
                f"overloaded: {self.uncommitted_bytes} bytes of writes wait for their commit "
                f"(limit {limit}); retry shortly")
        self._append_entries([entry])
        self.uncommitted_bytes += size

    def _append_entries(self, entries: list[Entry]) -> None:
        self.log.append(entries)

    def _any_append_due(self) -> bool:
        last = self.log.last_index()
        return any(pr.next <= last and not pr.is_paused() for pr in self.progress.values())

    def _flush_leader(self) -> None:
        for p in self.peers:
            self._maybe_send_append(p, send_if_empty=False)
        if self._read_round_due:
            self._read_round_due = False
            self._read_seq += 1
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
        if was_paused:
            self._maybe_send_append(m.src, send_if_empty=False)
        while self._maybe_send_append(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.src)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to the highest index a quorum holds, but
        only if that entry is of the current term (§5.4.2, Figure 8)."""
        # The leader counts only what it has on disk: its replication may
        # leave before its own persist (node/ready.py), so an entry held by
        # followers alone must not be counted as on the leader too.
        matches = sorted(
            [self.log.stable_index, *(pr.match for pr in self.progress.values())], reverse=True
        )
        index = matches[self.quorum() - 1]
        if index <= self.log.commit or self.log.term(index) != self.term:
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
            for ctx in waiting:
                self._start_read(ctx)
        return True

    def _broadcast_heartbeat(self) -> None:
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

    # --- snapshots: leader side ---------------------------------------------

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

    # --- reads and transfers ----------------------------------------------

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
        if self.quorum() == 1:
            self._ready_reads.append(ReadState(ctx, self.log.commit))
            return
        # Thesis §6.4 step 3: confirm leadership with a round of heartbeats
        # that a quorum answers; reads gathered in one loop share the round.
        self._pending_reads.append(_PendingRead(ctx, self.log.commit, self._read_seq + 1))
        self._read_round_due = True

    def _confirm_reads(self) -> None:
        while self._pending_reads:
            r = self._pending_reads[0]
            acks = 1 + sum(1 for pr in self.progress.values() if pr.read_seq >= r.seq)
            if acks < self.quorum():
                return
            self._pending_reads.pop(0)
            self._ready_reads.append(ReadState(r.ctx, r.index))

    def _transfer(self, to: str) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id:
            return
        if to not in self.progress:
            raise ValueError(f"{to} is not a peer of {self.id}")
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

    # --- helpers ------------------------------------------------------------

    def _send(self, m: PeerMessage) -> None:
        self._msgs.append(m)

    def _event(self, name: str, **kw: Any) -> None:
        self._events.append((name, kw))
