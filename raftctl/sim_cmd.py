"""`raftctl sim`: run the deterministic simulator over many seeds (in worker
processes) or replay one seed with its trace. Parses, runs, renders; the
simulation itself lives in `chaos/sim.py`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator

import click

from chaos.sim import (
    SIM_FAULT_TICKS,
    SIM_LIVENESS_TICKS,
    RunSummary,
    Simulation,
    run_seed,
    sweep_pool,
)
from chaos.sim_cores import SIM_ALGORITHMS, sim_algorithm
from chaos.sim_leases import LEASE_COVERAGE
from chaos.sim_nemesis import FAULT_KINDS, format_faults, parse_faults
from raftctl.exits import Exit
from raftctl.options import json_option


def replay_command(seed: int, nodes: int, faults: frozenset[str], ticks: int,
                   algorithm: str = "raft", lease_clients: int = 0) -> str:
    """The command line that reruns one seed exactly, with its trace."""
    algo = "" if algorithm == "raft" else f" --algorithm {algorithm}"
    leases = f" --lease-clients {lease_clients}" if lease_clients else ""
    return (f"raftctl sim{algo} --seed {seed} --nodes {nodes} --faults {format_faults(faults)} "
            f"--ticks {ticks}{leases} --trace")


@click.command("sim")
@click.option("--seeds", type=click.IntRange(min=1), default=100, show_default=True,
              help="How many seeds to run, from --first-seed on.")
@click.option("--first-seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Run only this seed (to replay a failure).")
@click.option("--nodes", type=click.IntRange(1, 15), default=5, show_default=True)
@click.option("--faults", "faults_text", default="all", show_default=True,
              help="all, none, or a comma-separated list of: loss, duplicate, reorder, delay, "
                   "partition, isolate, oneway, crash, snapshot, transfer, membership.")
@click.option("--ticks", type=click.IntRange(min=1), default=SIM_FAULT_TICKS, show_default=True,
              help="Ticks of the fault phase of each run.")
@click.option("--trace", is_flag=True, help="Print the run's trace (needs --seed).")
@click.option("--algorithm", type=click.Choice(list(SIM_ALGORITHMS)), default="raft",
              show_default=True,
              help="The core to run: Raft, or Multi-Paxos with its own invariants (its "
                   "membership is fixed, so `all` leaves membership out).")
@click.option("--lease-clients", type=click.IntRange(min=0), default=0, show_default=True,
              help="Clients that also grant, keep alive and let lapse leases, checked for "
                   "agreement and early expiry (chaos/sim_leases.py).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: one per CPU].")
@json_option("Print the result as JSON.")
@click.pass_context
def sim(ctx: click.Context, seeds: int, first_seed: int, seed: int | None, nodes: int,
        faults_text: str, ticks: int, trace: bool, algorithm: str, lease_clients: int,
        jobs: int | None, as_json: bool) -> None:
    """Run Raft (or Paxos) in a seeded simulation with faults and check its safety.

    Every run injects random faults, heals everything, then requires a fresh
    entry to commit within a bound; the algorithm's safety properties are
    checked after every step and the client history for linearizability.
    Clients read at any node, some reads being range reads of every key,
    whose answer at a past revision must match another replica's.
    Exit code 1 if any run broke one; each failing seed comes with its
    replay command.
    """
    try:
        faults = parse_faults(faults_text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--faults") from None
    takes = sim_algorithm(algorithm, [f"n{i}" for i in range(1, nodes + 1)]).faults
    if faults == frozenset(FAULT_KINDS):
        faults &= takes
    elif faults - takes:
        raise click.BadParameter(f"{algorithm} does not take {', '.join(sorted(faults - takes))}"
                                 ": its membership is fixed", param_hint="--faults")
    if trace and seed is None:
        raise click.UsageError("--trace replays one run: give it with --seed S")
    if seed is not None:
        failed = _one(seed, nodes, faults, ticks, trace, as_json, algorithm, lease_clients)
    else:
        failed = _sweep(range(first_seed, first_seed + seeds), nodes, faults, ticks,
                        jobs or os.cpu_count() or 1, as_json, algorithm, lease_clients)
    ctx.exit(Exit.FAILED if failed else Exit.OK)


def _one(seed: int, nodes: int, faults: frozenset[str], ticks: int, trace: bool,
         as_json: bool, algorithm: str, lease_clients: int) -> bool:
    r = Simulation(seed, nodes, faults, ticks=ticks, trace=trace, algorithm=algorithm,
                   lease_clients=lease_clients).run()
    if as_json:
        click.echo(json.dumps({
            "seed": seed, "ticks": r.ticks, "live_after_ticks": r.live_after_ticks,
            "operations": len(r.history), "stats": r.stats,
            "violations": [{"check": v.check, "tick": v.tick, "detail": v.detail}
                           for v in r.violations],
            "trace": r.trace,
        }, indent=2))
        return bool(r.violations)
    for line in r.trace:
        click.echo(line)
    if r.violations:
        click.echo(f"seed {seed}: {len(r.violations)} violation(s)")
        for v in r.violations:
            click.echo(f"  {v}")
    else:
        live = ("" if r.live_after_ticks is None
                else f", a fresh entry committed {r.live_after_ticks} ticks after healing")
        click.echo(f"seed {seed}: ok ({r.ticks} ticks, {len(r.history)} client operations{live})")
    return bool(r.violations)


def _sweep(seeds: range, nodes: int, faults: frozenset[str], ticks: int, jobs: int,
           as_json: bool, algorithm: str, lease_clients: int) -> bool:
    job = functools.partial(run_seed, nodes=nodes, faults=faults, ticks=ticks,
                            algorithm=algorithm, lease_clients=lease_clients)
    coverage = sim_algorithm(algorithm, [f"n{i}" for i in range(1, nodes + 1)]).coverage \
        + (LEASE_COVERAGE if lease_clients else ())
    start = time.perf_counter()
    results = list(_with_progress(_run_all(job, seeds, jobs), len(seeds),
                                  show=not as_json and sys.stdout.isatty()))
    elapsed = time.perf_counter() - start
    results.sort(key=lambda r: r.seed)
    failing = [r for r in results if r.violations]
    total = sum(len(r.violations) for r in results)
    live = [r.live_after_ticks for r in results if r.live_after_ticks is not None]
    rate = len(results) / elapsed if elapsed > 0 else float("inf")
    if as_json:
        click.echo(json.dumps({
            "runs": len(results), "first_seed": seeds.start, "nodes": nodes,
            **({} if algorithm == "raft" else {"algorithm": algorithm}),
            "faults": format_faults(faults), "ticks": ticks, "jobs": jobs,
            "seconds": round(elapsed, 3), "runs_per_second": round(rate, 2),
            "violations": total, "failing_seeds": len(failing),
            "liveness_max_ticks": max(live, default=None),
            "liveness_bound_ticks": SIM_LIVENESS_TICKS,
            "exercised": dict(sum((Counter(r.stats) for r in results), Counter())),
            "failures": [{
                "seed": r.seed,
                "violations": [{"check": p, "tick": t, "detail": d}
                               for p, t, d in r.violations],
                "replay": replay_command(r.seed, nodes, faults, ticks, algorithm,
                                         lease_clients)}
                for r in failing],
        }, indent=2))
        return bool(failing)
    algo = "" if algorithm == "raft" else f"{algorithm}, "
    click.echo(f"{len(results)} runs ({algo}seeds {seeds.start}..{seeds.stop - 1}, {nodes} "
               f"nodes, faults {format_faults(faults)}, {ticks} ticks) in {elapsed:.1f}s: "
               f"{rate:.1f} runs/s on {jobs} process(es)")
    if live:
        click.echo(f"after healing, a fresh entry committed within {max(live)} ticks at worst "
                   f"(bound {SIM_LIVENESS_TICKS})")
    sums: Counter[str] = Counter()
    for r in results:
        sums.update(r.stats)
    click.echo("exercised: " + ", ".join(f"{sums[k]} {k}" for k in coverage))
    click.echo(f"violations: {total} in {len(failing)} run(s)")
    for r in failing:
        prop, tick, detail = r.violations[0]
        click.echo(f"seed {r.seed}: {prop} at tick {tick}: {detail}")
        click.echo("  replay: "
                   + replay_command(r.seed, nodes, faults, ticks, algorithm, lease_clients))
    return bool(failing)


def _run_all(job: functools.partial[RunSummary], seeds: range,
             jobs: int) -> Iterator[RunSummary]:
    if jobs == 1 or len(seeds) == 1:
        yield from map(job, seeds)
        return
    with sweep_pool(min(jobs, len(seeds))) as pool:
        yield from pool.imap_unordered(job, seeds, chunksize=4)


def _with_progress(results: Iterator[RunSummary], total: int,
                   show: bool) -> Iterator[RunSummary]:
    if not show:
        yield from results
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("simulating", total=total)
        for r in results:
            bar.advance(task)
            yield r
