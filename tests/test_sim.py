"""The deterministic simulator: a sweep of seeds with every fault breaks no
invariant, a seed replays exactly, and `raftctl sim` reports failures with a
command that replays them."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shlex
import subprocess
import sys
from collections import Counter

import pytest
from click.testing import CliRunner

from chaos.invariants import CORE_ERROR, LIVENESS
from chaos.invariants_base import RANGE_READS
from chaos.sim import SIM_FAULT_TICKS, Simulation, run_seed, sweep_pool
from chaos.sim_nemesis import FAULT_KINDS, format_faults, parse_faults
from chaos.sim_network import SimNetwork
from node.raft.core import RaftCore
from node.raft.log import RaftLog
from node.raft.messages import Heartbeat
from node.raft.ready import Step
from node.state.mvcc import Mvcc
from raftctl.sim_cmd import sim

ALL = frozenset(FAULT_KINDS)
# The sweep runs this many fault ticks per seed: 300 seeds take about 25 s
# of CPU, split over two worker processes.
SWEEP_SEEDS = 80  # the soak below runs 1,000
SWEEP_TICKS = 200


def test_range_reads_catch_a_past_read_that_ignores_the_history(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A range read at a past revision that reads today's values (the
    history ignored) answers differently at replicas that applied different
    amounts: the simulator's range reads catch it within the first seeds."""
    monkeypatch.setattr(Mvcc, "_past", lambda self, span, at: {})
    caught = [r.violations[0][0] for r in
              (run_seed(s, nodes=5, faults=ALL, ticks=SIM_FAULT_TICKS) for s in range(3))
              if r.violations]
    assert caught and set(caught) == {RANGE_READS}, caught


def test_sweep_with_all_faults_breaks_nothing() -> None:
    """80 seeds with every fault kind, membership changes among them: no
    violation, liveness met after healing, and every fault path was
    exercised somewhere."""
    job = functools.partial(run_seed, nodes=5, faults=ALL, ticks=SWEEP_TICKS)
    with sweep_pool(2) as pool:
        results = pool.map(job, range(SWEEP_SEEDS), chunksize=8)
    failing = [(r.seed, r.violations[0]) for r in results if r.violations]
    assert failing == []
    assert all(r.live_after_ticks is not None for r in results)
    seen: Counter[str] = Counter()
    for r in results:
        seen.update(r.stats)
    for what in ("became_leader", "crashes", "compactions", "snapshot_installed",
                 "leadership_transferred", "append_rejected", "membership_changed",
                 "messages_dropped", "ops_ok", "ops_unknown", "follower_reads",
                 "watch_events", "watch_moves"):
        assert seen[what] > 0, f"no run exercised {what}: {dict(seen)}"


def _fingerprint(seed: int, faults: frozenset[str] = ALL) -> str:
    r = Simulation(seed, faults=faults, ticks=150, trace=True).run()
    h = hashlib.sha256()
    for line in r.trace:
        h.update(line.encode() + b"\n")
    h.update(repr((r.history, r.stats, r.violations)).encode())
    return h.hexdigest()


def test_same_seed_gives_the_same_run() -> None:
    """Two runs of one seed have identical traces, histories and counters."""
    assert _fingerprint(7) == _fingerprint(7)


def test_different_seeds_give_different_runs() -> None:
    """The seed matters: two seeds do not produce the same trace."""
    assert _fingerprint(7) != _fingerprint(8)


def test_seed_replays_in_another_process_with_another_hash_seed() -> None:
    """A replay starts a new process: string hashing there must not change the run."""
    code = ("import sys; sys.path.insert(0, 'tests'); from test_sim import _fingerprint; "
            "print(_fingerprint(7))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == _fingerprint(7)


def test_trace_shows_deliveries_drops_faults_and_core_events() -> None:
    """The trace of a run with faults holds every kind of line a reader needs."""
    r = Simulation(3, ticks=200, trace=True).run()
    text = "\n".join(r.trace)
    for needle in (" recv ", " drop(", " fault ", "became_leader", "invoke write", "heal"):
        assert needle in text, needle


def test_fault_kinds_parse_and_format() -> None:
    """`all`, `none` and lists round-trip; an unknown kind is refused by name."""
    assert parse_faults("all") == ALL and format_faults(ALL) == "all"
    assert parse_faults("crash, loss") == frozenset({"crash", "loss"})
    assert format_faults(frozenset({"loss", "crash"})) == "loss,crash"
    assert parse_faults("none") == frozenset() and format_faults(frozenset()) == "none"
    with pytest.raises(ValueError, match="bogus"):
        parse_faults("loss,bogus")


def _hb(src: str, dst: str) -> Heartbeat:
    return Heartbeat(term=1, src=src, dst=dst, commit=0)


def test_network_verbs_block_and_recover_links() -> None:
    """cut blocks both ways, block one way, isolate every link of a node;
    recover undoes one fault without undoing another; heal undoes all."""
    net = SimNetwork(random.Random(1))
    ids = ["a", "b", "c"]
    cut = net.cut("a", "b")
    assert net.blocked("a", "b") and net.blocked("b", "a")
    one = net.block("c", "a")
    assert net.blocked("c", "a") and not net.blocked("a", "c")
    iso = net.isolate("a", ids)
    net.recover(cut)
    assert net.blocked("a", "b"), "still blocked by the isolation"
    net.recover(iso)
    assert not net.blocked("a", "b") and net.blocked("c", "a")
    net.recover(one)
    assert not net.blocked("c", "a")
    net.isolate("b", ids)
    net.heal()
    assert not any(net.blocked(x, y) for x in ids for y in ids)


def test_link_without_reordering_is_fifo() -> None:
    """Without the reorder fault, messages on one link arrive in send order."""
    net = SimNetwork(random.Random(4))
    sent = [Heartbeat(term=1, src="a", dst="b", commit=0, seq=i) for i in range(50)]
    for i, m in enumerate(sent):
        net.send(i // 5, m)
    got = [m for t in range(30) for m in net.due(t)]
    assert got == sent


def test_crash_after_persisting_keeps_the_entry_but_sends_nothing() -> None:
    """A leader that crashes after persisting a proposal and before sending
    has the entry on disk when it restarts, and no peer received it."""
    s = Simulation(1, nodes=3, faults=frozenset(), clients=0, workload=False)
    for _ in range(200):
        if s.leader() is not None:
            break
        s.tick()
    lead = s.leader()
    assert lead is not None
    s.crash(lead, at=Step.PERSISTED)
    index = s.propose(lead, b"persisted")
    assert s.core(lead) is None, "the leader should have crashed at its Ready"
    stored = s.storage(lead).initial_state().entries
    assert stored[-1].index == index and stored[-1].data == b"persisted"
    for _ in range(5):
        s.tick()
    for peer in ("n1", "n2", "n3"):
        core = s.core(peer)
        if peer != lead and core is not None:
            assert core.log.last_index() < index
    s.restart(lead)
    core = s.core(lead)
    assert core is not None and core.log.term(index) is not None
    assert s.violations == []


def test_dead_elections_are_a_liveness_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """If no node ever campaigns, the run fails the liveness bound."""
    monkeypatch.setattr(RaftCore, "_hup", lambda self, transfer: None)
    r = Simulation(0, faults=frozenset(), ticks=20, liveness_ticks=40).run()
    assert [v.check for v in r.violations] == [LIVENESS]


def test_an_exception_in_the_core_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core that raises ends the run with a core_error naming the exception."""
    def broken(self: RaftLog, index: int) -> None:
        raise AssertionError("planted")

    monkeypatch.setattr(RaftLog, "commit_to", broken)
    r = Simulation(0, faults=frozenset(), ticks=100).run()
    assert r.violations[0].check == CORE_ERROR and "planted" in r.violations[0].detail


# --- the command line ---------------------------------------------------------


def test_cli_sweep_passes_with_exit_code_0() -> None:
    """A clean sweep prints the rate, the liveness figure and zero violations."""
    res = CliRunner().invoke(sim, ["--seeds", "3", "--ticks", "100", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "runs/s" in res.output and "violations: 0 in 0 run(s)" in res.output


def test_cli_json_reports_the_figures() -> None:
    """--json prints one object with the run count, timing and violations."""
    res = CliRunner().invoke(sim, ["--seeds", "2", "--ticks", "80", "--jobs", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["runs"] == 2 and doc["violations"] == 0 and doc["runs_per_second"] > 0


def test_cli_failure_exits_1_and_prints_a_replay_that_reproduces_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a planted bug the sweep exits 1 and names, per failing seed, the
    property and a replay command; running that command fails the same way."""
    original = RaftCore._handle_vote

    def forgetful(self: RaftCore, m: object) -> None:
        self.vote = None
        original(self, m)  # type: ignore[arg-type]

    monkeypatch.setattr(RaftCore, "_handle_vote", forgetful)
    res = CliRunner().invoke(sim, ["--seeds", "4", "--ticks", "150", "--jobs", "1",
                                   "--faults", "loss,crash"])
    assert res.exit_code == 1, res.output
    replay = [ln.split("replay: ", 1)[1] for ln in res.output.splitlines() if "replay: " in ln]
    assert replay, res.output
    # A vote cast twice is seen at once (quorum), before its two leaders.
    assert "quorum" in res.output and "and then for" in res.output
    argv = shlex.split(replay[0])
    assert argv[:2] == ["raftctl", "sim"] and "--trace" in argv and "--faults" in argv
    again = CliRunner().invoke(sim, argv[2:])
    assert again.exit_code == 1
    assert "VIOLATION quorum" in again.output
    assert "quorum" in again.output.splitlines()[-1]


def test_cli_trace_needs_a_seed() -> None:
    """--trace without --seed is a usage error, not a silent sweep."""
    res = CliRunner().invoke(sim, ["--trace"])
    assert res.exit_code == 2 and "--seed" in res.output


def test_cli_rejects_unknown_fault_kinds() -> None:
    """An unknown fault kind is a usage error that lists the valid ones."""
    res = CliRunner().invoke(sim, ["--faults", "loss,flood"])
    assert res.exit_code == 2 and "flood" in res.output and "partition" in res.output


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_a_thousand_seeds_of_five_nodes_with_every_fault_break_nothing() -> None:
    """The simulator's acceptance sweep (`raftctl sim --seeds 1000 --nodes 5
    --faults all`, membership changes among the faults): no invariant
    broken, exactly-once and the quorum check included, and every run live
    again after healing."""
    job = functools.partial(run_seed, nodes=5, faults=ALL, ticks=SIM_FAULT_TICKS)
    with sweep_pool(2) as pool:
        results = pool.map(job, range(1000), chunksize=16)
    failing = [(r.seed, r.violations[0]) for r in results if r.violations]
    assert failing == []
    assert all(r.live_after_ticks is not None for r in results)
