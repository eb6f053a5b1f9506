"""Joint consensus survives a leader crash between C_old,new and C_new, on
every order of events (Raft thesis §4.3): the leader crashes with the change
at each point of its way through the log, and each surviving node in turn is
the first to campaign. The harness checks election and state-machine safety
throughout; here the configuration must settle to C_old (a change no other
node held) or C_new (a change that committed), never stay joint, and the
cluster must commit again. Reference: thesis §4.3, Figure 4.8."""

from __future__ import annotations

import pytest

from node.raft.core import Role
from node.raft.messages import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
)
from tests.harness import Network, small_config
from tests.paper import E

LEARNER, VOTER, REMOVE = (ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER,
                          ConfChangeType.REMOVE)

# How far the change got when the leader n1 crashed.
STAGES = {
    "joint_on_leader_only": [],
    "joint_on_the_new_voter_only": [{"n4"}],
    "joint_on_one_old_voter": [{"n2"}],
    "joint_committed": [{"n2", "n3", "n4"}],
    "c_new_on_one_node": [{"n2", "n3", "n4"}, {"n4"}],
    "c_new_committed": [{"n2", "n3", "n4"}, {"n2", "n3", "n4"}],
}
# Replace a follower (n3) or the leader itself (n1) by the learner n4, in one change.
CHANGES = {"replace_follower": "n3", "replace_leader": "n1"}
C_OLD = ConfState(voters=("n1", "n2", "n3"), learners=("n4",))


def _round(net: Network, to: set[str]) -> None:
    """n1's queued appends reach `to` only; their answers come back and n1
    acts on them (committing, and appending C_new once C_old,new commits)."""
    net.deliver(only=lambda m: m.src == "n1" and m.dst in to)
    for n in sorted(to):
        net.process(n)
    net.deliver(only=lambda m: m.dst == "n1")
    net.process("n1")


def _leader_settled(net: Network) -> bool:
    live = [n for n in net.live() if net.role(n) is Role.LEADER]
    if not live:
        return False
    c = net.core(max(live, key=net.term))
    return not c.conf.is_joint() and c.log.commit >= c.log.last_index()


@pytest.mark.parametrize("first", ["n2", "n3", "n4"])
@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("change", list(CHANGES))
def test_joint_consensus_survives_a_leader_crash(change: str, stage: str, first: str) -> None:
    """The configuration settles to C_old or C_new, a change that committed
    C_old,new is never lost, the cluster commits again, and the crashed
    leader coming back disrupts nothing."""
    # PreVote keeps a removed node from disrupting (thesis §4.2.3) without a
    # leader lease, which would make the first campaign wait a timeout.
    net = Network(3, small_config(prevote=True, check_quorum=False))
    net.elect("n1")
    net.add_node("n4")
    net.change("n1", ConfChange((ConfChangeSingle(LEARNER, "n4"),)))
    net.settle()
    gone = CHANGES[change]
    c_new = ConfState(voters=tuple(sorted({"n1", "n2", "n3", "n4"} - {gone})))
    net.change("n1", ConfChange((ConfChangeSingle(REMOVE, gone), ConfChangeSingle(VOTER, "n4"))))
    for to in STAGES[stage]:
        _round(net, to)
    net.take(lambda m: m.src == "n1")  # what it had in flight is lost with it
    net.crash("n1")
    net.campaign(first)
    net.run_until(lambda: _leader_settled(net), 30 * E, "a leader outside any joint "
                  "configuration with everything committed")
    lead = net.leader()
    net.propose(lead, b"after")
    net.settle()
    final = net.core(lead).conf
    # A removed node may never hear of C_new: the leader no longer sends to it.
    live = [n for n in net.live() if n in final.members()]
    assert {net.core(n).conf for n in live} == {final}
    assert final in (C_OLD, c_new), final
    if stage not in ("joint_on_leader_only", "joint_on_the_new_voter_only",
                     "joint_on_one_old_voter"):
        assert final == c_new, "C_old,new had committed, so the change must survive"
    elif stage == "joint_on_leader_only":
        assert final == C_OLD, "no other node held the change"
    for n in final.voters:
        if n in live:
            assert net.applied(n)[-1:] == [b"after"], n
    # The old leader comes back: a member catches up, a removed one disrupts nothing.
    term = net.term(lead)
    net.restart("n1")
    net.run(5 * E)
    net.settle()
    if "n1" in final.members():
        assert net.core("n1").conf == final
        assert net.applied("n1")[-1:] == [b"after"]
    else:
        assert net.role("n1") is not Role.LEADER
        assert net.leader() == lead and net.term(lead) == term
