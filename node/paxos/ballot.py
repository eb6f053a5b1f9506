"""Ballots: (round, node) pairs, totally ordered, as one number each.

Paxos Made Simple §2.5 has each proposer draw its proposal numbers from a
set of its own, disjoint from every other's. Ours: ballot = round *
BALLOT_STRIDE + rank, where a node's rank is its place (from 1) among the
cluster's fixed members. So 5002 is round 5 of the second member, and a
higher round always wins, ties going to the higher rank. Ballot 0 is "none"
(no promise, nothing accepted). Pure arithmetic: no state, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

# Ranks run from 1 to BALLOT_STRIDE - 1: at most 999 members, far more than
# one machine runs, and a ballot still reads as round and rank in decimal.
BALLOT_STRIDE = 1000


def make_ballot(round_: int, rank: int) -> int:
    if not 1 <= rank < BALLOT_STRIDE:
        raise ValueError(f"rank {rank} is not between 1 and {BALLOT_STRIDE - 1}")
    if round_ < 0:
        raise ValueError(f"round {round_} is negative")
    return round_ * BALLOT_STRIDE + rank


def round_of(ballot: int) -> int:
    return ballot // BALLOT_STRIDE


def rank_of(ballot: int) -> int:
    return ballot % BALLOT_STRIDE


class Ranks:
    """Each member's rank: its place (from 1) in `members`, which every node
    of the cluster must list in the same order (the configuration's sorted
    voters)."""

    def __init__(self, members: Sequence[str]) -> None:
        if len(members) >= BALLOT_STRIDE:
            raise ValueError(f"a Paxos cluster has at most {BALLOT_STRIDE - 1} members, "
                             f"not {len(members)}")
        self._rank = {m: i + 1 for i, m in enumerate(members)}
        self._node = dict(enumerate(members, start=1))

    def __contains__(self, node: object) -> bool:
        return node in self._rank

    def rank(self, node: str) -> int:
        try:
            return self._rank[node]
        except KeyError:
            raise ValueError(f"{node} is not a member of this Paxos cluster") from None

    def node(self, ballot: int) -> str | None:
        """The member whose ballot this is (None for ballot 0 or a stranger's)."""
        return self._node.get(rank_of(ballot)) if ballot else None

    def describe(self, ballot: int) -> str:
        """`5.n2` for round 5 of n2; `0` for no ballot."""
        if ballot == 0:
            return "0"
        return f"{round_of(ballot)}.{self.node(ballot) or f'#{rank_of(ballot)}'}"
