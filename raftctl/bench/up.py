"""`raftctl bench up`: from `up` on a throwaway cluster to the first
acknowledged write. Returns a report; never prints."""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from raftctl.bench.loadgen import (
    LoadGen,
    LoadSpec,
)
from raftctl.bench.runs import (
    BENCH_FAILOVER_ATTEMPT_TIMEOUT_MS,
    BENCH_UP_TIMEOUT_MS,
    STOP_WAIT_S,
    UpReport,
    UpTrial,
    ms,
    summarize,
)
from raftctl.cluster import Cluster, ClusterError, make_config

# --- -------------------------------------------------------------------------------

# Writers of the `up` benchmark, one per node of a default cluster.
_UP_WRITERS = 3


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[tuple[Cluster, list[psutil.Process]]]:
    """A cluster in a fresh temporary run directory on free ports. At the end
    its nodes are stopped as `down` does, anything left is killed by pid,
    and the directory is removed."""
    tmp = Path(tempfile.mkdtemp(prefix="raftctl-bench-up-"))
    procs: list[psutil.Process] = []
    c = Cluster(tmp / "run", "bench-up")
    try:
        yield c, procs
    finally:
        try:
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGTERM)
            _gone, alive = psutil.wait_procs(procs, timeout=STOP_WAIT_S)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(alive, timeout=5.0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def bench_up(*, trials: int, nodes: int = 3, fsync: str = "always",
             on_trial: Callable[[UpTrial], None] | None = None) -> UpReport:
    """`trials` times: a fresh cluster, from the start of `up` (config, keys,
    processes) to the first acknowledged write. Never touches another cluster."""
    if trials < 1:
        raise ClusterError("--trials must be at least 1")
    results: list[UpTrial] = []
    for trial in range(1, trials + 1):
        r = _one_up(trial, nodes, fsync)
        results.append(r)
        if on_trial is not None:
            on_trial(r)
    return UpReport(nodes=nodes, fsync=fsync, trials=trials,
                    completed=sum(r.first_write_ms is not None for r in results),
                    first_write_ms=summarize([r.first_write_ms for r in results]),
                    results=results)


def _one_up(trial: int, nodes: int, fsync: str) -> UpTrial:
    with _throwaway_cluster() as (c, procs):
        t0 = time.monotonic()
        c.create(make_config(nodes, name=c.name, fsync=fsync))
        acks: list[float] = []

        def acked(t: float, _node: str | None) -> None:
            acks.append(t)
            gen.stop()

        gen = LoadGen(LoadSpec(
            nodes=c.client_addrs(), keys=c.keys(), clients=min(_UP_WRITERS, nodes),
            duration_s=math.inf, key_space=1000,
            attempt_timeout_s=BENCH_FAILOVER_ATTEMPT_TIMEOUT_MS / 1000,
            op_timeout_s=BENCH_UP_TIMEOUT_MS / 1000), on_ack=acked)
        try:
            gen.open()
            for n in c.node_ids():
                pid = c.start(n)
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
            t_spawned = time.monotonic()
            gen.run()
        finally:
            gen.close()
        return UpTrial(trial=trial, spawned_ms=ms(t_spawned - t0),
                       first_write_ms=ms(acks[0] - t0) if acks else None)
