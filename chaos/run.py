"""One live nemesis run: start from a whole cluster, run a workload while
the schedule's faults come and go, heal, wait for recovery, and hand back
the record that `chaos.report.judge` decides on. Handed a cluster-like
object and a client factory; it never imports the CLI or the supervisor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chaos.faults import FaultState
from chaos.linearizability import OK, READ, WRITE
from chaos.monitor import CHAOS_STATUS_TIMEOUT_MS, Monitor
from chaos.nemesis import ChaosError, ClockLike, ClusterLike, EventLog, MembersLike, Nemesis
from chaos.pipeline import Endpoint
from chaos.power_fault import PowerLoss
from chaos.record import FINAL_CLIENT, RECOVERY_CLIENT, DigestSample, FaultEvent, RunRecord
from chaos.schedule import (
    CLOCK,
    DEFAULT_MIX,
    NEMESIS_INTERVAL_S,
    NO_POWER_LOSS,
    POWER_LOSS,
    Schedule,
    parse_mix,
)
from chaos.values import DEFAULT_SIZES, SizeMix, parse_sizes
from chaos.workload import (
    CHAOS_OP_TIMEOUT_MS,
    CHAOS_OPS_PER_S,
    ClientFactory,
    History,
    KVClient,
    Pacer,
    WorkloadSpec,
    read_set_op,
    run_op,
)
from chaos.workload_mix import (
    DEFAULT_WORKLOADS,
    LOCK_WORKLOAD,
    REGISTER,
    TXN_WORKLOAD,
    WorkloadMix,
    parse_workloads,
    uses_sets,
)

# Clients of a run by default (`--clients`), shared among its workloads.
CHAOS_CLIENTS = 24
# Writes a pipelined set client keeps in flight on its session by default.
CHAOS_PIPELINE_DEPTH = 4


@dataclass
class ChaosOptions:
    duration_s: float = 60.0
    interval_s: float = NEMESIS_INTERVAL_S  # a fault lasts this long, then as long of quiet
    mix: dict[str, float] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    workload: str = DEFAULT_WORKLOADS  # names, comma-separated (chaos.workload_mix)
    seed: int = 0
    clients: int = CHAOS_CLIENTS
    keys: int = 5  # register keys, and as many set keys
    recovery_timeout_s: float = 10.0
    rate: float = CHAOS_OPS_PER_S  # of all clients together; 0: as fast as answers come
    sizes: SizeMix = field(default_factory=lambda: parse_sizes(DEFAULT_SIZES))
    depth: int = CHAOS_PIPELINE_DEPTH
    key_prefix: str = "chaos"


def _first_leader(cluster: ClusterLike, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while True:
        for s in cluster.status(timeout_s=CHAOS_STATUS_TIMEOUT_MS / 1000.0):
            if s.status is not None and s.status.get("role") == "leader":
                return s.id
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)  # polling cadence


def _prepare(cluster: ClusterLike, log: EventLog, timeout_s: float) -> None:
    """Start from a whole cluster: no link faults, every node running."""
    cluster.apply_faults(FaultState())
    for s in cluster.status(timeout_s=CHAOS_STATUS_TIMEOUT_MS / 1000.0):
        if s.process == "down":
            cluster.start(s.id)
            log.add("setup", f"{s.id} was down: started", [s.id])
        elif s.process == "paused":
            cluster.resume(s.id)
            log.add("setup", f"{s.id} was paused: resumed", [s.id])
    lead = _first_leader(cluster, timeout_s)
    if lead is None:
        raise ChaosError(f"the cluster has no leader after {timeout_s:g}s; "
                         "the run needs a working cluster to start from")
    log.add("setup", f"links healed, all nodes running, {lead} leads", [lead])


def _unsafe_notes(cluster: ClusterLike) -> list[str]:
    """A note for each node running with test-only bugs put back (node/state/kv.py)."""
    return [f"{s.id} runs with the test-only bugs {', '.join(s.status['unsafe_bugs'])} "
            "(RAFTCTL_TEST_UNSAFE_BUGS): findings are expected"
            for s in cluster.status(timeout_s=CHAOS_STATUS_TIMEOUT_MS / 1000.0)
            if s.status is not None and s.status.get("unsafe_bugs")]


def _until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)  # the schedule's clock, not a synchronisation


def run_chaos(cluster: ClusterLike, factory: ClientFactory, opts: ChaosOptions,
              on_event: Callable[[FaultEvent], None] | None = None,
              endpoint: Endpoint | None = None,
              power: PowerLoss | str = NO_POWER_LOSS[POWER_LOSS],
              members: MembersLike | None = None) -> RunRecord:
    """One nemesis run; returns what it recorded (`chaos.report.judge` it).
    `endpoint` is how the set and churn workloads reach the cluster; `power`
    cuts the power of nodes on power-loss mounts, or says why there are none;
    `members` makes the membership faults (the supervisor's changes).
    Raises ChaosError if the cluster is not in a state to start from or the
    options cannot be run on it. Ctrl-C ends the fault phase early; healing,
    recovery and the record still follow."""
    nodes = cluster.node_ids()
    if CLOCK in opts.mix:
        why = (cluster.clock_unavailable() if isinstance(cluster, ClockLike) else
               "the nodes run on this machine, and it has one clock; it needs a cluster on "
               "hosts with kernels of their own (docs/DEPLOY.md)")
        if why is not None:
            raise ChaosError(f"clock skew is unavailable: {why}")
    try:
        names = parse_workloads(opts.workload)
        schedule = Schedule(opts.seed, nodes, opts.mix, opts.interval_s,
                            {POWER_LOSS: power} if isinstance(power, str) else {})
    except ValueError as e:
        raise ChaosError(str(e)) from None
    history = History()
    log = EventLog(history.now_s, on_event)
    keys = [f"{opts.key_prefix}/k{i}" for i in range(opts.keys)] if REGISTER in names else []
    set_keys = [f"{opts.key_prefix}/s{i}" for i in range(opts.keys)] if uses_sets(names) else []
    txn_keys = ([f"{opts.key_prefix}/t{i}" for i in range(opts.keys)]
                if TXN_WORKLOAD in names else [])
    lock_name = opts.key_prefix if LOCK_WORKLOAD in names else ""
    spec = WorkloadSpec(factory, history, keys, opts.clients, opts.seed, Pacer(opts.rate),
                        set_keys, endpoint, opts.sizes, opts.depth, txn_keys, lock_name,
                        read_nodes=nodes)
    try:
        workload = WorkloadMix(names, spec)
    except ValueError as e:
        raise ChaosError(str(e)) from None
    rec = RunRecord(seed=opts.seed, duration_s=opts.duration_s, interval_s=opts.interval_s,
                    nemesis=dict(opts.mix), workload=",".join(names), clients=opts.clients,
                    keys=keys, set_keys=set_keys, txn_keys=txn_keys, lock_name=lock_name,
                    shares=workload.shares,
                    rate=opts.rate,
                    value_sizes=opts.sizes.describe(), depth=opts.depth, nodes=nodes,
                    recovery_bound_s=opts.recovery_timeout_s, notes=list(schedule.notes))
    for note in schedule.notes:
        log.add("skip", note)
    _prepare(cluster, log, opts.recovery_timeout_s)
    rec.notes += _unsafe_notes(cluster)

    monitor = Monitor(cluster, log)
    nemesis = Nemesis(cluster, log, power if isinstance(power, PowerLoss) else None,
                      members=members)
    monitor.start()
    workload.start()
    start = history.t0
    failed: list[str] = []
    try:
        while (t := schedule.next_time()) < opts.duration_s:
            _until(start + t)
            step = schedule.next(monitor.view())
            window = nemesis.inject(step)
            _until(start + min(step.heal_s, opts.duration_s))
            failed += nemesis.heal(step, window)
        _until(start + opts.duration_s)
    except KeyboardInterrupt:
        # Ctrl-C ends the fault phase early; healing and the verdict still run.
        log.add("stop", "interrupted: the fault phase ended early")
    finally:
        if not workload.stop(CHAOS_OP_TIMEOUT_MS / 1000.0 + 5.0):
            rec.problems.append("a client was still running after the run; its last "
                                "operation is missing from the history")
        rec.problems += workload.errors
        log.add("stop", f"clients stopped ({len(history.ops)} operations)")
        failed += nemesis.heal_all()
    rec.problems += [f"heal failed: {f}" for f in failed]
    rec.healed_s = round(history.now_s(), 3)
    _recover(factory, history, log, monitor, rec, opts)
    monitor.stop()
    rec.durable = monitor.durable
    rec.faults = nemesis.windows
    rec.events = log.events
    rec.samples = monitor.samples
    rec.digests = monitor.digests
    rec.ops = sorted(history.ops, key=lambda o: o.invoke)
    return rec


def _recover(factory: ClientFactory, history: History, log: EventLog, monitor: Monitor,
             rec: RunRecord, opts: ChaosOptions) -> None:
    """After healing: the first acknowledged write (availability), the final
    linearizable read of every key, and every node at one applied index."""
    healed = time.monotonic()
    bound = opts.recovery_timeout_s
    cl: KVClient | None = None
    try:
        cl = factory()
        n = 0
        while time.monotonic() - healed < bound:
            n += 1
            op, _ = run_op(cl, history, RECOVERY_CLIENT, WRITE, f"{opts.key_prefix}/recovery",
                           f"{RECOVERY_CLIENT}-{n}")
            if op.outcome == OK:
                rec.recovery_s = round(time.monotonic() - healed, 3)
                log.add("recovered", f"a write was acknowledged {rec.recovery_s:.2f}s "
                        "after healing")
                break
        # Final reads get their own bound: recovery may have used all of its.
        deadline = time.monotonic() + bound
        for key in rec.keys:
            while True:
                op, _ = run_op(cl, history, FINAL_CLIENT, READ, key)
                if op.outcome == OK or time.monotonic() >= deadline:
                    break
        for key in rec.set_keys:
            while True:
                op = read_set_op(cl, history, FINAL_CLIENT, key)
                if op.outcome == OK or time.monotonic() >= deadline:
                    break
    except Exception as e:  # a client that cannot even be made: recorded, judged
        rec.problems.append(f"recovery client failed: {type(e).__name__}: {e}")
    finally:
        if cl is not None:
            cl.close()
    rec.converged, rec.final_digests = _converge(monitor, rec.nodes, bound)
    if rec.converged:
        idx = next(iter(rec.final_digests.values())).applied
        log.add("converged", f"all nodes applied index {idx}")


def _converge(monitor: Monitor, nodes: list[str],
              timeout_s: float) -> tuple[bool, dict[str, DigestSample]]:
    """Wait until every node reports the same applied index (no client
    writes any more, so they must get there); the digests taken then."""
    deadline = time.monotonic() + timeout_s
    while True:
        monitor.poll(with_digests=False)
        last: dict[str, DigestSample] = {}
        for n in nodes:
            d = monitor.digest(n)
            if d is not None:
                last[n] = d
        if len(last) == len(nodes) and len({d.applied for d in last.values()}) == 1:
            return True, last
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(0.1)  # polling cadence
