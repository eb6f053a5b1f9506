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


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    NOOP = 1


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


class SnapshotMeta(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The last log entry a snapshot covers."""

    index: U64 = 0
    term: U64 = 0


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


LocalMessage = Hup | Beat | Propose | ReadIndexRequest | TransferLeader
Message = PeerMessage | LocalMessage
