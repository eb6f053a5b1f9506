"""Protocol tests of `RaftCore` after etcd's raft_paper_test.go: log
replication (§5.3) with its flow control, and committing entries of earlier
terms (§5.4.2, Figure 8). Each test names its rule and source."""

from __future__ import annotations

import pytest

from node.raft.core import Role
from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Hup,
)
from tests.harness import Network, fmt_msg, seeded_storage, small_config
from tests.paper import ae, drain, elected, ents, make_leader, new_core, of_type, terms_of

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
