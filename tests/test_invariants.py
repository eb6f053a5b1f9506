"""The Raft invariant checks: each fires on hand-made states that break its
property and stays quiet on legal ones; and each catches a bug planted in the
core (monkeypatched) when the simulator runs it."""

from __future__ import annotations

import pytest

from chaos.invariants import (
    ACKNOWLEDGED_DURABLE,
    APPLIED_STATE,
    COMMIT_MONOTONIC,
    ELECTION_SAFETY,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LINEARIZABILITY,
    LOG_MATCHING,
    QUORUM,
    REVISIONS,
    STATE_MACHINE_SAFETY,
    TERM_MONOTONIC,
    NodeState,
    NodeSummary,
    RaftInvariants,
    RevisionView,
    Violation,
)
from chaos.sim import Simulation
from chaos.sim_nemesis import FAULT_KINDS
from node.config import CoreConfig
from node.raft.core import RaftCore
from node.raft.log import RaftLog
from node.raft.messages import Entry, RequestVote


def log(*terms: int, start: int = 1, data: bytes = b"") -> list[Entry]:
    """Entries start, start+1, ... with the given terms."""
    return [Entry(t, start + i, data=data) for i, t in enumerate(terms)]


def state(node: str, term: int, entries: list[Entry], role: str = "follower", commit: int = 0,
          applied: int = 0, snap: tuple[int, int] = (0, 0)) -> NodeState:
    return NodeState(node, term, role, commit, applied, snap[0], snap[1], entries)


def props(found: list[Violation]) -> set[str]:
    return {v.check for v in found}


# --- the checks on hand-made states --------------------------------------------


def test_two_leaders_of_one_term_break_election_safety() -> None:
    """A second node leading a term that already has a leader is reported."""
    inv = RaftInvariants()
    assert inv.observe(1, state("a", 2, log(1, 2), "leader")) == []
    found = inv.observe(5, state("b", 2, log(1, 2), "leader"))
    assert props(found) == {ELECTION_SAFETY}
    assert found[0].tick == 5 and "a" in found[0].detail and "b" in found[0].detail


def test_leaders_of_different_terms_are_fine() -> None:
    """One leader per term, over the whole run, is the rule; new terms may differ."""
    inv = RaftInvariants()
    assert inv.observe(1, state("a", 2, log(1, 2), "leader")) == []
    assert inv.observe(2, state("a", 2, log(1, 2, 2), "leader")) == []
    assert inv.observe(3, state("b", 3, log(1, 2, 3), "leader")) == []


def test_election_safety_remembers_past_terms() -> None:
    """A leader of an old term, long gone, still forbids another leader of that term."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2), "leader"))
    inv.observe(2, state("a", 3, log(1, 2), "follower"))
    assert props(inv.observe(3, state("b", 2, log(1, 2), "leader"))) == {ELECTION_SAFETY}


def test_leader_that_truncates_its_log_breaks_append_only() -> None:
    """A leader dropping its own last entry within its term is reported."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2, 2), "leader"))
    assert props(inv.observe(2, state("a", 2, log(1, 2), "leader"))) == {LEADER_APPEND_ONLY}


def test_leader_that_rewrites_an_entry_breaks_append_only() -> None:
    """A leader replacing an entry in the middle of its log is reported."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 3, log(1, 2, 3), "leader"))
    found = inv.observe(2, state("a", 3, log(1, 3, 3), "leader"))
    assert LEADER_APPEND_ONLY in props(found)


def test_leader_compaction_and_appends_are_fine() -> None:
    """Compacting a prefix into a snapshot and appending are not changes."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2), "leader", commit=2, applied=2))
    assert inv.observe(2, state("a", 2, log(2, 2, start=2), "leader", commit=2, applied=2,
                                snap=(1, 1))) == []


def test_follower_may_drop_uncommitted_entries() -> None:
    """A follower truncating a conflicting, uncommitted suffix is legal (§5.3)."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2, 2), commit=1))
    assert inv.observe(2, state("a", 3, log(1, 3), commit=1)) == []


def test_same_entry_with_different_history_breaks_log_matching() -> None:
    """Two logs with an equal (index, term) must agree on everything before it."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 3, log(1, 1, 3)))
    found = inv.observe(2, state("b", 3, log(1, 2, 3)))
    assert props(found) == {LOG_MATCHING} and "entry 3 of term 3" in found[0].detail


def test_same_entry_with_different_data_breaks_log_matching() -> None:
    """An (index, term) names one entry: different data there is reported."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 1, log(1, 1, data=b"x")))
    assert props(inv.observe(2, state("b", 1, log(1, 1, data=b"y")))) == {LOG_MATCHING}


def test_log_matching_holds_across_a_snapshot_boundary() -> None:
    """An entry after a snapshot has the snapshot's term before it."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2, 2)))
    assert inv.observe(2, state("b", 2, log(2, start=3), snap=(2, 2))) == []
    found = inv.observe(3, state("c", 2, log(2, start=3), snap=(2, 1)))
    assert props(found) == {LOG_MATCHING}


def test_new_leader_without_a_committed_entry_breaks_completeness() -> None:
    """A leader of a later term must hold every entry committed before (§5.4)."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2), "leader", commit=2))
    found = inv.observe(2, state("b", 3, log(1, 1, 3), "leader"))
    assert LEADER_COMPLETENESS in props(found)
    assert "entry 2 of term 2" in found[0].detail


def test_entry_committed_later_must_be_held_by_current_later_leaders() -> None:
    """An entry committed while a leader of a later term exists must be in its log."""
    inv = RaftInvariants()
    inv.observe(1, state("b", 4, log(1, 3), "leader"))
    found = inv.observe(2, state("a", 2, log(1, 2), "follower", commit=2))
    assert LEADER_COMPLETENESS in props(found)


def test_stale_leader_of_an_earlier_term_need_not_hold_later_commits() -> None:
    """Completeness speaks of the term an entry was committed in: a deposed
    leader of term 3 need not hold an entry of term 2 committed in term 4."""
    inv = RaftInvariants()
    inv.observe(1, state("s", 3, log(1, 3), "leader"))
    assert inv.observe(2, state("n", 4, log(1, 2, 4), "leader", commit=3)) == []


def test_different_entries_applied_at_one_index_break_state_machine_safety() -> None:
    """No two nodes may apply different entries at the same index."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2, data=b"x"), commit=2, applied=2))
    found = inv.observe(2, state("b", 3, log(1, 3, data=b"y"), commit=2, applied=2))
    assert STATE_MACHINE_SAFETY in props(found)


def test_snapshot_disagreeing_with_a_committed_entry_breaks_state_machine_safety() -> None:
    """A snapshot ending at a committed index must carry that entry's term."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2), commit=2, applied=2))
    found = inv.observe(2, state("b", 3, [], commit=2, applied=2, snap=(2, 3)))
    assert props(found) == {STATE_MACHINE_SAFETY}


def test_restarted_node_is_seen_afresh() -> None:
    """After a crash a node may come back with less (unsynced state is gone)."""
    inv = RaftInvariants()
    inv.observe(1, state("a", 2, log(1, 2, 2), "leader", commit=2, applied=2))
    inv.node_down("a")
    assert inv.observe(2, state("a", 2, log(1, 2), commit=1, applied=0)) == []


# --- live runs: status summaries and digests ---------------------------------------


def summ(node: str, term: int, role: str = "follower", commit: int = 0,
         commit_term: int | None = None, last: int | None = None, pid: int = 1,
         durable: bool = True) -> NodeSummary:
    return NodeSummary(node=node, incarnation=pid, term=term, role=role, commit=commit,
                       commit_term=commit_term, last_index=commit if last is None else last,
                       durable=durable)


def test_a_legal_live_history_is_quiet() -> None:
    """Elections, commits, a crash and a restart in a later term raise nothing."""
    inv = RaftInvariants()
    seen = [
        inv.observe_summary(0.1, summ("a", 1, "leader", 5, 1, last=6)),
        inv.observe_summary(0.1, summ("b", 1, "follower", 4, 1)),
        inv.observe_summary(0.2, summ("b", 2, "leader", 7, 2, last=8)),
        inv.observe_summary(0.3, summ("a", 2, "follower", 7, 2, pid=2)),
        inv.observe_summary(0.4, summ("a", 3, "leader", 9, 3, last=9, pid=2)),
        inv.observe_digest(0.5, "a", 9, "d9"), inv.observe_digest(0.6, "b", 9, "d9"),
    ]
    inv.acknowledged(8, "write k=v")
    assert [v for vs in seen for v in vs] == []
    assert inv.converged(1.0, {"a": 9, "b": 9}) == []


def test_two_live_leaders_of_one_term_break_election_safety() -> None:
    """Two nodes reporting leadership of one term, at any times, is reported."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("a", 3, "leader"))
    found = inv.observe_summary(9.0, summ("b", 3, "leader"))
    assert props(found) == {ELECTION_SAFETY} and found[0].t_s == 9.0


def test_a_term_going_back_within_one_process_is_reported() -> None:
    """A live node's term never decreases; a restart that did not lead may."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("a", 5))
    assert props(inv.observe_summary(2.0, summ("a", 4))) == {TERM_MONOTONIC}
    assert inv.observe_summary(3.0, summ("a", 3, pid=2)) == []


def test_a_restart_below_a_term_it_led_is_reported_when_durable() -> None:
    """A term a node won was on its disk: with fsync on, a restart keeps it."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("a", 5, "leader"))
    assert props(inv.observe_summary(2.0, summ("a", 4, pid=2))) == {TERM_MONOTONIC}
    lax = RaftInvariants()
    lax.observe_summary(1.0, summ("a", 5, "leader", durable=False))
    assert lax.observe_summary(2.0, summ("a", 4, pid=2, durable=False)) == []


def test_a_commit_index_going_back_within_one_process_is_reported() -> None:
    """Commit indexes only grow while the process lives (§5.3)."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("a", 2, commit=9, commit_term=2))
    assert props(inv.observe_summary(2.0, summ("a", 2, commit=7, commit_term=2))) \
        == {COMMIT_MONOTONIC}


def test_two_terms_at_one_committed_index_break_state_machine_safety() -> None:
    """Two nodes committing index 7 with different terms have different prefixes."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("a", 3, commit=7, commit_term=2))
    found = inv.observe_summary(2.0, summ("b", 3, commit=7, commit_term=3))
    assert props(found) == {STATE_MACHINE_SAFETY} and "prefixes differ" in found[0].detail


def test_committed_terms_going_down_with_the_index_are_reported() -> None:
    """One committed log: a later index never carries an earlier term."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("a", 4, commit=10, commit_term=4))
    assert props(inv.observe_summary(2.0, summ("b", 4, commit=12, commit_term=3))) \
        == {STATE_MACHINE_SAFETY}
    assert props(inv.observe_summary(3.0, summ("c", 4, commit=8, commit_term=5))) \
        == {STATE_MACHINE_SAFETY}


def test_a_live_leader_lacking_a_commit_of_an_earlier_term_is_reported() -> None:
    """A leader of term 5 whose log ends before an index committed by term 4
    breaks Leader Completeness, whichever was seen first."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("a", 4, commit=20, commit_term=4))
    assert props(inv.observe_summary(2.0, summ("b", 5, "leader", 15, 4, last=18))) \
        == {LEADER_COMPLETENESS}
    other = RaftInvariants()
    other.observe_summary(1.0, summ("b", 5, "leader", 15, 4, last=18))
    assert props(other.observe_summary(2.0, summ("a", 4, commit=20, commit_term=4))) \
        == {LEADER_COMPLETENESS}


def test_a_deposed_leader_need_not_hold_later_commits() -> None:
    """A leader of term 3 need not hold what term 4 committed."""
    inv = RaftInvariants()
    inv.observe_summary(1.0, summ("s", 3, "leader", 5, 3, last=6))
    assert inv.observe_summary(2.0, summ("n", 4, commit=9, commit_term=4)) == []


def test_differing_digests_at_one_applied_index_are_reported() -> None:
    """Two replicas at one applied index hold one state."""
    inv = RaftInvariants()
    assert inv.observe_digest(1.0, "a", 7, "aaa") == []
    assert inv.observe_digest(1.5, "b", 8, "bbb") == []
    assert props(inv.observe_digest(2.0, "c", 7, "ccc")) == {APPLIED_STATE}


def test_an_acknowledged_index_beyond_where_replicas_settled_is_lost() -> None:
    """Replicas that settle below an acknowledged index lost that write."""
    inv = RaftInvariants()
    inv.acknowledged(12, "write k=v by c1")
    inv.acknowledged(9, "write k=w by c2")
    found = inv.converged(5.0, {"a": 11, "b": 12})
    assert props(found) == {ACKNOWLEDGED_DURABLE} and "a settled" in found[0].detail


# --- bugs planted in the core --------------------------------------------------


# The planted bugs below predate membership changes: their runs leave them out,
# so that each bug shows as the property it breaks first.
_FIXED_MEMBERSHIP = frozenset(FAULT_KINDS) - {"membership"}


def _first_violation(seeds: range) -> tuple[int, Violation]:
    for seed in seeds:
        r = Simulation(seed, faults=_FIXED_MEMBERSHIP).run()
        if r.violations:
            return seed, r.violations[0]
    pytest.fail(f"no seed in {seeds} broke any invariant")


def test_votes_without_the_up_to_date_check_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Granting votes to stale logs (§5.4.1 removed) elects a leader without
    committed entries: leader completeness or state machine safety fires."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    _, v = _first_violation(range(40))
    assert v.check in (LEADER_COMPLETENESS, STATE_MACHINE_SAFETY), v


def test_two_votes_in_one_term_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that forgets its vote votes twice in a term: the quorum check
    sees the second vote, or election safety the two leaders (§5.2)."""
    original = RaftCore._handle_vote

    def forgetful(self: RaftCore, m: RequestVote) -> None:
        if not m.prevote:
            self.vote = None
        original(self, m)

    monkeypatch.setattr(RaftCore, "_handle_vote", forgetful)
    _, v = _first_violation(range(40))
    assert v.check in (QUORUM, ELECTION_SAFETY), v


def test_appends_without_the_consistency_check_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower that appends after any prev_index, matching or not (§5.3
    removed), ends up with logs that disagree below equal entries."""
    def careless(self: RaftLog, prev_index: int, prev_term: int, commit: int,
                 entries: list[Entry]) -> int | None:
        if prev_index > self.last_index():
            return None
        conflict = self._find_conflict(entries)
        if conflict and conflict > self.commit:
            self.append(entries[conflict - entries[0].index :])
        last_new = prev_index + len(entries)
        self.commit_to(min(commit, last_new, self.last_index()))
        return last_new

    monkeypatch.setattr(RaftLog, "maybe_append", careless)
    _, v = _first_violation(range(60))
    assert v.check == LOG_MATCHING, v


def _commit_by_counting(self: RaftCore) -> bool:
    """`_maybe_commit` without "only entries of the current term" (§5.4.2)."""
    acked = {p: pr.match for p, pr in self.progress.items()}
    acked[self.id] = self.log.last_index()
    index = self._joint.committed_index(acked)
    if index <= self.log.commit:
        return False
    self.log.commit_to(index)
    return True


def _figure_8(seed: int) -> Simulation:
    """Figure 8 of the paper on three nodes: A leads, is cut off with three
    new entries; B wins the next term and is cut off at once with its own
    entry at the same index; A comes back, wins, replicates an old entry and
    is cut off the moment it counts it committed; then B comes back."""
    cfg = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_append_entries=1)
    sim = Simulation(seed, nodes=3, faults=frozenset(), config=cfg, clients=0, workload=False)
    ids = ["n1", "n2", "n3"]

    def until(cond: object, limit: int = 300) -> None:
        for _ in range(limit):
            if cond() or not sim.tick():  # type: ignore[operator]
                return

    def core(n: str) -> RaftCore:
        c = sim.core(n)
        assert c is not None
        return c

    until(lambda: sim.leader() is not None
          and all(core(i).log.commit == core(i).log.last_index() for i in ids))
    a = sim.leader()
    assert a is not None
    cut_a = sim.network.isolate(a, ids)
    for k in range(3):
        sim.propose(a, b"x%d" % k)
    old = core(a).log.last_index() - 2
    until(lambda: sim.leader() not in (None, a))
    cut_b = sim.network.isolate(sim.leader() or "", ids)
    sim.network.recover(cut_a)
    until(lambda: core(a).role == "leader" and core(a).log.commit >= old)
    sim.network.isolate(a, ids)
    sim.network.recover(cut_b)
    until(lambda: False, 150)
    return sim


def test_figure_8_commit_of_an_old_term_entry_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Committing a previous term's entry by counting replicas lets it be
    overwritten (Figure 8); leader completeness fires when B wins."""
    monkeypatch.setattr(RaftCore, "_maybe_commit", _commit_by_counting)
    for seed in range(3):
        found = _figure_8(seed).violations
        assert [v.check for v in found][:1] == [LEADER_COMPLETENESS], (seed, found)


def test_figure_8_is_safe_with_the_current_term_rule() -> None:
    """The same schedule with the real commit rule breaks nothing."""
    for seed in range(3):
        sim = _figure_8(seed)
        assert sim.violations == [] and sim.finish().violations == []


def _read_without_quorum(self: RaftCore, ctx: bytes, src: str | None) -> None:
    """ReadIndex that skips the heartbeat round (thesis §6.4 step 3)."""
    self._read_confirmed(ctx, self.log.commit, src)


def _stale_leader_read(seed: int) -> list[Violation]:
    """Write through leader A, cut A off, write through the new leader B, then
    read at A. Without CheckQuorum nothing but the ReadIndex round stops a
    deposed leader from answering, so this is where skipping it shows."""
    cfg = CoreConfig(election_ticks=10, heartbeat_ticks=2, check_quorum=False)
    sim = Simulation(seed, nodes=3, faults=frozenset(), config=cfg, clients=3, workload=False)

    def until(cond: object, limit: int = 300) -> None:
        for _ in range(limit):
            if cond() or not sim.tick():  # type: ignore[operator]
                return

    until(lambda: sim.leader() is not None)
    a = sim.leader() or ""
    sim.invoke(0, "write", "k", a)
    until(lambda: not sim.busy(0))
    sim.network.isolate(a, ["n1", "n2", "n3"])
    until(lambda: sim.leader() not in (None, a))
    sim.invoke(1, "write", "k", sim.leader() or "")
    until(lambda: not sim.busy(1))
    sim.invoke(2, "read", "k", a)
    until(lambda: not sim.busy(2), 40)
    r = sim.finish()
    assert [o.outcome for o in r.history[:2]] == ["ok", "ok"], r.history
    return r.violations


def test_reads_without_the_quorum_round_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deposed leader that serves reads at once returns stale values, which
    the linearizability check reports."""
    monkeypatch.setattr(RaftCore, "_start_read", _read_without_quorum)
    for seed in range(3):
        found = _stale_leader_read(seed)
        assert [v.check for v in found] == [LINEARIZABILITY], (seed, found)


def test_reads_with_the_quorum_round_stay_linearizable() -> None:
    """The same schedule with the real ReadIndex breaks nothing."""
    for seed in range(3):
        assert _stale_leader_read(seed) == []


def test_replicas_whose_revisions_differ_at_one_index_are_a_violation() -> None:
    """Two replicas at one applied index with different key revisions break
    the revisions check; the same view from another replica does not."""
    inv = RaftInvariants()
    view = RevisionView(5, 2, (("a", 2, 5, 3),), ((4, "a", False), (5, "a", False)))
    assert inv.observe_revisions(1, "n1", 9, view) == []
    assert inv.observe_revisions(2, "n2", 9, view) == []
    other = RevisionView(5, 2, (("a", 2, 4, 3),), view.history)
    found = inv.observe_revisions(3, "n3", 9, other)
    assert [v.check for v in found] == [REVISIONS]
    assert "('a', 2, 5, 3)" in found[0].detail
