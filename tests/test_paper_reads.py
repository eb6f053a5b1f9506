"""Protocol tests of `RaftCore` after etcd's raft_paper_test.go: ReadIndex
(thesis §6.4), leadership transfer (thesis §3.10), overload control,
compaction and InstallSnapshot (§7), and recovery from storage. Each test
names its rule and source."""

from __future__ import annotations

import pytest

from node.errors import NotLeader, ProposalDropped
from node.raft.core import Role
from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Beat,
    Heartbeat,
    HeartbeatResponse,
    Hup,
    InstallSnapshot,
    PeerMessage,
    TimeoutNow,
)
from tests.harness import Network, small_config
from tests.paper import E, elected

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


def test_read_on_follower_is_refused_with_leader_hint_when_follower_reads_are_off() -> None:
    """With follower reads off only the leader serves ReadIndex; a follower
    names the leader. Reference: thesis §6.4."""
    net = elected(Network(3, small_config(follower_reads=False)))
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


def test_a_batch_of_proposals_takes_the_prefix_that_fits_under_the_limit() -> None:
    """`propose_many` appends a batch in order, as far as the bound on
    uncommitted bytes allows: the prefix that fits is in the log at
    consecutive indexes, the rest is refused with the reason and counted,
    and a follower refuses the whole batch (not its leader)."""
    cmd = b"x" * 100
    net = elected(Network(3, config=small_config(max_uncommitted_bytes=3 * (len(cmd) + 16))))
    leader = net.core("n1")
    net.isolate("n2")
    net.isolate("n3")
    last = leader.log.last_index()
    batch = [bytes([c]) * len(cmd) for c in b"abcde"]
    taken, why = leader.propose_many(batch)
    assert taken == 3 and leader.log.last_index() == last + 3
    assert why is not None and "overloaded" in why
    assert [e.data for e in leader.log.slice(last + 1, last + 4, 1 << 30, 10)] == batch[:3]
    assert leader.log.last_index() == last + 3
    assert leader.counters.proposals_refused == 2
    assert leader.uncommitted_bytes == 3 * (len(cmd) + 16)
    with pytest.raises(NotLeader):
        net.core("n2").propose_many([cmd])
    net.recover()
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
    # The stream is the image and the configuration in force at its end.
    image = len(net.nodes["n1"].storage.snapshot().data)
    mark = len(net.sent)
    net.recover()
    net.run(3)
    chunks = [m for m in net.sent[mark:] if isinstance(m, InstallSnapshot)]
    size = chunks[0].size
    assert image < size < image + 64
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


def test_lagging_follower_is_sent_entries_evicted_from_the_leaders_memory() -> None:
    """A leader holds only its newest applied entries in memory
    (log_cache_entries); a follower behind them is sent the older ones as
    appends read back from storage, not a snapshot, and every term is still
    known for the consistency check. Reference: §5.3."""
    net = elected(Network(3, small_config(log_cache_entries=2)))
    net.isolate("n3")
    for k in range(20):
        net.propose("n1", b"value-%02d" % k)
    net.stabilize()
    lead = net.core("n1").log
    dropped = net.core("n1").evict_log()
    assert len(dropped) >= 18 and len(lead.entries) <= 3, (len(dropped), len(lead.entries))
    assert lead.term(2) == lead.term(lead.last_index()), "evicted terms are kept"
    mark = len(net.sent)
    net.recover()
    net.settle()
    assert not [m for m in net.sent[mark:] if isinstance(m, InstallSnapshot)]
    assert net.applied("n3") == net.applied("n1") == [b"value-%02d" % k for k in range(20)]
