"""The proposer and the leader of `PaxosCore`, rule by rule: phase 1 and the
value it must propose (Paxos Made Simple §2.2, P2c), the distinguished
proposer and duelling ones (§2.4), ballots that are never reused (§2.5),
and Multi-Paxos: phase 1 once for every open slot, gaps filled with
no-ops, phase 2 slot by slot (§3); reads, hand-over and decrees."""

from __future__ import annotations

import pytest

from node.errors import ConfChangeRefused, NotLeader
from node.paxos.ballot import make_ballot, round_of
from node.paxos.core import PaxosCore
from node.paxos.messages import (
    Accept,
    Accepted,
    Heartbeat,
    HeartbeatAck,
    Preempted,
    Prepare,
    PrePrepare,
    PrePromise,
    Promise,
)
from node.raft.base import Role
from node.raft.messages import ConfChange, Entry, EntryKind, Hup
from node.raft.ready import may_send_early
from node.storage import MemoryStorage
from tests.paxos_net import E, PaxosNet, drain, lone


def campaign(c: PaxosCore) -> int:
    """Start phase 1 at `c` and return its ballot."""
    c.step(Hup())
    drain(c)
    return c.ballot


def promise(c: PaxosCore, src: str, ballot: int, entries: list[Entry], commit: int = 0,
            first_slot: int = 1) -> None:
    """An acceptor's whole answer to `c`'s prepare."""
    upto = max([e.index for e in entries], default=0)
    c.step(Promise(term=ballot, src=src, dst=c.id, from_slot=c.log.commit + 1, upto=upto,
                   commit=commit, first_slot=first_slot, entries=entries, complete=True))


# --- phase 1 (§2.2, §2.5) ------------------------------------------------------------


def test_phase_one_asks_every_acceptor_with_a_ballot_above_every_one_heard() -> None:
    """A proposer's ballot has a round above every one it has heard of, and
    its own acceptor promises it first: the Prepares leave after that
    promise is on disk (§2.5)."""
    c = lone("n1")
    c.step(Prepare(term=make_ballot(7, 2), src="n2", dst="n1", from_slot=1))
    drain(c)
    c.step(Hup())
    rd = drain(c)
    assert c.role is Role.CANDIDATE and round_of(c.ballot) == 8
    assert rd.hard_state is not None and rd.hard_state.term == c.ballot and rd.must_sync()
    assert sorted(m.dst for m in rd.messages if isinstance(m, Prepare)) == ["n2", "n3"]
    assert not any(may_send_early(m) for m in rd.messages)


def test_a_restarted_proposer_never_reuses_a_ballot() -> None:
    """Its promise of its own ballot is on its disk, so after a restart its
    next ballot is higher: two proposals in one ballot would break P2c."""
    disk = MemoryStorage()
    c = lone("n1", storage=disk)
    c.step(Hup())
    rd = drain(c)
    assert rd.hard_state is not None
    disk.set_hard_state(rd.hard_state)
    first = c.ballot
    again = lone("n1", storage=disk)
    again.step(Hup())
    assert again.ballot > first


def test_the_leader_proposes_the_value_of_the_highest_ballot_reported() -> None:
    """P2c: of the values a majority's promises report for a slot, the new
    leader proposes the one accepted in the highest ballot, here again in
    its own ballot. Reference: §2.2."""
    c = lone("n1", n=5)
    b = campaign(c)
    promise(c, "n2", b, [Entry(make_ballot(1, 2), 1, data=b"old")])
    promise(c, "n3", b, [Entry(make_ballot(2, 3), 1, data=b"new")])
    assert c.role is Role.LEADER
    assert [(e.index, e.term, e.data) for e in c.log.entries] == [(1, b, b"new")]


def test_a_new_leader_fills_the_gaps_with_noops() -> None:
    """Slots below one a promise reports, for which no acceptor of the
    majority has a value, get a no-op, so that the slots after them can be
    applied. Reference: §3."""
    c = lone("n1")
    b = campaign(c)
    promise(c, "n2", b, [Entry(make_ballot(1, 2), 3, data=b"third")])
    assert [(e.index, e.kind, e.data) for e in c.log.entries] == [
        (1, EntryKind.NOOP, b""), (2, EntryKind.NOOP, b""), (3, EntryKind.NORMAL, b"third")]
    ev = dict(drain(c).events)["became_leader"]
    assert (ev["reproposed"], ev["noops"], ev["votes"]) == (1, 2, ["n1", "n2"])


def test_a_new_leader_learns_what_a_promise_shows_chosen() -> None:
    """A promise's slots up to its acceptor's known-chosen prefix hold the
    chosen values: the new leader learns them as chosen, and proposes only
    after them."""
    c = lone("n1")
    b = campaign(c)
    old = make_ballot(1, 2)
    promise(c, "n2", b, [Entry(old, 1, data=b"a"), Entry(old, 2, data=b"b"),
                         Entry(old, 3, data=b"c")], commit=2)
    assert c.log.commit == 2
    assert [(e.index, e.term) for e in c.log.entries] == [(1, old), (2, old), (3, b)]


def test_a_candidate_behind_an_acceptors_snapshot_gives_up() -> None:
    """Chosen slots it does not know exist only in an acceptor's snapshot:
    the candidate cannot lead without them, and steps back."""
    c = lone("n1")
    b = campaign(c)
    promise(c, "n2", b, [], commit=9, first_slot=10)
    assert c.role is Role.FOLLOWER
    assert "campaign_abandoned" in dict(drain(c).events)


def test_a_preempted_proposer_backs_off_longer_each_time() -> None:
    """Duelling proposers settle (§2.4): each campaign that ends without a
    leader doubles the random part of the next timeout (up to 8 times)."""
    tops = []
    for tries in (0, 1, 3):
        worst = 0
        for seed in range(40):
            c = lone("n1", seed=seed)
            for _ in range(tries):
                c.step(Hup())
                c.step(Preempted(term=c.ballot + 1000, src="n2", dst="n1", ballot=c.ballot))
            worst = max(worst, c.randomized_timeout)
        tops.append(worst)
    assert tops[0] < 2 * E <= tops[1] < 3 * E <= tops[2] < 9 * E


# --- before phase 1 (Raft's PreVote, thesis §9.6) ------------------------------------


def test_a_node_cut_off_alone_raises_no_ballot_and_deposes_no_leader() -> None:
    """A follower cut off from the leader asks first whether a majority would
    promise; nobody answers, so it never promises a new ballot, and when it
    is back the leader keeps its ballot and it follows again."""
    net = PaxosNet(3)
    net.elect("n1")
    b = net.cores["n1"].ballot
    before = net.cores["n3"].promised
    net.isolate("n3")
    net.run(10 * E)
    cut_off = net.cores["n3"].role
    assert cut_off is Role.PRE_CANDIDATE
    assert net.cores["n3"].promised == before and "prepare_sent" not in net.names("n3")
    assert "pre_prepare_sent" in net.names("n3")
    net.heal()
    net.run(3 * E)
    assert net.leader() == "n1" and net.cores["n1"].ballot == b
    assert net.cores["n3"].role is Role.FOLLOWER and net.cores["n3"].leader == "n1"


def test_a_node_that_hears_the_leader_would_not_promise() -> None:
    """A follower that heard the leader within an election timeout answers
    a pre-prepare with no; once the leader is silent that long, with yes."""
    c = lone("n2")
    c.step(Heartbeat(term=make_ballot(1, 1), src="n1", dst="n2", commit=0))
    drain(c)
    promised = c.promised
    ask = PrePrepare(term=make_ballot(2, 3), src="n3", dst="n2")
    c.step(ask)
    no = [m for m in drain(c).messages if isinstance(m, PrePromise)]
    assert len(no) == 1 and not no[0].granted
    for _ in range(E):
        c.tick()
    drain(c)
    c.step(ask)
    yes = [m for m in drain(c).messages if isinstance(m, PrePromise)]
    assert len(yes) == 1 and yes[0].granted
    assert c.promised == promised, "a pre-prepare promises nothing"


def test_a_silent_leader_is_replaced_after_a_majority_would_promise() -> None:
    """The leader gone, a follower's timeout leads to a pre-prepare a
    majority grants, then to phase 1 and a new leader."""
    net = PaxosNet(3)
    net.elect("n1")
    net.isolate("n1")
    net.run(6 * E, only=["n2", "n3"])
    new = net.leader()
    assert new in ("n2", "n3"), [c.role for c in net.cores.values()]
    names = net.names(new)
    assert names.index("pre_prepare_sent") < names.index("prepare_sent") < \
        names.index("became_leader")


# --- phase 2 (§2.2, §3) ------------------------------------------------------------------


def test_a_value_is_chosen_by_a_majority_of_its_ballot_and_applied_everywhere() -> None:
    """The leader proposes in the next free slot; once a majority accepted it
    in its ballot it is chosen, and every node applies the slots in order."""
    net = PaxosNet(3)
    net.elect("n1")
    for v in (b"a", b"b", b"c"):
        net.cores["n1"].propose(v)
        net.handle("n1")
        net.deliver()
    net.run(2)
    for nid in net.ids:
        assert net.applied[nid] == [(1, b"a"), (2, b"b"), (3, b"c")], nid


def test_the_leader_counts_itself_only_for_slots_on_its_disk() -> None:
    """Its Accepts may leave before its own persist (they promise nothing of
    its disk); an acceptor's answer alone is then no majority of three."""
    c = lone("n1")
    b = campaign(c)
    promise(c, "n2", b, [])
    drain(c)
    c.propose(b"x")
    rd = c.ready()
    assert [m for m in rd.messages if isinstance(m, Accept)] and \
        all(may_send_early(m) for m in rd.messages)
    c.step(Accepted(term=b, src="n2", dst="n1", lo=1, hi=1, commit=0))
    assert c.log.commit == 0
    c.advance(rd)
    assert c.log.commit == 1


def test_a_lagging_acceptor_gets_the_chosen_values_it_lacks() -> None:
    """An acceptor that missed slots is sent them again, in the leader's
    ballot (their value is the chosen one, P2c), and learns them."""
    net = PaxosNet(3)
    net.elect("n1")
    net.isolate("n3")
    for v in (b"a", b"b"):
        net.cores["n1"].propose(v)
        net.handle("n1")
        net.deliver()
    net.heal()
    net.run(4)
    assert net.applied["n3"] == [(1, b"a"), (2, b"b")]


def test_an_idle_leader_resends_what_a_replicating_acceptor_lost() -> None:
    """An acceptor that took this ballot's Accepts before, then lost some
    while cut off, is sent the chosen values again once its heartbeat
    answer shows it lacks them, with no new proposal to prompt it."""
    net = PaxosNet(3)
    net.elect("n1")
    net.cores["n1"].propose(b"a")
    net.handle("n1")
    net.deliver()
    net.isolate("n3")
    for v in (b"b", b"c"):
        net.cores["n1"].propose(v)
        net.handle("n1")
        net.deliver()
    net.heal()
    net.run(12)
    assert net.applied["n3"] == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_a_new_leader_sends_an_idle_acceptor_the_slots_it_missed() -> None:
    """An acceptor cut off while slots were chosen, and while another node
    took over, gets those slots from the new leader once it is back, with
    no new proposal to prompt it."""
    net = PaxosNet(3)
    net.elect("n1")
    net.cores["n1"].propose(b"a")
    net.handle("n1")
    net.deliver()
    net.isolate("n3")
    for v in (b"b", b"c"):
        net.cores["n1"].propose(v)
        net.handle("n1")
        net.deliver()
    net.elect("n2")
    net.heal()
    net.run(12)
    assert net.leader() == "n2"
    assert net.applied["n3"] == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_a_higher_ballot_preempts_the_leader() -> None:
    """A leader that learns of a higher ballot (here, an acceptor's refusal)
    stops leading: it can get nothing accepted any more (PMMC)."""
    c = lone("n1")
    b = campaign(c)
    promise(c, "n2", b, [])
    drain(c)
    c.step(Preempted(term=b + 1000, src="n2", dst="n1", ballot=b))
    names = [name for name, _ in drain(c).events]
    assert c.role is Role.FOLLOWER and names[:2] == ["preempted", "stepped_down"]
    with pytest.raises(NotLeader):
        c.propose(b"late")


# --- reads (ReadIndex) ------------------------------------------------------------------


def test_a_read_waits_for_the_reproposed_slots_then_a_majority() -> None:
    """A new leader answers a read only once the open slots it re-proposed
    are chosen (a write another leader acknowledged may be among them) and
    a majority confirmed its ballot after the read arrived."""
    c = lone("n1")
    b = campaign(c)
    promise(c, "n2", b, [Entry(make_ballot(1, 2), 1, data=b"w")])
    drain(c)
    c.read_index(b"r")
    rd = drain(c)
    assert rd.read_states == [] and not [m for m in rd.messages if isinstance(m, Heartbeat)]
    c.step(Accepted(term=b, src="n2", dst="n1", lo=1, hi=1, commit=0))
    rd = drain(c)
    beats = [m for m in rd.messages if isinstance(m, Heartbeat)]
    assert c.log.commit == 1 and beats and rd.read_states == []
    c.step(HeartbeatAck(term=b, src="n2", dst="n1", seq=beats[0].seq, commit=1))
    (rs,) = drain(c).read_states
    assert (rs.ctx, rs.index) == (b"r", 1)


def test_a_deposed_leader_answers_no_read() -> None:
    """A leader cut off while another won a higher ballot gets no majority to
    confirm its own: the read never comes out; once it learns of the other
    ballot the read is dropped (the client asks the new leader)."""
    net = PaxosNet(3)
    net.elect("n1")
    net.isolate("n1")
    net.elect("n2")
    old = net.cores["n1"]
    old.read_index(b"stale")
    net.handle("n1")
    net.run(3, only=["n1"])
    assert net.leader() == "n2" and old.role is Role.LEADER and net.reads == []
    net.heal()
    net.run(2)
    assert net.leader() == "n2" and "stepped_down" in net.names("n1")
    assert net.reads == [("n1", b"stale", None)]


# --- membership, hand-over, decrees ---------------------------------------------------------


def test_membership_is_fixed() -> None:
    """A Paxos cluster keeps the members it was created with."""
    c = lone("n1")
    with pytest.raises(ConfChangeRefused) as e:
        c.propose_conf_change(ConfChange())
    assert e.value.code == "not_supported"


def test_hand_over_asks_the_target_to_run_phase_one_now() -> None:
    """Any node may lead after phase 1 (it learns the rest there): the leader
    asks the target, which campaigns at once with a higher ballot and wins."""
    net = PaxosNet(3)
    net.elect("n1")
    net.cores["n1"].transfer_leader("n3")
    net.handle("n1")
    net.deliver()
    assert net.leader() == "n3" and net.cores["n1"].role is Role.FOLLOWER
    assert net.names("n1")[-5:] == ["transfer_started", "leadership_transferred", "preempted",
                                    "stepped_down", "promised"]
    assert "timeout_now_received" in net.names("n3")


def test_a_decree_runs_both_phases_and_every_node_logs_its_part() -> None:
    """One instance of the Synod protocol (§2): phase 1 with a fresh ballot,
    the decree proposed in the next free slot, accepted by the acceptors,
    and learned chosen by every node; the state machine skips it."""
    net = PaxosNet(3)
    net.elect("n1")
    ballot = net.cores["n2"].decree(b"hello")
    net.handle("n2")
    net.deliver()
    net.run(2)
    ev = [(n, name) for n, name, kw in net.events if kw.get("ballot") ==
          net.cores["n2"].describe(ballot) or name in ("preempted",)]
    assert ("n2", "prepare_sent") in ev and ("n2", "became_leader") in ev
    assert {n for n, name in ev if name == "promised"} == {"n1", "n3"}
    assert ("n2", "accept_sent") in ev
    assert {n for n, name in ev if name == "accepted"} == {"n1", "n3"}
    assert {n for n, name in ev if name == "chosen"} == {"n1", "n2", "n3"}
    slot = next(kw["slot"] for _, name, kw in net.events if name == "accept_sent")
    for nid in net.ids:
        assert (slot, b"hello") in net.applied[nid]
        e = net.cores[nid].log.at(slot)
        assert e is not None and e.kind is EntryKind.NOOP


def test_a_batch_of_proposals_fills_the_next_slots_up_to_the_uncommitted_limit() -> None:
    """`propose_many` puts a batch in consecutive free slots, as far as the
    bound on bytes not yet chosen allows; the rest is refused with the
    reason, and once chosen the batch is applied in order everywhere."""
    cmd = b"x" * 100
    net = PaxosNet(3, config={"max_uncommitted_bytes": 3 * (len(cmd) + 16)})
    net.elect("n1")
    lead = net.cores["n1"]
    last = lead.log.last_index()
    batch = [bytes([c]) * len(cmd) for c in b"abcde"]
    taken, why = lead.propose_many(batch)
    assert taken == 3 and lead.log.last_index() == last + 3
    assert why is not None and "overloaded" in why
    assert lead.counters.proposals_refused == 2
    with pytest.raises(NotLeader):
        net.cores["n2"].propose_many([cmd])
    net.run(E)
    for nid in net.ids:
        assert [(i, d) for i, d in net.applied[nid] if d in batch] == \
            [(last + 1 + k, batch[k]) for k in range(3)], nid


def test_every_change_of_role_leader_or_ballot_is_reported() -> None:
    """A proposer whose acceptors never answer campaigns again and again:
    after every Ready, the soft state it reported last is what it is now,
    and nothing is left unreported."""
    c = lone()
    seen: list[tuple[str, str | None, int]] = []
    for _ in range(300):
        c.tick()
        while c.has_ready():
            rd = drain(c)
            if rd.soft_state is not None:
                s = rd.soft_state
                seen.append((s.role, s.leader, s.term))
        assert not c.has_ready()
        assert (seen or [("follower", None, 0)])[-1] == (c.role.value, c.leader, c.promised)
    # follower -> pre-candidate: the role alone changes (same ballot, no leader).
    assert ("pre_candidate", None, 0) in seen, seen


def test_a_new_commit_index_alone_is_written_in_the_next_ready() -> None:
    """A commit that moves with nothing else changing still makes a Ready
    whose hard state carries it (written, not synced: node/raft/ready.py)."""
    c = lone("n1")
    b = campaign(c)
    promise(c, "n2", b, [])
    drain(c)
    c.propose(b"x")
    drain(c)
    assert c.log.commit == 0 and not c.has_ready()
    c.step(Accepted(term=b, src="n2", dst="n1", lo=1, hi=1, commit=0))
    assert c.log.commit == 1 and c.has_ready()
    rd = drain(c)
    assert rd.hard_state is not None and rd.hard_state.commit == 1
    assert not rd.term_or_vote_changed
