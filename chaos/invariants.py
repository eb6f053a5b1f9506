"""The safety properties of Raft (§5.2-§5.4, Figure 3) checked on plain data,
after LogCabin's `RaftConsensusInvariants`: feed it each node's state after
every change. It observes; it never drives or repairs a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from chaos.linearizability import Operation, check_history

ELECTION_SAFETY = "election_safety"
LEADER_APPEND_ONLY = "leader_append_only"
LOG_MATCHING = "log_matching"
LEADER_COMPLETENESS = "leader_completeness"
STATE_MACHINE_SAFETY = "state_machine_safety"
LINEARIZABILITY = "linearizability"
# A client's write (session, seq) ran at two log indexes (thesis §6.3).
EXACTLY_ONCE = "exactly_once"
LIVENESS = "liveness"
# The core itself refused to go on (an internal assertion or an exception).
CORE_ERROR = "core_error"

LEADER = "leader"


class EntryLike(Protocol):
    """What the checks need of a log entry (`node.raft.messages.Entry` fits)."""

    @property
    def index(self) -> int: ...

    @property
    def term(self) -> int: ...

    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Violation:
    """A property that failed, when (tick) and a sentence about what happened."""

    prop: str
    tick: int
    detail: str

    def __str__(self) -> str:
        return f"tick {self.tick}: {self.prop}: {self.detail}"


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node as seen from outside: `entries` are the log entries after the
    snapshot point, `applied` the last index its state machine holds."""

    node: str
    term: int
    role: str
    commit: int
    applied: int
    snapshot_index: int
    snapshot_term: int
    entries: Sequence[EntryLike]


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

    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot_index - 1].term


@dataclass(slots=True)
class _Decided:
    """An entry known committed: its term and data, who said so first, and the
    lowest term of any node seen holding it committed. That term bounds from
    above the term it was committed in, which is what Leader Completeness
    speaks of: leaders of later terms must hold it (§5.4, Figure 3)."""

    term: int
    data: bytes
    node: str
    commit_term: int


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

    def executed(self, tick: int, node: str, session: int, seq: int,
                 index: int) -> list[Violation]:
        """`node` ran write `seq` of `session` from the entry at `index`.
        Every replica runs it from the same entry (a restarted one again,
        replaying); from any other entry it ran twice."""
        first = self._executed.setdefault((session, seq), index)
        if first == index:
            return []
        return [Violation(EXACTLY_ONCE, tick,
                          f"{node} ran write {seq} of session {session} from entry {index}; "
                          f"it already ran from entry {first}")]

    def node_down(self, node: str) -> None:
        """The node crashed: it leads no more; its next state starts afresh."""
        self._nodes.pop(node, None)
        self._leaders.pop(node, None)

    def observe(self, tick: int, st: NodeState) -> list[Violation]:
        out: list[Violation] = []
        prev = self._nodes.get(st.node)
        entries = st.entries
        first = st.snapshot_index + 1
        last = st.snapshot_index + len(entries)
        changed_from = self._first_change(prev, st)
        if st.role == LEADER:
            self._check_election(tick, st, out)
        if (prev is not None and prev.role == LEADER and st.role == LEADER
                and prev.term == st.term):
            self._check_append_only(tick, st, prev, changed_from, out)
        if changed_from <= last:
            self._check_matching(tick, st, changed_from, out)
        if prev is None or st.snapshot_index != prev.snapshot_index:
            self._check_snapshot(tick, st, out)
        # Entries this node now calls committed, then applied (§5.4.3).
        lo = first if prev is None else max(first, min(prev.commit, prev.applied) + 1)
        hi = min(max(st.commit, st.applied), last)
        for i in range(lo, hi + 1):
            self._decide(tick, st, entries[i - first], "applied" if i <= st.applied
                          else "committed", out)
        if st.role == LEADER and (prev is None or prev.role != LEADER or prev.term != st.term):
            self._check_new_leader(tick, st, out)
        if st.role == LEADER:
            self._leaders[st.node] = st.term
        else:
            self._leaders.pop(st.node, None)
        if prev is not None and changed_from > last and first == prev.snapshot_index + 1 \
                and last == prev.last_index():
            kept = prev.entries
        else:
            kept = list(entries)
        self._nodes[st.node] = _Seen(st.term, st.role, st.commit, st.applied,
                                     st.snapshot_index, st.snapshot_term, kept)
        return out

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

    def _check_election(self, tick: int, st: NodeState, out: list[Violation]) -> None:
        holder = self._leader_of.setdefault(st.term, st.node)
        if holder != st.node:
            out.append(Violation(ELECTION_SAFETY, tick,
                                 f"{st.node} and {holder} both lead term {st.term}"))

    def _check_append_only(self, tick: int, st: NodeState, prev: _Seen, changed_from: int,
                           out: list[Violation]) -> None:
        last = st.snapshot_index + len(st.entries)
        prev_last = prev.last_index()
        if last < prev_last or changed_from <= prev_last:
            at = min(changed_from, last + 1)
            out.append(Violation(
                LEADER_APPEND_ONLY, tick,
                f"{st.node}, leader of term {st.term}, changed its log from index {at} "
                f"(last index {prev_last} -> {last})"))

    def _check_matching(self, tick: int, st: NodeState, changed_from: int,
                        out: list[Violation]) -> None:
        first = st.snapshot_index + 1
        entries = st.entries
        prev_term = (st.snapshot_term if changed_from == first
                     else entries[changed_from - first - 1].term)
        expect = changed_from
        for e in entries[changed_from - first :]:
            if e.index != expect:
                out.append(Violation(
                    LOG_MATCHING, tick,
                    f"{st.node} holds entry {e.index} at log position {expect}"))
                return
            expect += 1
            key = (e.index, e.term)
            mine = (prev_term, e.data, st.node)
            seen = self._entries.setdefault(key, mine)
            if seen is not mine and (seen[0] != prev_term or seen[1] != e.data):
                what = "data" if seen[1] != e.data else f"previous term ({seen[0]} vs {prev_term})"
                out.append(Violation(
                    LOG_MATCHING, tick,
                    f"entry {e.index} of term {e.term} differs in {what} between "
                    f"{seen[2]} and {st.node}"))
                return
            prev_term = e.term

    def _check_snapshot(self, tick: int, st: NodeState, out: list[Violation]) -> None:
        if st.snapshot_index == 0:
            return
        got = self._decided.get(st.snapshot_index)
        if got is not None and got.term != st.snapshot_term:
            out.append(Violation(
                STATE_MACHINE_SAFETY, tick,
                f"{st.node} holds a snapshot up to {st.snapshot_index} of term "
                f"{st.snapshot_term}, but {got.node} committed term {got.term} there"))

    def _decide(self, tick: int, st: NodeState, e: EntryLike, how: str,
                out: list[Violation]) -> None:
        mine = _Decided(e.term, e.data, st.node, st.term)
        got = self._decided.setdefault(e.index, mine)
        if got is mine:
            self._check_leaders_hold(tick, e.index, mine, out)
        elif got.term != e.term or got.data != e.data:
            out.append(Violation(
                STATE_MACHINE_SAFETY, tick,
                f"{st.node} {how} entry {e.index} of term {e.term}, but {got.node} "
                f"committed entry {e.index} of term {got.term}"))
        elif st.term < got.commit_term:
            got.commit_term = st.term
            self._check_leaders_hold(tick, e.index, got, out)

    def _check_leaders_hold(self, tick: int, index: int, d: _Decided,
                            out: list[Violation]) -> None:
        """A newly committed entry is in the log of every leader of a later term."""
        for node, term in self._leaders.items():
            if term > d.commit_term:
                self._check_holds(tick, node, term, self._nodes[node], index, d, out)

    def _check_new_leader(self, tick: int, st: NodeState, out: list[Violation]) -> None:
        """§5.4: a leader holds every entry committed in an earlier term."""
        seen = _Seen(st.term, st.role, st.commit, st.applied, st.snapshot_index,
                     st.snapshot_term, list(st.entries))
        for index, decided in self._decided.items():
            if decided.commit_term < st.term:
                before = len(out)
                self._check_holds(tick, st.node, st.term, seen, index, decided, out)
                if len(out) > before:
                    return

    def _check_holds(self, tick: int, node: str, term: int, log: _Seen, index: int,
                     decided: _Decided, out: list[Violation]) -> None:
        if index < log.snapshot_index:
            return
        have = log.term_at(index)
        same = have == decided.term
        if same and index > log.snapshot_index:
            same = log.entries[index - log.snapshot_index - 1].data == decided.data
        if not same:
            where = "lacks it" if have is None else f"has term {have} there"
            out.append(Violation(
                LEADER_COMPLETENESS, tick,
                f"{node}, leader of term {term}, does not hold entry {index} of term "
                f"{decided.term}, committed by term {decided.commit_term} ({where})"))


def check_linearizable(history: Iterable[Operation]) -> list[Violation]:
    """Linearizability of a key-value history, as violations."""
    return [Violation(LINEARIZABILITY, f.tick, f.detail) for f in check_history(history)]
