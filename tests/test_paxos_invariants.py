"""The Paxos checker (chaos/paxos_invariants.py) on states made by hand:
each property holds for a legal run and fires, saying what happened, for a
run that breaks it."""

from __future__ import annotations

from chaos.invariants import Violation
from chaos.paxos_invariants import (
    AT_MOST_ONE_CHOSEN,
    CHOSEN_NEVER_CHANGES,
    LEARNERS_AGREE,
    ONE_LEADER_PER_BALLOT,
    ONE_VALUE_PER_BALLOT,
    PROMISE_KEPT,
    AcceptorState,
    PaxosInvariants,
)
from node.paxos.ballot import make_ballot
from node.raft.messages import Entry

B1 = make_ballot(1, 1)
B2 = make_ballot(2, 2)
B3 = make_ballot(3, 3)


def st(node: str, entries: list[Entry], promised: int = B1, commit: int = 0,
       role: str = "follower", ballot: int = 0) -> AcceptorState:
    return AcceptorState(node, promised, role, ballot, commit, commit, 0, entries)


def v(ballot: int, slot: int, data: bytes) -> Entry:
    return Entry(ballot, slot, data=data)


def run(states: list[AcceptorState]) -> list[Violation]:
    inv = PaxosInvariants(["n1", "n2", "n3"])
    out: list[Violation] = []
    for tick, s in enumerate(states):
        out += inv.observe(tick, s)
    return out


def checks(found: list[Violation]) -> list[str]:
    return [f.check for f in found]


def test_a_legal_run_breaks_nothing() -> None:
    """A value accepted by a majority in one ballot, a later ballot that
    proposes the same value (P2c), and learners that learn it."""
    assert run([
        st("n1", [v(B1, 1, b"a")]), st("n2", [v(B1, 1, b"a")]),
        st("n3", [v(B2, 1, b"a")], promised=B2), st("n1", [v(B1, 1, b"a")], commit=1),
        st("n2", [v(B1, 1, b"a")], commit=1), st("n3", [v(B2, 1, b"a")], promised=B2,
                                                 commit=1),
    ]) == []


def test_two_values_chosen_for_one_slot() -> None:
    """a is chosen in ballot 1 (n1, n2); then a majority accepts b there in
    ballot 2: §2.1's one safety requirement is broken."""
    found = run([st("n1", [v(B1, 1, b"a")]), st("n2", [v(B1, 1, b"a")]),
                 st("n2", [v(B2, 1, b"b")], promised=B2),
                 st("n3", [v(B2, 1, b"b")], promised=B2)])
    assert checks(found) == [AT_MOST_ONE_CHOSEN]
    assert "slot 1" in found[0].detail and "b'b'" in found[0].detail


def test_an_acceptor_accepting_below_its_promise() -> None:
    """P1a: n2 promised ballot 2, then accepted a value of ballot 1."""
    found = run([st("n2", [], promised=B2), st("n2", [v(B1, 1, b"x")], promised=B2)])
    assert checks(found) == [PROMISE_KEPT]
    assert "after promising ballot 2002" in found[0].detail


def test_a_promise_lost_on_a_crash() -> None:
    """A node seen with promise 2 comes back with promise 1: it was not on
    disk before its answer left (§2.5)."""
    assert checks(run([st("n2", [], promised=B2), st("n2", [], promised=B1)])) == [PROMISE_KEPT]


def test_two_values_in_one_ballot_and_slot() -> None:
    """A ballot's proposer proposes one value per slot: two acceptors holding
    different values of one ballot means one made it up."""
    found = run([st("n1", [v(B1, 1, b"a")]), st("n2", [v(B1, 1, b"b")])])
    assert checks(found) == [ONE_VALUE_PER_BALLOT]


def test_learners_that_disagree() -> None:
    """n1 and n2 each know a different value chosen for slot 1."""
    found = run([st("n1", [v(B1, 1, b"a")], commit=1), st("n2", [v(B2, 1, b"b")], commit=1,
                                                           promised=B2)])
    assert checks(found) == [LEARNERS_AGREE]


def test_a_learner_that_knows_a_value_that_was_not_chosen() -> None:
    """The acceptors chose a; a learner says b is chosen."""
    found = run([st("n1", [v(B1, 1, b"a")]), st("n2", [v(B1, 1, b"a")]),
                 st("n3", [v(B3, 1, b"b")], promised=B3, commit=1)])
    assert CHOSEN_NEVER_CHANGES in checks(found)


def test_a_value_known_chosen_that_changes() -> None:
    """n1 knew slot 1 chosen with a and later holds b there."""
    found = run([st("n1", [v(B1, 1, b"a")], commit=1),
                 st("n1", [v(B2, 1, b"b")], commit=1, promised=B2)])
    assert CHOSEN_NEVER_CHANGES in checks(found)


def test_two_leaders_of_one_ballot() -> None:
    """A ballot belongs to one proposer: two nodes cannot lead it."""
    found = run([st("n1", [], role="leader", ballot=B1),
                 st("n2", [], role="leader", ballot=B1)])
    assert checks(found) == [ONE_LEADER_PER_BALLOT]
