"""`Ready`: what the core asks its caller to do, in one batch.

The caller must handle a `Ready` in this order and only then call
`RaftCore.advance(ready)`:

1. persist `snapshot` (if any), then `entries` (truncating the stored log from
   `entries[0].index`), then `hard_state` (if any), and make them durable;
2. send `messages` -- only now: a vote or an acknowledgement promises state
   that must already be on disk (§5.1, "persist before send"). One exception
   is allowed: a leader's own replication traffic (`may_send_early()`:
   AppendEntries, Heartbeat, InstallSnapshot) promises nothing about the
   leader's disk, so it may leave before step 1 and the leader's fsync
   overlaps its followers' (thesis §10.2.1). The leader counts itself towards
   a commit only for entries it has persisted (after `advance()`);
3. restore the state machine from `snapshot` (if any), then apply
   `committed_entries` in order;
4. serve each of `read_states` once the state machine has applied
   `read_state.index` (thesis §6.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.messages import (
    AppendEntries,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    PeerMessage,
    Snapshot,
)

_EARLY = (AppendEntries, Heartbeat, InstallSnapshot)


def may_send_early(m: PeerMessage) -> bool:
    """A leader's replication message, which may leave before persisting."""
    return isinstance(m, _EARLY)


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
class Ready:
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[PeerMessage] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    soft_state: SoftState | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The term or the vote changed: a promise that must be durable. A change
    # of the commit index alone need not be synced (it is written, and it is
    # recomputed from a quorum after a crash), as in etcd's MustSync.
    term_or_vote_changed: bool = False

    def must_sync(self) -> bool:
        """True when something must reach disk before messages leave."""
        return bool(self.entries) or self.term_or_vote_changed or self.snapshot is not None
