"""Majority and joint-majority arithmetic (thesis §4.3, after etcd's
quorum/): the index a configuration has committed and the outcome of a vote
under it. Pure functions of sets and maps; no state, no I/O.

While a configuration change is under way the cluster is in joint consensus
(C_old,new): a decision, whether a commit, an election, a ReadIndex
confirmation or CheckQuorum, needs a majority of the old voters *and* a
majority of the new ones. Learners are in neither set and never count.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from node.raft.messages import ConfState

# What an empty voter set has committed: anything. A non-joint configuration
# is a joint one with an empty outgoing half, which must then drop out of the
# minimum (etcd does the same).
NO_LIMIT = 2**63 - 1


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither won nor lost yet
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    """How many of `n` voters make a majority."""
    return n // 2 + 1


def committed_index(voters: Collection[str], acked: Mapping[str, int]) -> int:
    """The highest index that a majority of `voters` acknowledged (a voter
    missing from `acked` acknowledged nothing); NO_LIMIT for no voters."""
    if not voters:
        return NO_LIMIT
    indexes = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return indexes[majority(len(voters)) - 1]


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """The outcome of a vote by `voters`: True a grant, False a refusal, a
    voter missing from `votes` has not answered. Votes of others do not
    count. No voters at all: won."""
    if not voters:
        return VoteResult.WON
    yes = no = 0
    for v in voters:
        got = votes.get(v)
        if got is True:
            yes += 1
        elif got is False:
            no += 1
    need = majority(len(voters))
    if yes >= need:
        return VoteResult.WON
    if len(voters) - no >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


@dataclass(frozen=True, slots=True)
class JointConfig:
    """The voters that decide: `incoming` (C_new, or the only configuration)
    and, while joint, `outgoing` (C_old)."""

    incoming: frozenset[str]
    outgoing: frozenset[str] = frozenset()

    @classmethod
    def of(cls, conf: ConfState) -> JointConfig:
        return cls(frozenset(conf.voters), frozenset(conf.voters_outgoing))

    def voters(self) -> frozenset[str]:
        """Every voter of either half."""
        return self.incoming | self.outgoing

    def committed_index(self, acked: Mapping[str, int]) -> int:
        """The highest index a majority of each half acknowledged."""
        return min(committed_index(self.incoming, acked), committed_index(self.outgoing, acked))

    def vote_result(self, votes: Mapping[str, bool]) -> VoteResult:
        """Won when both halves won, lost when either lost."""
        a = vote_result(self.incoming, votes)
        b = vote_result(self.outgoing, votes)
        if a is b:
            return a
        if VoteResult.LOST in (a, b):
            return VoteResult.LOST
        return VoteResult.PENDING

    def describe(self) -> str:
        """`n1,n2,n3` or, while joint, `n1,n2,n4 & n1,n2,n3` (new & old)."""
        new = ",".join(sorted(self.incoming))
        return f"{new} & {','.join(sorted(self.outgoing))}" if self.outgoing else new
