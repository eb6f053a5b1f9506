"""Leases in the deterministic simulator (chaos/sim_leases.py): a sweep of
seeds with every fault and lease clients breaks no invariant (replicas
agree on leases, none expires early), and a new leader that does not renew
every lease is caught."""

from __future__ import annotations

import functools
import json
from collections import Counter

import pytest
from click.testing import CliRunner

from chaos.sim import Simulation, run_seed, sweep_pool
from chaos.sim_cores import sim_algorithm
from chaos.sim_leases import BREAK_NEW_LEADER_EXTENSION, LEASE_COVERAGE, LEASE_EARLY_EXPIRY
from chaos.sim_nemesis import FAULT_KINDS
from raftctl.sim_cmd import replay_command, sim

ALL = frozenset(FAULT_KINDS)
# 30 seeds of 300 fault ticks with 4 lease clients: about 5 s of CPU, split
# over two worker processes; the soak below runs 500.
LEASE_SEEDS = 30
SOAK_LEASE_SEEDS = 500
LEASE_TICKS = 300
LEASE_CLIENTS = 4


def test_sweep_with_leases_breaks_nothing() -> None:
    """30 seeds with every fault and clients granting, keeping, revoking and
    letting leases lapse: no violation, liveness met, every lease path taken."""
    _sweep(range(LEASE_SEEDS))


@pytest.mark.soak
def test_long_sweep_with_leases_breaks_nothing() -> None:
    """500 more seeds of the same (about 80 s of CPU)."""
    _sweep(range(LEASE_SEEDS, LEASE_SEEDS + SOAK_LEASE_SEEDS))


def _sweep(seeds: range) -> None:
    job = functools.partial(run_seed, nodes=5, faults=ALL, ticks=LEASE_TICKS,
                            lease_clients=LEASE_CLIENTS)
    with sweep_pool(2) as pool:
        results = pool.map(job, seeds, chunksize=8)
    failing = [(r.seed, r.violations[0]) for r in results if r.violations]
    assert failing == []
    seen: Counter[str] = Counter()
    for r in results:
        seen.update(r.stats)
    for what in ("leases_granted", "keepalives_acked", "leases_expired", "leases_revoked",
                 "expiries_proposed"):
        assert what in LEASE_COVERAGE and seen[what] > 0, f"no run exercised {what}: {dict(seen)}"


def test_new_leader_that_does_not_renew_leases_is_caught() -> None:
    """A new leader that gives the leases it inherits no time (instead of TTL
    plus the longest election timeout) expires a kept lease early: seed 0
    shows it."""
    r = Simulation(0, faults=ALL, ticks=LEASE_TICKS, lease_clients=LEASE_CLIENTS,
                   lease_breaks=frozenset({BREAK_NEW_LEADER_EXTENSION})).run()
    assert r.violations and {v.check for v in r.violations} == {LEASE_EARLY_EXPIRY}


def test_same_seed_gives_the_same_lease_run() -> None:
    """Lease clients draw from the seed alone: two runs count the same."""
    a = Simulation(3, faults=ALL, ticks=150, lease_clients=LEASE_CLIENTS).run()
    b = Simulation(3, faults=ALL, ticks=150, lease_clients=LEASE_CLIENTS).run()
    assert a.stats == b.stats and a.history == b.history


def test_paxos_sweep_with_leases_breaks_nothing() -> None:
    """Paxos runs the same lessor and state machine: 30 seeds with every
    fault it takes and lease clients break nothing."""
    faults = sim_algorithm("paxos", ["n1"], False).faults
    results = [run_seed(seed, 5, frozenset(faults), LEASE_TICKS, "paxos", LEASE_CLIENTS)
               for seed in range(30)]
    assert [(r.seed, r.violations[0]) for r in results if r.violations] == []
    assert sum(r.stats.get("leases_expired", 0) for r in results) > 0


def test_sim_command_runs_lease_clients() -> None:
    """`raftctl sim --lease-clients N` runs them, and a failing seed's replay
    command keeps the option."""
    r = CliRunner().invoke(sim, ["--seed", "1", "--lease-clients", "4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stats"]["leases_granted"] > 0
    assert "--lease-clients 4 " in replay_command(1, 5, ALL, 300, "raft", 4)
