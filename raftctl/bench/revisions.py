"""`raftctl bench txn` and `raftctl bench watch`: transactions a second,
and watch events a second delivered to many watchers, measured through
node/client.py against a running cluster. They write under their own
prefix and delete it at the end; they never touch the nodes' processes.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable

import msgspec

from node.api_range import TxnCompare, TxnPut
from node.client import Client, ClientError
from raftctl.bench.runs import LatencyMs, running_cluster
from raftctl.cluster import Cluster

# How long watchers get, after the writers stop, to receive the last change.
WATCH_DRAIN_TIMEOUT_S = 30.0


class TxnReport(msgspec.Struct, frozen=True, kw_only=True):
    """`bench txn`: conditional transactions (compare a key's version, then
    put it and one more key) from `clients` threads for `duration_s`."""

    mode: str = "txn"
    cluster: str
    nodes: int
    clients: int
    duration_s: float
    txns: int
    failed_compares: int
    errors: int
    txns_per_s: float
    latency_ms: LatencyMs


class WatchReport(msgspec.Struct, frozen=True, kw_only=True):
    """`bench watch`: `watchers` watchers of one prefix, spread over the
    nodes, while `writers` threads put keys under it for `duration_s`;
    events/s is what all watchers got together, from the first write to
    the last watcher's last event."""

    mode: str = "watch"
    cluster: str
    nodes: int
    watchers: int
    writers: int
    duration_s: float
    writes: int
    writes_per_s: float
    events: int
    events_expected: int
    events_per_s: float
    delivery_s: float
    complete: bool
    errors: int


def percentiles(samples: list[float]) -> LatencyMs:
    if not samples:
        return LatencyMs(p50=0.0, p90=0.0, p99=0.0, max=0.0, mean=0.0)
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000.0, 2)

    return LatencyMs(p50=at(0.5), p90=at(0.9), p99=at(0.99), max=round(s[-1] * 1000.0, 2),
                     mean=round(sum(s) / len(s) * 1000.0, 2))


def client_of(c: Cluster) -> Client:
    return Client(c.up_client_addrs(), c.keys(), timeout_s=5.0, attempt_timeout_s=1.0)


def run_for(clients: int, fn: Callable[[int], None], stop: threading.Event,
            duration_s: float) -> float:
    """Run `fn(i)` on `clients` threads for `duration_s`, then set `stop` and
    join them; the seconds that took (the measured interval)."""
    start = time.monotonic()
    ts = _threads(clients, fn)
    stop.wait(duration_s)  # the measured interval, not a synchronisation
    stop.set()
    for t in ts:
        t.join(10.0)
    return time.monotonic() - start


def _threads(n: int, fn: Callable[[int], None]) -> list[threading.Thread]:
    ts = [threading.Thread(target=fn, args=(i,), daemon=True, name=f"bench-{i}")
          for i in range(n)]
    for t in ts:
        t.start()
    return ts


def bench_txn(c: Cluster, *, clients: int, duration_s: float) -> TxnReport:
    """Each client: txn [version(k) = v] then [put k, put k'] else [get k], in a loop."""
    running_cluster(c)
    prefix = f"bench-txn-{uuid.uuid4().hex[:8]}/"
    lat: list[list[float]] = [[] for _ in range(clients)]
    failed = [0] * clients
    errors = [0] * clients
    stop = threading.Event()

    def run(i: int) -> None:
        key, other = f"{prefix}{i}", f"{prefix}{i}-b"
        version = 0
        with client_of(c) as cl:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = cl.txn([TxnCompare(key, "version", "=", version)],
                               [TxnPut(key, b"x" * 100), TxnPut(other, b"y" * 100)])
                except ClientError:
                    errors[i] += 1
                    continue
                lat[i].append(time.monotonic() - t0)
                if r.succeeded:
                    version += 1
                else:
                    failed[i] += 1

    took = run_for(clients, run, stop, duration_s)
    _clean(c, prefix)
    done = sum(len(x) for x in lat)
    return TxnReport(cluster=c.name, nodes=len(c.node_ids()), clients=clients,
                     duration_s=round(took, 3), txns=done, failed_compares=sum(failed),
                     errors=sum(errors), txns_per_s=round(done / took, 1),
                     latency_ms=percentiles([x for xs in lat for x in xs]))


def bench_watch(c: Cluster, *, watchers: int, writers: int, duration_s: float) -> WatchReport:
    """Watchers of one prefix on every node in turn; writers put under it."""
    running_cluster(c)
    prefix = f"bench-watch-{uuid.uuid4().hex[:8]}/"
    nodes = sorted(c.up_client_addrs())
    with client_of(c) as cl:
        start_rev = cl.range(prefix, prefix=True, count_only=True).revision + 1
    got = [0] * watchers
    last_at = [0.0] * watchers
    reached = [0] * watchers
    target: list[int] = []
    done = threading.Event()
    errors = [0]
    opened = threading.Barrier(watchers + 1)

    def watch(i: int) -> None:
        with client_of(c) as wc:
            w = wc.watch(prefix, prefix=True, start_revision=start_rev, progress=True,
                         node=nodes[i % len(nodes)])
            opened.wait()
            try:
                for ev in w:
                    if ev.type != "progress":
                        got[i] += 1
                        last_at[i] = time.monotonic()
                    reached[i] = w.revision
                    if target and w.revision >= target[0]:
                        break
                    if done.is_set():
                        break
            except ClientError:
                errors[0] += 1
            finally:
                w.close()

    stop = threading.Event()
    writes = [0] * writers

    def write(i: int) -> None:
        n = 0
        with client_of(c) as wc:
            while not stop.is_set():
                n += 1
                try:
                    wc.put(f"{prefix}{i}/{n % 64}", b"v" * 100)
                    writes[i] += 1
                except ClientError:
                    errors[0] += 1

    wts = _threads(watchers, watch)
    opened.wait()
    t0 = time.monotonic()
    ws = _threads(writers, write)
    stop.wait(duration_s)  # the measured interval, not a synchronisation
    stop.set()
    for t in ws:
        t.join(10.0)
    wrote_s = time.monotonic() - t0
    with client_of(c) as cl:
        target.append(cl.range(prefix, prefix=True, count_only=True).revision)
    deadline = time.monotonic() + WATCH_DRAIN_TIMEOUT_S
    for t in wts:
        t.join(max(0.0, deadline - time.monotonic()))
    done.set()
    for t in wts:
        t.join(5.0)
    end = max([x for x in last_at if x] or [t0])
    delivery = end - t0
    _clean(c, prefix)
    total_writes = sum(writes)
    return WatchReport(
        cluster=c.name, nodes=len(c.node_ids()), watchers=watchers, writers=writers,
        duration_s=round(wrote_s, 3), writes=total_writes,
        writes_per_s=round(total_writes / wrote_s, 1), events=sum(got),
        events_expected=total_writes * watchers,
        events_per_s=round(sum(got) / delivery, 1) if delivery > 0 else 0.0,
        delivery_s=round(delivery, 3), complete=sum(got) >= total_writes * watchers,
        errors=errors[0])


def _clean(c: Cluster, prefix: str) -> None:
    """Delete what the benchmark wrote (best effort)."""
    with contextlib.suppress(ClientError), client_of(c) as cl:
        cl.delete_range(prefix, prefix=True)
