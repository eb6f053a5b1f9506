"""`raftctl bench write` (throughput and latency under a pipelined load), the
reports of every benchmark (their `--json` schemas) and what they share:
status over kept-open control sockets. failover.py and up.py hold the
others. Measured on real node processes; never prints (the CLI renders)."""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psutil
import zmq

from node.control import StatusRequest, decode_response, encode_request
from node.transport.zmq import make_client_socket
from raftctl.bench.loadgen import (
    LOADGEN_MAX_CLIENTS,
    READ_NODES,
    LoadError,
    LoadResult,
    LoadSpec,
)
from raftctl.bench.procs import run_procs
from raftctl.bench.shapes import SHAPES, run_per_connection, run_pipelined
from raftctl.cluster import Cluster, ClusterError

# Timing of the benchmarks.
BENCH_STATUS_POLL_MS = 200  # leader changes during `bench write` are sampled this often
BENCH_STATUS_TIMEOUT_MS = 500  # a node that does not answer a status request by then is down
BENCH_STATUS_RESEND_MS = 5  # a status request to a node not yet connected is tried this often
BENCH_LEADER_WAIT_MS = 10_000  # the cluster must have a leader before a benchmark starts
BENCH_STOP_WAIT_MS = 10_000  # a throwaway node stopped with SIGTERM, then SIGKILL
BENCH_FAILOVER_POLL_MS = 5  # how often `bench failover` asks the survivors who leads
BENCH_FAILOVER_ATTEMPT_TIMEOUT_MS = 50  # the failover writer moves on from a silent node
BENCH_FAILOVER_BACKOFF_MS = 10
BENCH_TRIAL_TIMEOUT_MS = 15_000  # a new leader, a write, a catch-up must happen within this
BENCH_UP_TIMEOUT_MS = 20_000  # a fresh cluster must acknowledge a write within this


LEADER_WAIT_S = BENCH_LEADER_WAIT_MS / 1000
STATUS_TIMEOUT_S = BENCH_STATUS_TIMEOUT_MS / 1000
STOP_WAIT_S = BENCH_STOP_WAIT_MS / 1000


# --- reports (the `--json` schemas) ---------------------------------------------------


class LatencyMs(msgspec.Struct, frozen=True):
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


class TermLeader(msgspec.Struct, frozen=True):
    term: int
    leader: str


class NodeCpu(msgspec.Struct, frozen=True):
    node: str
    pid: int | None
    cpu_s: float | None  # None: the node was down or restarted during the run
    percent: float | None  # of one core


class NodeLoop(msgspec.Struct, frozen=True):
    """What a node's status said during a run, sampled every
    BENCH_STATUS_POLL_MS: its longest loop turn, the longest silence of
    its leader (the gap an election timeout is measured against, §5.2),
    the snapshots it made or took, and at the end its keys and memory.
    None where the node never said (down, or a version without it)."""

    node: str
    loop_max_busy_ms: float | None
    loop_max_cpu_ms: float | None  # of the loop's thread in its longest-working turn
    leader_gap_max_ms: float | None
    snapshots: int
    keys: int | None
    rss_mib: float | None
    gc_max_ms: float | None = None  # the longest garbage collection (node/gc_pauses.py)
    # The longest write + fdatasync of its WAL, on the loop thread: a disk
    # that makes the loop wait holds back its heartbeats too.
    wal_sync_max_ms: float | None = None


class OtherRun(msgspec.Struct, frozen=True, kw_only=True):
    """The same load on another system (`--against`), its last round."""

    system: str  # "etcd"
    version: str
    endpoints: list[str]
    leader: str
    started_here: bool  # a cluster this run started (and stopped) on this machine
    nodes: int
    shape: str
    ops: int
    writes: int
    reads: int
    ops_per_s: float
    latency_ms: LatencyMs
    errors: int
    errors_by_code: dict[str, int]
    unknown: int
    reads_by_node: dict[str, int]
    server_cpu_s: float | None  # its members' CPU, when they run on this machine
    server_cpu_us_per_op: float | None
    loadgen_cpu_percent: float
    loadgen_saturated: bool


class RoundPair(msgspec.Struct, frozen=True):
    """One round of `--against`: raftctl's run, then the other's, back to back."""

    raftctl_ops_per_s: float
    other_ops_per_s: float
    ratio: float  # raftctl / other


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    rounds: list[RoundPair]
    ratio_median: float
    cpu_per_op_ratio: float | None  # raftctl's server CPU per op / the other's, last round
    other: OtherRun


class WriteReport(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "write"
    shape: str = "virtual"  # of the load (raftctl/bench/shapes.py)
    cluster: str
    nodes: int
    fsync: str
    clients: int
    procs: int
    duration_s: float
    elapsed_s: float
    value_size: int
    keys: int
    read_ratio: float
    ops: int
    writes: int
    reads: int
    ops_per_s: float
    reads_per_s: float
    read_nodes: str  # "leader" or "all" (raftctl/bench/loadgen.py READ_NODES)
    reads_by_node: dict[str, int]
    latency_ms: LatencyMs
    errors: int
    errors_by_code: dict[str, int]
    unknown: int
    retries: int
    leader_changes: int
    leaders_seen: list[TermLeader]
    node_cpu: list[NodeCpu]
    loadgen_cpu_s: float
    loadgen_cpu_percent: float  # of one core, summed over its processes
    loadgen_saturated: bool
    # The longest silence of a leader seen by any follower, and each node's loop.
    heartbeat_gap_max_ms: float | None
    node_loop: list[NodeLoop]
    # Every node's CPU time over the run per acknowledged operation (None if a
    # node was down or restarted), and with --against, the other system's run.
    server_cpu_us_per_op: float | None = None
    against: Comparison | None = None


class Summary(msgspec.Struct, frozen=True):
    median: float | None
    worst: float | None


class FailoverTrial(msgspec.Struct, frozen=True, kw_only=True):
    trial: int
    victim: str
    old_term: int
    new_leader: str | None
    new_term: int | None
    leader_ms: float | None  # kill -> a survivor reports itself leader of a later term
    write_ms: float | None  # kill -> a write acknowledged by a survivor
    catch_up_ms: float | None  # restart -> its applied index reached the leader's commit


class FailoverReport(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "failover"
    cluster: str
    nodes: int
    trials: int
    completed: int  # trials with both a new leader and a write seen
    leader_ms: Summary
    write_ms: Summary
    writes: int
    unknown: int
    errors: int
    results: list[FailoverTrial]


class UpTrial(msgspec.Struct, frozen=True, kw_only=True):
    trial: int
    spawned_ms: float  # start of `up` -> every node process spawned
    first_write_ms: float | None  # start of `up` -> first acknowledged write


class UpReport(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "up"
    nodes: int
    fsync: str
    trials: int
    completed: int
    first_write_ms: Summary
    results: list[UpTrial]


def to_json(report: WriteReport | FailoverReport | UpReport) -> Any:
    return msgspec.to_builtins(report)


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def summarize(values: list[float | None]) -> Summary:
    got = [v for v in values if v is not None]
    if not got:
        return Summary(None, None)
    return Summary(round(statistics.median(got), 3), max(got))


# --- status over kept-open control sockets ----------------------------------------------


class StatusPoller:
    """Status requests to many nodes at once over control sockets kept open
    (`Cluster.control` makes a socket, and a CURVE handshake, per call).
    IMMEDIATE: nothing queues for a node that is down, to arrive in a burst
    when it restarts. Use from one thread only."""

    def __init__(self, c: Cluster) -> None:
        keys = c.keys()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socks = {n.id: make_client_socket(ctx, n.control_addr(), keys, immediate=True)
                       for n in c.config().nodes}
        self._poller = zmq.Poller()
        for s in self._socks.values():
            self._poller.register(s, zmq.POLLIN)
        self._ids = itertools.count(1)

    def status(self, nodes: list[str] | None = None,
               timeout_s: float = STATUS_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """The status of each node (of `nodes`, default all) that answered
        within `timeout_s`. A node not connected yet (just created, or
        restarting) is tried again every few milliseconds meanwhile."""
        unsent = list(nodes) if nodes is not None else list(self._socks)
        waiting: dict[int, str] = {}
        out: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while unsent or waiting:
            still = []
            for n in unsent:
                rid = next(self._ids)
                try:
                    self._socks[n].send(encode_request(StatusRequest(id=rid)), zmq.NOBLOCK)
                except zmq.Again:
                    still.append(n)  # not connected (IMMEDIATE): down, or not yet up
                    continue
                waiting[rid] = n
            unsent = still
            left_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            wait_ms = min(left_ms, BENCH_STATUS_RESEND_MS) if unsent else left_ms
            for sock, _ in self._poller.poll(wait_ms):
                while True:
                    try:
                        resp = decode_response(sock.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    except msgspec.DecodeError:
                        continue
                    node = waiting.pop(resp.id, None)
                    if node is not None and resp.ok and resp.data is not None:
                        out[node] = resp.data
        return out

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=0)


class _NodeSamples:
    """One node's status samples, folded as they come (see `NodeLoop`)."""

    def __init__(self) -> None:
        self.busy_ms: float | None = None
        self.cpu_ms: float | None = None
        self.gap_ms: float | None = None
        self.snapshot_index: int | None = None
        self.gc_ms: float | None = None
        self.sync_ms: float | None = None
        self.snapshots = 0
        self.keys: int | None = None
        self.pid: int | None = None

    def add(self, st: dict[str, Any]) -> None:
        self.busy_ms = _max_of(self.busy_ms, st.get("loop_max_busy_ms"))
        self.cpu_ms = _max_of(self.cpu_ms, st.get("loop_max_cpu_ms"))
        self.gap_ms = _max_of(self.gap_ms, st.get("leader_gap_max_ms"))
        self.gc_ms = _max_of(self.gc_ms, st.get("gc_max_ms"))
        self.sync_ms = _max_of(self.sync_ms, st.get("wal_sync_max_ms"))
        index = st.get("snapshot_index")
        if isinstance(index, int):
            if self.snapshot_index is not None and index > self.snapshot_index:
                self.snapshots += 1
            self.snapshot_index = index
        keys, pid = st.get("keys"), st.get("pid")
        self.keys = keys if isinstance(keys, int) else self.keys
        self.pid = pid if isinstance(pid, int) else self.pid


def _max_of(a: float | None, b: object) -> float | None:
    if not isinstance(b, (int, float)):
        return a
    return float(b) if a is None else max(a, float(b))


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        rss: int = psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None
    return round(rss / (1024 * 1024), 1)


class _LeaderWatch(threading.Thread):
    """Samples every node's status every BENCH_STATUS_POLL_MS: the (term,
    leader) pairs seen, and each node's loop (`NodeLoop`). The first sample
    resets the peaks a status read resets, so they cover the run alone."""

    def __init__(self, c: Cluster) -> None:
        super().__init__(name="bench-leader-watch", daemon=True)
        self._cluster = c
        self._stop_event = threading.Event()
        self._ready = threading.Event()
        self.seen: set[tuple[int, str]] = set()
        self.nodes: dict[str, _NodeSamples] = {}
        self._counting = False
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            poller = StatusPoller(self._cluster)
        except Exception as e:  # handed to the caller, which raises it
            self.error = e
            self._ready.set()
            return
        try:
            # A first sample before the load starts: the leader it sees is no change.
            deadline = time.monotonic() + LEADER_WAIT_S
            while not self.seen and time.monotonic() < deadline:
                self._sample(poller)
            self._counting = True
            self._ready.set()
            while not self._stop_event.wait(BENCH_STATUS_POLL_MS / 1000):
                self._sample(poller)
            self._sample(poller)
        finally:
            self._ready.set()
            poller.close()

    def _sample(self, poller: StatusPoller) -> None:
        for node, st in poller.status().items():
            if st.get("leader"):
                self.seen.add((int(st["term"]), str(st["leader"])))
            if self._counting:
                self.nodes.setdefault(node, _NodeSamples()).add(st)

    def node_loop(self) -> list[NodeLoop]:
        """Each node's loop over the run, its memory now."""
        out = []
        for n in self._cluster.node_ids():
            got = self.nodes.get(n, _NodeSamples())
            out.append(NodeLoop(n, got.busy_ms, got.cpu_ms, got.gap_ms, got.snapshots, got.keys,
                                _rss_mib(got.pid), got.gc_ms, got.sync_ms))
        return out

    def wait_ready(self) -> None:
        self._ready.wait()
        if self.error is not None:
            raise ClusterError(f"cannot watch the cluster's status: {self.error}")

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --- bench write --------------------------------------------------------------------------


class _CpuMeter:
    """CPU seconds of each node process between start() and stop()."""

    def __init__(self, c: Cluster) -> None:
        self._cluster = c
        self._before: dict[str, tuple[psutil.Process, float]] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        for n in self._cluster.node_ids():
            pid, state = self._cluster.process_state(n)
            if pid is None or state == "down":
                continue
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                t = p.cpu_times()
                self._before[n] = (p, t.user + t.system)

    def stop(self) -> list[NodeCpu]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        out = []
        for n in self._cluster.node_ids():
            got = self._before.get(n)
            if got is None:
                out.append(NodeCpu(n, None, None, None))
                continue
            p, before = got
            try:
                # is_running() also checks the start time: a restarted node is
                # another process, and its CPU time is not comparable.
                if not p.is_running():
                    raise psutil.NoSuchProcess(p.pid)
                t = p.cpu_times()
            except psutil.Error:
                out.append(NodeCpu(n, p.pid, None, None))
                continue
            used = t.user + t.system - before
            out.append(NodeCpu(n, p.pid, round(used, 3), round(100.0 * used / wall, 1)))
        return out


def running_cluster(c: Cluster) -> None:
    if not c.running_nodes():
        raise ClusterError(f"cluster {c.name} is not up; start it with `raftctl up`")
    c.wait_for_leader(LEADER_WAIT_S)


def write_spec(
    c: Cluster,
    *,
    clients: int,
    duration_s: float,
    value_size: int,
    keys: int,
    read_ratio: float = 0.0,
    read_nodes: str = "leader",
    procs: int = 1,
    shape: str = "virtual",
) -> LoadSpec:
    """The load `bench write` runs on cluster `c`, its options checked."""
    if shape not in SHAPES:
        raise ClusterError(f"--shape must be one of {', '.join(SHAPES)}")
    if procs > 1 and shape != "virtual":
        raise ClusterError("--procs applies to --shape virtual only; the other shapes "
                           "run in one process, as an application would")
    if not 1 <= clients <= LOADGEN_MAX_CLIENTS:
        raise ClusterError(f"--clients must be between 1 and {LOADGEN_MAX_CLIENTS}")
    if duration_s <= 0:
        raise ClusterError("--duration must be positive")
    if not 0.0 <= read_ratio <= 1.0:
        raise ClusterError("--read-ratio must be between 0 and 1")
    if read_nodes not in READ_NODES:
        raise ClusterError(f"--nodes must be one of {', '.join(READ_NODES)}")
    running_cluster(c)
    return LoadSpec(nodes=c.client_addrs(), keys=c.keys(), clients=clients,
                    duration_s=duration_s, value_size=value_size, key_space=keys,
                    read_ratio=read_ratio, read_nodes=read_nodes)


def bench_write(
    c: Cluster,
    *,
    procs: int = 1,
    shape: str = "virtual",
    on_progress: Callable[[float, int], None] | None = None,
    **load: Any,
) -> WriteReport:
    """A closed-loop load of `clients` clients for `duration_s` against the
    running cluster, in one of SHAPES (`load`: write_spec's options).
    `on_progress(elapsed_s, ops)` is called a few times a second."""
    spec = write_spec(c, procs=procs, shape=shape, **load)
    return write_round(c, spec, shape, procs, on_progress)


def write_round(c: Cluster, spec: LoadSpec, shape: str, procs: int,
                on_progress: Callable[[float, int], None] | None) -> WriteReport:
    """One run of `spec` on the cluster, watched: its leaders, its nodes'
    loops and CPU."""
    cfg = c.config()
    watch = _LeaderWatch(c)
    cpu = _CpuMeter(c)
    t_go = 0.0
    watch.start()
    try:
        watch.wait_ready()

        def go() -> None:
            nonlocal t_go
            cpu.start()
            t_go = time.monotonic()

        def progress(ops: int) -> None:
            if on_progress is not None:
                on_progress(time.monotonic() - t_go, ops)

        try:
            if shape == "pipelined":
                res = run_pipelined(spec, on_start=go, on_progress=progress)
            elif shape == "per-connection":
                res = run_per_connection(spec, on_start=go, on_progress=progress)
            else:
                res = run_procs(spec, procs, on_start=go, on_progress=progress)
        except LoadError as e:
            raise ClusterError(str(e)) from None
        node_cpu = cpu.stop()
    finally:
        watch.stop()
    seen = sorted(watch.seen)
    return _write_report(c, cfg.fsync, len(cfg.nodes), spec, shape, res, node_cpu, seen,
                         watch.node_loop())


def per_op_us(cpu_s: float | None, ops: int) -> float | None:
    """CPU microseconds per operation, None when either is unknown."""
    return None if cpu_s is None or ops <= 0 else round(cpu_s * 1e6 / ops, 1)


def _write_report(c: Cluster, fsync: str, nodes: int, spec: LoadSpec, shape: str,
                  res: LoadResult,
                  node_cpu: list[NodeCpu], seen: list[tuple[int, str]],
                  node_loop: list[NodeLoop]) -> WriteReport:
    gaps = [n.leader_gap_max_ms for n in node_loop if n.leader_gap_max_ms is not None]
    h = res.latency
    wall = res.wall_s
    return WriteReport(
        shape=shape, cluster=c.name, nodes=nodes, fsync=fsync, clients=spec.clients,
        procs=res.procs,
        duration_s=spec.duration_s, elapsed_s=round(wall, 3), value_size=spec.value_size,
        keys=spec.key_space, read_ratio=spec.read_ratio, ops=res.ops, writes=res.writes,
        reads=res.reads, ops_per_s=round(res.ops / wall, 1),
        reads_per_s=round(res.reads / wall, 1), read_nodes=spec.read_nodes,
        reads_by_node=dict(sorted(res.reads_by_node.items())),
        latency_ms=LatencyMs(
            p50=h.percentile(0.50) / 1000, p90=h.percentile(0.90) / 1000,
            p99=h.percentile(0.99) / 1000, max=h.max_us / 1000,
            mean=round(h.mean_us() / 1000, 3)),
        errors=sum(res.errors.values()), errors_by_code=dict(res.errors),
        unknown=res.unknown, retries=res.retries,
        leader_changes=max(0, len(seen) - 1),
        leaders_seen=[TermLeader(t, n) for t, n in seen],
        node_cpu=node_cpu, loadgen_cpu_s=round(res.cpu_s, 3),
        loadgen_cpu_percent=round(100.0 * res.cpu_s / wall, 1),
        loadgen_saturated=res.saturated_procs > 0,
        heartbeat_gap_max_ms=max(gaps) if gaps else None, node_loop=node_loop,
        server_cpu_us_per_op=per_op_us(
            None if any(n.cpu_s is None for n in node_cpu)
            else sum(n.cpu_s or 0.0 for n in node_cpu), res.ops),
    )


