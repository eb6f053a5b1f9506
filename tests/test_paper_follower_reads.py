"""Protocol tests of `RaftCore` after etcd's raft_paper_test.go: follower
reads with a read index from the leader and lease reads (thesis §6.4.1).
Each test names its rule and source."""

from __future__ import annotations

import pytest

from node.raft.core import Role
from node.raft.messages import (
    AppendEntries,
    Heartbeat,
    HeartbeatResponse,
    PeerMessage,
    ReadIndex,
    ReadIndexResponse,
    RequestVoteResponse,
    TimeoutNow,
    TransferLeader,
)
from tests.harness import Network, small_config
from tests.paper import E, elected, rv


def _is_hb(m: PeerMessage) -> bool:
    return isinstance(m, (Heartbeat, HeartbeatResponse))


def _answers(msgs: list[PeerMessage]) -> list[ReadIndexResponse]:
    return [m for m in msgs if isinstance(m, ReadIndexResponse)]


def _served(net: Network, nid: str) -> list[tuple[bytes, int]]:
    return [(r.ctx, r.index) for r in net.nodes[nid].reads_served]


# --- thesis §6.4.1: reads served by followers ---------------------------------------


def test_follower_read_gets_the_leaders_commit_index_after_a_heartbeat_round() -> None:
    """A follower asks the leader for a read index; the leader answers with
    its commit index only once a quorum acknowledged a heartbeat round sent
    after the request, and the follower serves it. Reference: thesis §6.4.1."""
    net = elected(Network(3))
    net.settle()
    commit = net.commit("n1")
    net.core("n2").read_index(b"r1")
    net.process("n2")
    net.deliver(only=lambda m: isinstance(m, ReadIndex))
    net.process("n1")
    assert not net.sent_where(lambda m: isinstance(m, ReadIndexResponse))
    rounds = [m for m in net.queue if isinstance(m, Heartbeat) and m.seq > 0]
    assert len(rounds) == 2
    net.stabilize()
    answers = _answers(net.sent)
    assert [(m.dst, m.ok, m.index) for m in answers] == [("n2", True, commit)]
    assert _served(net, "n2") == [(b"r1", commit)]
    assert _served(net, "n1") == []


def test_follower_reads_arriving_in_one_turn_share_one_heartbeat_round() -> None:
    """Read-index requests from several followers, and the leader's own read,
    that reach the leader in one turn are confirmed by one round of
    heartbeats. Reference: thesis §6.4 ("batching"), §6.4.1."""
    net = elected(Network(5))
    net.settle()
    for nid in ("n2", "n3", "n4"):
        net.core(nid).read_index(nid.encode())
        net.process(nid)
    net.core("n1").read_index(b"own")
    net.deliver(only=lambda m: isinstance(m, ReadIndex))
    before = len(net.sent_where(lambda m: isinstance(m, Heartbeat)))
    net.process("n1")
    assert len(net.sent_where(lambda m: isinstance(m, Heartbeat))) - before == 4
    net.stabilize()
    for nid in ("n2", "n3", "n4"):
        assert [r.ctx for r in net.nodes[nid].reads_served] == [nid.encode()]
    assert [r.ctx for r in net.nodes["n1"].reads_served] == [b"own"]


def test_reads_a_follower_gets_in_one_turn_share_one_read_index_request() -> None:
    """The reads a follower is asked for before its next Ready go to the
    leader as one request and are all served at its answer. Reference:
    thesis §6.4 ("batching"), §6.4.1."""
    net = elected(Network(3))
    net.settle()
    for ctx in (b"a", b"b", b"c"):
        net.core("n2").read_index(ctx)
    net.process("n2")
    assert len([m for m in net.queue if isinstance(m, ReadIndex)]) == 1
    net.stabilize()
    assert [r.ctx for r in net.nodes["n2"].reads_served] == [b"a", b"b", b"c"]


def test_follower_drops_every_read_of_a_request_that_timed_out() -> None:
    """A request standing for several reads that gets no answer drops them
    all. Reference: thesis §6.4.1."""
    net = elected(Network(3))
    net.settle()
    net.cut("n1", "n2")
    for ctx in (b"a", b"b"):
        net.core("n2").read_index(ctx)
    net.process("n2")
    net.tick(E, nodes=["n2"])
    assert net.nodes["n2"].reads_dropped == [b"a", b"b"]


def test_follower_serves_only_once_it_applied_the_read_index() -> None:
    """A follower whose state machine is behind the read index waits until it
    has applied that far before serving. Reference: thesis §6.4.1."""
    net = elected(Network(3))
    net.settle()
    net.drop_where(lambda m: isinstance(m, AppendEntries) and m.dst == "n3")
    index = net.propose("n1", b"x")
    net.stabilize()
    assert net.commit("n1") == index and net.nodes["n3"].applied_index < index
    net.core("n3").read_index(b"r1")
    net.stabilize()
    assert net.nodes["n3"].reads_served == []
    assert [r.index for r in net.nodes["n3"].reads_waiting] == [index]
    net.recover()
    net.run(2)
    assert _served(net, "n3") == [(b"r1", index)]


def test_follower_cut_off_from_the_leader_drops_its_read_within_an_election_timeout() -> None:
    """A follower that gets no read index (its request or the answer is lost)
    drops the read after an election timeout and never serves it.
    Reference: thesis §6.4.1."""
    net = elected(Network(3))
    net.settle()
    net.cut("n1", "n3")
    net.core("n3").read_index(b"r1")
    net.process("n3")
    net.tick(E - 1, nodes=["n3"])
    assert net.nodes["n3"].reads_dropped == []
    net.tick(1, nodes=["n3"])
    assert net.nodes["n3"].reads_dropped == [b"r1"]
    net.run(3 * E)
    assert net.nodes["n3"].reads_served == []


def test_follower_drops_its_forwarded_reads_when_it_hears_of_a_new_term() -> None:
    """A follower that learns of a higher term drops the reads it asked the
    old leader for: that leader's answer could be stale. Reference: thesis
    §6.4.1."""
    net = elected(Network(3))
    net.settle()
    net.core("n2").read_index(b"r1")
    net.process("n2")
    net.take(lambda m: isinstance(m, ReadIndex))
    net.step("n2", Heartbeat(term=9, src="n3", dst="n2", commit=0))
    assert net.nodes["n2"].reads_dropped == [b"r1"]


def test_follower_drops_a_late_answer_to_a_read_it_gave_up_on() -> None:
    """An answer arriving after the follower dropped the read is ignored:
    the read was failed to its client already. Reference: thesis §6.4.1."""
    net = elected(Network(3))
    net.settle()
    net.core("n2").read_index(b"r1")
    net.process("n2")
    held = net.take(lambda m: isinstance(m, ReadIndex))
    net.tick(E, nodes=["n2"])
    assert net.nodes["n2"].reads_dropped == [b"r1"]
    net.send(*held)
    net.stabilize()
    assert net.nodes["n2"].reads_served == []


def test_deposed_leader_refuses_read_index_requests() -> None:
    """A node that stepped down (CheckQuorum) but is still taken for the
    leader of its term refuses a read index; the follower drops the read.
    Reference: thesis §6.4.1, §6.2."""
    net = elected(Network(3))
    net.settle()
    net.isolate("n1")
    net.run_until(lambda: net.role("n1") is Role.FOLLOWER, 3 * E, "n1 stepped down")
    net.recover()
    term = net.term("n1")
    net.step("n1", ReadIndex(term=term, src="n2", dst="n1", ctx=b"r1"))
    answers = _answers(net.take(lambda m: isinstance(m, ReadIndexResponse)))
    assert [(m.dst, m.ok) for m in answers] == [("n2", False)]


def test_leader_answers_no_read_index_before_committing_an_entry_of_its_term() -> None:
    """A new leader holds a follower's read-index request until its no-op is
    committed, as it does its own reads. Reference: thesis §6.4 step 1."""
    net = elected(Network(3, small_config(check_quorum=False)))
    net.settle()
    net.isolate("n1")
    net.drop_where(lambda m: isinstance(m, AppendEntries) and m.src == "n2")
    net.elect("n2")
    noop = net.core("n2").log.last_index()
    net.step("n2", ReadIndex(term=net.term("n2"), src="n3", dst="n2", ctx=b"r1"))
    net.run(2)
    assert not net.sent_where(lambda m: isinstance(m, ReadIndexResponse) and m.src == "n2")
    net.recover()
    net.run(2)
    answers = [m for m in _answers(net.sent) if m.src == "n2"]
    assert [(m.ok, m.index) for m in answers] == [(True, noop)]


def test_leader_losing_leadership_refuses_the_reads_followers_asked_for() -> None:
    """A leader that steps down refuses the read-index requests it had not
    confirmed, in the term they were asked in. Reference: thesis §6.4.1."""
    net = elected(Network(3))
    net.settle()
    net.drop_where(_is_hb)
    term = net.term("n1")
    net.step("n1", ReadIndex(term=term, src="n3", dst="n1", ctx=b"r1"))
    net.take(lambda m: isinstance(m, ReadIndexResponse))
    net.step("n1", Heartbeat(term=term + 5, src="n2", dst="n1", commit=0))
    refused = _answers(net.sent)
    assert [(m.dst, m.ok, m.term) for m in refused] == [("n3", False, term)]


# --- thesis §6.4.1: lease reads -----------------------------------------------------


def _lease_elected(**kw: int) -> tuple[Network, str, list[str]]:
    """A cluster in lease mode once it elected a leader by its timers (a
    node refuses votes for an election timeout after it starts); its leader
    and followers."""
    net = Network(3, small_config(read_mode="lease", lease_drift_ticks=2, **kw))
    net.run_until(lambda: bool(net.leaders()), 10 * E, "a leader was elected")
    net.run(2)
    ld = net.leader()
    return net, ld, [n for n in net.ids if n != ld]


def test_lease_read_needs_no_round_while_a_majority_answered_recently() -> None:
    """With a lease, a leader a majority answered a heartbeat sent within
    the election timeout minus the drift margin serves at once, with no
    round. Reference: thesis §6.4.1."""
    net, ld, _ = _lease_elected()
    commit = net.commit(ld)
    net.core(ld).read_index(b"r1")
    net.process(ld)
    assert _served(net, ld) == [(b"r1", commit)]
    assert not [m for m in net.queue if isinstance(m, Heartbeat)]


def test_lease_expires_when_no_majority_answers_and_reads_need_a_round_again() -> None:
    """A leader whose followers stopped answering holds no lease after
    election timeout minus drift margin ticks: a read then waits for a
    quorum's round (and never comes without one). Reference: thesis §6.4.1."""
    net, ld, _ = _lease_elected(election_ticks=20)
    net.isolate(ld)
    net.core(ld).read_index(b"r0")
    net.process(ld)
    assert [r.ctx for r in net.nodes[ld].reads_served] == [b"r0"]
    net.run(20 - 2)
    assert net.role(ld) is Role.LEADER
    net.core(ld).read_index(b"r1")
    net.process(ld)
    assert [r.ctx for r in net.nodes[ld].reads_served] == [b"r0"]
    net.run(3 * 20)
    assert [r.ctx for r in net.nodes[ld].reads_served] == [b"r0"]


def test_lease_is_void_after_the_leader_sent_timeout_now() -> None:
    """A leader that sent TimeoutNow serves no lease read for the rest of its
    term: its target is elected without waiting out the followers' lease.
    Reference: thesis §3.10, §6.4.1."""
    net, ld, (to, _) = _lease_elected()
    # TimeoutNow is lost (or late): the transfer aborts, the leader leads on.
    net.drop_where(lambda m: isinstance(m, TimeoutNow))
    net.step(ld, TransferLeader(to))
    assert net.sent_where(lambda m: isinstance(m, TimeoutNow))
    net.run_until(lambda: any(name == "transfer_aborted" for name, _ in net.nodes[ld].events),
                  2 * E, "the transfer aborted")
    assert net.role(ld) is Role.LEADER and net.core(ld).lead_transferee is None
    net.core(ld).read_index(b"r1")
    net.process(ld)
    assert net.nodes[ld].reads_served == []


def test_lease_mode_needs_check_quorum() -> None:
    """Lease reads without CheckQuorum are refused in one sentence: followers
    would not refuse votes while they hear a leader. Reference: thesis §6.4.1."""
    with pytest.raises(ValueError, match="needs check_quorum"):
        small_config(read_mode="lease", check_quorum=False)


def test_with_leases_a_restarted_node_refuses_votes_for_an_election_timeout() -> None:
    """With leases a node that just started refuses votes for an election
    timeout, as if it had heard a leader just before its crash: its vote must
    not elect a second leader while the old one's lease runs. Reference:
    thesis §4.2.3, §6.4.1."""
    net, ld, (f1, f2) = _lease_elected()
    net.crash(f1)
    net.restart(f1)
    c = net.core(f2)
    sent = len(net.sent)
    net.step(f1, rv(f2, f1, net.term(ld) + 1, (c.log.last_index(), c.log.last_term())))
    assert not [m for m in net.sent[sent:] if isinstance(m, RequestVoteResponse)]
    ignored = [kw for name, kw in net.nodes[f1].events if name == "vote_ignored"]
    assert ignored and ignored[-1]["candidate"] == f2


def test_lease_runs_out_by_the_callers_clock_not_by_the_ticks_delivered() -> None:
    """A leader whose process stalled (its caller delivers a few catch-up
    ticks only) holds no lease once the caller's clock says the lease time
    passed. Reference: thesis §6.4.1 (bounded clock drift)."""
    net, ld, _ = _lease_elected()
    core = net.core(ld)
    core.observe_clock(core._ticks + E)
    core.read_index(b"r1")
    net.process(ld)
    assert net.nodes[ld].reads_served == []
    net.stabilize()
    assert [r.ctx for r in net.nodes[ld].reads_served] == [b"r1"]
