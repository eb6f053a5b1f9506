"""The acceptor and the learner of `PaxosCore`, rule by rule: Paxos Made
Simple §2.2 (P1a: promise, accept, refuse), §2.3 (learning a chosen value),
§2.5 (what an acceptor must remember across a restart, and ballots from
disjoint sets), and the slots as they ride on storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.paxos.ballot import Ranks, make_ballot, rank_of, round_of
from node.paxos.messages import (
    Accept,
    Accepted,
    Heartbeat,
    HeartbeatAck,
    Preempted,
    Prepare,
    Promise,
)
from node.paxos.slots import is_hole
from node.raft.messages import EntryKind, InstallSnapshot, SnapshotMeta
from node.raft.ready import may_send_early
from node.storage import FileStorage, MemoryStorage
from tests.paxos_net import drain, ents, lone

B1 = make_ballot(1, 1)  # round 1 of n1
B2 = make_ballot(2, 3)  # round 2 of n3


def prepare(ballot: int, src: str = "n1", dst: str = "n2", from_slot: int = 1) -> Prepare:
    return Prepare(term=ballot, src=src, dst=dst, from_slot=from_slot)


def accept(ballot: int, *data: bytes, start: int = 1, src: str = "n1", dst: str = "n2",
           commit: int = 0) -> Accept:
    return Accept(term=ballot, src=src, dst=dst, entries=ents(ballot, *data, start=start),
                  commit=commit)


# --- ballots (§2.5) ------------------------------------------------------------------


def test_ballots_of_two_nodes_never_collide_and_order_by_round_then_node() -> None:
    """Each proposer draws ballots from a set of its own (§2.5): round and
    rank are one number, a later round always wins, and a tie goes to the
    higher rank; a ballot reads back as round.node."""
    ranks = Ranks(["n1", "n2", "n3"])
    mine = {make_ballot(r, ranks.rank("n1")) for r in range(1, 50)}
    theirs = {make_ballot(r, ranks.rank("n2")) for r in range(1, 50)}
    assert not mine & theirs
    assert make_ballot(3, 1) > make_ballot(2, 3) > make_ballot(2, 2)
    b = make_ballot(5, ranks.rank("n2"))
    assert (round_of(b), rank_of(b), ranks.describe(b), ranks.describe(0)) == (5, 2, "5.n2", "0")
    with pytest.raises(ValueError, match="not a member"):
        ranks.rank("n9")


# --- phase 1 (§2.2) -------------------------------------------------------------------


def test_promise_is_on_disk_before_the_answer_leaves() -> None:
    """An acceptor that promises a higher ballot records it (the hard state's
    term) in the same Ready whose persist must sync before its Promise is
    sent, which is not one of the messages that may leave early (§2.5)."""
    c = lone("n2")
    c.step(prepare(B1))
    rd = drain(c)
    assert rd.hard_state is not None and rd.hard_state.term == B1 and rd.hard_state.vote is None
    assert rd.must_sync()
    (p,) = rd.messages
    assert isinstance(p, Promise) and (p.term, p.dst, p.complete) == (B1, "n1", True)
    assert not may_send_early(p)
    assert c.term == B1


def test_prepare_below_the_promise_is_refused_naming_the_higher_ballot() -> None:
    """P1a: after promising B2 an acceptor refuses B1 < B2 and says which
    ballot beat it; its promise stays. Reference: §2.2."""
    c = lone("n2")
    c.step(prepare(B2, src="n3"))
    drain(c)
    c.step(prepare(B1))
    rd = drain(c)
    assert rd.hard_state is None
    assert rd.messages == [Preempted(term=B2, src="n2", dst="n1", ballot=B1)]


def test_promise_reports_each_accepted_value_with_its_ballot() -> None:
    """The answer to a prepare holds every value accepted from its slot on,
    each with the ballot it was accepted in, and the known-chosen prefix:
    what the proposer needs to pick a value (§2.2)."""
    c = lone("n2")
    c.step(accept(B1, b"a", b"b", commit=1))
    drain(c)
    c.step(prepare(B2, src="n3", from_slot=1))
    (p,) = drain(c).messages
    assert isinstance(p, Promise)
    assert [(e.index, e.term, e.data) for e in p.entries] == [(1, B1, b"a"), (2, B1, b"b")]
    assert (p.commit, p.upto, p.complete) == (1, 2, True)


def test_a_long_answer_comes_in_pieces() -> None:
    """More accepted values than one message holds: the answer says where it
    stopped and that it is not complete, and the next prepare of the same
    ballot asks from there."""
    c = lone("n2", max_append_entries=1, max_inflight_appends=2)
    c.step(accept(B1, b"a", b"b", b"c"))
    drain(c)
    c.step(prepare(B2, src="n3"))
    (first,) = drain(c).messages
    assert isinstance(first, Promise) and (first.upto, first.complete) == (2, False)
    c.step(prepare(B2, src="n3", from_slot=3))
    (rest,) = drain(c).messages
    assert isinstance(rest, Promise) and (rest.upto, rest.complete) == (3, True)
    assert [e.data for e in (*first.entries, *rest.entries)] == [b"a", b"b", b"c"]


# --- phase 2 (§2.2) -------------------------------------------------------------------


def test_accept_below_the_promise_is_refused() -> None:
    """P1a: an acceptor accepts no ballot below one it promised."""
    c = lone("n2")
    c.step(prepare(B2, src="n3"))
    drain(c)
    c.step(accept(B1, b"late"))
    rd = drain(c)
    assert rd.entries == [] and c.log.last_index() == 0
    assert rd.messages == [Preempted(term=B2, src="n2", dst="n1", ballot=B1)]


def test_accepted_value_is_on_disk_before_the_answer_leaves() -> None:
    """The value accepted is among the Ready's entries, whose term is the
    ballot; the Accepted answer is not sent early (§2.5)."""
    c = lone("n2")
    c.step(accept(B1, b"x"))
    rd = drain(c)
    assert [(e.index, e.term, e.data) for e in rd.entries] == [(1, B1, b"x")]
    assert rd.must_sync() and rd.hard_state is not None and rd.hard_state.term == B1
    (a,) = rd.messages
    assert isinstance(a, Accepted) and (a.lo, a.hi, a.refused) == (1, 1, False)
    assert not may_send_early(a)


def test_a_higher_ballot_overwrites_one_slot_and_keeps_the_later_ones() -> None:
    """Unlike a Raft log, slots are independent: a value accepted in a higher
    ballot replaces one slot, and the acceptor keeps what it accepted after
    it; storage is handed that slot and everything after it to rewrite."""
    c = lone("n2")
    c.step(accept(B1, b"a", b"b", b"c"))
    drain(c)
    c.step(accept(B2, b"B", start=2, src="n3"))
    rd = drain(c)
    assert [(e.index, e.term, e.data) for e in c.log.entries] == [
        (1, B1, b"a"), (2, B2, b"B"), (3, B1, b"c")]
    assert [e.index for e in rd.entries] == [2, 3]


def test_a_slot_past_the_end_is_accepted_and_leaves_holes() -> None:
    """An acceptor takes a slot beyond its last (a lost message before it):
    the slots between hold nothing (term 0) until their values come."""
    c = lone("n2")
    c.step(accept(B1, b"c", start=3))
    (a,) = drain(c).messages
    assert isinstance(a, Accepted) and (a.lo, a.hi) == (3, 3)
    assert [is_hole(e) for e in c.log.entries] == [True, True, False]
    c.step(accept(B1, b"a", start=1))
    drain(c)
    assert [e.data for e in c.log.entries] == [b"a", b"", b"c"]


def test_a_slot_far_past_the_end_is_refused_with_where_the_log_ends() -> None:
    """Beyond a leader's whole pipeline, the acceptor takes nothing and says
    where its slots end, so the leader starts again from what it knows."""
    c = lone("n2", max_append_entries=2, max_inflight_appends=2)
    c.step(accept(B1, b"far", start=6))
    (a,) = drain(c).messages
    assert isinstance(a, Accepted) and a.refused and a.last == 0
    assert c.log.last_index() == 0


# --- learning (§2.3) -----------------------------------------------------------------


def test_a_slot_is_known_chosen_only_where_the_leaders_ballot_was_accepted() -> None:
    """A leader says slots up to 2 are chosen in its ballot: slot 1, which
    this acceptor accepted in that ballot, holds the chosen value; slot 2,
    accepted in an older ballot, may not, so the known prefix stops."""
    c = lone("n2")
    c.step(accept(B1, b"a", b"b"))
    drain(c)
    c.step(accept(B2, b"A", src="n3"))
    drain(c)
    c.step(Heartbeat(term=B2, src="n3", dst="n2", commit=2))
    rd = drain(c)
    assert c.log.commit == 1
    assert rd.messages == [HeartbeatAck(term=B2, src="n2", dst="n3", seq=0, commit=1)]
    assert [e.data for e in rd.committed_entries] == [b"A"]


def test_a_known_chosen_slot_never_changes() -> None:
    """Once known chosen, a slot keeps its value: a later Accept for it
    (which can only carry the same value, P2c) changes nothing."""
    c = lone("n2")
    c.step(accept(B1, b"a", commit=1))
    drain(c)
    c.step(accept(B2, b"a", src="n3"))
    rd = drain(c)
    assert rd.entries == [] and c.log.entries[0].term == B1


def test_a_snapshot_keeps_the_accepted_slots_after_it_and_raises_the_promise() -> None:
    """A leader's snapshot replaces the chosen slots up to its index; the
    values accepted after it stay (an acceptor must not forget them), are
    written again after the snapshot, and the node promises the leader's
    ballot, which chose what it now knows."""
    c = lone("n2")
    c.step(accept(B1, b"a", b"b", b"c", b"d", b"e"))
    drain(c)
    meta = SnapshotMeta(3, B1)
    c.step(InstallSnapshot(term=B2, src="n3", dst="n2", meta=meta, offset=0, data=b"img",
                           done=True))
    rd = drain(c)
    assert rd.snapshot is not None and rd.snapshot.meta == meta
    assert [e.index for e in rd.entries] == [4, 5] and [e.data for e in rd.entries] == [b"d", b"e"]
    assert c.promised == B2 and c.log.commit == 3
    (a,) = rd.messages
    assert isinstance(a, Accepted) and a.commit == 3


# --- what survives a restart (§2.5) -------------------------------------------------------


@pytest.mark.parametrize("disk", ["memory", "file"])
def test_promise_and_accepted_values_survive_a_restart(disk: str, tmp_path: Path) -> None:
    """An acceptor restarted from its disk has its promise and every value
    it accepted, holes and overwritten slots included, in either storage."""
    store = MemoryStorage() if disk == "memory" else FileStorage(tmp_path / "d")
    c = lone("n2", storage=store)
    for m in (accept(B1, b"a", b"b", b"c"), accept(B1, b"f", start=6),
              accept(B2, b"B", start=2, src="n3"), prepare(make_ballot(3, 1))):
        c.step(m)
        rd = drain(c)
        if rd.entries:
            store.append(rd.entries)
        if rd.hard_state is not None:
            store.set_hard_state(rd.hard_state)
        store.sync()
    before = (c.promised, list(c.log.entries))
    if isinstance(store, FileStorage):
        store.close()
        store = FileStorage(tmp_path / "d")
    again = lone("n2", storage=store)
    assert (again.promised, list(again.log.entries)) == before
    assert [e.term for e in again.log.entries] == [B1, B2, B1, 0, 0, B1]
    assert again.log.entries[3].kind is EntryKind.NOOP
