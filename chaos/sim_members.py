"""The simulator's membership supervisor, as `raftctl member` is a live
cluster's: it asks the leader for a change (add, promote, remove, replace),
starts a node that joins, and stops a removed node for good once its
removal committed (or brings a removed one back, data and all, to join
again). The nemesis decides when; this carries it out.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from node.consensus import ConsensusCore
from node.errors import ConfChangeRefused, NotLeader
from node.raft.confchange import describe_change
from node.raft.messages import ConfChange, ConfChangeSingle, ConfChangeType

MEMBERSHIP_ACTIONS = ("add", "promote", "remove", "replace")
# A removed node is stopped this many ticks (at most) after its removal
# committed: meanwhile it may time out and campaign (thesis §4.2.3).
_STOP_AFTER_TICKS = 20
# The share of removals and replacements aimed at the leader (thesis §4.2.2).
_LEADER_CHANCE = 0.3
# The share of additions that bring back a removed node with its data.
_READD_CHANCE = 0.5


class SimCluster(Protocol):
    """What the supervisor needs of the simulation."""

    now: int

    def leader_core(self) -> tuple[str, ConsensusCore[Any]] | None:
        """The live leader of the highest term and its core."""
        ...

    def propose_change(self, leader: str, cc: ConfChange) -> None:
        """Propose at `leader`; raises what the core raises."""
        ...

    def new_node(self, node: str) -> None:
        """Start a node with an empty disk, outside every configuration."""
        ...

    def stop(self, node: str) -> None:
        """Stop the node for good (its disk stays)."""
        ...

    def revive(self, node: str) -> None:
        """Start a stopped node again from its disk."""
        ...


class Members:
    """Membership changes of one run, and the nodes stopped for good."""

    def __init__(self, rng: random.Random, initial: list[str], min_voters: int) -> None:
        self._rng = rng
        self._min_voters = min_voters
        self._next = len(initial) + 1
        # Stopped for good: removed (their removal committed), not yet back.
        self.removed: set[str] = set()
        # The newest committed configuration seen: its entry's index, members.
        self._known = (0, frozenset(initial))
        self._stops: list[tuple[int, str]] = []

    def change(self, t: SimCluster, action: str) -> str | None:
        """Ask the leader for a change of kind `action`; what was asked (and
        whether it was refused), or None if there is nothing to do."""
        lead = t.leader_core()
        if lead is None:
            return None
        leader, core = lead
        rng, conf = self._rng, core.conf
        voters, learners = list(conf.voters), list(conf.learners)
        join: str | None = None
        if action == "add":
            back = sorted(self.removed)
            join = rng.choice(back) if back and rng.random() < _READD_CHANCE else self._fresh()
            changes = [(ConfChangeType.ADD_LEARNER, join)]
        elif action == "promote":
            if not learners:
                return None
            changes = [(ConfChangeType.ADD_VOTER, rng.choice(learners))]
        elif action == "remove":
            pool = learners + (voters if len(voters) > self._min_voters else [])
            if not pool:
                return None
            gone = leader if leader in pool and rng.random() < _LEADER_CHANCE else rng.choice(pool)
            changes = [(ConfChangeType.REMOVE, gone)]
        else:  # replace: a voter out and another in, through one joint configuration
            gone = leader if rng.random() < _LEADER_CHANCE else rng.choice(voters)
            if learners:
                changes = [(ConfChangeType.REMOVE, gone),
                           (ConfChangeType.ADD_VOTER, rng.choice(learners))]
            else:
                join = self._fresh()
                changes = [(ConfChangeType.REMOVE, gone), (ConfChangeType.ADD_LEARNER, join)]
        cc = ConfChange(tuple(ConfChangeSingle(k, n) for k, n in changes))
        what = f"membership {describe_change(cc)} at {leader}"
        try:
            t.propose_change(leader, cc)
        except (NotLeader, ConfChangeRefused) as e:
            return f"{what}: refused ({getattr(e, 'code', 'not_leader')})"
        if join is not None:
            if join in self.removed:
                self.removed.discard(join)
                t.revive(join)
            else:
                t.new_node(join)
        return what

    def step(self, t: SimCluster) -> None:
        """Once a tick: note a newly committed configuration and stop, a
        little later, the nodes it no longer holds."""
        lead = t.leader_core()
        if lead is not None:
            core = lead[1]
            index = core.conf_history()[-1].index
            if not core.conf.is_joint() and index <= core.log.commit and index > self._known[0]:
                members = core.conf.members()
                for gone in sorted(self._known[1] - members):
                    self._stops.append((t.now + self._rng.randint(0, _STOP_AFTER_TICKS), gone))
                self._known = (index, members)
        due = [s for s in self._stops if s[0] <= t.now]
        self._stops = [s for s in self._stops if s[0] > t.now]
        for _, node in due:
            if node not in self._known[1] and node not in self.removed:
                self.removed.add(node)
                t.stop(node)

    def _fresh(self) -> str:
        node = f"n{self._next}"
        self._next += 1
        return node
