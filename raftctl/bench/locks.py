"""`raftctl bench lock`: lock acquisitions and releases a second
(node/recipes/lock.py), by one holder alone and then by N contenders of
one lock, measured through node/client.py against a running cluster. Each
holder keeps one lease for the whole phase, as a long-lived process would.
"""

from __future__ import annotations

import threading
import time
import uuid

import msgspec

from node.client import ClientError
from node.recipes.lock import Lock
from raftctl.bench.revisions import client_of, percentiles
from raftctl.bench.runs import LatencyMs, running_cluster
from raftctl.cluster import Cluster

# The holders' lease: long enough that no renewal hiccup ends a phase.
BENCH_LOCK_TTL_S = 10.0


class LockPhase(msgspec.Struct, frozen=True, kw_only=True):
    """One phase: `contenders` holders of one lock for `duration_s`; a
    cycle is acquire (queue and wait for the turn) then release."""

    contenders: int
    duration_s: float
    cycles: int
    errors: int
    cycles_per_s: float
    acquire_ms: LatencyMs


class LockReport(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "lock"
    cluster: str
    nodes: int
    uncontended: LockPhase
    contended: LockPhase


def _phase(c: Cluster, contenders: int, duration_s: float) -> LockPhase:
    name = f"bench-lock-{uuid.uuid4().hex[:8]}"
    lat: list[list[float]] = [[] for _ in range(contenders)]
    errors = [0] * contenders
    stop = threading.Event()
    ready = threading.Barrier(contenders + 1)

    def hold(i: int) -> None:
        with client_of(c) as cl, cl.kept_lease(BENCH_LOCK_TTL_S) as lease:
            lock = Lock(cl, name, lease)
            ready.wait()
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    lock.acquire()
                    lat[i].append(time.monotonic() - t0)
                    lock.release()
                except ClientError:
                    errors[i] += 1

    ts = [threading.Thread(target=hold, args=(i,), daemon=True, name=f"bench-lock-{i}")
          for i in range(contenders)]
    for t in ts:
        t.start()
    ready.wait()
    start = time.monotonic()
    stop.wait(duration_s)  # the measured interval, not a synchronisation
    stop.set()
    for t in ts:
        t.join(BENCH_LOCK_TTL_S)
    took = time.monotonic() - start
    done = sum(len(x) for x in lat)
    return LockPhase(contenders=contenders, duration_s=round(took, 3), cycles=done,
                     errors=sum(errors), cycles_per_s=round(done / took, 1),
                     acquire_ms=percentiles([x for xs in lat for x in xs]))


def bench_lock(c: Cluster, *, contenders: int, duration_s: float) -> LockReport:
    """One holder alone for `duration_s`, then `contenders` for as long."""
    running_cluster(c)
    alone = _phase(c, 1, duration_s)
    crowd = _phase(c, contenders, duration_s)
    return LockReport(cluster=c.name, nodes=len(c.node_ids()), uncontended=alone,
                      contended=crowd)
