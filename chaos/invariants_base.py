"""What the invariants share: the names of the checks, `Violation`, the
views of a node they read (`NodeState`, `NodeSummary`, `ConfView`,
`RevisionView`), their own records, the exactly-once ledger Paxos's checks
use too (`ran_once`), and `InvariantsState`, the checker's state declared
once for `RaftInvariants` (chaos/invariants.py) and its mixins."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import msgspec

ELECTION_SAFETY = "election_safety"
LEADER_APPEND_ONLY = "leader_append_only"
LOG_MATCHING = "log_matching"
LEADER_COMPLETENESS = "leader_completeness"
STATE_MACHINE_SAFETY = "state_machine_safety"
LINEARIZABILITY = "linearizability"
# A leader elected, or an entry committed, without a majority of each half of
# the configuration in force (thesis §4.3); or a node that voted twice in a term.
QUORUM = "quorum"
# A client's write (session, seq) ran at two log indexes (thesis §6.3).
EXACTLY_ONCE = "exactly_once"
LIVENESS = "liveness"
# The core itself refused to go on (an internal assertion or an exception).
CORE_ERROR = "core_error"
# Checked on live status: a node's term and commit index never go back
# while its process lives, and a term it led in survives its restarts.
TERM_MONOTONIC = "term_monotonic"
COMMIT_MONOTONIC = "commit_monotonic"
# Checked on live digests: replicas at one applied index hold one state.
APPLIED_STATE = "applied_state"
# Replicas at one applied index agree on the store's revision, its compaction
# point, each live key's create/mod revision and version, and the history
# kept (node/state/mvcc.py): checked by the simulator after every apply.
REVISIONS = "revisions"
# A range read at a past revision answers the same keys, values and
# revisions at every replica that still keeps that revision: checked by the
# simulator at each of its range reads.
RANGE_READS = "range_reads"
# An entry acknowledged to a client is in every replica once they converge.
ACKNOWLEDGED_DURABLE = "acknowledged_durable"

LEADER = "leader"


class EntryLike(Protocol):
    """What the checks need of a log entry (`node.raft.messages.Entry` fits)."""

    @property
    def index(self) -> int: ...

    @property
    def term(self) -> int: ...

    @property
    def data(self) -> bytes: ...


class Violation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A check that failed, for the simulator and live runs alike: which
    `check`, a sentence about what happened, and when: `tick` in the
    simulator, `t_s` (seconds since the start) in a live run. A finding about
    one key names it, and `ops` is the smallest slice of the run's history
    that shows it (positions in the run's operations, by invocation); a
    finding about one element of a set names it too."""

    check: str
    detail: str
    tick: int | None = None
    t_s: float | None = None
    key: str | None = None
    ops: tuple[int, ...] = ()
    element: str | None = None

    def when(self) -> str:
        if self.tick is not None:
            return f"tick {self.tick}"
        return "" if self.t_s is None else f"{self.t_s:.3f}s"

    def __str__(self) -> str:
        at = self.when()
        return f"{at + ': ' if at else ''}{self.check}: {self.detail}"


def ran_once(ledger: dict[tuple[int, int], int], tick: int, node: str, session: int,
             seq: int, index: int) -> list[Violation]:
    """`node` ran write `seq` of `session` from the entry at `index` (noted
    in `ledger`). Every replica runs it from the same entry (a restarted one
    again, replaying); from any other entry it ran twice (thesis §6.3)."""
    first = ledger.setdefault((session, seq), index)
    if first == index:
        return []
    return [Violation(check=EXACTLY_ONCE, tick=tick,
                      detail=f"{node} ran write {seq} of session {session} from entry "
                             f"{index}; it already ran from entry {first}")]


def majority(n: int) -> int:
    """How many of `n` voters make a majority."""
    return n // 2 + 1


@dataclass(frozen=True, slots=True)
class ConfView:
    """A configuration of a node's log, from the entry at `index` on: the
    voters that decide, and while joint the old voters too (thesis §4.3)."""

    index: int
    voters: frozenset[str]
    outgoing: frozenset[str] = frozenset()

    def halves(self) -> list[frozenset[str]]:
        return [self.voters, self.outgoing] if self.outgoing else [self.voters]


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node as seen from outside: `entries` are the log entries after the
    snapshot point, `applied` the last index its state machine holds, `vote`
    whom it voted for in `term`, `confs` the configurations of its log, the
    last one in force (empty: not known, and the quorum checks are off)."""

    node: str
    term: int
    role: str
    commit: int
    applied: int
    snapshot_index: int
    snapshot_term: int
    entries: Sequence[EntryLike]
    vote: str | None = None
    confs: Sequence[ConfView] = ()


@dataclass(slots=True)
class _Seen:
    """The last observation of a node, with a private copy of its log."""

    term: int
    role: str
    commit: int
    applied: int
    snapshot_index: int
    snapshot_term: int
    entries: list[EntryLike]
    confs: Sequence[ConfView] = ()

    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def holds(self, index: int, term: int) -> bool:
        """The log has entry (`index`, `term`), or a snapshot past it."""
        return self.snapshot_index > index or self.term_at(index) == term


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """One node as its live status shows it: no log entries, only marks.
    `incarnation` tells its process lives apart (a restart is a new one);
    `commit_term` is the term of the entry at `commit` (None: unknown);
    `durable` says its writes are synced before it answers (fsync always)."""

    node: str
    incarnation: int
    term: int
    role: str
    commit: int
    commit_term: int | None
    last_index: int
    durable: bool = True


@dataclass(slots=True)
class _Decided:
    """An entry known committed: its term and data (None: a live status
    gave only the term), who said so first, and the lowest term of any node
    seen holding it committed. That term bounds from above the term it was
    committed in, which is what Leader Completeness speaks of: leaders of
    later terms must hold it (§5.4, Figure 3)."""

    term: int
    data: bytes | None
    node: str
    commit_term: int


@dataclass(frozen=True, slots=True)
class RevisionView:
    """A store's revisions as the simulator sees them: the revision, the
    oldest kept, each live key's (create, mod, version), and the history
    kept as (revision, key, deleted) in order."""

    revision: int
    compacted: int
    keys: tuple[tuple[str, int, int, int], ...]
    history: tuple[tuple[int, str, bool], ...]

    def differs(self, other: RevisionView) -> str:
        """How `self` differs from `other`, as the first thing that does."""
        if (self.revision, self.compacted) != (other.revision, other.compacted):
            return (f"has revision {self.revision} compacted at {self.compacted}, not "
                    f"{other.revision} at {other.compacted}")
        for mine, theirs in itertools.zip_longest(self.keys, other.keys):
            if mine != theirs:
                return f"holds {mine} (create, mod, version), not {theirs}"
        return f"keeps a history of {len(self.history)} changes, not {len(other.history)}"


class InvariantsState:
    """Everything the checks read and write, declared once: the checks of
    a node's whole state (invariants.py) and of a live run's summaries
    (invariants_live.py) are parts of `RaftInvariants`, whose `__init__`
    (invariants.py) sets it all up and says what each holds."""

    _nodes: dict[str, _Seen]
    _leader_of: dict[int, str]
    _leaders: dict[str, int]
    _entries: dict[tuple[int, int], tuple[int, bytes, str]]
    _decided: dict[int, _Decided]
    _executed: dict[tuple[int, int], int]
    _summaries: dict[str, NodeSummary]
    _led: dict[str, int]
    _points: list[int]
    _top_by_term: dict[int, int]
    _summary_leaders: dict[str, tuple[int, int]]
    _digests: dict[int, tuple[str, str]]
    _revisions: dict[int, tuple[str, RevisionView]]
    _acked: tuple[int, str] | None
    _votes: dict[tuple[int, str], str]
    _last: dict[str, _Seen]
    # When the current observation was made: a tick or seconds.
    _tick: int | None
    _t_s: float | None

    def _v(self, check: str, detail: str) -> Violation:
        return Violation(check=check, detail=detail, tick=self._tick, t_s=self._t_s)

    if TYPE_CHECKING:
        # Defined by RaftInvariants (invariants.py).
        def _check_election(self, node: str, term: int, out: list[Violation]) -> None: ...
