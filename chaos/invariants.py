"""The safety properties of Raft (§5.2-§5.4, Figure 3) checked on plain data,
after LogCabin's `RaftConsensusInvariants`: the simulator feeds it each node's
whole state after every change, a live run each node's status and state
digest. It observes; it never drives or repairs a cluster.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from chaos.linearizability import Operation, check_history

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


class RaftInvariants:
    """Incremental checker: each `observe` costs about the size of what changed
    (plus one C-level comparison of the node's log with its last copy)."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Seen] = {}
        # Election safety, over the whole run: the leader of each term.
        self._leader_of: dict[int, str] = {}
        # Nodes that lead now, with their term (for leader completeness).
        self._leaders: dict[str, int] = {}
        # Log matching, by induction: an entry (index, term) always has the
        # same data and the same term before it.
        self._entries: dict[tuple[int, int], tuple[int, bytes, str]] = {}
        # Committed or applied anywhere: index -> what was decided there.
        self._decided: dict[int, _Decided] = {}
        # Exactly-once: the index at which each (session, seq) write ran.
        self._executed: dict[tuple[int, int], int] = {}
        # Live summaries: the last one of each node, the highest term each
        # node was seen leading, the decided indexes in order, the highest
        # decided index by the term that bounds its commit, the leaders now
        # (term, last index), the state digest at each applied index, and the
        # highest index acknowledged to a client.
        self._summaries: dict[str, NodeSummary] = {}
        self._led: dict[str, int] = {}
        self._points: list[int] = []
        self._top_by_term: dict[int, int] = {}
        self._summary_leaders: dict[str, tuple[int, int]] = {}
        self._digests: dict[int, tuple[str, str]] = {}
        # The revisions each applied index left (node, what), first seen.
        self._revisions: dict[int, tuple[str, RevisionView]] = {}
        self._acked: tuple[int, str] | None = None
        # Quorums: each node's vote in each term, and each node's latest log
        # as last seen (kept when it crashes: what it acknowledged is on disk).
        self._votes: dict[tuple[int, str], str] = {}
        self._last: dict[str, _Seen] = {}
        # When the current observation was made: a tick or seconds.
        self._tick: int | None = None
        self._t_s: float | None = None

    def _v(self, check: str, detail: str) -> Violation:
        return Violation(check=check, detail=detail, tick=self._tick, t_s=self._t_s)

    def executed(self, tick: int, node: str, session: int, seq: int,
                 index: int) -> list[Violation]:
        """`node` ran write `seq` of `session` from the entry at `index`."""
        return ran_once(self._executed, tick, node, session, seq, index)

    def node_down(self, node: str) -> None:
        """The node crashed: it leads no more; its next state starts afresh."""
        self._nodes.pop(node, None)
        self._leaders.pop(node, None)
        self._summary_leaders.pop(node, None)

    def observe(self, tick: int, st: NodeState) -> list[Violation]:
        self._tick, self._t_s = tick, None
        out: list[Violation] = []
        prev = self._nodes.get(st.node)
        entries = st.entries
        first = st.snapshot_index + 1
        last = st.snapshot_index + len(entries)
        changed_from = self._first_change(prev, st)
        if st.role == LEADER:
            self._check_election(st.node, st.term, out)
        if (prev is not None and prev.role == LEADER and st.role == LEADER
                and prev.term == st.term):
            self._check_append_only(st, prev, changed_from, out)
        if changed_from <= last:
            self._check_matching(st, changed_from, out)
        if prev is None or st.snapshot_index != prev.snapshot_index:
            self._check_snapshot(st, out)
        # Entries this node now calls committed, then applied (§5.4.3).
        lo = first if prev is None else max(first, min(prev.commit, prev.applied) + 1)
        hi = min(max(st.commit, st.applied), last)
        for i in range(lo, hi + 1):
            self._decide(st, entries[i - first], "applied" if i <= st.applied
                         else "committed", out)
        if st.role == LEADER and (prev is None or prev.role != LEADER or prev.term != st.term):
            self._check_new_leader(st, out)
        if st.role == LEADER:
            self._leaders[st.node] = st.term
        else:
            self._leaders.pop(st.node, None)
        if prev is not None and changed_from > last and first == prev.snapshot_index + 1 \
                and last == prev.last_index():
            kept = prev.entries
        else:
            kept = list(entries)
        seen = _Seen(st.term, st.role, st.commit, st.applied, st.snapshot_index,
                     st.snapshot_term, kept, st.confs)
        self._check_quorums(st, prev, seen, out)
        self._nodes[st.node] = self._last[st.node] = seen
        return out

    # --- live runs: status summaries, digests, acknowledgements ---------------

    def observe_summary(self, t_s: float, s: NodeSummary) -> list[Violation]:
        """One node's status in a live run: the checks its marks allow."""
        self._tick, self._t_s = None, t_s
        out: list[Violation] = []
        prev = self._summaries.get(s.node)
        if prev is not None and prev.incarnation == s.incarnation:
            if s.term < prev.term:
                out.append(self._v(TERM_MONOTONIC, f"{s.node}'s term went from {prev.term} "
                                   f"back to {s.term} while its process lived"))
            if s.commit < prev.commit:
                out.append(self._v(COMMIT_MONOTONIC, f"{s.node}'s commit index went from "
                                   f"{prev.commit} back to {s.commit} while its process lived"))
        elif prev is not None and s.durable and s.term < self._led.get(s.node, 0):
            # A candidate persists its term before asking for votes (§5.1),
            # so a term it won is on its disk.
            out.append(self._v(TERM_MONOTONIC, f"{s.node} led term {self._led[s.node]}, yet "
                               f"came back from a restart in term {s.term}"))
        self._summaries[s.node] = s
        if s.role == LEADER:
            self._check_election(s.node, s.term, out)
            self._led[s.node] = max(self._led.get(s.node, 0), s.term)
        if s.commit > 0 and s.commit_term is not None:
            self._decide_point(s, out)
        if s.role == LEADER:
            self._summary_leaders[s.node] = (s.term, s.last_index)
            top = max((i for t, i in self._top_by_term.items() if t < s.term), default=0)
            if s.last_index < top:
                d = self._decided[top]
                out.append(self._v(LEADER_COMPLETENESS, (
                    f"{s.node}, leader of term {s.term}, holds entries up to {s.last_index} "
                    f"only, but {d.node} had committed up to {top} by term {d.commit_term}")))
        else:
            self._summary_leaders.pop(s.node, None)
        return out

    def _decide_point(self, s: NodeSummary, out: list[Violation]) -> None:
        """`s.commit` is committed with term `s.commit_term`, and so is the
        log before it: one log, whose terms never go down with the index."""
        index, term = s.commit, s.commit_term
        assert term is not None, "only called with a known term"
        got = self._decided.get(index)
        if got is None:
            got = self._decided[index] = _Decided(term, None, s.node, s.term)
            at = bisect.bisect_left(self._points, index)
            self._points.insert(at, index)
            lower = self._decided[self._points[at - 1]] if at > 0 else None
            upper = (self._decided[self._points[at + 1]] if at + 1 < len(self._points)
                     else None)
            if lower is not None and lower.term > term:
                out.append(self._v(STATE_MACHINE_SAFETY, (
                    f"{s.node} committed up to entry {index} of term {term}, but {lower.node} "
                    f"had committed an earlier entry {self._points[at - 1]} of term "
                    f"{lower.term}: the committed prefixes differ")))
            if upper is not None and upper.term < term:
                out.append(self._v(STATE_MACHINE_SAFETY, (
                    f"{s.node} committed up to entry {index} of term {term}, but {upper.node} "
                    f"had committed a later entry {self._points[at + 1]} of term "
                    f"{upper.term}: the committed prefixes differ")))
        elif got.term != term:
            out.append(self._v(STATE_MACHINE_SAFETY, (
                f"{s.node} committed entry {index} of term {term}, but {got.node} committed "
                f"entry {index} of term {got.term}: the committed prefixes differ")))
            return
        got.commit_term = min(got.commit_term, s.term)
        if self._top_by_term.get(got.commit_term, 0) < index:
            self._top_by_term[got.commit_term] = index
        for node, (lead_term, last) in self._summary_leaders.items():
            if lead_term > got.commit_term and last < index and node != s.node:
                out.append(self._v(LEADER_COMPLETENESS, (
                    f"{node}, leader of term {lead_term}, held entries up to {last} only, "
                    f"but {s.node} says {index} was committed by term {got.commit_term}")))

    def observe_digest(self, t_s: float, node: str, applied: int,
                       digest: str) -> list[Violation]:
        """A node's state-machine digest at its applied index: a function of
        the first `applied` log entries, which are the same everywhere
        (§5.4.3), so every replica's state there is the same."""
        self._tick, self._t_s = None, t_s
        seen = self._digests.setdefault(applied, (digest, node))
        if seen[0] == digest:
            return []
        return [self._v(APPLIED_STATE, (
            f"at applied index {applied} the state machines differ ({seen[1]}: "
            f"{seen[0][:12]}, {node}: {digest[:12]})"))]

    def observe_revisions(self, tick: int, node: str, applied: int,
                          view: RevisionView) -> list[Violation]:
        """What the first `applied` entries left in `node`'s store: the same
        on every replica, whether it applied them or restored an image."""
        self._tick, self._t_s = tick, None
        seen = self._revisions.setdefault(applied, (node, view))
        if seen[1] == view:
            return []
        other, was = seen
        return [self._v(REVISIONS, (
            f"at applied index {applied} the revisions differ: {other} {was.differs(view)}, "
            f"{node} the other"))]

    def acknowledged(self, index: int, what: str) -> None:
        """A client was told its command was applied at log `index`."""
        if self._acked is None or index > self._acked[0]:
            self._acked = (index, what)

    def converged(self, t_s: float, applied: dict[str, int]) -> list[Violation]:
        """After healing and quiet, every node applied the same prefix: it
        must reach every acknowledged entry (committed entries are never
        lost, and a leader applies what it commits)."""
        self._tick, self._t_s = None, t_s
        if self._acked is None:
            return []
        index, what = self._acked
        return [self._v(ACKNOWLEDGED_DURABLE, (
            f"{what} was acknowledged at log index {index}, but {node} settled at applied "
            f"index {at}")) for node, at in sorted(applied.items()) if at < index]

    # --- quorums under changing configurations (thesis §4.3) ------------------

    def _check_quorums(self, st: NodeState, prev: _Seen | None, seen: _Seen,
                       out: list[Violation]) -> None:
        """Every vote is cast once a term; a new leader holds the votes of a
        majority of each half of the configuration it campaigned under; and
        a leader's commit index moves only to an entry that a majority of
        each half of the configuration in force holds."""
        if st.vote is not None:
            cast = self._votes.setdefault((st.term, st.node), st.vote)
            if cast != st.vote:
                out.append(self._v(QUORUM, f"{st.node} voted for {cast} and then for {st.vote} "
                                   f"in term {st.term}"))
        if st.role != LEADER or not st.confs:
            return
        # It won under the latest configuration of its last observation (a
        # candidate's log does not change while it campaigns).
        before = prev.confs[-1] if prev is not None and prev.confs else st.confs[-1]
        if prev is None or prev.role != LEADER or prev.term != st.term:
            for half in before.halves():
                votes = sorted(v for v in half if self._votes.get((st.term, v)) == st.node)
                if len(votes) < majority(len(half)):
                    out.append(self._v(QUORUM, (
                        f"{st.node} leads term {st.term} with the votes of "
                        f"{','.join(votes) or 'nobody'} only, not a majority of "
                        f"{','.join(sorted(half))} (configuration of entry {before.index})")))
                    return
        if prev is None or st.commit <= prev.commit:
            return
        # The commit index ends under the configuration in force now. One
        # step may also have committed C_old,new and appended C_new at once:
        # then C_old,new itself was committed under C_old,new.
        since = prev.last_index()
        decided = [(st.commit, st.confs[-1])]
        for older, conf in itertools.pairwise(st.confs):
            if conf.index > since and older.outgoing and not conf.outgoing:
                decided.append((older.index, older))
        for index, conf in decided:
            term = seen.term_at(index)
            if term is None:
                continue
            for half in conf.halves():
                holders = sorted(v for v in half if self._holds(v, st.node, seen, index, term))
                if len(holders) < majority(len(half)):
                    out.append(self._v(QUORUM, (
                        f"{st.node}, leader of term {st.term}, committed entry {index} held "
                        f"by {','.join(holders) or 'nobody'} only, not a majority of "
                        f"{','.join(sorted(half))} (configuration of entry {conf.index})")))
                    return

    def _holds(self, node: str, observed: str, seen: _Seen, index: int, term: int) -> bool:
        """`node` holds entry (`index`, `term`): as `seen` now if it is the
        node observed, else as last seen (what it acknowledged is on disk)."""
        log = seen if node == observed else self._last.get(node)
        return log is not None and log.holds(index, term)

    # --- the properties ----------------------------------------------------

    def _first_change(self, prev: _Seen | None, st: NodeState) -> int:
        """The first index whose entry is new or differs from the last look."""
        first = st.snapshot_index + 1
        last = st.snapshot_index + len(st.entries)
        if prev is None:
            return first
        lo = max(first, prev.snapshot_index + 1)
        hi = min(last, prev.last_index())
        if lo > hi:
            return first
        new = st.entries[lo - first : hi - first + 1]
        old = prev.entries[lo - prev.snapshot_index - 1 : hi - prev.snapshot_index]
        if list(new) == old:
            return hi + 1
        for k, (a, b) in enumerate(zip(new, old, strict=True)):
            if a != b:
                return lo + k
        return hi + 1

    def _check_election(self, node: str, term: int, out: list[Violation]) -> None:
        holder = self._leader_of.setdefault(term, node)
        if holder != node:
            out.append(self._v(ELECTION_SAFETY, f"{node} and {holder} both lead term {term}"))

    def _check_append_only(self, st: NodeState, prev: _Seen, changed_from: int,
                           out: list[Violation]) -> None:
        last = st.snapshot_index + len(st.entries)
        prev_last = prev.last_index()
        if last < prev_last or changed_from <= prev_last:
            at = min(changed_from, last + 1)
            out.append(self._v(
                LEADER_APPEND_ONLY,
                f"{st.node}, leader of term {st.term}, changed its log from index {at} "
                f"(last index {prev_last} -> {last})"))

    def _check_matching(self, st: NodeState, changed_from: int, out: list[Violation]) -> None:
        first = st.snapshot_index + 1
        entries = st.entries
        prev_term = (st.snapshot_term if changed_from == first
                     else entries[changed_from - first - 1].term)
        expect = changed_from
        for e in entries[changed_from - first :]:
            if e.index != expect:
                out.append(self._v(LOG_MATCHING,
                                   f"{st.node} holds entry {e.index} at log position {expect}"))
                return
            expect += 1
            key = (e.index, e.term)
            mine = (prev_term, e.data, st.node)
            seen = self._entries.setdefault(key, mine)
            if seen is not mine and (seen[0] != prev_term or seen[1] != e.data):
                what = "data" if seen[1] != e.data else f"previous term ({seen[0]} vs {prev_term})"
                out.append(self._v(
                    LOG_MATCHING,
                    f"entry {e.index} of term {e.term} differs in {what} between "
                    f"{seen[2]} and {st.node}"))
                return
            prev_term = e.term

    def _check_snapshot(self, st: NodeState, out: list[Violation]) -> None:
        if st.snapshot_index == 0:
            return
        got = self._decided.get(st.snapshot_index)
        if got is not None and got.term != st.snapshot_term:
            out.append(self._v(
                STATE_MACHINE_SAFETY,
                f"{st.node} holds a snapshot up to {st.snapshot_index} of term "
                f"{st.snapshot_term}, but {got.node} committed term {got.term} there"))

    def _decide(self, st: NodeState, e: EntryLike, how: str, out: list[Violation]) -> None:
        mine = _Decided(e.term, e.data, st.node, st.term)
        got = self._decided.setdefault(e.index, mine)
        if got is mine:
            self._check_leaders_hold(e.index, mine, out)
        elif got.term != e.term or got.data != e.data:
            out.append(self._v(
                STATE_MACHINE_SAFETY,
                f"{st.node} {how} entry {e.index} of term {e.term}, but {got.node} "
                f"committed entry {e.index} of term {got.term}"))
        elif st.term < got.commit_term:
            got.commit_term = st.term
            self._check_leaders_hold(e.index, got, out)

    def _check_leaders_hold(self, index: int, d: _Decided, out: list[Violation]) -> None:
        """A newly committed entry is in the log of every leader of a later term."""
        for node, term in self._leaders.items():
            if term > d.commit_term:
                self._check_holds(node, term, self._nodes[node], index, d, out)

    def _check_new_leader(self, st: NodeState, out: list[Violation]) -> None:
        """§5.4: a leader holds every entry committed in an earlier term."""
        seen = _Seen(st.term, st.role, st.commit, st.applied, st.snapshot_index,
                     st.snapshot_term, list(st.entries))
        for index, decided in self._decided.items():
            if decided.commit_term < st.term:
                before = len(out)
                self._check_holds(st.node, st.term, seen, index, decided, out)
                if len(out) > before:
                    return

    def _check_holds(self, node: str, term: int, log: _Seen, index: int,
                     decided: _Decided, out: list[Violation]) -> None:
        if index < log.snapshot_index:
            return
        have = log.term_at(index)
        same = have == decided.term
        if same and index > log.snapshot_index:
            same = log.entries[index - log.snapshot_index - 1].data == decided.data
        if not same:
            where = "lacks it" if have is None else f"has term {have} there"
            out.append(self._v(
                LEADER_COMPLETENESS,
                f"{node}, leader of term {term}, does not hold entry {index} of term "
                f"{decided.term}, committed by term {decided.commit_term} ({where})"))


def check_linearizable(history: Iterable[Operation]) -> list[Violation]:
    """Linearizability of a key-value history, as violations."""
    return [Violation(check=LINEARIZABILITY, detail=f.detail, tick=f.tick, key=f.key)
            for f in check_history(history)]
