"""Every Raft message and log record as a typed `msgspec.Struct`.

Peer messages form the tagged union `PeerMessage` (what may arrive from the
network); local events (`Hup`, `Beat`, ...) enter the core through the same
`step()` but never come off the wire. No I/O here.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

# Wire integers are never negative; ids are short. Enforced when decoding.
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
# A member's address as its configuration carries it: opaque to the core (the
# runner puts its network addresses there, docs/MEMBERSHIP.md).
Address = Annotated[str, msgspec.Meta(max_length=1024)]
# A forwarded read's name, chosen by the follower (node/api.py uses 8 bytes).
ReadCtx = Annotated[bytes, msgspec.Meta(max_length=64)]


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    NOOP = 1
    CONF_CHANGE = 2  # `data` is an encoded `ConfChange` (node/raft/confchange.py)


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One entry of the replicated log. Not tracked by the garbage collector
    (it holds no container, so it is in no cycle): a log holds up to a
    snapshot interval of them, and a full collection that walked 100,000
    entries stalled the loop past an election timeout under load."""

    term: U64
    index: U64
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


class HardState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What must be on disk before a vote or an acknowledgement leaves (§5.1)."""

    term: U64 = 0
    vote: NodeId | None = None
    commit: U64 = 0


class ConfState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A cluster configuration (thesis ch. 4, etcd's ConfState): who votes,
    who only learns, and while a change is under way (joint consensus,
    C_old,new) the voters of the old configuration too. `addrs` holds each
    member's address. Every tuple is sorted, so equal configurations are
    equal values. It holds only strings, so no reference cycle: no GC."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()
    # Non-empty exactly while joint: then decisions need a majority of
    # `voters` (C_new) and one of `voters_outgoing` (C_old).
    voters_outgoing: tuple[NodeId, ...] = ()
    addrs: tuple[tuple[NodeId, Address], ...] = ()

    def is_joint(self) -> bool:
        return bool(self.voters_outgoing)

    def members(self) -> frozenset[str]:
        """Every node the log is replicated to: voters of both halves, learners."""
        return frozenset((*self.voters, *self.voters_outgoing, *self.learners))

    def is_voter(self, node: str) -> bool:
        """A voter of either half: it may campaign and its vote counts."""
        return node in self.voters or node in self.voters_outgoing

    def addr(self, node: str) -> str:
        """The member's address ("" when none is known)."""
        for n, a in self.addrs:
            if n == node:
                return a
        return ""


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0  # a new member, which receives the log but never votes
    ADD_VOTER = 1  # promote a learner
    REMOVE = 2  # a voter or a learner leaves


class ConfChangeSingle(msgspec.Struct, frozen=True, array_like=True):
    type: ConfChangeType
    node: NodeId
    addr: Address = ""  # ADD_LEARNER: where the new member listens


class ConfChange(msgspec.Struct, frozen=True, array_like=True):
    """What a CONF_CHANGE entry carries (etcd's ConfChangeV2): the changes
    made at once through a joint configuration; none means "leave the joint
    configuration" (C_new, appended by the leader once C_old,new commits)."""

    changes: tuple[ConfChangeSingle, ...] = ()


class SnapshotMeta(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The last log entry a snapshot covers, and the configuration in force
    there (None: none was recorded, which means the cluster's initial one)."""

    index: U64 = 0
    term: U64 = 0
    conf: ConfState | None = None


class Snapshot(msgspec.Struct, frozen=True):
    """A state-machine image covering every entry up to `meta.index`."""

    meta: SnapshotMeta
    data: bytes


# --- peer messages ---------------------------------------------------------


class _Base(
    msgspec.Struct, frozen=True, array_like=True, tag_field="t", kw_only=True
):
    term: U64
    src: NodeId
    dst: NodeId


class RequestVote(_Base, tag="rv", frozen=True):
    """Candidate asks for a vote (§5.2); `prevote` asks without a term bump
    (thesis §9.6); `transfer` is set after TimeoutNow and overrides the lease."""

    last_index: U64
    last_term: U64
    prevote: bool = False
    transfer: bool = False


class RequestVoteResponse(_Base, tag="rvr", frozen=True):
    granted: bool
    prevote: bool = False


class AppendEntries(_Base, tag="ae", frozen=True):
    """Leader replicates entries after (`prev_index`, `prev_term`) (§5.3)."""

    prev_index: U64
    prev_term: U64
    entries: list[Entry]
    commit: U64


class AppendEntriesResponse(_Base, tag="aer", frozen=True):
    """On success `index` is the follower's match index; on rejection it is the
    rejected `prev_index`, with a hint for fast back-tracking: the follower's
    last index, the term it has at `prev_index` and that term's first index."""

    success: bool
    index: U64
    last_index: U64 = 0
    conflict_term: U64 = 0
    conflict_index: U64 = 0


class Heartbeat(_Base, tag="hb", frozen=True):
    """Leader asserts leadership; `seq` is echoed to confirm ReadIndex rounds."""

    commit: U64
    seq: U64 = 0


class HeartbeatResponse(_Base, tag="hbr", frozen=True):
    seq: U64 = 0


class InstallSnapshot(_Base, tag="is", frozen=True):
    """One chunk of a snapshot, starting at byte `offset` (§7)."""

    meta: SnapshotMeta
    offset: U64
    data: bytes
    done: bool
    size: U64 = 0


class InstallSnapshotResponse(_Base, tag="isr", frozen=True):
    """Acknowledges a chunk: `next_offset` is the byte the follower wants next."""

    meta: SnapshotMeta
    next_offset: U64


class TimeoutNow(_Base, tag="tn", frozen=True):
    """Leadership transfer: start an election now (thesis §3.10)."""


class ReadIndex(_Base, tag="ri", frozen=True):
    """A follower asks the leader for a read index to serve a linearizable
    read itself (thesis §6.4.1); `ctx` names the read, opaque to the leader."""

    ctx: ReadCtx


class ReadIndexResponse(_Base, tag="rir", frozen=True):
    """The leader's answer: serve `ctx` once `index` is applied, or, when not
    `ok`, it could not confirm a read index (no longer the leader)."""

    ctx: ReadCtx
    ok: bool
    index: U64 = 0


PeerMessage = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | ReadIndex
    | ReadIndexResponse
)

PEER_MESSAGE_TYPES: tuple[type[_Base], ...] = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    ReadIndex,
    ReadIndexResponse,
)


# --- local events: same step(), never on the wire ---------------------------


class Hup(msgspec.Struct, frozen=True):
    """Election timeout fired: start a (pre-)campaign. `transfer` after TimeoutNow."""

    transfer: bool = False


class Beat(msgspec.Struct, frozen=True):
    """Heartbeat timeout fired on the leader."""


class Propose(msgspec.Struct, frozen=True):
    data: bytes


class ReadIndexRequest(msgspec.Struct, frozen=True):
    ctx: bytes


class TransferLeader(msgspec.Struct, frozen=True):
    to: str


class ProposeConfChange(msgspec.Struct, frozen=True):
    """Change the membership (thesis ch. 4): the leader appends it if no
    other change is under way (node/raft/membership.py)."""

    change: ConfChange


LocalMessage = Hup | Beat | Propose | ReadIndexRequest | TransferLeader | ProposeConfChange
Message = PeerMessage | LocalMessage
