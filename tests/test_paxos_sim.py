"""The simulator running Multi-Paxos: sweeps of seeds with every fault it
takes break none of its invariants, a seed replays exactly, and an acceptor
that forgets its promise is caught, by the rule it breaks and, with that
check off, by the two values it lets be chosen."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter

import msgspec
import pytest
from click.testing import CliRunner

from chaos.paxos_invariants import (
    AT_MOST_ONE_CHOSEN,
    CHOSEN_NEVER_CHANGES,
    LEARNERS_AGREE,
    PROMISE_KEPT,
    PaxosInvariants,
)
from chaos.sim import Simulation, run_seed, sim_core_config, sweep_pool
from chaos.sim_cores import PaxosSim
from raftctl.sim_cmd import replay_command, sim

PAXOS_FAULTS = PaxosSim.faults


def _sweep(seeds: range, ticks: int) -> list[object]:
    job = functools.partial(run_seed, nodes=5, faults=PAXOS_FAULTS, ticks=ticks,
                            algorithm="paxos")
    with sweep_pool(2) as pool:
        return list(pool.map(job, seeds, chunksize=8))


def test_sweep_of_a_hundred_seeds_breaks_nothing() -> None:
    """100 seeds of 5 nodes with every fault but membership changes (fixed
    membership): no violation, liveness met after healing, and every path
    (duels, give-ups, snapshots, hand-overs, crashes) exercised somewhere."""
    results = _sweep(range(100), 200)
    failing = [(r.seed, r.violations[0]) for r in results if r.violations]  # type: ignore[attr-defined]
    assert failing == []
    assert all(r.live_after_ticks is not None for r in results)  # type: ignore[attr-defined]
    seen: Counter[str] = Counter()
    for r in results:
        seen.update(r.stats)  # type: ignore[attr-defined]
    for what in PaxosSim.coverage:
        assert seen[what] > 0, f"no run exercised {what}: {dict(seen)}"


@pytest.mark.soak
def test_sweep_of_a_thousand_seeds_breaks_nothing() -> None:
    """`raftctl sim --algorithm paxos --seeds 1000 --nodes 5`: 0 violations."""
    res = CliRunner().invoke(sim, ["--algorithm", "paxos", "--seeds", "1000", "--nodes", "5",
                                   "--jobs", "2", "--json"])
    doc = json.loads(res.output)
    assert res.exit_code == 0 and doc["violations"] == 0, doc["failures"][:3]
    assert doc["runs"] == 1000 and doc["algorithm"] == "paxos"


def _fingerprint(seed: int) -> str:
    r = Simulation(seed, faults=PAXOS_FAULTS, ticks=150, trace=True, algorithm="paxos").run()
    h = hashlib.sha256()
    for line in r.trace:
        h.update(line.encode() + b"\n")
    h.update(repr((r.history, r.stats, r.violations)).encode())
    return h.hexdigest()


def test_a_seed_replays_exactly() -> None:
    """Two runs of one seed have identical traces, histories and counters."""
    assert _fingerprint(5) == _fingerprint(5) != _fingerprint(6)


def test_a_forgetful_acceptor_is_caught() -> None:
    """Acceptors that accept below their promise (a test-only flag of the
    core): the simulator reports it, naming the rule (P1a), in most runs."""
    found: Counter[str] = Counter()
    for seed in range(10):
        r = Simulation(seed, faults=PAXOS_FAULTS, algorithm="paxos", forget_promises=True).run()
        found.update(v.check for v in r.violations[:1])
    assert found[PROMISE_KEPT] >= 3, found


def test_what_a_forgetful_acceptor_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the promise check itself off, the damage still shows: two values
    chosen for one slot (or learners that disagree), §2.1's safety gone."""
    monkeypatch.setattr(PaxosInvariants, "_check_promise", lambda *a: None)
    caught: list[str] = []
    # Without the pre-prepare round, proposers duel often enough for a broken
    # promise to let two values be chosen within a few dozen seeds.
    duels = msgspec.structs.replace(sim_core_config(), prevote=False)
    for seed in range(60):
        r = Simulation(seed, faults=PAXOS_FAULTS, config=duels, algorithm="paxos",
                       forget_promises=True).run()
        caught = [v.check for v in r.violations]
        if caught:
            break
    assert caught and caught[0] in (AT_MOST_ONE_CHOSEN, LEARNERS_AGREE, CHOSEN_NEVER_CHANGES), \
        caught


def test_the_same_runs_without_the_bug_are_clean() -> None:
    """The seeds above, with acceptors that keep their promises, break nothing."""
    for seed in range(10):
        r = Simulation(seed, faults=PAXOS_FAULTS, algorithm="paxos").run()
        assert r.violations == [], (seed, r.violations[:1])


def test_cli_sweeps_paxos_and_refuses_membership_changes() -> None:
    """`--algorithm paxos` runs the Paxos core (`all` leaves membership out);
    naming membership is a usage error saying why; a failing seed's replay
    command names the algorithm."""
    res = CliRunner().invoke(sim, ["--algorithm", "paxos", "--seeds", "3", "--ticks", "100",
                                   "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "paxos, seeds 0..2" in res.output and "violations: 0 in 0 run(s)" in res.output
    assert "prepare_sent" in res.output
    bad = CliRunner().invoke(sim, ["--algorithm", "paxos", "--faults", "crash,membership"])
    assert bad.exit_code == 2 and "membership is fixed" in bad.output
    assert replay_command(4, 5, frozenset({"crash"}), 100, "paxos").startswith(
        "raftctl sim --algorithm paxos --seed 4 ")
