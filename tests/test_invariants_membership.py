"""The quorum invariant under changing configurations (chaos/invariants.py,
thesis §4.3): a leader needs the votes, and a commit the copies, of a
majority of each half of the configuration in force; learners never count.
First on hand-made states, then with the rules broken in the simulator."""

from __future__ import annotations

import pytest

from chaos.invariants import QUORUM, ConfView, NodeState, RaftInvariants, Violation
from chaos.sim import Simulation
from node.raft import quorum
from node.raft.core import RaftCore
from node.raft.messages import Entry
from node.raft.quorum import JointConfig, committed_index, vote_result

OLD = ConfView(0, frozenset({"a", "b", "c"}))
# C_old,new at entry 2: a, d and e decide with a, b and c.
JOINT = ConfView(2, frozenset({"a", "d", "e"}), frozenset({"a", "b", "c"}))
NEW = ConfView(3, frozenset({"a", "d", "e"}))


def log(n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i + 1) for i in range(n)]


def state(node: str, term: int, n: int, role: str = "follower", commit: int = 0,
          vote: str | None = None, confs: tuple[ConfView, ...] = (OLD, JOINT)) -> NodeState:
    return NodeState(node, term, role, commit, 0, 0, 0, log(n), vote=vote, confs=confs)


def checks(found: list[Violation]) -> set[str]:
    return {v.check for v in found}


def _voted(inv: RaftInvariants, voters: str) -> None:
    for v in voters.split():
        assert inv.observe(1, state(v, 2, 3, vote="a")) == []


def test_a_leader_needs_the_votes_of_a_majority_of_each_half() -> None:
    """While joint, the votes of d and e (the new half) do not make a leader."""
    inv = RaftInvariants()
    _voted(inv, "d e")
    assert inv.observe(1, state("a", 2, 3, "candidate", vote="a")) == []
    found = inv.observe(2, state("a", 2, 3, "leader", vote="a"))
    assert checks(found) == {QUORUM}
    assert "votes of a only, not a majority of a,b,c" in found[0].detail


def test_a_leader_with_both_majorities_is_fine() -> None:
    """a, b, d: a majority of a,b,c and one of a,d,e."""
    inv = RaftInvariants()
    _voted(inv, "b d")
    assert inv.observe(1, state("a", 2, 3, "candidate", vote="a")) == []
    assert inv.observe(2, state("a", 2, 3, "leader", vote="a")) == []


def test_a_vote_cast_twice_in_a_term_is_reported() -> None:
    """A node's vote in a term never changes."""
    inv = RaftInvariants()
    assert inv.observe(1, state("b", 2, 1, vote="a")) == []
    found = inv.observe(2, state("b", 2, 1, vote="c"))
    assert checks(found) == {QUORUM} and "voted for a and then for c" in found[0].detail


def _leader_of_term_2(inv: RaftInvariants, n: int = 3) -> None:
    """a leads term 2, its log `n` entries long."""
    _voted(inv, "b c d e")
    assert inv.observe(1, state("a", 2, n, "candidate", vote="a")) == []
    assert inv.observe(1, state("a", 2, n, "leader", vote="a")) == []


def test_a_commit_held_by_the_new_half_only_is_reported() -> None:
    """Entry 3 on a, d, e (the new half) but on no other old voter: not committed."""
    inv = RaftInvariants()
    _leader_of_term_2(inv)
    for n in ("d", "e"):
        inv.observe(3, state(n, 2, 3, vote="a"))
    for n in ("b", "c"):
        inv.observe(3, state(n, 2, 1, vote="a"))
    found = inv.observe(4, state("a", 2, 3, "leader", commit=3, vote="a"))
    assert checks(found) == {QUORUM}
    assert "committed entry 3 held by a only, not a majority of a,b,c" in found[0].detail


def test_a_commit_held_by_both_majorities_is_fine_and_learners_never_count() -> None:
    """a, b and d hold entry 3: a majority of each half. A learner holding it
    changes nothing either way."""
    inv = RaftInvariants()
    _leader_of_term_2(inv)
    inv.observe(3, state("x", 2, 3))  # a learner: in no half
    inv.observe(3, state("b", 2, 3, vote="a"))
    inv.observe(3, state("d", 2, 3, vote="a"))
    assert inv.observe(4, state("a", 2, 3, "leader", commit=3, vote="a")) == []


def test_a_node_that_crashed_still_holds_what_it_acknowledged() -> None:
    """The last sight of a node counts after it is gone: its disk holds it."""
    inv = RaftInvariants()
    _leader_of_term_2(inv)
    inv.observe(3, state("b", 2, 3, vote="a"))
    inv.observe(3, state("d", 2, 3, vote="a"))
    inv.node_down("b")
    assert inv.observe(4, state("a", 2, 3, "leader", commit=3, vote="a")) == []


def test_c_new_appended_in_the_step_that_committed_c_old_new() -> None:
    """C_new (entry 3) appended as C_old,new (entry 2) commits: entry 2 must
    still have been held by a majority of both halves; later entries need
    only C_new's."""
    def run(old_holds_2: bool) -> list[Violation]:
        inv = RaftInvariants()
        _leader_of_term_2(inv, n=2)
        inv.observe(3, state("d", 2, 4, vote="a"))
        inv.observe(3, state("b", 2, 2 if old_holds_2 else 1, vote="a"))
        inv.observe(3, state("c", 2, 1, vote="a"))
        inv.observe(3, state("e", 2, 1, vote="a"))
        return inv.observe(4, NodeState("a", 2, "leader", 4, 0, 0, 0, log(4), vote="a",
                                        confs=(OLD, JOINT, NEW)))

    assert run(old_holds_2=True) == []
    found = run(old_holds_2=False)
    assert checks(found) == {QUORUM} and "entry 2 held by a only" in found[0].detail


# --- the rules broken on purpose, in the simulator -----------------------------------

# Membership changes with faults around them.
_FAULTS = frozenset({"membership", "crash", "partition", "isolate", "loss", "snapshot"})


def _first_quorum_violation(seeds: range) -> Violation:
    """The first quorum violation of a sweep. A broken rule may show as
    another violation first in some seed (a cluster that elects wrongly can
    also stop making progress): those are noted, not taken for it."""
    others: list[tuple[int, str]] = []
    for seed in seeds:
        r = Simulation(seed, faults=_FAULTS).run()
        for v in r.violations:
            if v.check == QUORUM:
                return v
        others += [(seed, v.check) for v in r.violations[:1]]
    pytest.fail(f"no seed in {seeds} broke the quorum invariant (other violations: {others})")


def test_learners_counted_toward_commit_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that counts learners as voters commits entries no majority of
    voters holds."""
    original = RaftCore._conf_changed

    def with_learners(self: RaftCore, announce: bool = True) -> None:
        original(self, announce)
        self._joint = JointConfig(frozenset(self.conf.voters) | frozenset(self.conf.learners),
                                  frozenset(self.conf.voters_outgoing))

    monkeypatch.setattr(RaftCore, "_conf_changed", with_learners)
    assert _first_quorum_violation(range(80)).check == QUORUM


def test_committing_with_the_new_majority_alone_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that, while joint, counts only the new configuration's
    majority commits what the old one does not hold (thesis §4.3)."""
    monkeypatch.setattr(quorum.JointConfig, "committed_index",
                        lambda self, acked: committed_index(self.incoming, acked))
    assert _first_quorum_violation(range(80)).check == QUORUM


def test_electing_with_the_new_majority_alone_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate that, while joint, needs only the new configuration's
    votes wins without a majority of the old one (thesis §4.3)."""
    monkeypatch.setattr(quorum.JointConfig, "vote_result",
                        lambda self, votes: vote_result(self.incoming, votes))
    assert _first_quorum_violation(range(80)).check == QUORUM
