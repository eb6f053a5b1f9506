"""Majority and joint-majority arithmetic (node/raft/quorum.py), table by
table after etcd's quorum tests: what a configuration has committed and how
a vote under it ends, a majority of each half while joint."""

from __future__ import annotations

import pytest

from node.raft.messages import ConfState
from node.raft.quorum import NO_LIMIT, JointConfig, VoteResult, committed_index, vote_result

W, L, P = VoteResult.WON, VoteResult.LOST, VoteResult.PENDING


def _acked(text: str) -> dict[str, int]:
    """`a=5 b=3` -> {"a": 5, "b": 3}."""
    return {k: int(v) for k, v in (p.split("=") for p in text.split())}


def _votes(text: str) -> dict[str, bool]:
    """`a=y b=n` -> {"a": True, "b": False}."""
    return {k: v == "y" for k, v in (p.split("=") for p in text.split())}


@pytest.mark.parametrize(("voters", "acked", "want"), [
    ("", "a=5", NO_LIMIT),  # no voters agree to anything
    ("a", "", 0),
    ("a", "a=7", 7),
    ("a b", "a=7", 0),
    ("a b", "a=7 b=4", 4),
    ("a b c", "a=9 b=4", 4),
    ("a b c", "a=9 b=4 c=6", 6),
    ("a b c", "a=9", 0),
    ("a b c d", "a=9 b=8 c=7 d=1", 7),
    ("a b c d", "a=9 b=8", 0),
    ("a b c d e", "a=1 b=2 c=3 d=4 e=5", 3),
    # Acknowledgements of non-voters (learners) never count.
    ("a b c", "a=9 x=9 y=9", 0),
    ("a b c", "a=9 b=2 x=9 y=9", 2),
])
def test_majority_committed_index(voters: str, acked: str, want: int) -> None:
    """The index a majority of the voters acknowledged."""
    assert committed_index(voters.split(), _acked(acked)) == want


@pytest.mark.parametrize(("incoming", "outgoing", "acked", "want"), [
    ("a b c", "", "a=5 b=5 c=1", 5),  # not joint: the outgoing half drops out
    ("a b c", "a b c", "a=5 b=5 c=1", 5),
    # C_new = a,d,e; C_old = a,b,c. A majority of the new half alone is not enough.
    ("a d e", "a b c", "a=9 d=9 e=9", 0),
    ("a d e", "a b c", "a=9 d=9 e=9 b=4", 4),
    ("a d e", "a b c", "a=9 d=9 b=9 c=9", 9),
    # And a majority of the old half alone is not either.
    ("a d e", "a b c", "a=9 b=9 c=9", 0),
    ("a d e", "a b c", "a=9 b=9 c=9 e=3", 3),
    ("a b", "a b c", "a=7 b=6 c=9", 6),
    ("a b c d", "a b c", "a=7 b=7 c=1 d=1", 1),
])
def test_joint_committed_index(incoming: str, outgoing: str, acked: str, want: int) -> None:
    """While joint, the committed index is the lower of the two halves'."""
    jc = JointConfig(frozenset(incoming.split()), frozenset(outgoing.split()))
    assert jc.committed_index(_acked(acked)) == want


@pytest.mark.parametrize(("voters", "votes", "want"), [
    ("", "", W),
    ("a", "", P),
    ("a", "a=y", W),
    ("a", "a=n", L),
    ("a b", "a=y", P),
    ("a b", "a=y b=n", L),
    ("a b", "a=y b=y", W),
    ("a b c", "a=y", P),
    ("a b c", "a=y b=y", W),
    ("a b c", "a=n b=n", L),
    ("a b c", "a=y b=n", P),
    ("a b c d", "a=y b=y", P),
    ("a b c d", "a=y b=y c=n", P),
    ("a b c d", "a=y b=n c=n", L),
    ("a b c d", "a=y b=y c=y", W),
    # A learner's grant does not count.
    ("a b c", "a=y x=y y=y", P),
])
def test_majority_vote_result(voters: str, votes: str, want: VoteResult) -> None:
    """Won with a majority of grants, lost once a majority cannot be reached."""
    assert vote_result(voters.split(), _votes(votes)) is want


@pytest.mark.parametrize(("incoming", "outgoing", "votes", "want"), [
    ("a b c", "", "a=y b=y", W),
    ("a d e", "a b c", "a=y d=y e=y", P),  # the old half is still out
    ("a d e", "a b c", "a=y d=y e=y b=y", W),
    ("a d e", "a b c", "a=y d=y b=y", W),
    ("a d e", "a b c", "a=y b=y c=y", P),  # the new half is still out
    ("a d e", "a b c", "a=y b=y c=y d=n e=n", L),  # the new half lost: lost
    ("a d e", "a b c", "b=n c=n d=y e=y", L),  # the old half lost: lost
    ("a d e", "a b c", "a=n b=n", L),  # a and b refused: the old half is lost
    ("a d e", "a b c", "a=n d=y", P),
])
def test_joint_vote_result(incoming: str, outgoing: str, votes: str, want: VoteResult) -> None:
    """While joint, an election is won only if both halves won, lost if either lost."""
    jc = JointConfig(frozenset(incoming.split()), frozenset(outgoing.split()))
    assert jc.vote_result(_votes(votes)) is want


def test_joint_config_of_a_conf_state_leaves_learners_out() -> None:
    """The voters that decide come from a ConfState's two halves, never its learners."""
    conf = ConfState(voters=("a", "d"), learners=("x",), voters_outgoing=("a", "b", "c"))
    jc = JointConfig.of(conf)
    assert jc.voters() == {"a", "b", "c", "d"}
    assert jc.describe() == "a,d & a,b,c"
    assert JointConfig.of(ConfState(voters=("a", "b"))).describe() == "a,b"
