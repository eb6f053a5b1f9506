"""`Ready`: what the core asks its caller to do, in one batch, and
`handle_ready`, the one routine that does it in the one right order. The
node's runner, the simulator and the test harness all call it; only what
each step does (sockets and files, or a virtual network and disk) differs.

The order, and why:

0. if the configuration in force changed (`conf_state`), tell the
   transports: a member's address comes with its configuration, and the
   messages of this very Ready may be for a member it has just added;
1. send the leader's own replication traffic (`may_send_early()`:
   AppendEntries, Heartbeat, InstallSnapshot). It promises nothing about the
   leader's disk, so it may leave before the leader persists, and the
   leader's fsync overlaps its followers' (thesis §10.2.1). The leader
   counts itself towards a commit only for entries it has persisted;
2. apply the first `apply_early` committed entries: a leader's entries that
   were already on its disk before this Ready, so their clients need not
   wait for this batch's fsync;
3. persist `snapshot` (if any), then `entries` (truncating the stored log
   from `entries[0].index`), then `hard_state` (if any), and make them
   durable (`must_sync()`);
4. send the other messages -- only now: a vote or an acknowledgement
   promises state that must already be on disk (§5.1, persist before send);
5. restore the state machine from `snapshot` (if any), then apply the rest
   of `committed_entries` in order;
6. serve each of `read_states` once the state machine has applied
   `read_state.index` (thesis §6.4), answer `dropped_reads`, and note the
   events and the role;

and only then `RaftCore.advance(ready)`. A crash may come between any two
steps; the simulator crashes nodes at each of them (`Step`). A persist that
fails for a reason that passes (a full disk) leaves the Ready unfinished;
`complete_ready` carries out steps 4 to 6 once it is durable.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol

from node.raft.messages import (
    AppendEntries,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    PeerMessage,
    Snapshot,
)

if TYPE_CHECKING:
    # What a core sends; Raft's messages unless said otherwise (a Paxos
    # core's Ready is a Ready[PaxosMessage]). Only the checker needs the
    # default, which `typing` has only from Python 3.13 on.
    from typing_extensions import TypeVar

    M = TypeVar("M", default=PeerMessage)
else:
    M = typing.TypeVar("M")

_EARLY = (AppendEntries, Heartbeat, InstallSnapshot)


def may_send_early(m: object) -> bool:
    """A leader's replication message, which may leave before persisting
    (another algorithm's say so with a `SENT_BEFORE_PERSIST` class flag)."""
    return isinstance(m, _EARLY) or getattr(type(m), "SENT_BEFORE_PERSIST", False)


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read identified by `ctx` may be served once `index` is applied."""

    ctx: bytes
    index: int


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state that the caller shows and logs; never persisted."""

    role: str
    leader: str | None
    term: int


@dataclass(slots=True)
class Ready(Generic[M]):
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[M] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    soft_state: SoftState | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The term or the vote changed: a promise that must be durable. A change
    # of the commit index alone need not be synced (it is written, and it is
    # recomputed from a quorum after a crash), as in etcd's MustSync.
    term_or_vote_changed: bool = False
    # How many of `committed_entries` were on this node's disk before this
    # Ready, so may be applied before it persists (a leader's only).
    apply_early: int = 0
    # The configuration in force, when it changed since the last Ready: an
    # entry that changes it takes effect when appended, and is undone when
    # truncated (thesis §4.1), so it comes with `entries`, not when applied.
    conf_state: ConfState | None = None

    def must_sync(self) -> bool:
        """True when something must reach disk before messages leave."""
        return bool(self.entries) or self.term_or_vote_changed or self.snapshot is not None


class Step(enum.Enum):
    """The points between the steps of `handle_ready`, in their order."""

    SENT_EARLY = "sent_early"
    APPLIED_EARLY = "applied_early"
    PERSISTED = "persisted"
    SENT = "sent"
    APPLIED = "applied"


class ReadyCore(Protocol[M]):
    """What `handle_ready` needs of a core (`RaftCore`, `PaxosCore`)."""

    def ready(self) -> Ready[M]: ...

    def advance(self, rd: Ready[M]) -> None: ...


class ReadyHandler(Protocol[M]):
    """What a caller does for each step of a Ready."""

    def reconfigure(self, conf: ConfState) -> None:
        """The configuration in force is now `conf`: reach its members (at
        the addresses it gives), and no longer the nodes that left it."""

    def send(self, messages: Sequence[M]) -> None:
        """Hand `messages` to the network."""

    def persist(self, rd: Ready[M]) -> None:
        """Store `rd.snapshot`, `rd.entries` and `rd.hard_state`; durable
        (one sync) before returning when `rd.must_sync()`."""

    def install(self, snapshot: Snapshot) -> None:
        """Replace the state machine by the snapshot's image."""

    def apply(self, entries: Sequence[Entry]) -> None:
        """Apply committed entries, in order, and answer who waits on them."""

    def finish(self, rd: Ready[M]) -> None:
        """Serve `rd.read_states`, answer `rd.dropped_reads`, note `rd.events`
        and `rd.soft_state`."""

    def reached(self, step: Step) -> None:
        """A point between two steps: the runner sends its clients' answers
        after APPLIED_EARLY; the simulator may crash the node anywhere."""


def handle_ready(core: ReadyCore[M], h: ReadyHandler[M]) -> Ready[M]:
    """Take the core's Ready, carry it out through `h` in the order above,
    then advance the core. Returns the Ready handled. If `h` raises (a
    simulated crash), the core is not advanced: the caller drops it."""
    rd = core.ready()
    if rd.conf_state is not None:
        h.reconfigure(rd.conf_state)
    early = [m for m in rd.messages if may_send_early(m)]
    if early:
        h.send(early)
    h.reached(Step.SENT_EARLY)
    committed = rd.committed_entries
    if rd.apply_early:
        h.apply(committed[: rd.apply_early])
    h.reached(Step.APPLIED_EARLY)
    h.persist(rd)
    h.reached(Step.PERSISTED)
    return complete_ready(core, h, rd)


def complete_ready(core: ReadyCore[M], h: ReadyHandler[M], rd: Ready[M]) -> Ready[M]:
    """Steps 4 to 6 of `rd` and `advance`: what follows its persist. A
    caller whose persist of `rd` failed for a reason that passes (a full
    disk), and that changed nothing of the core since, calls this once `rd`
    is durable after all; `handle_ready` calls it otherwise."""
    committed = rd.committed_entries
    late = [m for m in rd.messages if not may_send_early(m)]
    if late:
        h.send(late)
    h.reached(Step.SENT)
    if rd.snapshot is not None:
        h.install(rd.snapshot)
    if len(committed) > rd.apply_early:
        h.apply(committed[rd.apply_early :])
    h.reached(Step.APPLIED)
    h.finish(rd)
    core.advance(rd)
    return rd
