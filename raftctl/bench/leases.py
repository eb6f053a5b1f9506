"""`raftctl bench lease`: lease grants a second (writes through the log)
and keep-alives a second (answered by the leader after a quorum confirmed
its leadership), measured through node/client.py against a running cluster.
Every lease it grants is short or revoked at the end; it never touches the
nodes' processes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import msgspec

from node.client import Client, ClientError
from node.state.leases import MIN_LEASE_TTL_MS
from raftctl.bench.revisions import client_of, percentiles, run_for
from raftctl.bench.runs import LatencyMs, running_cluster
from raftctl.cluster import Cluster

# The keep-alive phase renews leases that must outlive it by this much.
KEPT_LEASE_MARGIN_S = 30.0


class LeaseReport(msgspec.Struct, frozen=True, kw_only=True):
    """`bench lease`: `clients` threads grant leases (of the shortest TTL,
    so they lapse by themselves) for half of `duration_s`, then each renews
    a lease of its own in a loop for the other half."""

    mode: str = "lease"
    cluster: str
    nodes: int
    clients: int
    duration_s: float
    grants: int
    grants_per_s: float
    grant_latency_ms: LatencyMs
    keepalives: int
    keepalives_per_s: float
    keepalive_latency_ms: LatencyMs
    errors: int


Setup = Callable[[Client], int]
Step = Callable[[Client, int], object]


@contextlib.contextmanager
def _session(c: Cluster, setup: Setup) -> Iterator[tuple[Client, int]]:
    """A client of its own and what `setup` made with it (a lease id, or
    0); that lease is revoked at the end."""
    with client_of(c) as cl:
        arg = setup(cl)
        try:
            yield cl, arg
        finally:
            if arg:
                with contextlib.suppress(ClientError):  # it lapses by itself anyway
                    cl.lease_revoke(arg)


def _loop(c: Cluster, clients: int, duration_s: float, setup: Setup,
          step: Step) -> tuple[list[float], int, float]:
    """Run `step` in a loop on `clients` threads for `duration_s`: every
    latency, the errors, and the time it took."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = threading.Event()

    def run(i: int) -> None:
        with _session(c, setup) as (cl, arg):
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    step(cl, arg)
                except ClientError:
                    errors[i] += 1
                    continue
                lat[i].append(time.monotonic() - t0)

    took = run_for(clients, run, stop, duration_s)
    return [x for xs in lat for x in xs], sum(errors), took


def bench_lease(c: Cluster, *, clients: int, duration_s: float) -> LeaseReport:
    """Grants a second, then keep-alives a second."""
    running_cluster(c)
    half = duration_s / 2
    granted, grant_errors, grant_s = _loop(
        c, clients, half, lambda cl: 0,
        lambda cl, _: cl.lease_grant(MIN_LEASE_TTL_MS / 1000))
    kept, keep_errors, keep_s = _loop(
        c, clients, half, lambda cl: cl.lease_grant(half + KEPT_LEASE_MARGIN_S).id,
        lambda cl, lid: cl.lease_keepalive(lid))
    return LeaseReport(
        cluster=c.name, nodes=len(c.node_ids()), clients=clients,
        duration_s=round(grant_s + keep_s, 3), grants=len(granted),
        grants_per_s=round(len(granted) / grant_s, 1),
        grant_latency_ms=percentiles(granted),
        keepalives=len(kept), keepalives_per_s=round(len(kept) / keep_s, 1),
        keepalive_latency_ms=percentiles(kept),
        errors=grant_errors + keep_errors)
