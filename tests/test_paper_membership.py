"""Protocol tests of membership change (Raft thesis ch. 4) on the harness's
network: learners, catching up before voting, one change at a time, joint
consensus, the leader that removes itself and removed servers that must not
disrupt. Each test names its rule and source."""

from __future__ import annotations

import pytest

from node.errors import ConfChangeRefused
from node.raft.core import Role
from node.raft.messages import (
    AppendEntries,
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    EntryKind,
    PeerMessage,
    RequestVote,
)
from tests.harness import Network, small_config
from tests.paper import E, elected, rv, vote_reply

LEARNER, VOTER, REMOVE = (ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER,
                          ConfChangeType.REMOVE)


def cc(*changes: tuple[ConfChangeType, str]) -> ConfChange:
    return ConfChange(tuple(ConfChangeSingle(t, n) for t, n in changes))


def conf_entries(net: Network, nid: str) -> list[int]:
    return [e.index for e in net.log(nid) if e.kind is EntryKind.CONF_CHANGE]


def with_learner(net: Network, lead: str = "n1", new: str = "n4") -> Network:
    """`new` added as a learner, the change finished (C_new committed)."""
    net.add_node(new)
    net.change(lead, cc((LEARNER, new)))
    net.settle()
    assert net.core(lead).conf.learners == (new,) and not net.core(lead).conf.is_joint()
    return net


# --- §4.2.1: new servers join as learners and catch up before voting --------------


def test_learner_receives_the_log_and_the_configuration() -> None:
    """A member added as a learner gets every entry, knows itself a learner
    and applies what the voters commit. Reference: thesis §4.2.1."""
    net = with_learner(elected(Network(3)))
    net.propose("n1", b"x")
    net.settle()
    assert net.log("n4") == net.log("n1")
    assert net.applied("n4") == [b"x"]
    c4 = net.core("n4")
    assert c4.conf.learners == ("n4",) and c4.conf.voters == ("n1", "n2", "n3")
    assert c4.peers == ["n1", "n2", "n3"]


def test_learner_never_counts_toward_commit() -> None:
    """An entry held by the leader and a learner only is not committed: the
    learner is not in the majority. Reference: thesis §4.2.1."""
    net = with_learner(elected(Network(3)))
    net.cut("n1", "n2")
    net.cut("n1", "n3")
    index = net.propose("n1", b"x")
    net.stabilize()
    assert net.core("n4").log.last_index() == index
    assert net.progress("n1", "n4").match == index
    assert net.commit("n1") < index


def test_learner_does_not_keep_a_leader_alive_under_check_quorum() -> None:
    """CheckQuorum counts voters only: a leader that hears from a learner
    alone steps down after an election timeout. Reference: thesis §6.2, §4.2.1."""
    net = with_learner(elected(Network(3, small_config(check_quorum=True))))
    for a, b in (("n1", "n2"), ("n1", "n3"), ("n4", "n2"), ("n4", "n3")):
        net.cut(a, b)
    net.run(2 * E)
    assert any(n == "stepped_down" and kw["reason"] == "check_quorum"
               for n, kw in net.nodes["n1"].events)
    assert net.role("n1") is not Role.LEADER


def test_learner_never_campaigns_and_its_vote_does_not_count() -> None:
    """A learner's election timer starts no campaign, and a candidate that
    only a learner grants does not win. Reference: thesis §4.2.1."""
    net = with_learner(elected(Network(3, small_config(prevote=False, check_quorum=False))))
    net.isolate("n4")
    net.run(5 * E)
    assert not any(n in ("prevote_started", "election_started")
                   for n, _ in net.nodes["n4"].events)
    net.recover()
    net.cut("n2", "n1")
    net.cut("n2", "n3")
    net.campaign("n2")
    assert net.role("n2") is Role.CANDIDATE
    assert not net.sent_where(lambda m: isinstance(m, RequestVote) and m.dst == "n4")
    net.step("n2", vote_reply("n4", "n2", net.term("n2")))
    assert net.role("n2") is Role.CANDIDATE


def test_promotion_is_refused_until_the_learner_caught_up() -> None:
    """A learner far behind is not promoted: the error says how far behind
    it is; once it caught up, it is. Reference: thesis §4.2.1."""
    net = Network(3, small_config(promote_max_lag_entries=5))
    net.elect("n1")
    net.add_node("n4")
    net.isolate("n4")
    net.change("n1", cc((LEARNER, "n4")))
    net.settle()
    for k in range(10):
        net.propose("n1", b"v%d" % k)
    net.settle()
    last = net.core("n1").log.last_index()
    with pytest.raises(ConfChangeRefused, match=f"n4 is {last} entries behind") as e:
        net.change("n1", cc((VOTER, "n4")))
    assert e.value.code == "not_caught_up" and "within 5 entries" in str(e.value)
    net.recover()
    net.settle()
    net.change("n1", cc((VOTER, "n4")))
    net.settle()
    assert net.core("n1").conf.voters == ("n1", "n2", "n3", "n4")
    assert net.core("n4").conf.is_voter("n4")


# --- §4.1, §4.3: one change at a time, through the joint configuration ----------


def test_a_change_goes_through_the_joint_configuration_then_c_new() -> None:
    """The change appends C_old,new; once that commits the leader appends
    C_new by itself; each takes effect when appended. Reference: thesis §4.3."""
    net = with_learner(elected(Network(3)))
    index = net.change("n1", cc((REMOVE, "n3"), (VOTER, "n4")))
    c1 = net.core("n1")
    assert c1.conf.is_joint() and c1.conf.voters == ("n1", "n2", "n4")
    assert c1.conf.voters_outgoing == ("n1", "n2", "n3")
    net.settle()
    leave = conf_entries(net, "n1")[-1]
    assert leave == index + 1 and net.commit("n1") >= leave
    assert c1.conf == ConfState(voters=("n1", "n2", "n4"))
    assert net.core("n4").conf.voters == ("n1", "n2", "n4")


def test_only_one_change_at_a_time() -> None:
    """A second change is refused while the first (C_new included) has not
    committed. Reference: thesis §4.1."""
    net = with_learner(elected(Network(3)))
    net.cut("n1", "n2")
    net.cut("n1", "n3")
    net.change("n1", cc((VOTER, "n4")))
    with pytest.raises(ConfChangeRefused, match="in progress") as e:
        net.change("n1", cc((REMOVE, "n2")))
    assert e.value.code == "change_in_progress"
    net.recover()
    net.settle()
    net.change("n1", cc((REMOVE, "n2")))


def test_several_members_change_at_once() -> None:
    """Two learners are added in one change and promoted in another: 3 -> 5
    voters through one joint configuration. Reference: thesis §4.3."""
    net = elected(Network(3))
    net.add_node("n4")
    net.add_node("n5")
    net.change("n1", cc((LEARNER, "n4"), (LEARNER, "n5")))
    net.settle()
    net.change("n1", cc((VOTER, "n4"), (VOTER, "n5")))
    net.settle()
    for nid in net.ids:
        assert net.core(nid).conf == ConfState(voters=("n1", "n2", "n3", "n4", "n5"))
    net.propose("n1", b"five")
    net.settle()
    assert all(net.applied(nid) == [b"five"] for nid in net.ids)


def test_joint_configuration_needs_the_old_majority_too() -> None:
    """While joint, the new voters alone commit nothing: C_old = n1,n2,n3,
    C_new = n1,n4,n5, and with n2 and n3 cut off nothing commits, not even
    C_old,new. Reference: thesis §4.3."""
    net = elected(Network(3))
    net.add_node("n4")
    net.add_node("n5")
    net.change("n1", cc((LEARNER, "n4"), (LEARNER, "n5")))
    net.settle()
    net.cut("n1", "n2")
    net.cut("n1", "n3")
    index = net.change("n1", cc((REMOVE, "n2"), (REMOVE, "n3"), (VOTER, "n4"),
                                (VOTER, "n5")))
    net.propose("n1", b"x")
    net.stabilize()
    assert net.core("n4").log.last_index() == index + 1
    assert net.commit("n1") < index
    net.recover()
    net.settle()
    assert net.core("n1").conf == ConfState(voters=("n1", "n4", "n5"))


def test_restart_resumes_with_the_latest_configuration_in_its_log() -> None:
    """A node restarted from disk uses the latest configuration in its log,
    committed or not. Reference: thesis §4.1."""
    net = with_learner(elected(Network(3)))
    net.change("n1", cc((VOTER, "n4")))
    net.deliver(only=lambda m: isinstance(m, AppendEntries) and m.dst == "n2")
    net.crash("n1")
    net.stabilize()
    assert net.core("n2").conf.is_joint() and net.commit("n2") < conf_entries(net, "n2")[-1]
    net.crash("n2")
    net.restart("n2")
    assert net.core("n2").conf.is_joint() and net.core("n2").conf.voters[-1] == "n4"


def test_new_member_learns_the_configuration_from_a_snapshot() -> None:
    """A member added after the leader compacted its log gets the snapshot
    and with it the configuration in force at its end. Reference: §7, thesis §4."""
    net = with_learner(elected(Network(3)))
    for k in range(5):
        net.propose("n1", b"v%d" % k)
    net.settle()
    net.compact("n1", net.core("n1").log.applied)
    net.add_node("n5")
    net.change("n1", cc((LEARNER, "n5")))
    net.settle()
    assert net.nodes["n5"].storage.snapshot().meta.conf is not None
    assert net.core("n5").conf == net.core("n1").conf
    net.crash("n5")
    net.restart("n5")
    assert net.core("n5").conf == net.core("n1").conf


# --- §4.2.2: a leader not in C_new --------------------------------------------------


def test_leader_removed_manages_the_cluster_until_c_new_commits_then_steps_down() -> None:
    """A leader removed from the configuration goes on replicating without
    counting itself in C_new, steps down once C_new commits, and hands over
    to an up-to-date voter; afterwards it never campaigns. Reference:
    thesis §4.2.2."""
    net = elected(Network(3))
    net.cut("n1", "n3")
    net.change("n1", cc((REMOVE, "n1")))
    net.stabilize()
    leave = conf_entries(net, "n1")[-1]
    c1 = net.core("n1")
    assert c1.role is Role.LEADER and c1.conf.voters == ("n2", "n3")
    # n1 and n2 hold C_new: two of the three old voters, but one of the two new.
    assert net.core("n2").log.last_index() >= leave > net.commit("n1")
    net.recover()
    net.run_until(lambda: net.role("n1") is not Role.LEADER, 3 * E, "n1 stepped down")
    events = net.nodes["n1"].events
    assert ("stepped_down", {"reason": "removed"}) in events
    since = len(events)
    net.run_until(lambda: any(net.role(n) is Role.LEADER for n in ("n2", "n3")), 3 * E,
                  "a new leader in C_new")
    new = net.leader()
    term = net.term(new)
    net.run(10 * E)
    assert net.leader() == new and net.term(new) == term
    assert not any(n in ("prevote_started", "election_started") for n, _ in events[since:])
    net.propose(new, b"without n1")
    net.settle()
    assert net.applied("n3")[-1] == b"without n1"


# --- §4.2.3: removed servers must not disrupt ----------------------------------------


@pytest.mark.parametrize(("prevote", "check_quorum"),
                         [(True, True), (False, True), (True, False), (False, False)])
def test_removed_server_does_not_disrupt(prevote: bool, check_quorum: bool) -> None:
    """A removed server that never learned of its removal times out and
    asks for votes; servers that hear from their leader ignore its requests
    (and with PreVote it never even raises its own term), so the leader
    stays; without CheckQuorum too, for it is no member of theirs. Reference:
    thesis §4.2.3."""
    net = elected(Network(3, small_config(prevote=prevote, check_quorum=check_quorum)))
    net.cut("n1", "n3")
    net.change("n1", cc((REMOVE, "n3")))
    net.settle()
    assert net.core("n1").conf.voters == ("n1", "n2")
    term = net.term("n1")
    net.recover()
    asked: list[PeerMessage] = []

    def from_n3(m: PeerMessage) -> bool:
        if isinstance(m, RequestVote) and m.src == "n3":
            asked.append(m)
        return False  # delivered: only noted

    net.drop_where(from_n3)
    net.run(10 * E)
    assert asked, "n3 never asked for votes"
    assert net.leader() == "n1" and net.term("n1") == net.term("n2") == term
    assert net.role("n3") is not Role.LEADER
    if prevote:
        assert net.term("n3") == term


def test_removed_server_requests_are_ignored_by_leader_and_followers() -> None:
    """The same with its requests delivered: each is ignored for the leader
    lease (`vote_ignored`). Reference: thesis §4.2.3."""
    net = elected(Network(3, small_config(prevote=False, check_quorum=True)))
    net.cut("n1", "n3")
    net.change("n1", cc((REMOVE, "n3")))
    net.settle()
    term = net.term("n1")
    net.recover()
    net.run(4 * E)
    ignored = [kw for n, kw in net.nodes["n2"].events if n == "vote_ignored"]
    assert ignored and ignored[0]["candidate"] == "n3"
    assert net.leader() == "n1" and net.term("n1") == term


def test_without_check_quorum_a_member_is_heard_but_a_removed_server_is_not() -> None:
    """Without CheckQuorum the leader lease does not hold for members (a
    leader that cannot hear its followers would never step down, and the
    lease would keep those that still hear it from electing anyone), but a
    removed server's request is ignored while the leader is heard
    (`vote_ignored reason=not_a_member`), and heard once it is not.
    Reference: thesis §4.2.3."""
    net = elected(Network(3, small_config(prevote=False, check_quorum=False)))
    net.cut("n1", "n3")
    net.change("n1", cc((REMOVE, "n3")))
    net.settle()
    net.recover()
    term = net.term("n2")
    before = len(net.nodes["n2"].events)
    net.step("n2", rv("n3", "n2", term + 5, last=(99, term + 5)))
    got = [(n, kw.get("reason")) for n, kw in net.nodes["n2"].events[before:]]
    assert ("vote_ignored", "not_a_member") in got and net.term("n2") == term, got
    net.step("n2", rv("n1", "n2", term + 1, last=(99, term)))
    assert net.term("n2") == term + 1, "a member's request must be heard without CheckQuorum"
    net.crash("n1")
    net.tick(2 * E, nodes=["n2"])
    term = net.term("n2")
    net.step("n2", rv("n3", "n2", term + 5, last=(99, term + 5)))
    assert net.term("n2") == term + 5, "with no leader heard, every request counts"


def test_a_learner_lets_its_leader_lease_expire() -> None:
    """A learner does not campaign, but its election timer still runs out
    (it is not restarted): once its leader is gone it grants the vote a
    candidate that counts it as a voter needs (C_old,new promoted it, and
    only the candidate holds that yet). Reference: thesis §4.2.3, §4.2.1."""
    net = with_learner(elected(Network(3, small_config(prevote=True, check_quorum=True))))
    net.crash("n1")
    before = len(net.nodes["n4"].events)
    net.tick(2 * E - 1, nodes=["n4"])
    net.step("n4", rv("n2", "n4", net.term("n4") + 1, last=(99, net.term("n4")), prevote=True))
    got = [n for n, _ in net.nodes["n4"].events[before:]]
    assert "vote_granted" in got and "vote_ignored" not in got, got


def test_a_removed_leader_holding_c_new_uncommitted_still_campaigns() -> None:
    """n1 removes itself from {n1,n2}: C_old,new commits, C_new reaches only
    n1, which then loses n2 and steps down. n2 (joint) needs n1's vote, but
    n1's log is longer; so n1, not in its latest configuration but needed
    until C_new commits, campaigns, wins, commits C_new and hands over.
    Reference: thesis §4.2.2."""
    net = elected(Network(2, small_config(prevote=True, check_quorum=True)))
    net.change("n1", cc((REMOVE, "n1")))
    net.deliver(only=lambda m: m.src == "n1" and isinstance(m, AppendEntries))
    net.process("n2")
    net.deliver(only=lambda m: m.dst == "n1")
    net.process("n1")
    assert not net.core("n1").conf.is_joint() and net.core("n2").conf.is_joint()
    net.take(lambda m: m.src == "n1")
    net.cut("n1", "n2")
    net.run(3 * E)
    assert net.role("n1") is not Role.LEADER
    net.recover()
    net.run_until(lambda: "n2" in net.leaders() and not net.core("n2").conf.is_joint(),
                  20 * E, "n2 leading C_new")
    assert net.core("n2").conf == ConfState(voters=("n2",))
