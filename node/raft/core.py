"""`RaftCore`: the whole Raft algorithm and nothing else.

No sockets, clocks, files, threads or global random. Inputs are `step()`,
`tick()`, `propose()`, `propose_conf_change()`, `read_index()` and
`transfer_leader()`; the output is a `Ready` (see `node/raft/ready.py`) that
the caller handles before `advance()`.
"""

from __future__ import annotations

import random
from typing import Any

from node.config import CoreConfig
from node.raft.base import Counters, Role
from node.raft.confchange import initial
from node.raft.elections import Elections
from node.raft.log import RaftLog
from node.raft.membership import Membership
from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Beat,
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    Hup,
    InstallSnapshot,
    Message,
    PeerMessage,
    Propose,
    ProposeConfChange,
    ReadIndexRequest,
    RequestVote,
    RequestVoteResponse,
    TransferLeader,
)
from node.raft.progress import Progress
from node.raft.reads import ReadsAndTransfer
from node.raft.ready import Ready, SoftState
from node.raft.reconfigure import Reconfiguration
from node.raft.replication import Replication
from node.raft.snapshots import Snapshots
from node.storage import Storage

__all__ = ["RaftCore", "Role"]


class RaftCore(Elections, Replication, ReadsAndTransfer, Snapshots, Reconfiguration):
    """One Raft node's protocol state. Not thread-safe; one caller drives it."""

    def __init__(
        self,
        node_id: str,
        peers: list[str],
        storage: Storage,
        config: CoreConfig,
        rng: random.Random,
        *,
        base: ConfState | None = None,
    ) -> None:
        """`peers` are the other voters of the cluster's initial
        configuration; or `base` is that configuration, for a node that was
        not in it (a member added later joins from an empty log, learning
        the rest from the leader) or to give the members' addresses. The
        configuration in force is the latest in the log (thesis §4.1)."""
        if node_id in peers:
            raise ValueError(f"node {node_id} must not be among its own peers")
        if base is not None and peers:
            raise ValueError("give the initial configuration as peers or as base, not both")
        self.id = node_id
        self.config = config
        self._storage = storage
        self._rng = rng
        self._base = base if base is not None else initial([node_id, *peers])
        st = storage.initial_state()
        self.log = RaftLog(st.snapshot, st.entries, st.hard_state.commit, st.snapshot.index,
                           fetch=storage.entries)
        self._membership = Membership(st.snapshot, self._base, st.entries)
        self.role = Role.FOLLOWER
        self._conf_changed(announce=False)
        self._prev_conf = self.conf
        self.snapshot_meta = st.snapshot
        self.term = st.hard_state.term
        self.vote = st.hard_state.vote
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self.votes = {}
        self.progress = {}
        self.lead_transferee = None
        self.uncommitted_bytes = 0
        self.counters = Counters()
        self._msgs = []
        self._events = []
        self._prev_hs = st.hard_state
        self._prev_soft = None
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._ready_reads = []
        self._dropped_reads = []
        self._read_seq = 0
        self._read_round_due = False
        self._forward_batch = []
        self._forwarded_reads = {}
        self._ticks = 0
        self._seq_sent_tick = {}
        self._lease_void = False
        self._boot_quiet = config.read_mode == "lease"
        self._snap_in = None
        self._snap_out = None
        self._pending_snapshot = None
        self._tick_fn = self._tick_election
        self._step_fn = self._step_follower
        self._become_follower(self.term, None, log_event=False)

    # --- public inputs ------------------------------------------------------

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        self._ticks += 1
        if self._forwarded_reads:
            self._expire_forwarded_reads()
        self._tick_fn()

    def observe_clock(self, ticks: int) -> None:
        """The caller's clock reads `ticks` ticks since this core was made,
        counting ticks it could not deliver (a stalled process catches up on
        a few only): a lease runs out by the time that really passed, not by
        the ticks delivered (thesis §6.4.1)."""
        self._ticks = max(self._ticks, ticks)

    def propose(self, data: bytes) -> int:
        """Append `data` to the log if this node leads; returns its index."""
        self.step(Propose(data))
        return self.log.last_index()

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Start a membership change if this node leads and no other is under
        way (raises `NotLeader`, `ConfChangeRefused`); returns its index."""
        self.step(ProposeConfChange(cc))
        return self.log.last_index()

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read: a `ReadState` with `ctx` comes out of
        `ready()` once it is safe (thesis §6.4), or `ctx` is in `dropped_reads`.
        A follower asks the leader for the read index (§6.4.1); raises
        `NotLeader` where no leader is known or follower reads are off."""
        self.step(ReadIndexRequest(ctx))

    def transfer_leader(self, to: str) -> None:
        self.step(TransferLeader(to))

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
        elif isinstance(m, ProposeConfChange):
            self._propose_conf_change(m.change)
        else:
            self._step_peer(m)

    # --- output -------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._events
            or self._ready_reads
            or self._dropped_reads
            or self._forward_batch
            or self._pending_snapshot is not None
            or self.log.stable_index < self.log.last_index()
            or self.log.commit > self.log.applied
            or self._read_round_due
            or self._hard_state_changed()
            or self._soft_state_changed()
            or (self.conf is not self._prev_conf and self.conf != self._prev_conf)
            or (self.role is Role.LEADER and self._any_append_due())
        )

    def ready(self) -> Ready:
        """Everything the caller must do now; call `advance()` afterwards."""
        if self.role is Role.LEADER:
            self._flush_leader()
        elif self._forward_batch:
            self._send_forward_batch()
        rd = Ready()
        if self.conf != self._prev_conf:
            rd.conf_state = self.conf
        if self._hard_state_changed():
            hs = self._hard_state()
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
                # Ready's persist (node/raft/ready.py, step 2).
                stable = self.log.stable_index
                n = 0
                for e in rd.committed_entries:
                    if e.index > stable:
                        break
                    n += 1
                rd.apply_early = n
        rd.read_states, self._ready_reads = self._ready_reads, []
        rd.dropped_reads, self._dropped_reads = self._dropped_reads, []
        if self._soft_state_changed():
            soft = self._soft_state()
            rd.soft_state = soft
            self._prev_soft = soft
        rd.events, self._events = self._events, []
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied `rd`."""
        if rd.snapshot is not None and rd.snapshot is self._pending_snapshot:
            self._pending_snapshot = None
        if rd.conf_state is not None:
            self._prev_conf = rd.conf_state
        if rd.entries:
            last = rd.entries[-1]
            if self.log.term(last.index) == last.term:
                self.log.stable_to(last.index)
                if self.role is Role.LEADER:
                    # Only now does the leader count itself: its replication
                    # may have left before this persist (node/raft/ready.py).
                    self._maybe_commit()
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    def status_facts(self) -> dict[str, Any]:
        """What `status` shows beyond the fields every core has: nothing."""
        return {}

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role.value, self.leader, self.term)

    # What `has_ready` asks on every turn of the loop, and mostly hears no
    # to: the fields compared where they are, not new states built to compare.
    def _hard_state_changed(self) -> bool:
        p = self._prev_hs
        return self.log.commit != p.commit or self.term != p.term or self.vote != p.vote

    def _soft_state_changed(self) -> bool:
        p = self._prev_soft
        # A Role is a str: equal to its value, which SoftState holds.
        return p is None or self.term != p.term or self.leader != p.leader or p.role != self.role

    # --- role changes -------------------------------------------------------

    def _reset(self, term: int) -> None:
        self._drop_reads()
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        jitter = self.config.election_jitter_ticks
        if jitter is None:
            jitter = self.config.election_ticks
        self.randomized_timeout = self.config.election_ticks + (self._rng.randrange(jitter)
                                                                if jitter else 0)
        self.votes = {}
        self.lead_transferee = None
        self.uncommitted_bytes = 0  # each leadership counts its own proposals
        self._seq_sent_tick = {}
        self._lease_void = False
        nxt = self.log.last_index() + 1
        self.progress = {
            p: Progress(nxt, self.config.max_inflight_appends) for p in self.peers
        }

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
        self._drop_forwarded_reads("campaign_started")
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = None
        self._tick_fn = self._tick_election
        self._step_fn = self._step_candidate
        self._event("prevote_started", proposed_term=self.term + 1,
                    timeout_ticks=self.randomized_timeout)

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._tick_fn = self._tick_election
        self._step_fn = self._step_candidate
        self._event("election_started", timeout_ticks=self.randomized_timeout)

    def _become_leader(self) -> None:
        votes = sorted(p for p, granted in self.votes.items() if granted)
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._tick_fn = self._tick_heartbeat
        self._step_fn = self._step_leader
        # Peers start inactive (thesis §6.2): a leader that hears from no
        # majority in its first election timeout steps down at its end.
        # A no-op of the new term lets the leader commit (§5.4.2, §8).
        self._append_entries([Entry(self.term, self.log.last_index() + 1, EntryKind.NOOP)])
        self._event("became_leader", last_index=self.log.last_index(),
                    votes=votes)

    # --- ticking ------------------------------------------------------------

    # --- campaigning --------------------------------------------------------

    # --- peer messages ------------------------------------------------------

    def _step_peer(self, m: PeerMessage) -> None:
        # Any sender is heard: a member added after this node's log ends is
        # one it cannot know yet, and it may lead. Only the configuration
        # decides whose votes and acknowledgements count.
        if m.dst != self.id or m.src == self.id:
            self.counters.dropped_messages += 1
            return
        if m.term > self.term:
            if isinstance(m, RequestVote):
                heard_leader = ((self.leader is not None or self._boot_quiet)
                                and self.election_elapsed < self.config.election_ticks)
                # Thesis §4.2.3: a node that hears from a leader ignores votes
                # until its election timeout passes (with lease reads, also one
                # just started: it may have heard a leader just before). Only
                # under CheckQuorum for members: without it a leader that
                # cannot hear its followers never steps down, and the lease
                # would keep those that still hear it from electing anyone. A
                # candidate outside this node's configuration is ignored either
                # way: it is a removed server that never learned so, and its
                # votes would depose the leader again each time its timer ran out.
                member = m.src in self._joint.voters()
                if (heard_leader and not m.transfer
                        and (self.config.check_quorum or not member)):
                    why = ("just_started" if self.leader is None
                           else "leader_lease" if member else "not_a_member")
                    self._event("vote_ignored", candidate=m.src, reason=why,
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

    # --- replication: follower side ------------------------------------------

    # --- replication: leader side -------------------------------------------

    # --- snapshots: leader side ---------------------------------------------

    # --- reads and transfers ----------------------------------------------

    # --- helpers ------------------------------------------------------------

    def _send(self, m: PeerMessage) -> None:
        self._msgs.append(m)

    def _event(self, name: str, **kw: Any) -> None:
        self._events.append((name, kw))
