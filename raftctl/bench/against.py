"""`raftctl bench write|read --against etcd[=HOST:PORT,...]`: the same load
on the running raftctl cluster and on etcd, in interleaved rounds (raftctl,
etcd, raftctl, etcd ...) so that both see the same noise of a shared
machine, and the ratio of their throughputs per round. Without an address an
etcd cluster of as many members is started here for the run and stopped
after (etcd's own defaults: fsync on, 100 ms heartbeats)."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from raftctl.bench import etcd
from raftctl.bench.loadgen import LoadError, LoadResult, LoadSpec
from raftctl.bench.runs import (
    Comparison,
    LatencyMs,
    OtherRun,
    RoundPair,
    WriteReport,
    per_op_us,
    write_round,
    write_spec,
)
from raftctl.cluster import Cluster, ClusterError

# Shapes both systems can be driven in by the same application code; the
# `virtual` shape batches requests into raftctl's own frames.
AGAINST_SHAPES = ("per-connection", "pipelined")


@contextlib.contextmanager
def _etcd_for(endpoints: list[str] | None, nodes: int, c: Cluster) -> Iterator[etcd.EtcdInfo]:
    if endpoints is not None:
        yield etcd.probe(endpoints)
        return
    base = c.run_dir / "bench-etcd"
    shutil.rmtree(base, ignore_errors=True)
    try:
        with etcd.local_etcd(nodes, base) as info:
            yield info
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _other_run(info: etcd.EtcdInfo, shape: str, res: LoadResult,
               server_cpu: float | None) -> OtherRun:
    h = res.latency
    wall = res.wall_s
    return OtherRun(
        system="etcd", version=info.version, endpoints=info.endpoints, leader=info.leader,
        started_here=info.started_here, nodes=len(info.endpoints), shape=shape, ops=res.ops,
        writes=res.writes, reads=res.reads, ops_per_s=round(res.ops / wall, 1),
        latency_ms=LatencyMs(
            p50=h.percentile(0.50) / 1000, p90=h.percentile(0.90) / 1000,
            p99=h.percentile(0.99) / 1000, max=h.max_us / 1000,
            mean=round(h.mean_us() / 1000, 3)),
        errors=sum(res.errors.values()), errors_by_code=dict(res.errors), unknown=res.unknown,
        reads_by_node=dict(sorted(res.reads_by_node.items())),
        server_cpu_s=None if server_cpu is None else round(server_cpu, 3),
        server_cpu_us_per_op=per_op_us(server_cpu, res.ops),
        loadgen_cpu_percent=round(100.0 * res.cpu_s / wall, 1),
        loadgen_saturated=res.saturated_procs > 0)


def _run_other(info: etcd.EtcdInfo, spec: LoadSpec, shape: str,
               progress: Callable[[int], None]) -> OtherRun:
    run = etcd.run_pipelined if shape == "pipelined" else etcd.run_per_connection
    res, server_cpu = run(info, spec, on_progress=progress)
    return _other_run(info, shape, res, server_cpu)


def bench_against(
    c: Cluster,
    against: str,
    *,
    rounds: int,
    shape: str,
    on_progress: Callable[[float, int], None] | None = None,
    **load: Any,
) -> WriteReport:
    """`rounds` rounds of the load (`load`: write_spec's options) on the
    cluster and then on etcd. The report is raftctl's last round, with the
    comparison attached. `on_progress(elapsed_s, ops)` counts elapsed time
    over every run (2 x rounds x duration)."""
    if shape not in AGAINST_SHAPES:
        raise ClusterError(f"--against runs one client shape on both systems: --shape "
                           f"{' or '.join(AGAINST_SHAPES)} (the virtual shape batches requests "
                           "into raftctl's own frames, which etcd has no equivalent of)")
    if rounds < 1:
        raise ClusterError("--rounds must be at least 1")
    try:
        endpoints = etcd.parse_against(against)
    except LoadError as e:
        raise ClusterError(str(e)) from None
    spec = write_spec(c, shape=shape, **load)
    pairs: list[RoundPair] = []
    report: WriteReport | None = None
    other: OtherRun | None = None
    try:
        with _etcd_for(endpoints, len(c.config().nodes), c) as info:
            for i in range(rounds):
                base = 2 * i * spec.duration_s

                def mine(elapsed_s: float, ops: int, base: float = base) -> None:
                    if on_progress is not None:
                        on_progress(base + elapsed_s, ops)

                report = write_round(c, spec, shape, 1, mine)
                t0 = time.monotonic()

                def theirs(ops: int, base: float = base, t0: float = t0) -> None:
                    if on_progress is not None:
                        on_progress(base + spec.duration_s + time.monotonic() - t0, ops)

                other = _run_other(info, spec, shape, theirs)
                pairs.append(RoundPair(report.ops_per_s, other.ops_per_s,
                                       round(report.ops_per_s / max(other.ops_per_s, 1e-9), 3)))
    except LoadError as e:
        raise ClusterError(str(e)) from None
    assert report is not None and other is not None
    mine_cpu, theirs_cpu = report.server_cpu_us_per_op, other.server_cpu_us_per_op
    return msgspec.structs.replace(report, against=Comparison(
        rounds=pairs, ratio_median=round(statistics.median(p.ratio for p in pairs), 3),
        cpu_per_op_ratio=None if mine_cpu is None or not theirs_cpu
        else round(mine_cpu / theirs_cpu, 3),
        other=other))
