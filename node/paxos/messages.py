"""Every Multi-Paxos message as a typed `msgspec.Struct`, in the tagged union
`PaxosMessage` (what may arrive from the network at a Paxos node).

Phase 1 is `Prepare`/`Promise` (Paxos Made Simple §2.2's prepare request
and its answer, "1a"/"1b"), phase 2 `Accept`/`Accepted` ("2a"/"2b"), and
`Preempted` is an acceptor's refusal naming the higher ballot it promised
(Paxos Made Moderately Complex's preemption). `PrePrepare`/`PrePromise`
ask first whether phase 1 could win (Raft's PreVote). `Heartbeat`/`HeartbeatAck`
carry the leader's liveness, its chosen prefix and ReadIndex confirmations.
Snapshots and leadership hand-over reuse Raft's `InstallSnapshot`,
`InstallSnapshotResponse` and `TimeoutNow` (their `term` is a ballot here).
Every `term` field is a ballot number (node/paxos/ballot.py). No I/O here.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from node.raft.messages import (
    U64,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    NodeId,
    TimeoutNow,
)


class _Base(msgspec.Struct, frozen=True, array_like=True, tag_field="t", kw_only=True):
    term: U64  # a ballot
    src: NodeId
    dst: NodeId


class PrePrepare(_Base, tag="p0a", frozen=True):
    """Before phase 1 (Raft's PreVote, thesis §9.6, which the Paxos papers
    lack): would you promise ballot `term`? Nothing is promised or stored,
    so a node that cannot reach a majority, or whose peers hear a leader,
    does not raise the ballot that would preempt that leader."""


class PrePromise(_Base, tag="p0b", frozen=True):
    """The answer to a `PrePrepare` of ballot `term`: `granted` unless this
    node heard a live leader within an election timeout or promised a
    ballot of at least `term`; `promised` is the ballot it has promised."""

    granted: bool
    promised: U64


class Prepare(_Base, tag="p1a", frozen=True):
    """Phase 1a: promise to accept no ballot below `term`, and report what
    you accepted in every slot from `from_slot` on."""

    from_slot: U64


class Promise(_Base, tag="p1b", frozen=True):
    """Phase 1b: the acceptor promised `term`. `entries` are the values it
    accepted in slots `from_slot`..`upto` (each with the ballot it accepted
    it in), the slots it holds nothing for left out; slots up to `commit` are
    known chosen, and hold the chosen value. A long answer comes in pieces:
    `complete` is false until the last, and the proposer asks again from
    `upto` + 1. Values below `first_slot` were compacted into a snapshot:
    they are chosen, and only a snapshot has them."""

    from_slot: U64
    upto: U64
    commit: U64
    first_slot: U64
    entries: list[Entry]
    complete: bool


class Accept(_Base, tag="p2a", frozen=True):
    """Phase 2a: accept these values for their slots in ballot `term` (every
    entry's term is `term`); the leader knows every slot up to `commit` chosen."""

    entries: list[Entry]
    commit: U64
    # The leader's own traffic promises nothing about its disk: it may leave
    # before the leader persists (node/raft/ready.py, step 1).
    SENT_BEFORE_PERSIST: ClassVar[bool] = True


class Accepted(_Base, tag="p2b", frozen=True):
    """Phase 2b: the acceptor accepted slots `lo`..`hi` in ballot `term` (none
    when `hi` < `lo`); it knows every slot up to `commit` chosen. `refused`:
    `lo` lies too far past the end of its log (`last`), and nothing was taken."""

    lo: U64
    hi: U64
    commit: U64
    last: U64 = 0
    refused: bool = False


class Preempted(_Base, tag="pnack", frozen=True):
    """An acceptor refused ballot `ballot`: it promised the higher `term`."""

    ballot: U64


class Heartbeat(_Base, tag="phb", frozen=True):
    """The leader of ballot `term` lives; it knows every slot up to `commit`
    chosen. `seq` is echoed to confirm ReadIndex rounds."""

    commit: U64
    seq: U64 = 0
    SENT_BEFORE_PERSIST: ClassVar[bool] = True


class HeartbeatAck(_Base, tag="phba", frozen=True):
    """The acceptor has promised nothing above `term`; it knows every slot up
    to `commit` chosen."""

    seq: U64
    commit: U64


PaxosMessage = (
    PrePrepare
    | PrePromise
    | Prepare
    | Promise
    | Accept
    | Accepted
    | Preempted
    | Heartbeat
    | HeartbeatAck
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)

PAXOS_MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (
    PrePrepare, PrePromise, Prepare, Promise, Accept, Accepted, Preempted, Heartbeat, HeartbeatAck,
    InstallSnapshot, InstallSnapshotResponse, TimeoutNow,
)


def is_decree(e: Entry) -> bool:
    """A decree of `raftctl paxos decree`: a no-op that carries a value. The
    state machine skips it like any no-op; the logs follow it message by
    message (the single-decree Synod protocol, Paxos Made Simple §2)."""
    return e.kind is EntryKind.NOOP and bool(e.data)


def decree_text(data: bytes) -> str:
    """A decree's value as a log line shows it (a decree holds at most 100
    characters, node/control.py; anything longer is cut)."""
    return data[:400].decode("utf-8", "replace")
