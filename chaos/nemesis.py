"""Nemesis runs against a real cluster: a seeded schedule of process and link
faults while the workload's clients write and read, then heal, recovery and
the record that `chaos.report.judge` decides on. It is handed a cluster-like
object and a client factory; it never imports the CLI or the supervisor.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from chaos import faults
from chaos.faults import FaultState, Link, Netem
from chaos.linearizability import OK, READ, WRITE
from chaos.report import (
    FINAL_CLIENT,
    RECOVERY_CLIENT,
    DigestSample,
    FaultEvent,
    NodeSample,
    RunRecord,
    StatusSample,
)
from chaos.workload import ClientFactory, History, KVClient, Workload, run_op
from node.config import (
    CHAOS_CLIENT_OPS_PER_S,
    CHAOS_DIGEST_EVERY_POLLS,
    CHAOS_OP_TIMEOUT_MS,
    CHAOS_STATUS_POLL_MS,
    CHAOS_STATUS_TIMEOUT_MS,
)

KINDS = ("kill", "pause", "partition", "netem", "majority", "clock")
DEFAULT_KINDS = ("kill", "pause", "partition", "netem")
# `all`: every kind but clock, which sets real machines' clocks: only by name.
ALL_KINDS = tuple(k for k in KINDS if k != "clock")
# The kinds that take processes down (killed or paused).
_PROCESS_KINDS = ("kill", "pause", "majority")
PARTITIONS = ("halves", "isolate-leader", "bridge", "ring", "one-way")


class NodeStateLike(Protocol):
    """One node as the supervisor sees it (raftctl's NodeState fits)."""

    @property
    def id(self) -> str: ...
    @property
    def process(self) -> str: ...  # running | paused | down
    @property
    def status(self) -> dict[str, Any] | None: ...


class ClusterLike(Protocol):
    """What a nemesis run needs of a cluster (raftctl's Cluster fits)."""

    def node_ids(self) -> list[str]: ...
    def kill(self, node_id: str) -> int: ...
    def start(self, node_id: str) -> int: ...
    def pause(self, node_id: str) -> int: ...
    def resume(self, node_id: str) -> int: ...
    def apply_faults(self, state: FaultState) -> list[str]: ...
    def status(self, timeout_s: float = ...) -> Sequence[NodeStateLike]: ...
    def digest(self, node_id: str) -> dict[str, Any] | None: ...


@runtime_checkable
class ClockLike(Protocol):
    """A cluster whose nodes' clocks can be set apart (the `clock` kind):
    raftctl's cluster on hosts fits, a cluster on one machine does not."""

    def clock_unavailable(self) -> str | None: ...
    def skew_clock(self, node_id: str, offset_s: float) -> None: ...


class ChaosError(Exception):
    """The run cannot start or go on; the message says why."""


def parse_kinds(text: str) -> tuple[str, ...]:
    """`kill,pause,partition,netem` (or `all`) -> the nemesis kinds, checked."""
    if text.strip() == "all":
        return ALL_KINDS
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown nemesis {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(KINDS)} or all")
    return kinds


class EventLog:
    """Fault events and observations on the run's clock, from any thread."""

    def __init__(self, clock: Callable[[], float],
                 on_event: Callable[[FaultEvent], None] | None = None) -> None:
        self.clock = clock
        self.events: list[FaultEvent] = []
        self._lock = threading.Lock()
        self._on_event = on_event

    def add(self, kind: str, detail: str, targets: Sequence[str] = (),
            error: str | None = None) -> FaultEvent:
        ev = FaultEvent(t=round(self.clock(), 3), kind=kind, detail=detail,
                        targets=list(targets), error=error)
        with self._lock:
            self.events.append(ev)
        if self._on_event is not None:
            self._on_event(ev)
        return ev


def _role(st: dict[str, Any] | None) -> str | None:
    return None if st is None else str(st.get("role"))


class Monitor:
    """Polls every node's status (and now and then its state-machine digest)
    on a thread, and logs each change of the observed leader."""

    def __init__(self, cluster: ClusterLike, log: EventLog,
                 interval_s: float = CHAOS_STATUS_POLL_MS / 1000.0) -> None:
        self.cluster = cluster
        self.log = log
        self.interval_s = interval_s
        self.samples: list[StatusSample] = []
        self.digests: list[DigestSample] = []
        self.leader: str | None = None
        self._shown: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self._polls = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as e:  # a monitor hiccup must not end the run; it is logged
                self.log.add("monitor", f"status poll failed: {type(e).__name__}: {e}")
            self._stop.wait(self.interval_s)  # the polling cadence

    def poll(self, with_digests: bool | None = None) -> StatusSample:
        """One sample of every node; with_digests None: every few polls."""
        with self._lock:
            return self._poll(with_digests)

    def _poll(self, with_digests: bool | None) -> StatusSample:
        states = self.cluster.status(timeout_s=CHAOS_STATUS_TIMEOUT_MS / 1000.0)
        t = self.log.clock()
        nodes: dict[str, NodeSample] = {}
        for s in states:
            st = s.status
            nodes[s.id] = NodeSample(
                process=s.process, role=_role(st),
                term=None if st is None else int(st["term"]),
                applied=None if st is None else int(st["applied"]),
                commit=None if st is None else int(st["commit"]))
        sample = StatusSample(t=round(t, 3), nodes=nodes)
        self.samples.append(sample)
        self._note_leader(nodes)
        self._polls += 1
        if with_digests or (with_digests is None and self._polls % CHAOS_DIGEST_EVERY_POLLS == 0):
            for n, ns in nodes.items():
                if ns.role is not None:
                    self.digest(n)
        return sample

    def digest(self, node: str) -> DigestSample | None:
        d = self.cluster.digest(node)
        if d is None:
            return None
        ds = DigestSample(t=round(self.log.clock(), 3), node=node, applied=int(d["applied"]),
                          digest=str(d["digest"]))
        self.digests.append(ds)
        return ds

    def _note_leader(self, nodes: dict[str, NodeSample]) -> None:
        leaders = sorted(((ns.term or 0, n) for n, ns in nodes.items() if ns.role == "leader"),
                         reverse=True)
        top = (leaders[0][1], leaders[0][0]) if leaders else None
        self.leader = top[0] if top else None
        if top == self._shown:
            return
        self._shown = top
        if top is None:
            self.log.add("leader", "no leader")
            return
        stale = ", ".join(f"{n} (term {t})" for t, n in leaders[1:])
        detail = f"{top[0]} leads (term {top[1]})" + (f"; {stale} still thinks it leads"
                                                       if stale else "")
        self.log.add("leader", detail, [top[0]])


@dataclass
class _Down:
    """A process fault in force: its kind and the nodes it took down."""

    kind: str
    nodes: list[str]


class Nemesis:
    """Injects and repairs faults, one decision a step, from a seeded rng.

    Each step picks one of the enabled kinds: if a fault of that kind is in
    force it is repaired (restart, resume, heal the links, clear netem),
    otherwise one is injected. Faults of different kinds overlap. Killed and
    paused nodes together never exceed a minority, unless the `majority`
    kind (kill a majority at once) is enabled.
    """

    def __init__(self, cluster: ClusterLike, kinds: Sequence[str], rng: random.Random,
                 log: EventLog) -> None:
        self.cluster = cluster
        self.kinds = tuple(kinds)
        self.rng = rng
        self.log = log
        self.nodes = cluster.node_ids()
        self.max_down = (len(self.nodes) - 1) // 2
        self.down: dict[str, _Down] = {}  # kind -> fault in force
        self.blocked: set[Link] = set()
        self.partition_desc = ""
        self.netem: dict[str, Netem] = {}
        self.netem_desc = ""
        self.skewed: tuple[str, float] | None = None  # (node, seconds) its host is off by

    # --- the schedule -------------------------------------------------------------

    def step(self, leader: str | None) -> None:
        kind = self.rng.choice(self.kinds)
        if self._active(kind):
            self._repair(kind)
            return
        if kind in _PROCESS_KINDS and kind != "majority" and not self._may_take_down(1):
            # No budget for another node down: repair the oldest process fault.
            if self.down:
                self._repair(next(iter(self.down)))
            else:
                self.log.add("skip", f"no {kind}: {len(self.nodes)} nodes have no minority "
                             "to take down")
            return
        self._inject(kind, leader)

    def _active(self, kind: str) -> bool:
        if kind in _PROCESS_KINDS:
            return kind in self.down
        if kind == "partition":
            return bool(self.blocked)
        if kind == "clock":
            return self.skewed is not None
        return bool(self.netem)

    def _down_nodes(self) -> set[str]:
        return {n for d in self.down.values() for n in d.nodes}

    def _may_take_down(self, k: int) -> bool:
        return len(self._down_nodes()) + k <= self.max_down

    def _up(self) -> list[str]:
        down = self._down_nodes()
        return [n for n in self.nodes if n not in down]

    def _target(self, leader: str | None) -> str | None:
        up = self._up()
        if not up:
            return None
        # Half the time the leader: the fault that matters most.
        if leader in up and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(up)

    # --- injecting -------------------------------------------------------------------

    def _inject(self, kind: str, leader: str | None) -> None:
        if kind == "kill":
            self._kill_nodes(kind, [self._target(leader)])
        elif kind == "pause":
            t = self._target(leader)
            if t is not None and self._do("pause", f"{t} paused (SIGSTOP)", [t],
                                          lambda: self.cluster.pause(t)):
                self.down[kind] = _Down(kind, [t])
        elif kind == "majority":
            k = len(self.nodes) // 2 + 1
            up = self._up()
            first = [leader] if leader in up else []
            rest = [n for n in up if n not in first]
            self.rng.shuffle(rest)
            self._kill_nodes(kind, (first + rest)[:k])
        elif kind == "partition":
            self._partition(leader)
        elif kind == "clock":
            self._skew(leader)
        else:
            self._netem()

    def _kill_nodes(self, kind: str, targets: Sequence[str | None]) -> None:
        killed: list[str] = []
        for t in targets:
            if t is not None and self._do("kill", f"{t} killed (SIGKILL)", [t],
                                          functools.partial(self.cluster.kill, t)):
                killed.append(t)
        if killed:
            self.down[kind] = _Down(kind, killed)

    def _partition(self, leader: str | None) -> None:
        nodes = list(self.nodes)
        if len(nodes) < 2:
            self.log.add("skip", "no partition: a single node has no links")
            return
        # A bridge needs 3 nodes; in a ring of fewer than 5 every node sees
        # every other, so it would cut nothing.
        needs = {"bridge": 3, "ring": 5}
        variants = [v for v in PARTITIONS if len(nodes) >= needs.get(v, 2)]
        variant = self.rng.choice(variants)
        self.rng.shuffle(nodes)
        if variant == "halves":
            groups = faults.random_partition(nodes, self.rng)
            links = faults.partition(groups, self.nodes)
            desc = "partition " + " | ".join(",".join(g) for g in groups)
        elif variant == "isolate-leader":
            victim = leader if leader is not None else nodes[0]
            links = faults.isolate(victim, self.nodes)
            desc = f"{victim} isolated" + (" (the leader)" if victim == leader else "")
        elif variant == "bridge":
            links = faults.bridge(nodes)
            desc = f"bridge through {nodes[len(nodes) // 2]} ({','.join(nodes)})"
        elif variant == "ring":
            links = faults.majorities_ring(nodes)
            desc = f"majorities ring {'-'.join(nodes)}"
        else:
            src = leader if leader is not None and self.rng.random() < 0.5 else nodes[0]
            dst = self.rng.choice([n for n in nodes if n != src])
            links = faults.one_way(src, dst)
            desc = f"{src}->{dst} blocked one way"
        self.blocked, self.partition_desc = set(links), desc
        self._push("partition", desc, sorted({a for a, _ in links}))

    def _skew(self, leader: str | None) -> None:
        t = self._target(leader)
        clock = self.cluster
        if t is None or not isinstance(clock, ClockLike):
            return
        offset = round(self.rng.uniform(2.0, 30.0), 1) * self.rng.choice((-1, 1))
        if self._do("clock", f"{t}'s host clock {offset:+g}s", [t],
                    lambda: clock.skew_clock(t, offset)):
            self.skewed = (t, offset)

    def _netem(self) -> None:
        rng = self.rng
        chosen = [k for k in ("delay", "loss", "duplicate", "reorder") if rng.random() < 0.5]
        if not chosen:
            chosen = [rng.choice(("delay", "loss", "duplicate", "reorder"))]
        delay = round(rng.uniform(5.0, 50.0)) if "delay" in chosen else 0.0
        rates = Netem(
            delay_ms=delay, jitter_ms=round(delay / 2) if delay else 0.0,
            loss=round(rng.uniform(0.02, 0.2), 2) if "loss" in chosen else 0.0,
            duplicate=round(rng.uniform(0.02, 0.2), 2) if "duplicate" in chosen else 0.0,
            reorder=round(rng.uniform(0.05, 0.3), 2) if "reorder" in chosen else 0.0)
        parts = []
        if rates.delay_ms:
            parts.append(f"delay {rates.delay_ms:g}±{rates.jitter_ms:g}ms")
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(rates, name)
            if p:
                parts.append(f"{name} {p * 100:g}%")
        self.netem = {f"{a}>{b}": rates for a, b in faults.all_links(self.nodes)}
        self.netem_desc = "netem " + " ".join(parts) + " on all links"
        self._push("netem", self.netem_desc, [])

    # --- repairing -----------------------------------------------------------------

    def _repair(self, kind: str) -> None:
        if kind in ("kill", "majority"):
            d = self.down[kind]
            left = [n for n in d.nodes
                    if not self._do("start", f"{n} restarted", [n],
                                    functools.partial(self.cluster.start, n))]
            if left:
                d.nodes = left
            else:
                del self.down[kind]
        elif kind == "pause":
            d = self.down[kind]
            n = d.nodes[0]
            if self._do("resume", f"{n} resumed (SIGCONT)", [n], lambda: self.cluster.resume(n)):
                del self.down[kind]
        elif kind == "partition":
            self.blocked, self.partition_desc = set(), ""
            self._push("heal-partition", "partition healed", [])
        elif kind == "clock":
            t, offset = self.skewed or ("", 0.0)
            clock = self.cluster
            if isinstance(clock, ClockLike) and self._do(
                    "clock-reset", f"{t}'s host clock set back", [t],
                    lambda: clock.skew_clock(t, -offset)):
                self.skewed = None
        else:
            self.netem, self.netem_desc = {}, ""
            self._push("clear-netem", "netem cleared", [])

    def heal(self) -> list[str]:
        """Undo every fault: links first (a node started later loads them),
        then start killed and resume paused nodes. Returns what failed."""
        failed: list[str] = []
        self.blocked, self.netem = set(), {}
        self.partition_desc = self.netem_desc = ""
        if not self._do("heal", "healed every link", [],
                        lambda: self.cluster.apply_faults(FaultState())):
            failed.append("healing the links")
        for kind in list(self.down):
            self._repair(kind)
            if kind in self.down:
                failed.append(f"repairing {kind} of {', '.join(self.down[kind].nodes)}")
        if self.skewed is not None:
            self._repair("clock")
            if self.skewed is not None:
                failed.append(f"setting back the clock of {self.skewed[0]}'s host")
        return failed

    # --- doing -------------------------------------------------------------------

    def _state(self) -> FaultState:
        desc = [d for d in (self.partition_desc, self.netem_desc) if d]
        return FaultState(blocked=sorted(self.blocked), netem=dict(self.netem), description=desc)

    def _push(self, kind: str, detail: str, targets: list[str]) -> None:
        state = self._state()
        self._do(kind, detail, targets, lambda: self.cluster.apply_faults(state))

    def _do(self, kind: str, detail: str, targets: list[str], action: Callable[[], object]) -> bool:
        try:
            action()
        except Exception as e:  # recorded as a failed action; the run goes on
            self.log.add(kind, detail, targets, error=f"{type(e).__name__}: {e}")
            return False
        self.log.add(kind, detail, targets)
        return True


@dataclass
class ChaosOptions:
    duration_s: float = 60.0
    interval_s: float = 5.0
    kinds: tuple[str, ...] = DEFAULT_KINDS
    seed: int = 0
    clients: int = 4
    keys: int = 5
    recovery_timeout_s: float = 10.0
    rate: float = CHAOS_CLIENT_OPS_PER_S  # per client; 0: as fast as answers come
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


def _until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)  # the schedule's clock, not a synchronisation


def run_chaos(cluster: ClusterLike, factory: ClientFactory, opts: ChaosOptions,
              on_event: Callable[[FaultEvent], None] | None = None) -> RunRecord:
    """One nemesis run; returns what it recorded (`chaos.report.judge` it).
    Raises ChaosError if the cluster is not in a state to start from. Ctrl-C
    ends the fault phase early; healing, recovery and the record still follow."""
    history = History()
    log = EventLog(history.now_s, on_event)
    nodes = cluster.node_ids()
    keys = [f"{opts.key_prefix}/k{i}" for i in range(opts.keys)]
    rec = RunRecord(seed=opts.seed, duration_s=opts.duration_s, interval_s=opts.interval_s,
                    nemeses=list(opts.kinds), clients=opts.clients, keys=keys, nodes=nodes,
                    recovery_bound_s=opts.recovery_timeout_s)
    if "clock" in opts.kinds:
        why = (cluster.clock_unavailable() if isinstance(cluster, ClockLike) else
               "the nodes run on this machine, and it has one clock; it needs a cluster on "
               "hosts of their own (docs/DEPLOY.md)")
        if why is not None:
            raise ChaosError(f"clock skew is unavailable: {why}")
    _prepare(cluster, log, opts.recovery_timeout_s)

    monitor = Monitor(cluster, log)
    nemesis = Nemesis(cluster, opts.kinds, random.Random(opts.seed), log)
    workload = Workload(factory, history, keys, opts.clients, opts.seed, opts.rate)
    monitor.start()
    workload.start()
    start = history.t0
    try:
        k = 1
        while k * opts.interval_s < opts.duration_s:
            _until(start + k * opts.interval_s)
            nemesis.step(monitor.leader)
            k += 1
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
        failed = nemesis.heal()
    rec.problems += [f"heal failed: {f}" for f in failed]
    rec.healed_s = round(history.now_s(), 3)
    _recover(factory, history, log, monitor, rec, opts)
    monitor.stop()
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
            op = run_op(cl, history, RECOVERY_CLIENT, WRITE, f"{opts.key_prefix}/recovery",
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
                op = run_op(cl, history, FINAL_CLIENT, READ, key)
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
