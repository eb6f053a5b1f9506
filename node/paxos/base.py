"""What the roles of `PaxosCore` share: `PaxosState`, the declaration of the
core's state, read and written by the acceptor (acceptor.py), the proposer
(proposer.py) and the leader (leader.py); and phase 1's bookkeeping."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.config import CoreConfig
from node.paxos.ballot import Ranks
from node.paxos.messages import PaxosMessage, PrePrepare
from node.paxos.slots import SlotLog
from node.raft.base import Counters, PendingRead, Role
from node.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from node.raft.progress import Progress
from node.raft.ready import ReadState, SoftState
from node.storage import Storage


@dataclass(slots=True)
class Phase1:
    """A proposer's phase 1 for its ballot, over every slot from `from_slot`
    on: who has answered in full, what their answers showed chosen, and the
    value of the highest ballot each other slot was accepted in (Paxos Made
    Simple §2.2: the value the proposer must then propose)."""

    from_slot: int
    reason: str
    done: set[str] = field(default_factory=set)
    # Each acceptor's known-chosen prefix, as its answer gave it.
    commits: dict[str, int] = field(default_factory=dict)
    chosen: dict[int, Entry] = field(default_factory=dict)
    best: dict[int, Entry] = field(default_factory=dict)


class PaxosState:
    """Everything the roles read and write, declared once; `PaxosCore.__init__`
    (core.py) sets it all up."""

    id: str
    # Every other member: the cluster's membership is fixed.
    peers: list[str]
    config: CoreConfig
    conf: ConfState
    ranks: Ranks
    _storage: Storage
    _rng: random.Random
    log: SlotLog
    # The latest snapshot in storage; the slots may reach further back.
    snapshot_meta: SnapshotMeta
    # The acceptor's promise: the highest ballot it promised (durable; it is
    # the hard state's term, and `term` for everyone who asks).
    promised: int
    # This node's own ballot while it is a candidate or the leader, else 0.
    ballot: int
    leader: str | None
    # The ballot of the leader this node follows (0: none known).
    leader_ballot: int
    role: Role
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_timeout: int
    # Campaigns since this node last followed or led: the back-off grows
    # with them, so that duelling proposers settle (node/paxos/proposer.py).
    _attempts: int
    # The highest round heard of: a new ballot must be above it.
    _max_round: int
    _p1: Phase1 | None
    # While a pre-candidate: the ballot it asks about, and who would promise.
    _pre_ballot: int
    _pre_grants: set[str]
    progress: dict[str, Progress]
    # Phase 2 of this leader's ballot began after this slot: it re-proposed
    # the slots up to `_recovered_to`; reads wait until those are chosen.
    _recovered_to: int
    lead_transferee: str | None
    uncommitted_bytes: int
    counters: Counters
    # A value to propose, as its first, once this node's phase 1 succeeds.
    _decree: bytes | None
    # Slots this node holds a decree in, not yet known chosen.
    _decree_slots: set[int]
    # For tests only: an acceptor that ignores its promise when asked to
    # accept (the bug the simulator must catch).
    _forget_promises: bool
    _msgs: list[PaxosMessage]
    _events: list[tuple[str, dict[str, Any]]]
    _prev_hs: HardState
    _prev_soft: SoftState | None
    _pending_reads: list[PendingRead]
    _reads_awaiting_commit: list[bytes]
    _ready_reads: list[ReadState]
    _dropped_reads: list[bytes]
    _read_seq: int
    _read_round_due: bool
    _snap_in: tuple[SnapshotMeta, bytearray] | None
    _snap_out: Snapshot | None
    _pending_snapshot: Snapshot | None
    _tick_fn: Callable[[], None]
    _step_fn: Callable[[PaxosMessage], None]

    if TYPE_CHECKING:
        # The rules each part calls in another (core.py and the role modules).
        def _become_follower(self, leader: str | None, ballot: int,
                             reason: str = "preempted") -> None: ...
        def _become_leader(self) -> None: ...
        def _campaign(self, reason: str) -> None: ...
        def _chosen_to(self, index: int) -> None: ...
        def _drop_reads(self) -> None: ...
        def _propose_decree(self, value: bytes) -> None: ...
        def _start_read(self, ctx: bytes) -> None: ...
        def _confirm_reads(self) -> None: ...
        def _start_snapshot(self, to: str, pr: Progress) -> None: ...
        def _send_snapshot_chunk(self, to: str, pr: Progress) -> None: ...
        def _step_follower(self, m: PaxosMessage) -> None: ...
        def _step_candidate(self, m: PaxosMessage) -> None: ...
        def _step_pre_candidate(self, m: PaxosMessage) -> None: ...
        def _on_pre_prepare(self, m: PrePrepare) -> None: ...
        def _step_leader(self, m: PaxosMessage) -> None: ...
        def _tick_election(self) -> None: ...
        def _tick_heartbeat(self) -> None: ...
        def _reset_timer(self) -> None: ...
        def _event(self, name: str, **kw: Any) -> None: ...
        def _follow(self, leader: str, ballot: int) -> None: ...
        def _heard_ballot(self, ballot: int, source: str) -> None: ...
        def _send(self, m: PaxosMessage) -> None: ...
        def _take_promise(self, src: str, entries: list[Entry], commit: int, upto: int,
                          complete: bool) -> None: ...
        def describe(self, ballot: int) -> str: ...
