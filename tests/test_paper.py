"""Protocol tests of `RaftCore`, rule by rule, after etcd's raft_paper_test.go.

Each test names the rule and where it comes from: the Raft paper (§5.x, §7)
or Ongaro's thesis (thesis §x). Single-core tests feed messages by hand;
cluster tests use the deterministic network in `harness.py`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

import pytest
from harness import Network, fmt_msg, seeded_storage, small_config

from node.errors import NotLeader, ProposalDropped
from node.raft.core import RaftCore, Role
from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Beat,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Hup,
    InstallSnapshot,
    PeerMessage,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from node.raft.ready import Ready
from node.storage import MemoryStorage

E = 10  # election_ticks of small_config()


# --- helpers ----------------------------------------------------------------


def new_core(
    nid: str = "n1",
    peers: Sequence[str] = ("n2", "n3"),
    storage: MemoryStorage | None = None,
    seed: int = 1,
    prevote: bool = False,
    check_quorum: bool = False,
    **cfg: int,
) -> RaftCore:
    """A lone core; PreVote and CheckQuorum are off unless a test is about them."""
    config = small_config(prevote=prevote, check_quorum=check_quorum, **cfg)
    return RaftCore(nid, list(peers), storage or MemoryStorage(), config, random.Random(seed))


def drain(c: RaftCore) -> Ready:
    rd = c.ready()
    c.advance(rd)
    return rd


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i) for i, t in enumerate(terms)]


def ae(src: str, dst: str, term: int, prev: tuple[int, int] = (0, 0),
       entries: Sequence[Entry] = (), commit: int = 0) -> AppendEntries:
    return AppendEntries(term=term, src=src, dst=dst, prev_index=prev[0], prev_term=prev[1],
                         entries=list(entries), commit=commit)


def rv(src: str, dst: str, term: int, last: tuple[int, int] = (0, 0),
       prevote: bool = False, transfer: bool = False) -> RequestVote:
    return RequestVote(term=term, src=src, dst=dst, last_index=last[0], last_term=last[1],
                       prevote=prevote, transfer=transfer)


def vote_reply(src: str, dst: str, term: int, granted: bool = True,
               prevote: bool = False) -> RequestVoteResponse:
    return RequestVoteResponse(term=term, src=src, dst=dst, granted=granted, prevote=prevote)


def make_leader(c: RaftCore) -> Ready:
    """Run `c` through an election that every peer grants; returns the last Ready."""
    c.step(Hup())
    for _ in range(2):  # a pre-vote round, then the real one
        if c.role is Role.LEADER:
            break
        prevote = c.role is Role.PRE_CANDIDATE
        term = c.term + 1 if prevote else c.term
        for p in c.peers:
            c.step(vote_reply(p, c.id, term, prevote=prevote))
    assert c.role is Role.LEADER
    return drain(c)


T = TypeVar("T")


def of_type(msgs: Sequence[PeerMessage], typ: type[T]) -> list[T]:
    return [m for m in msgs if isinstance(m, typ)]


def terms_of(c: RaftCore) -> list[int]:
    return [e.term for e in c.log.entries]


def elected(net: Network, nid: str = "n1") -> Network:
    net.elect(nid)
    return net


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


# --- §5.3: log replication ----------------------------------------------------


def test_new_leader_appends_noop_of_its_term_and_replicates_it() -> None:
    """On election a leader appends an empty entry of its term and replicates
    and commits it. Reference: §5.4.2, §8."""
    net = elected(Network(3))
    assert net.commit("n1") == 1
    net.run(1)  # followers may learn the commit index from the next heartbeat
    for nid in net.ids:
        last = net.log(nid)[-1]
        assert (last.index, last.term, last.kind) == (1, net.term("n1"), EntryKind.NOOP)
        assert net.commit(nid) == 1


def test_leader_commits_proposal_and_followers_learn_commit_index() -> None:
    """A proposal is replicated to every follower, committed by the leader,
    and the followers learn the commit index (by the next heartbeat at the
    latest) and apply it. Reference: §5.3."""
    net = elected(Network(3))
    index = net.propose("n1", b"x")
    net.stabilize()
    assert net.commit("n1") == index
    net.run(1)
    for nid in net.ids:
        assert net.log(nid)[-1].data == b"x"
        assert net.commit(nid) == index
        assert net.applied(nid) == [b"x"]


def test_leader_commits_once_a_majority_stored_the_entry() -> None:
    """An entry is committed as soon as a majority of the five stored it, not
    before. Reference: §5.3."""
    c = new_core(peers=("n2", "n3", "n4", "n5"))
    make_leader(c)
    index = c.propose(b"x")
    drain(c)
    c.step(AppendEntriesResponse(term=1, src="n2", dst="n1", success=True, index=index))
    assert c.log.commit < index
    c.step(AppendEntriesResponse(term=1, src="n3", dst="n1", success=True, index=index))
    assert c.log.commit == index


def test_follower_commit_is_bounded_by_what_the_append_vouches_for() -> None:
    """A follower sets its commit index to min(leaderCommit, index of the last
    new entry). Reference: §5.3 (AppendEntries receiver, step 5)."""
    c = new_core()
    c.step(ae("n2", "n1", 1, entries=ents(1, 1, 1), commit=0))
    c.step(ae("n2", "n1", 1, prev=(1, 1), commit=3))
    assert c.log.commit == 1


def test_follower_rejects_append_whose_previous_entry_does_not_match() -> None:
    """The consistency check: an append whose (prevIndex, prevTerm) is not in
    the follower's log is rejected, with a conflict hint. Reference: §5.3."""
    c = new_core(storage=seeded_storage([1, 2]))
    c.step(ae("n2", "n1", 3, prev=(2, 3), entries=ents(3, start=3)))
    c.step(ae("n2", "n1", 3, prev=(4, 3), entries=ents(3, start=5)))
    replies = of_type(drain(c).messages, AppendEntriesResponse)
    assert terms_of(c) == [1, 2]
    assert [(m.success, m.index, m.last_index, m.conflict_term, m.conflict_index)
            for m in replies] == [(False, 2, 2, 2, 2), (False, 4, 2, 0, 0)]


@pytest.mark.parametrize(
    ("prev", "new", "want"),
    [
        ((2, 2), ents(3, start=3), [1, 2, 3]),
        ((1, 1), ents(3, 4, start=2), [1, 3, 4]),
        ((0, 0), ents(1), [1, 2]),
        ((0, 0), ents(3), [3]),
    ],
)
def test_follower_deletes_conflicting_suffix_and_appends(
    prev: tuple[int, int], new: list[Entry], want: list[int]
) -> None:
    """A follower deletes an entry that conflicts with a new one and all that
    follow it, and appends the new entries. Reference: §5.3."""
    c = new_core(storage=seeded_storage([1, 2]))
    c.step(ae("n2", "n1", 4, prev=prev, entries=new))
    (reply,) = of_type(drain(c).messages, AppendEntriesResponse)
    assert terms_of(c) == want
    assert (reply.success, reply.index) == (True, prev[0] + len(new))


def test_append_of_entries_already_present_keeps_the_entries_after_them() -> None:
    """A delayed append whose entries the follower already has truncates
    nothing. Reference: §5.3 (delete only on conflict)."""
    c = new_core(storage=seeded_storage([1, 1, 1]))
    c.step(ae("n2", "n1", 1, prev=(0, 0), entries=ents(1)))
    assert terms_of(c) == [1, 1, 1]


FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIG7_FOLLOWERS))
def test_leader_brings_every_figure7_follower_log_in_line(case: str) -> None:
    """A new leader (term 8) makes any follower log of Figure 7 identical to
    its own: missing entries added, extraneous ones deleted. Reference: §5.3,
    Figure 7."""
    storages = {
        "n1": seeded_storage(FIG7_LEADER, term=7),
        "n2": seeded_storage(FIG7_FOLLOWERS[case]),
        "n3": seeded_storage([], term=7),
    }
    net = Network(3, storages=storages)
    net.elect("n1")
    assert net.term("n1") == 8
    want = [*FIG7_LEADER, 8]
    assert net.log_terms("n2") == want
    assert net.log_terms("n3") == want


@pytest.mark.parametrize(
    ("leader", "follower", "rejections"),
    [
        ([1] * 5 + [3] * 200, [1] * 5 + [2] * 300, 1),  # longer, divergent in one term
        ([1] * 5 + [3] * 200, [1] * 5, 1),  # far behind
        ([1] * 5 + [2] * 45 + [3] * 50, [1] * 5 + [2] * 75, 2),  # shares term 2, then diverges
        ([1] * 5 + [2] * 5 + [4] * 100, [1] * 5 + [3] * 60, 2),  # shorter, other term
    ],
)
def test_fast_backtracking_repairs_a_long_divergent_log_in_few_round_trips(
    leader: list[int], follower: list[int], rejections: int
) -> None:
    """With the conflict term and its first index in a rejection, the leader
    skips a whole term per round trip instead of one entry. Reference: §5.3
    (the optimization after Figure 7), thesis §5.3.1."""
    storages = {"n1": seeded_storage(leader), "n2": seeded_storage(follower),
                "n3": seeded_storage(leader)}
    net = Network(3, storages=storages)
    net.elect("n1")
    rejected = net.sent_where(
        lambda m: isinstance(m, AppendEntriesResponse) and m.src == "n2" and not m.success)
    appends = net.sent_where(lambda m: isinstance(m, AppendEntries) and m.dst == "n2")
    assert len(rejected) == rejections, [fmt_msg(m) for m in rejected]
    # one probe per rejection, one that matches, one that carries the commit index
    assert len(appends) <= rejections + 2, [fmt_msg(m) for m in appends]
    assert net.log_terms("n2") == net.log_terms("n1")


def _catch_up(config_kw: dict[str, int], payload: bytes, count: int) -> Network:
    net = elected(Network(3, small_config(**config_kw)))
    for _ in range(count):
        net.core("n1").propose(payload)
    net.settle()
    return net


def test_appends_carry_at_most_max_append_entries() -> None:
    """Replication batches entries, at most max_append_entries a message.
    Reference: flow control after etcd (MaxSizePerMsg), §5.3."""
    net = _catch_up({"max_append_entries": 3}, b"v", 10)
    batches = [len(m.entries) for m in of_type(net.sent, AppendEntries)]
    assert max(batches) == 3
    assert all(net.applied(n) == [b"v"] * 10 for n in net.ids)


def test_appends_carry_at_most_max_append_bytes() -> None:
    """A batch stops before it exceeds max_append_bytes (entries of 36 bytes
    each, a limit of 100: two a message). Reference: flow control, §5.3."""
    net = _catch_up({"max_append_bytes": 100}, b"x" * 20, 10)
    batches = [len(m.entries) for m in of_type(net.sent, AppendEntries)]
    assert max(batches) == 2
    assert all(net.applied(n) == [b"x" * 20] * 10 for n in net.ids)


def test_pipeline_holds_at_most_max_inflight_unacknowledged_appends() -> None:
    """A leader keeps sending to a follower that does not answer only until
    max_inflight_appends appends are unacknowledged. Reference: flow control
    after etcd (MaxInflightMsgs)."""
    net = elected(Network(3, small_config(max_inflight_appends=2, max_append_entries=1)))
    net.drop("n2", "n1")  # n2 receives but its answers are lost
    mark = len(net.sent)
    for k in range(10):
        net.core("n1").propose(b"%d" % k)
    net.run(5)
    to_n2 = [m for m in net.sent[mark:] if isinstance(m, AppendEntries) and m.dst == "n2"
             and m.entries]
    assert len(to_n2) == 2, [fmt_msg(m) for m in to_n2]
    net.recover()
    net.run(3)
    assert net.log_terms("n2") == net.log_terms("n1")


def test_leader_pipelines_appends_without_waiting_for_each_ack() -> None:
    """After an ack a replicating leader sends several appends at once, up to
    max_inflight_appends, before any of them is acknowledged. Reference: flow
    control after etcd."""
    net = elected(Network(3, small_config(max_inflight_appends=2, max_append_entries=1)))
    for k in range(5):
        net.core("n1").propose(b"%d" % k)
    net.process("n1")
    net.deliver(only=lambda m: m.dst == "n3")
    net.process("n3")
    net.deliver(only=lambda m: m.src == "n3")
    net.process("n1")
    burst = [m for m in net.queue if isinstance(m, AppendEntries) and m.dst == "n3"]
    assert len(burst) == 2, [fmt_msg(m) for m in burst]


def test_commit_only_append_does_not_hold_a_pipeline_slot() -> None:
    """An append without entries (sent to spread the commit index) takes no
    pipeline slot, so a caught-up follower gets the next entry at once even
    with max_inflight_appends=1. Reference: flow control after etcd."""
    net = elected(Network(3, small_config(max_inflight_appends=1)))
    net.propose("n1", b"a")
    net.stabilize()
    mark = len(net.sent)
    net.propose("n1", b"b")
    first = [m for m in net.sent[mark:] if isinstance(m, AppendEntries)]
    assert sorted(m.dst for m in first if m.entries) == ["n2", "n3"], [fmt_msg(m) for m in first]


# --- §5.4.2: committing entries from previous terms ----------------------------


def test_leader_commits_only_entries_of_its_term_by_counting_replicas() -> None:
    """A leader does not commit an older-term entry by counting replicas; it
    commits it only together with an entry of its own term. Reference: §5.4.2."""
    c = new_core(storage=seeded_storage([1, 2], term=2))
    make_leader(c)
    assert (c.term, c.log.last_index()) == (3, 3)
    for index in (1, 2):
        c.step(AppendEntriesResponse(term=3, src="n2", dst="n1", success=True, index=index))
        assert c.log.commit == 0, f"committed an old-term entry at {index}"
    c.step(AppendEntriesResponse(term=3, src="n2", dst="n1", success=True, index=3))
    assert c.log.commit == 3


def test_figure8_old_term_entry_on_a_majority_is_not_committed_and_can_be_replaced() -> None:
    """Figure 8: an entry of an old term stored on a majority is not committed
    by a later leader; a new leader may then replace it everywhere, and no
    node ever applies it. Reference: §5.4.2, Figure 8."""
    cfg = small_config(prevote=False, check_quorum=False, max_append_entries=1)
    net = Network(5, cfg)
    net.elect("n1")  # (a) n1 leads term 1 ...
    for other in ("n3", "n4", "n5"):
        net.cut("n1", other)
    net.propose("n1", b"old")  # ... and stores 2@1 on n1 and n2
    net.stabilize()
    net.crash("n1")
    # (b) n5 wins term 2 with n3 and n4, stores 2@2 only locally, and crashes.
    net.step("n5", Hup())
    net.deliver()
    net.process_all()
    net.deliver()
    assert net.role("n5") is Role.LEADER
    net.isolate("n5")
    net.stabilize()
    net.crash("n5")
    net.recover()
    # (c) n1 restarts, wins term 3, stores 2@1 on n3 but its own 3@3 on no majority.
    net.restart("n1")
    net.drop_where(lambda m: m.src == "n1" and m.dst in ("n4", "n5"))
    # n3 gets the probe it rejects and 2@1, but never 3@3.
    net.drop_where(lambda m: isinstance(m, AppendEntries) and m.dst == "n3"
                   and any(e.index >= 3 for e in m.entries)
                   and net.core("n3").log.last_index() >= 2)
    net.campaign("n1")
    net.campaign("n1")
    assert (net.role("n1"), net.term("n1")) == (Role.LEADER, 3)
    assert [net.log_terms(n)[:2] for n in ("n1", "n2", "n3")] == [[1, 1]] * 3
    assert net.commit("n1") == 1, "committed 2@1 by counting replicas"
    # (d) n1 crashes; n5 wins with n3 and n4 (its last term 2 beats their 1)
    # and replaces 2@1 everywhere. Had 2@1 been applied, the harness would fail.
    net.crash("n1")
    net.recover()
    net.restart("n5")
    net.campaign("n5")
    net.campaign("n5")
    assert net.role("n5") is Role.LEADER
    for nid in ("n2", "n3", "n4", "n5"):
        assert net.log_terms(nid)[1] == 2, nid
    assert net.commit("n5") >= 2


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


# --- thesis §6.4: ReadIndex --------------------------------------------------------


def _is_hb(m: PeerMessage) -> bool:
    return isinstance(m, (Heartbeat, HeartbeatResponse))


def test_read_released_after_a_quorum_acks_a_heartbeat_round() -> None:
    """A read gets the commit index at request time and is released once a
    quorum acknowledged a heartbeat round for it. Reference: thesis §6.4."""
    net = elected(Network(3))
    commit = net.commit("n1")
    net.core("n1").read_index(b"r1")
    net.process("n1")
    rounds = [m for m in net.queue if isinstance(m, Heartbeat)]
    assert len(rounds) == 2 and all(m.seq > 0 for m in rounds)
    assert net.nodes["n1"].reads_served == []
    net.deliver(only=lambda m: m.dst == "n2")
    net.process("n2")
    net.deliver(only=lambda m: m.src == "n2")
    net.process("n1")
    assert [(r.ctx, r.index) for r in net.nodes["n1"].reads_served] == [(b"r1", commit)]


def test_read_ignores_acks_of_heartbeats_sent_before_the_request() -> None:
    """Acknowledgements of a heartbeat round that started before the read
    was requested do not confirm it. Reference: thesis §6.4."""
    net = elected(Network(3))
    net.step("n1", Beat())
    old = net.take(_is_hb)
    net.core("n1").read_index(b"r1")
    net.process("n1")
    new = net.take(_is_hb)
    net.send(*old)
    assert net.nodes["n1"].reads_served == []
    net.send(*new)
    assert [r.ctx for r in net.nodes["n1"].reads_served] == [b"r1"]


def test_read_waits_until_the_leader_committed_an_entry_of_its_term() -> None:
    """A new leader releases no read before its no-op is committed, however
    many heartbeats are acknowledged. Reference: thesis §6.4 step 1."""
    net = Network(3)
    net.step("n1", Hup())
    for _ in range(2):  # pre-vote, then vote
        net.deliver()
        net.process_all()
        net.deliver()
        net.process("n1")
    assert net.role("n1") is Role.LEADER
    held = net.take(lambda m: isinstance(m, AppendEntries))
    net.drop_where(lambda m: isinstance(m, AppendEntries))  # re-probes after heartbeats
    net.core("n1").read_index(b"r1")
    for _ in range(3):
        net.step("n1", Beat())
        net.stabilize()
    assert net.nodes["n1"].reads_served == []
    assert net.commit("n1") == 0
    net.recover()
    net.send(*held)
    assert [(r.ctx, r.index) for r in net.nodes["n1"].reads_served] == [(b"r1", 1)]


def test_partitioned_leader_never_releases_a_read() -> None:
    """A leader cut off from the majority never releases a read; it drops it
    when it steps down. Reference: thesis §6.4, §6.2."""
    net = elected(Network(3))
    net.isolate("n1")
    net.core("n1").read_index(b"r1")
    net.run(3 * E)
    assert net.nodes["n1"].reads_served == []
    assert net.nodes["n1"].reads_dropped == [b"r1"]
    assert net.role("n1") is not Role.LEADER


def test_deposed_leader_drops_pending_reads() -> None:
    """A leader that learns of a higher term drops its pending reads instead of
    serving them. Reference: thesis §6.4."""
    net = elected(Network(3))
    net.core("n1").read_index(b"r1")
    net.process("n1")
    net.take(_is_hb)
    net.step("n1", AppendEntriesResponse(term=9, src="n2", dst="n1", success=False, index=0))
    assert net.role("n1") is Role.FOLLOWER
    assert net.nodes["n1"].reads_dropped == [b"r1"]
    assert net.nodes["n1"].reads_served == []


def test_read_on_follower_is_refused_with_leader_hint() -> None:
    """Only the leader serves ReadIndex; a follower names the leader.
    Reference: thesis §6.4."""
    net = elected(Network(3))
    with pytest.raises(NotLeader) as err:
        net.core("n2").read_index(b"r1")
    assert err.value.leader == "n1"


# --- thesis §3.10: leadership transfer ----------------------------------------------


def test_transfer_to_up_to_date_follower_sends_timeout_now_and_it_wins() -> None:
    """The leader sends TimeoutNow to an up-to-date target, which campaigns at
    once (no pre-vote) and wins in the next term. Reference: thesis §3.10."""
    net = elected(Network(3))
    term = net.term("n1")
    net.core("n1").transfer_leader("n2")
    net.process("n1")
    assert [type(m) for m in net.queue] == [TimeoutNow]
    net.stabilize()
    assert net.leaders() == ["n2"] and net.term("n2") == term + 1
    assert net.role("n1") is Role.FOLLOWER


def test_transfer_catches_the_target_up_before_timeout_now() -> None:
    """A lagging target first receives the entries it misses; TimeoutNow is
    sent only once its log matches the leader's. Reference: thesis §3.10."""
    net = elected(Network(3))
    net.cut("n1", "n3")
    for k in range(3):
        net.propose("n1", b"%d" % k)
    net.stabilize()
    net.recover()
    mark = len(net.sent)
    net.core("n1").transfer_leader("n3")
    net.stabilize()
    sent = net.sent[mark:]
    tn = next(i for i, m in enumerate(sent) if isinstance(m, TimeoutNow))
    acks = [m for m in sent[:tn] if isinstance(m, AppendEntriesResponse) and m.src == "n3"]
    assert acks and acks[-1].success and acks[-1].index == 4
    assert net.leaders() == ["n3"]


def test_leader_refuses_proposals_while_transferring() -> None:
    """While a transfer runs the leader accepts no proposals, so the target
    can catch up. Reference: thesis §3.10."""
    net = elected(Network(3))
    net.isolate("n3")
    net.core("n1").transfer_leader("n3")
    with pytest.raises(ProposalDropped):
        net.core("n1").propose(b"x")


def test_leader_counts_itself_only_for_entries_on_its_disk() -> None:
    """A leader's appends may leave before its own persist (thesis §10.2.1),
    so an entry one follower holds is not yet on a quorum of a 3-node
    cluster until the leader has persisted it: only then does it commit."""
    net = elected(Network(3))
    leader = net.core("n1")
    index = leader.propose(b"x")  # in the leader's log, not yet persisted
    leader.step(AppendEntriesResponse(term=leader.term, src="n2", dst="n1",
                                      index=index, success=True))
    assert leader.log.commit < index, "counted an entry the leader has not persisted"
    net.process("n1")  # persist, send, advance
    assert leader.log.commit == index


def test_leader_refuses_proposals_past_its_uncommitted_limit() -> None:
    """Overload control: while `max_uncommitted_bytes` of its proposals wait
    for their commit, a leader refuses the next one; commits free the room.
    Reference: etcd raft, MaxUncommittedEntriesSize (not in the paper)."""
    cmd = b"x" * 100
    net = elected(Network(3, config=small_config(max_uncommitted_bytes=3 * (len(cmd) + 16))))
    leader = net.core("n1")
    net.isolate("n2")
    net.isolate("n3")
    for _ in range(3):
        net.propose("n1", cmd)
    with pytest.raises(ProposalDropped, match="overloaded"):
        leader.propose(cmd)
    assert leader.counters.proposals_refused == 1
    net.recover()
    net.stabilize()
    assert leader.uncommitted_bytes == 0, "committed proposals still count"
    net.propose("n1", cmd)
    net.stabilize()
    assert leader.log.commit == leader.log.last_index()


def test_one_proposal_larger_than_the_uncommitted_limit_is_taken() -> None:
    """With nothing uncommitted, a proposal is taken whatever its size, so a
    large command can never be refused forever. Reference: etcd raft."""
    net = elected(Network(3, config=small_config(max_uncommitted_bytes=10)))
    net.isolate("n2")
    net.isolate("n3")
    net.propose("n1", b"y" * 100)
    with pytest.raises(ProposalDropped):
        net.core("n1").propose(b"z")


def test_each_leadership_starts_its_uncommitted_count_at_zero() -> None:
    """The count starts at zero with each leadership: a leader elected again
    does not carry what it counted in an earlier term, nor does a leader
    count what it inherited. Reference: etcd raft."""
    net = elected(Network(3, config=small_config(max_uncommitted_bytes=1000)))
    net.isolate("n3")
    net.drop_where(lambda m: isinstance(m, AppendEntriesResponse) and m.src == "n2")
    net.propose("n1", b"a" * 400)
    net.stabilize()
    assert net.core("n1").uncommitted_bytes == 416
    net.recover()
    net.isolate("n1")
    net.run_until(lambda: net.role("n2") is Role.LEADER, 10 * E, "n2 leading")
    assert net.core("n2").uncommitted_bytes == 0
    net.recover()
    net.run_until(lambda: net.role("n1") is Role.FOLLOWER, 10 * E, "n1 following n2")
    net.core("n2").transfer_leader("n1")
    net.stabilize()
    assert net.role("n1") is Role.LEADER and net.core("n1").term > 2
    assert net.core("n1").uncommitted_bytes == 0, "the count of an earlier term survived"
    net.propose("n1", b"b" * 900)
    assert net.core("n1").uncommitted_bytes == 916


def test_transfer_aborts_after_an_election_timeout() -> None:
    """A transfer that does not finish within an election timeout is aborted
    and the leader takes proposals again. Reference: thesis §3.10."""
    net = elected(Network(3))
    net.isolate("n3")
    net.core("n1").transfer_leader("n3")
    net.run(E - 1)
    assert net.core("n1").lead_transferee == "n3"
    net.run(1)
    assert net.core("n1").lead_transferee is None
    assert net.role("n1") is Role.LEADER
    net.propose("n1", b"x")
    net.settle()
    assert net.applied("n2") == [b"x"]


# --- §7: log compaction and InstallSnapshot ------------------------------------------


def _lagging_follower(chunk: int, compact_at: int = 21) -> Network:
    """n3 misses 20 entries (2..21) that the leader then compacts away."""
    net = elected(Network(3, small_config(snapshot_chunk_bytes=chunk)))
    net.isolate("n3")
    for k in range(20):
        net.propose("n1", b"value-%02d" % k)
    net.stabilize()
    net.compact("n1", compact_at)
    return net


def test_follower_behind_compaction_point_gets_snapshot_in_chunks() -> None:
    """A follower that needs compacted entries gets the snapshot in chunks of
    at most snapshot_chunk_bytes, installs it and catches up. Reference: §7."""
    net = _lagging_follower(64)
    size = len(net.nodes["n1"].storage.snapshot().data)
    mark = len(net.sent)
    net.recover()
    net.run(3)
    chunks = [m for m in net.sent[mark:] if isinstance(m, InstallSnapshot)]
    assert len(chunks) == -(-size // 64) >= 3
    assert [m.offset for m in chunks] == list(range(0, size, 64))
    assert all(len(m.data) <= 64 for m in chunks) and [m.done for m in chunks][-1]
    assert net.core("n3").log.snapshot == net.core("n1").log.snapshot
    net.propose("n1", b"after")
    net.settle()
    assert net.applied("n3") == net.applied("n1") == [b"value-%02d" % k for k in range(20)] + [
        b"after"]


def test_lost_snapshot_chunk_is_resent() -> None:
    """A chunk lost on the way is sent again (from the offset the follower
    wants) and the install completes. Reference: §7."""
    net = _lagging_follower(64)
    lost: list[PeerMessage] = []

    def lose_second_chunk_once(m: PeerMessage) -> bool:
        if isinstance(m, InstallSnapshot) and m.offset == 64 and not lost:
            lost.append(m)
            return True
        return False

    net.recover()
    net.drop_where(lose_second_chunk_once)
    net.run(5)
    assert lost, "the second chunk was never sent"
    resent = net.sent_where(lambda m: isinstance(m, InstallSnapshot) and m.offset == 64)
    assert len(resent) == 2
    assert net.core("n3").log.snapshot == net.core("n1").log.snapshot
    assert net.applied("n3") == net.applied("n1")


# --- recovery from storage ----------------------------------------------------------


def test_restarted_node_recovers_term_vote_and_log_from_storage() -> None:
    """A node restarted from its storage has the term, vote, log and commit
    index it persisted, re-applies its committed entries and rejoins.
    Reference: §5.1 (persistent state), Figure 2."""
    net = elected(Network(3))
    for k in range(3):
        net.propose("n1", b"%d" % k)
    net.stabilize()
    c = net.core("n2")
    before = (c.term, c.vote, list(c.log.entries), c.log.commit)
    net.crash("n2")
    net.restart("n2")
    c = net.core("n2")
    assert (c.term, c.vote, list(c.log.entries), c.log.commit) == before
    net.run(2)
    assert net.applied("n2") == [b"0", b"1", b"2"]
    net.propose("n1", b"3")
    net.settle()
    assert net.applied("n2")[-1] == b"3"


def test_snapshot_transfer_survives_a_new_compaction_midway() -> None:
    """If the leader compacts again while a snapshot is on its way, the
    follower gets the newer snapshot from its start and installs it.
    Reference: §7."""
    net = _lagging_follower(16, compact_at=10)
    net.recover()
    net.tick()  # heartbeat; n3's answer starts the transfer
    for _ in range(10):  # message round by message round, until it has started
        if net.progress("n1", "n3").state.value == "snapshot":
            break
        net.deliver()
        net.process_all()
    assert net.progress("n1", "n3").state.value == "snapshot"
    assert any(isinstance(m, InstallSnapshot) and m.offset == 0 for m in net.queue)
    net.compact("n1", 21)
    net.run(4)
    assert net.core("n3").log.snapshot.index == 21
    assert net.applied("n3") == net.applied("n1")


def test_snapshot_transfer_survives_a_follower_restart_midway() -> None:
    """A follower that restarts in the middle of a snapshot transfer loses the
    partial snapshot; the leader starts over and the install completes.
    Reference: §7."""
    net = _lagging_follower(32)
    net.recover()
    net.drop_where(lambda m: isinstance(m, InstallSnapshot) and m.offset >= 96)
    net.run(1)
    net.crash("n3")
    net.restart("n3")
    net.recover()
    net.run(4)
    assert net.core("n3").log.snapshot == net.core("n1").log.snapshot
    assert net.applied("n3") == net.applied("n1")


def test_restart_after_compaction_recovers_state_from_snapshot_and_log() -> None:
    """A node restarted after compacting rebuilds its state from its snapshot
    and the log after it. Reference: §7, §5.1."""
    net = elected(Network(3))
    for k in range(5):
        net.propose("n1", b"%d" % k)
    net.stabilize()
    net.run(1)
    net.compact("n2", 4)
    net.propose("n1", b"5")
    net.stabilize()
    net.run(1)
    net.crash("n2")
    net.restart("n2")
    assert net.core("n2").log.snapshot.index == 4
    net.run(2)
    assert net.applied("n2") == [b"%d" % k for k in range(6)]
