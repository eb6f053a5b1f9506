"""`PaxosCore`: Multi-Paxos as Paxos Made Simple (§3) and Paxos Made
Moderately Complex describe it, behind the same inputs and output as
`RaftCore`, and nothing else.

Every node is an acceptor and a learner (acceptor.py), and a proposer
(proposer.py) that becomes the distinguished one, the leader (leader.py),
by winning phase 1 for every open slot at once; it then runs phase 2 slot
by slot until a higher ballot preempts it. No sockets, clocks, files,
threads or global random. Inputs are `step()`, `tick()`, `propose()`,
`read_index()`, `transfer_leader()` and `decree()`; the output is the same
`Ready` (node/raft/ready.py), handled by the same `handle_ready`.

Durable state, on the storage interface unchanged (docs/PAXOS_VS_RAFT.md):
the promise is the hard state's `term` (its `vote` stays empty), each
accepted value an entry whose index is its slot and whose term is the
ballot it was accepted in, and the hard state's `commit` the prefix of
slots known chosen. The membership is fixed: the cluster's initial one.
"""

from __future__ import annotations

import random
from typing import Any

from node.config import CoreConfig
from node.errors import ConfChangeRefused
from node.paxos.acceptor import Acceptor
from node.paxos.ballot import Ranks, round_of
from node.paxos.leader import Leader
from node.paxos.messages import (
    Accept,
    Heartbeat,
    PaxosMessage,
    Prepare,
    PrePrepare,
)
from node.paxos.proposer import Proposer
from node.paxos.slots import SlotLog
from node.raft.base import Counters, Role
from node.raft.membership import ConfPoint
from node.raft.messages import (
    Beat,
    ConfChange,
    ConfState,
    HardState,
    Hup,
    InstallSnapshot,
    Message,
    PeerMessage,
    Propose,
    ProposeConfChange,
    ReadIndexRequest,
    SnapshotMeta,
    TimeoutNow,
    TransferLeader,
)
from node.raft.ready import Ready, SoftState
from node.storage import Storage

__all__ = ["PaxosCore"]

FIXED_MEMBERSHIP = ("a Paxos cluster keeps the members it was created with; "
                    "membership changes are Raft's (docs/MEMBERSHIP.md)")


class PaxosCore(Acceptor, Proposer, Leader):
    """One Multi-Paxos node's protocol state. Not thread-safe; one caller drives it."""

    def __init__(
        self,
        node_id: str,
        storage: Storage,
        config: CoreConfig,
        rng: random.Random,
        *,
        members: ConfState,
        forget_promises: bool = False,
    ) -> None:
        """`members` is the cluster's fixed configuration (its voters, this
        node among them). `forget_promises` is for tests only: an acceptor
        that accepts below its promise, which the simulator must catch."""
        if node_id not in members.voters:
            raise ValueError(f"node {node_id} is not a member of {', '.join(members.voters)}")
        self.id = node_id
        self.config = config
        self.conf = members
        self.peers = [p for p in members.voters if p != node_id]
        self.ranks = Ranks(members.voters)
        self._storage = storage
        self._rng = rng
        self._forget_promises = forget_promises
        st = storage.initial_state()
        self.log = SlotLog(st.snapshot, st.entries, st.hard_state.commit)
        self.snapshot_meta = st.snapshot
        self.promised = st.hard_state.term
        self.ballot = 0
        self.leader = None
        self.leader_ballot = 0
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self._attempts = 0
        self._max_round = round_of(self.promised)
        self._p1 = None
        self._pre_ballot = 0
        self._pre_grants = set()
        self.progress = {}
        self._recovered_to = 0
        self.lead_transferee = None
        self.uncommitted_bytes = 0
        self.counters = Counters()
        self._decree = None
        self._decree_slots = set()
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
        self._snap_in = None
        self._snap_out = None
        self._pending_snapshot = None
        self._become_follower(None, 0)

    # --- what everyone may read -----------------------------------------------

    @property
    def term(self) -> int:
        """The ballot promised: Paxos's counterpart of Raft's current term."""
        return self.promised

    @property
    def vote(self) -> str | None:
        """Paxos has no votes: a promise is to a ballot, not to a node."""
        return None

    def describe(self, ballot: int) -> str:
        return self.ranks.describe(ballot)

    def conf_history(self) -> list[ConfPoint]:
        """The one configuration, in force from the start."""
        return [ConfPoint(0, 0, self.conf)]

    def snapshot_point(self, index: int) -> SnapshotMeta:
        """What a snapshot of the state machine at slot `index` records."""
        term = self.log.term(index)
        if term is None:
            raise IndexError(f"slot {index} is not held (first {self.log.first_index()})")
        return SnapshotMeta(index, term)

    def status_facts(self) -> dict[str, Any]:
        """What `status` shows of a Paxos node beyond what Raft's shows."""
        open_slots = self.log.last_index() - self.log.commit
        return {"algorithm": "paxos", "ballot": self.describe(self.promised),
                "leader_ballot": self.describe(self.leader_ballot),
                # Slots are chosen in whatever ballots, not in rising ones:
                # the ballot at the commit point says nothing of the prefix.
                "commit_term": None,
                "slots": {"first": self.log.first_index(), "last": self.log.last_index(),
                          "chosen": self.log.commit, "open": open_slots}}

    # --- public inputs ----------------------------------------------------------

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        self._tick_fn()

    def propose(self, data: bytes) -> int:
        """Propose `data` in the next free slot if this node leads; its slot."""
        self.step(Propose(data))
        return self.log.last_index()

    def propose_conf_change(self, cc: ConfChange) -> int:
        raise ConfChangeRefused("not_supported", FIXED_MEMBERSHIP)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read: a `ReadState` with `ctx` comes out of
        `ready()` once a majority confirmed this leader's ballot, or `ctx` is
        in `dropped_reads`."""
        self.step(ReadIndexRequest(ctx))

    def transfer_leader(self, to: str) -> None:
        self.step(TransferLeader(to))

    def decree(self, value: bytes) -> int:
        """One instance of the Synod protocol, for teaching: run phase 1 with
        a fresh ballot (even if this node leads), then propose `value` in the
        next free slot. Returns the ballot."""
        self._decree = value
        self._campaign("decree")
        return self.ballot

    def step(self, m: Message | PaxosMessage) -> None:
        """Feed one message, local or from a peer, into the state machine."""
        if isinstance(m, Propose):
            self._propose(m.data)
        elif isinstance(m, Hup):
            if self.role is not Role.LEADER:
                self._campaign("transfer" if m.transfer else "timeout")
        elif isinstance(m, Beat):
            if self.role is Role.LEADER:
                self._broadcast_heartbeat()
        elif isinstance(m, ReadIndexRequest):
            self._read(m.ctx)
        elif isinstance(m, TransferLeader):
            self._transfer(m.to)
        elif isinstance(m, ProposeConfChange):
            raise ConfChangeRefused("not_supported", FIXED_MEMBERSHIP)
        else:
            self._step_peer(m)

    def _step_peer(self, m: PeerMessage | PaxosMessage) -> None:
        if m.dst != self.id or m.src == self.id or m.src not in self.ranks:
            self.counters.dropped_messages += 1
            return
        if isinstance(m, Accept):
            self._on_accept(m)
        elif isinstance(m, Heartbeat):
            self._on_heartbeat(m)
        elif isinstance(m, Prepare):
            self._on_prepare(m)
        elif isinstance(m, PrePrepare):
            self._on_pre_prepare(m)
        elif isinstance(m, InstallSnapshot):
            self._on_snapshot(m)
        elif isinstance(m, TimeoutNow):
            self._on_timeout_now(m)
        elif isinstance(m, PaxosMessage):  # answers to a proposer
            self._step_fn(m)
        else:
            self.counters.dropped_messages += 1  # a Raft message: not ours

    # --- output -------------------------------------------------------------------

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
            or self._hard_state_changed()
            or self._soft_state_changed()
            or (self.role is Role.LEADER and self._any_append_due())
        )

    def ready(self) -> Ready[PaxosMessage]:
        """Everything the caller must do now; call `advance()` afterwards."""
        if self.role is Role.LEADER:
            self._flush_leader()
        rd: Ready[PaxosMessage] = Ready()
        if self._hard_state_changed():
            hs = self._hard_state()
            rd.hard_state = hs
            # A new promise must be durable before any answer leaves.
            rd.term_or_vote_changed = hs.term != self._prev_hs.term
        rd.entries = self.log.unstable()
        rd.snapshot = self._pending_snapshot
        rd.messages, self._msgs = self._msgs, []
        if self.log.commit > self.log.applied:
            rd.committed_entries = self.log.slice(
                self.log.applied + 1, self.log.commit + 1, self.config.max_apply_bytes, 1 << 62)
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

    def advance(self, rd: Ready[PaxosMessage]) -> None:
        """The caller persisted, sent and applied `rd`."""
        if rd.snapshot is not None and rd.snapshot is self._pending_snapshot:
            self._pending_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            if self.log.at(last.index) == last:
                self.log.stable_to(last.index)
                if self.role is Role.LEADER:
                    # Only now does the leader count its own acceptance: its
                    # Accepts may have left before this persist.
                    self._maybe_commit()
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    def _hard_state(self) -> HardState:
        return HardState(self.promised, None, self.log.commit)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role.value, self.leader, self.promised)

    # Asked by `has_ready` on every turn (as in the Raft core): the fields
    # compared where they are, not new states built to compare.
    def _hard_state_changed(self) -> bool:
        p = self._prev_hs
        return self.log.commit != p.commit or self.promised != p.term or p.vote is not None

    def _soft_state_changed(self) -> bool:
        p = self._prev_soft
        # A Role is a str: equal to its value, which SoftState holds.
        return p is None or self.promised != p.term or self.leader != p.leader \
            or p.role != self.role

    # --- helpers ----------------------------------------------------------------------

    def _send(self, m: PaxosMessage) -> None:
        self._msgs.append(m)

    def _event(self, name: str, **kw: Any) -> None:
        self._events.append((name, kw))
