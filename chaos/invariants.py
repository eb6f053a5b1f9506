"""The safety properties of Raft (§5.2-§5.4, Figure 3) checked on plain data,
after LogCabin's `RaftConsensusInvariants`: the simulator feeds it each node's
whole state after every change, a live run each node's status and state
digest (those checks are chaos/invariants_live.py's; the names and records
all share are chaos/invariants_base.py's, re-exported here). It observes;
it never drives or repairs a cluster.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from chaos.invariants_base import (
    ACKNOWLEDGED_DURABLE,
    APPLIED_STATE,
    COMMIT_MONOTONIC,
    CORE_ERROR,
    ELECTION_SAFETY,
    EXACTLY_ONCE,
    LEADER,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LINEARIZABILITY,
    LIVENESS,
    LOG_MATCHING,
    QUORUM,
    REVISIONS,
    STATE_MACHINE_SAFETY,
    TERM_MONOTONIC,
    ConfView,
    EntryLike,
    NodeState,
    NodeSummary,
    RevisionView,
    Violation,
    _Decided,
    _Seen,
    majority,
    ran_once,
)
from chaos.invariants_live import LiveChecks
from chaos.linearizability import Operation, check_history

__all__ = [
    "ACKNOWLEDGED_DURABLE",
    "APPLIED_STATE",
    "COMMIT_MONOTONIC",
    "CORE_ERROR",
    "ELECTION_SAFETY",
    "EXACTLY_ONCE",
    "LEADER",
    "LEADER_APPEND_ONLY",
    "LEADER_COMPLETENESS",
    "LINEARIZABILITY",
    "LIVENESS",
    "LOG_MATCHING",
    "QUORUM",
    "REVISIONS",
    "STATE_MACHINE_SAFETY",
    "TERM_MONOTONIC",
    "ConfView",
    "EntryLike",
    "NodeState",
    "NodeSummary",
    "RaftInvariants",
    "RevisionView",
    "Violation",
    "check_linearizable",
    "majority",
    "ran_once",
]


class RaftInvariants(LiveChecks):
    """Incremental checker: each `observe` costs about the size of what changed
    (plus one C-level comparison of the node's log with its last copy)."""

    def __init__(self) -> None:
        self._nodes = {}
        # Election safety, over the whole run: the leader of each term.
        self._leader_of = {}
        # Nodes that lead now, with their term (for leader completeness).
        self._leaders = {}
        # Log matching, by induction: an entry (index, term) always has the
        # same data and the same term before it.
        self._entries = {}
        # Committed or applied anywhere: index -> what was decided there.
        self._decided = {}
        # Exactly-once: the index at which each (session, seq) write ran.
        self._executed = {}
        # Live summaries: the last one of each node, the highest term each
        # node was seen leading, the decided indexes in order, the highest
        # decided index by the term that bounds its commit, the leaders now
        # (term, last index), the state digest at each applied index, and the
        # highest index acknowledged to a client.
        self._summaries = {}
        self._led = {}
        self._points = []
        self._top_by_term = {}
        self._summary_leaders = {}
        self._digests = {}
        # The revisions each applied index left (node, what), first seen.
        self._revisions = {}
        self._acked = None
        # Quorums: each node's vote in each term, and each node's latest log
        # as last seen (kept when it crashes: what it acknowledged is on disk).
        self._votes = {}
        self._last = {}
        # When the current observation was made: a tick or seconds.
        self._tick = None
        self._t_s = None

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
