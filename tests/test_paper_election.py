"""Protocol tests of `RaftCore` after etcd's raft_paper_test.go: terms
(§5.1), leader election (§5.2), PreVote (thesis §9.6), CheckQuorum and the
leader lease (thesis §6.2, §4.2.3). Each test names its rule and source."""

from __future__ import annotations

import pytest

from node.raft.core import Role
from node.raft.messages import (
    AppendEntriesResponse,
    HardState,
    Heartbeat,
    Hup,
    RequestVote,
    RequestVoteResponse,
)
from tests.harness import Network, seeded_storage, small_config
from tests.paper import (
    E,
    ae,
    drain,
    elected,
    ents,
    make_leader,
    new_core,
    of_type,
    rv,
    terms_of,
    vote_reply,
)

# --- §5.1: terms ------------------------------------------------------------


@pytest.mark.parametrize("role", ["follower", "pre_candidate", "candidate", "leader"])
def test_higher_term_message_makes_any_role_a_follower_of_that_term(role: str) -> None:
    """A message with a higher term updates the term and turns the node into a
    follower of the sender. Reference: §5.1."""
    c = new_core(prevote=role == "pre_candidate")
    if role in ("pre_candidate", "candidate"):
        c.step(Hup())
    elif role == "leader":
        make_leader(c)
    assert c.role.value == role
    c.step(Heartbeat(term=5, src="n2", dst="n1", commit=0))
    assert (c.role, c.term, c.leader, c.vote) == (Role.FOLLOWER, 5, "n2", None)


def test_stale_term_append_is_rejected_and_answered_with_current_term() -> None:
    """An append from an older term changes nothing and the reply carries the
    current term so the stale leader steps down. Reference: §5.1."""
    c = new_core(check_quorum=True)
    c.step(ae("n2", "n1", 3, entries=ents(3)))
    drain(c)
    c.step(ae("n3", "n1", 2, prev=(1, 3), entries=ents(2, start=2), commit=2))
    rd = drain(c)
    assert (c.term, c.leader, terms_of(c), c.log.commit) == (3, "n2", [3], 0)
    (reply,) = of_type(rd.messages, AppendEntriesResponse)
    assert (reply.dst, reply.term, reply.success) == ("n3", 3, False)
    assert c.counters.stale_messages == 1


def test_stale_term_vote_request_is_not_granted() -> None:
    """A RequestVote of an older term is never granted. Reference: §5.1."""
    c = new_core()
    c.step(Heartbeat(term=3, src="n2", dst="n1", commit=0))
    drain(c)
    c.step(rv("n3", "n1", 2, last=(9, 2)))
    rd = drain(c)
    assert c.vote is None
    assert not [m for m in of_type(rd.messages, RequestVoteResponse) if m.granted]


# --- §5.2: leader election ----------------------------------------------------


def test_election_timeout_starts_election() -> None:
    """A follower that hears nothing for its election timeout becomes a
    candidate: new term, votes for itself, asks every peer. Reference: §5.2."""
    c = new_core(peers=("n2", "n3", "n4"))
    for _ in range(c.randomized_timeout - 1):
        c.tick()
    assert c.role is Role.FOLLOWER
    c.tick()
    rd = drain(c)
    assert (c.role, c.term, c.vote) == (Role.CANDIDATE, 1, "n1")
    reqs = of_type(rd.messages, RequestVote)
    assert sorted(m.dst for m in reqs) == ["n2", "n3", "n4"]
    assert all((m.term, m.prevote) == (1, False) for m in reqs)


def test_election_timeouts_are_randomized_between_one_and_two_timeouts() -> None:
    """Election timeouts are drawn from [E, 2E) and spread out, so split votes
    are rare. Reference: §5.2."""
    waits = []
    for seed in range(40):
        c = new_core(seed=seed)
        ticks = 0
        while c.role is Role.FOLLOWER:
            c.tick()
            ticks += 1
        waits.append(ticks)
    assert all(E <= w < 2 * E for w in waits), waits
    assert len(set(waits)) >= E // 2, waits


def test_election_timeout_is_redrawn_every_term() -> None:
    """A node draws a new random timeout on every term change, so two nodes
    that collided once are unlikely to collide again. Reference: §5.2."""
    c = new_core()
    seen = set()
    for term in range(1, 30):
        c.step(Heartbeat(term=term, src="n2", dst="n1", commit=0))
        seen.add(c.randomized_timeout)
    assert len(seen) >= E // 2 and all(E <= t < 2 * E for t in seen), seen


@pytest.mark.parametrize(
    ("size", "grants", "expected"),
    [
        (1, 0, Role.LEADER),
        (3, 2, Role.LEADER),
        (3, 1, Role.LEADER),
        (3, 0, Role.CANDIDATE),
        (5, 4, Role.LEADER),
        (5, 2, Role.LEADER),
        (5, 1, Role.CANDIDATE),
    ],
)
def test_candidate_wins_with_votes_of_a_majority(size: int, grants: int, expected: Role) -> None:
    """A candidate becomes leader once a majority (itself included) granted
    its vote, and not before. Reference: §5.2."""
    peers = [f"n{i}" for i in range(2, size + 1)]
    c = new_core(peers=peers)
    c.step(Hup())
    for p in peers[:grants]:
        c.step(vote_reply(p, "n1", 1))
    assert c.role is expected


@pytest.mark.parametrize(("size", "rejects", "expected"),
                         [(3, 2, Role.FOLLOWER), (5, 3, Role.FOLLOWER), (5, 2, Role.CANDIDATE)])
def test_candidate_returns_to_follower_once_a_majority_rejects(
    size: int, rejects: int, expected: Role
) -> None:
    """A candidate rejected by a majority cannot win and steps back to
    follower in the same term. Reference: §5.2."""
    peers = [f"n{i}" for i in range(2, size + 1)]
    c = new_core(peers=peers)
    c.step(Hup())
    for p in peers[:rejects]:
        c.step(vote_reply(p, "n1", 1, granted=False))
    assert (c.role, c.term) == (expected, 1)


def test_candidate_steps_down_on_append_from_leader_of_same_term() -> None:
    """A candidate that hears from a leader of its own term recognises it and
    becomes its follower. Reference: §5.2."""
    c = new_core()
    c.step(Hup())
    c.step(ae("n2", "n1", 1, entries=ents(1)))
    assert (c.role, c.term, c.leader, terms_of(c)) == (Role.FOLLOWER, 1, "n2", [1])


def test_split_vote_leads_to_a_new_election_in_a_new_term() -> None:
    """A candidate that neither wins nor loses starts a new election in the
    next term when its timeout passes again. Reference: §5.2."""
    c = new_core()
    c.step(Hup())
    c.step(vote_reply("n2", "n1", 1, granted=False))
    for _ in range(c.randomized_timeout):
        c.tick()
    assert (c.role, c.term, c.vote) == (Role.CANDIDATE, 2, "n1")


def test_node_grants_at_most_one_vote_per_term() -> None:
    """A node votes for one candidate per term, first come first served; a
    retried request of that candidate is granted again. Reference: §5.2."""
    c = new_core()
    replies = []
    for cand in ("n2", "n3", "n2"):
        c.step(rv(cand, "n1", 1))
        replies += of_type(drain(c).messages, RequestVoteResponse)
    assert [(m.dst, m.granted) for m in replies] == [("n2", True), ("n3", False), ("n2", True)]
    assert c.vote == "n2"


def test_vote_is_persisted_in_the_same_ready_as_the_reply() -> None:
    """The vote reaches the hard state of the very Ready that carries the
    grant, so the caller persists it before the reply leaves. Reference: §5.1
    (persistent state), §5.2."""
    c = new_core()
    c.step(rv("n2", "n1", 4))
    rd = c.ready()
    assert rd.hard_state == HardState(term=4, vote="n2", commit=0)
    assert [(m.dst, m.granted) for m in of_type(rd.messages, RequestVoteResponse)] == [
        ("n2", True)]
    assert rd.must_sync()


def test_candidate_persists_its_own_vote_with_its_requests() -> None:
    """A candidate's new term and self-vote are in the Ready with its
    RequestVotes. Reference: §5.1, §5.2."""
    c = new_core()
    c.step(Hup())
    rd = c.ready()
    assert rd.hard_state == HardState(term=1, vote="n1", commit=0)
    assert len(of_type(rd.messages, RequestVote)) == 2


def test_vote_survives_a_restart() -> None:
    """A node that voted and restarted does not vote again in that term.
    Reference: §5.1 (votedFor is persistent), §5.2."""
    net = Network(3, small_config(prevote=False, check_quorum=False))
    net.step("n2", rv("n1", "n2", 1))
    net.crash("n2")
    net.restart("n2")
    net.step("n2", rv("n3", "n2", 1))
    replies = [m for m in net.queue if isinstance(m, RequestVoteResponse)]
    assert [(m.dst, m.granted) for m in replies] == [("n1", True), ("n3", False)]


@pytest.mark.parametrize(
    ("voter", "cand_last", "granted"),
    [
        ([1, 1], (2, 1), True),  # same last term, same length
        ([1, 1], (3, 1), True),  # same last term, longer
        ([1, 1], (1, 1), False),  # same last term, shorter
        ([1, 1], (1, 2), True),  # higher last term wins over length
        ([1, 2], (3, 1), False),  # lower last term loses despite length
        ([1, 2], (1, 2), False),
        ([1, 2], (2, 2), True),
        ([1, 2], (1, 3), True),
    ],
)
@pytest.mark.parametrize("prevote", [False, True])
def test_vote_granted_only_to_candidate_with_up_to_date_log(
    voter: list[int], cand_last: tuple[int, int], granted: bool, prevote: bool
) -> None:
    """A vote (and a pre-vote) goes only to a candidate whose log is at least
    as up to date: higher last term, or same last term and at least as long.
    Reference: §5.4.1, thesis §9.6."""
    c = new_core(storage=seeded_storage(voter), prevote=prevote)
    c.step(rv("n2", "n1", 5, last=cand_last, prevote=prevote))
    (reply,) = of_type(drain(c).messages, RequestVoteResponse)
    assert (reply.granted, reply.prevote) == (granted, prevote)


# --- thesis §9.6: PreVote -------------------------------------------------------


def test_prevote_campaign_leaves_term_and_vote_alone() -> None:
    """With PreVote a timed-out follower asks for pre-votes for term+1 but
    keeps its term and vote until a majority would grant. Reference: thesis §9.6."""
    c = new_core(prevote=True)
    for _ in range(c.randomized_timeout):
        c.tick()
    rd = drain(c)
    assert (c.role, c.term, c.vote) == (Role.PRE_CANDIDATE, 0, None)
    assert [(m.term, m.prevote) for m in of_type(rd.messages, RequestVote)] == [(1, True)] * 2


def test_prevote_partitioned_node_does_not_raise_its_term() -> None:
    """A node cut off from the cluster keeps pre-campaigning without ever
    raising its term. Reference: thesis §9.6."""
    net = elected(Network(3))
    term = net.term("n3")
    net.isolate("n3")
    net.run(10 * E)
    assert net.term("n3") == term
    assert sum(1 for name, _ in net.nodes["n3"].events if name == "prevote_started") >= 4


def test_prevote_returning_node_does_not_disrupt_the_leader() -> None:
    """When a partitioned node comes back, the leader keeps its term and
    leadership and the node catches up. Reference: thesis §9.6."""
    net = elected(Network(3))
    term = net.term("n1")
    net.isolate("n3")
    net.propose("n1", b"while-away")
    net.run(10 * E)
    net.recover()
    net.run(3 * E)
    assert net.leaders() == ["n1"]
    assert [net.term(n) for n in net.ids] == [term] * 3
    assert net.applied("n3") == [b"while-away"]


def test_without_prevote_returning_node_forces_a_new_term() -> None:
    """The failure PreVote prevents: without it, a returning node's inflated
    term deposes the leader. Reference: thesis §9.6."""
    net = elected(Network(3, small_config(prevote=False, check_quorum=False)))
    term = net.term("n1")
    net.isolate("n3")
    net.run(10 * E)
    assert net.term("n3") > term + 2
    net.recover()
    net.run(4 * E)
    assert net.term(net.leader()) > term + 2


# --- thesis §6.2 CheckQuorum, §4.2.3 leader lease ----------------------------------


def test_new_leader_that_hears_from_no_follower_steps_down_after_election_timeout() -> None:
    """A freshly elected leader that gets no answer from a majority during its
    first election timeout steps down at its end. Reference: thesis §6.2."""
    c = new_core(check_quorum=True)
    make_leader(c)
    for _ in range(E - 1):
        c.tick()
    assert c.role is Role.LEADER
    c.tick()
    assert (c.role, c.term) == (Role.FOLLOWER, 1)


def test_leader_cut_off_from_majority_steps_down() -> None:
    """A leader that loses contact with a majority steps down at the end of
    the first whole check window (one election timeout) without acks, so at
    most two election timeouts after its last ack. Reference: thesis §6.2."""
    net = elected(Network(5))
    net.run(3)
    for minority in ("n1", "n5"):
        for majority in ("n2", "n3", "n4"):
            net.cut(minority, majority)
    ticks = net.run_until(lambda: net.role("n1") is not Role.LEADER, 2 * E, "n1 stepped down")
    assert ticks <= 2 * E
    assert any(name == "stepped_down" and kw["reason"] == "check_quorum"
               for name, kw in net.nodes["n1"].events)


def test_leader_with_quorum_stays_leader() -> None:
    """A leader that still hears from a majority keeps leading however long
    the minority is gone. Reference: thesis §6.2."""
    net = elected(Network(5))
    net.isolate("n4")
    net.isolate("n5")
    net.run(10 * E)
    assert net.role("n1") is Role.LEADER and net.term("n1") == 1


def test_follower_that_heard_from_leader_ignores_vote_requests() -> None:
    """Within an election timeout of hearing from a leader, a follower ignores
    RequestVote of a higher term: no term change, no reply. Reference: thesis
    §4.2.3."""
    c = new_core(check_quorum=True)
    c.step(Heartbeat(term=1, src="n2", dst="n1", commit=0))
    drain(c)
    c.step(rv("n3", "n1", 2, last=(5, 1)))
    rd = drain(c)
    assert (c.term, c.vote, c.leader) == (1, None, "n2")
    assert rd.messages == []
    assert [name for name, _ in rd.events] == ["vote_ignored"]


def test_follower_considers_votes_once_the_leader_lease_expired() -> None:
    """After an election timeout without a word from the leader the follower
    considers RequestVote again. Reference: thesis §4.2.3."""
    c = new_core(check_quorum=True, seed=3)
    c.step(Heartbeat(term=1, src="n2", dst="n1", commit=0))
    assert c.randomized_timeout > E, "seed must give a timeout above E for this test"
    for _ in range(E):
        c.tick()
    c.step(rv("n3", "n1", 2, last=(5, 1)))
    (reply,) = of_type(drain(c).messages, RequestVoteResponse)
    assert (c.term, c.vote, reply.granted) == (2, "n3", True)


def test_transfer_vote_request_overrides_the_leader_lease() -> None:
    """A RequestVote sent after TimeoutNow is considered even within the
    lease: the leader asked for it. Reference: thesis §3.10, §4.2.3."""
    c = new_core(check_quorum=True)
    c.step(Heartbeat(term=1, src="n2", dst="n1", commit=0))
    c.step(rv("n3", "n1", 2, last=(5, 1), transfer=True))
    (reply,) = of_type(drain(c).messages, RequestVoteResponse)
    assert (c.term, reply.granted) == (2, True)
