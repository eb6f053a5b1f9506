"""What the parts of `RaftCore` share: the roles a node takes (§5.1), the
core's small records, and `CoreState`, the declaration of its state."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.config import CoreConfig
from node.raft.log import RaftLog
from node.raft.membership import Membership
from node.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    PeerMessage,
    Snapshot,
    SnapshotMeta,
)
from node.raft.progress import Progress
from node.raft.quorum import JointConfig
from node.raft.ready import ReadState, SoftState
from node.storage import Storage

if TYPE_CHECKING:  # snapshots.py is a mixin built on this module
    from node.raft.snapshots import OutgoingSnapshot


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class PendingRead:
    """A read waiting for its heartbeat round; `src` is the follower that
    asked for it (thesis §6.4.1), None for this leader's own."""

    ctx: bytes
    index: int
    seq: int
    src: str | None = None


@dataclass(slots=True)
class Counters:
    dropped_messages: int = 0
    stale_messages: int = 0
    proposals_refused: int = 0  # over max_uncommitted_bytes


class CoreState:
    """Everything the rules of the core read and write, declared once: each
    rule lives in its own mixin (elections.py, replication.py, reads.py,
    snapshots.py) and `RaftCore.__init__` (core.py) sets it all up."""

    id: str
    # Every other member of the configuration in force (voters of both
    # halves and learners): the nodes the leader replicates to.
    peers: list[str]
    config: CoreConfig
    # The configurations of the log (node/raft/membership.py), the one in
    # force, and who decides under it (node/raft/quorum.py).
    _membership: Membership
    conf: ConfState
    _joint: JointConfig
    # The cluster's initial configuration: in force where a log starts from
    # nothing, or from a snapshot that recorded none.
    _base: ConfState
    _prev_conf: ConfState
    _storage: Storage
    _rng: random.Random
    log: RaftLog
    # The latest snapshot in storage; the log may reach further back than it
    # (a catch-up tail), never less far.
    snapshot_meta: SnapshotMeta
    term: int
    vote: str | None
    leader: str | None
    role: Role
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_timeout: int
    votes: dict[str, bool]
    progress: dict[str, Progress]
    lead_transferee: str | None
    # Bytes of this leader's proposals not yet committed (overload control).
    uncommitted_bytes: int
    counters: Counters
    _msgs: list[PeerMessage]
    _events: list[tuple[str, dict[str, Any]]]
    _prev_hs: HardState
    _prev_soft: SoftState | None
    _pending_reads: list[PendingRead]
    _reads_awaiting_commit: list[tuple[bytes, str | None]]
    # Reads this follower needs a read index from the leader for: those
    # asked since its last Ready, sent as one request; and the requests sent,
    # by the ctx they went with: the tick sent at (an unanswered one is
    # dropped an election timeout on) and the reads they stand for.
    _forward_batch: list[bytes]
    _forwarded_reads: dict[bytes, tuple[int, list[bytes]]]
    # This node's logical clock: ticks since it started (never persisted).
    _ticks: int
    # Lease reads: the tick each heartbeat round (by its seq) was sent at.
    _seq_sent_tick: dict[int, int]
    # This leader sent TimeoutNow in its term: its target may be elected
    # without waiting out the followers' lease, so the lease is void.
    _lease_void: bool
    # Lease reads: a node that just started refuses votes for an election
    # timeout, as if it had heard a leader (it may have, before a crash).
    _boot_quiet: bool
    _ready_reads: list[ReadState]
    _dropped_reads: list[bytes]
    _read_seq: int
    _read_round_due: bool
    _snap_in: tuple[SnapshotMeta, bytearray] | None
    _snap_out: OutgoingSnapshot | None
    _pending_snapshot: Snapshot | None
    _tick_fn: Callable[[], None]
    _step_fn: Callable[[PeerMessage], None]

    if TYPE_CHECKING:
        # The rules each part calls in another (defined in core.py and the mixins).
        def _become_candidate(self) -> None: ...
        def _become_follower(
            self, term: int, leader: str | None, log_event: bool = True, reason: str = "higher_term"
        ) -> None: ...
        def _become_leader(self) -> None: ...
        def _become_pre_candidate(self) -> None: ...
        def _after_commit(self) -> None: ...
        def _append_entries(self, entries: list[Entry]) -> None: ...
        def _conf_changed(self, announce: bool = True) -> None: ...
        def _may_campaign(self) -> bool: ...
        def _propose_conf_change(self, cc: ConfChange) -> None: ...
        def _confirm_reads(self) -> None: ...
        def _event(self, name: str, **kw: Any) -> None: ...
        def _handle_snapshot(self, m: InstallSnapshot) -> None: ...
        def _hup(self, transfer: bool) -> None: ...
        def _maybe_send_append(self, to: str, send_if_empty: bool) -> bool: ...
        def _send(self, m: PeerMessage) -> None: ...
        def _send_snapshot_chunk(self, to: str, pr: Progress) -> None: ...
        def _send_timeout_now(self, to: str) -> None: ...
        def _start_read(self, ctx: bytes, src: str | None) -> None: ...
        def _drop_forwarded_reads(self, reason: str) -> None: ...
        def _send_forward_batch(self) -> None: ...
        def _new_heartbeat_seq(self) -> int: ...
        def _note_heartbeat_answer(self, pr: Progress, seq: int) -> None: ...
        def _read_index_from_follower(self, ctx: bytes, src: str) -> None: ...
        def _read_index_answered(self, ctx: bytes, ok: bool, index: int) -> None: ...
        def _start_snapshot(self, to: str, pr: Progress) -> None: ...
        def _step_follower(self, m: PeerMessage) -> None: ...
        def step(self, m: Message) -> None: ...
