"""The invariants a live run checks on what its nodes show from outside:
status summaries (terms and commit indexes that never go back, committed
prefixes that agree, leaders that hold them), state digests, and entries
acknowledged to clients. A mixin of `RaftInvariants` (chaos/invariants.py)."""

from __future__ import annotations

import bisect

from chaos.invariants_base import (
    ACKNOWLEDGED_DURABLE,
    APPLIED_STATE,
    COMMIT_MONOTONIC,
    LEADER,
    LEADER_COMPLETENESS,
    STATE_MACHINE_SAFETY,
    TERM_MONOTONIC,
    InvariantsState,
    NodeSummary,
    Violation,
    _Decided,
)


class LiveChecks(InvariantsState):
    """The checks above, as methods of `RaftInvariants`."""

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
