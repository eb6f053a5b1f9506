"""`raftctl bench write|read|failover|up` on small real clusters, for a couple of
seconds each: the commands run and their JSON figures are sane. No timing
thresholds: this machine's speed is not under test. Also the load
generator's histogram, which must merge exactly and keep percentiles ordered."""

from __future__ import annotations

import json
import random
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner, Result

from node.transport.auth import generate_keys
from raftctl.bench.loadgen import Histogram, LoadError, LoadResult, LoadSpec
from raftctl.bench.procs import split_clients
from raftctl.bench.shapes import run_threads
from raftctl.bench_cmd import bench
from raftctl.cluster import Cluster
from tests.procs import TestCluster, cluster3, make_cluster

__all__ = ["cluster3"]


# The load generator and its figures do not depend on the peer transport:
# the default suite runs these over ZeroMQ, the soak over UDP too.
@pytest.fixture(params=["zmq", pytest.param("udp", marks=pytest.mark.soak)])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _invoke(c: Cluster, *args: str) -> Result:
    return CliRunner().invoke(bench, list(args), obj=c, catch_exceptions=False)


def _json(c: Cluster, *args: str) -> dict[str, Any]:
    r = _invoke(c, *args, "--json")
    assert r.exit_code == 0, r.output
    out: dict[str, Any] = json.loads(r.output)
    return out


def _ordered(lat: dict[str, float]) -> bool:
    return 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def _commit(c: TestCluster) -> int:
    return max(int(s["commit"]) for s in c.statuses().values())


# --- the histogram ----------------------------------------------------------------------


def test_histogram_percentiles_are_ordered_and_close() -> None:
    """Percentiles come out in order, never above the maximum, within 1% of the exact ones."""
    rng = random.Random(7)
    values = sorted(int(rng.lognormvariate(8, 1.5)) for _ in range(20_000))
    h = Histogram()
    for v in values:
        h.record(v)
    got = [h.percentile(q) for q in (0.5, 0.9, 0.99, 1.0)]
    assert got == sorted(got) and got[-1] == h.max_us == values[-1]
    for q, g in zip((0.5, 0.9, 0.99), got, strict=False):
        exact = values[int(q * len(values)) - 1]
        assert abs(g - exact) <= 0.01 * exact + 1, (q, g, exact)


def test_histograms_merge_exactly() -> None:
    """Merging the histograms of two halves gives the histogram of the whole."""
    rng = random.Random(3)
    values = [rng.randrange(1, 5_000_000) for _ in range(5_000)]
    whole, a, b = Histogram(), Histogram(), Histogram()
    for i, v in enumerate(values):
        whole.record(v)
        (a if i % 2 else b).record(v)
    a.merge(b)
    assert a == whole


def test_results_of_processes_merge_and_flag_a_saturated_one() -> None:
    """Merged results add up; one process whose loop was busy 95% of the time is reported
    as saturated, one busy 20% is not."""
    busy = LoadResult(started=10.0, ended=12.0, writes=5, loop_cpu_s=1.9, cpu_s=2.0,
                      errors={"timeout": 1})
    idle = LoadResult(started=10.1, ended=12.2, writes=7, unknown=2, loop_cpu_s=0.4,
                      cpu_s=0.5, errors={"timeout": 2, "bad_request": 1})
    assert busy.saturated() and not idle.saturated()
    busy.saturated_procs, idle.saturated_procs = 1, 0
    busy.merge(idle)
    assert (busy.ops, busy.unknown, busy.procs, busy.saturated_procs) == (12, 2, 2, 1)
    assert busy.errors == {"timeout": 3, "bad_request": 1}
    assert (busy.started, busy.ended, busy.cpu_s) == (10.0, 12.2, 2.5)


def test_a_client_that_cannot_start_fails_the_run_without_hanging_it() -> None:
    """run_threads: a client whose making raises anything at all fails the
    run with a sentence before the clock starts (a thread that died before
    the start barrier would leave the others waiting forever)."""
    spec = LoadSpec(nodes={"n1": "tcp://127.0.0.1:1"}, keys=generate_keys(), clients=3,
                    duration_s=0.1)

    def broken(i: int, value: bytes) -> Any:
        raise RuntimeError(f"client {i} has no socket")

    out: list[BaseException] = []

    def run() -> None:
        try:
            run_threads(spec, broken)
        except LoadError as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the run hung on its start barrier"
    assert len(out) == 1 and "3 of 3 clients could not start: client" in str(out[0])


def test_clients_are_split_evenly_over_processes() -> None:
    """Clients are spread over the processes with at most one of difference, none idle."""
    assert split_clients(10, 3) == [4, 3, 3]
    assert split_clients(2, 5) == [1, 1]
    assert sum(split_clients(64, 4)) == 64


# --- bench write ------------------------------------------------------------------------


def test_write_reports_committed_ops_and_ordered_latency(cluster3: TestCluster) -> None:
    """bench write: every acknowledged write is in the log, latencies are ordered, CPU is
    reported for each node and for the load generator."""
    before = _commit(cluster3)
    out = _json(cluster3, "write", "--clients", "8", "--duration", "1", "--value-size", "10")
    assert out["mode"] == "write" and out["writes"] == out["ops"] > 0 and out["reads"] == 0
    assert _commit(cluster3) - before >= out["writes"]
    assert out["ops_per_s"] > 0 and _ordered(out["latency_ms"])
    assert out["unknown"] == 0 and out["errors"] == 0
    assert len(out["leaders_seen"]) == out["leader_changes"] + 1
    assert {n["node"] for n in out["node_cpu"]} == set(cluster3.node_ids())
    assert all(n["cpu_s"] > 0 for n in out["node_cpu"])
    assert out["loadgen_cpu_s"] > 0 and isinstance(out["loadgen_saturated"], bool)
    loops = {n["node"]: n for n in out["node_loop"]}
    assert set(loops) == set(cluster3.node_ids())
    assert all(n["keys"] is not None and n["rss_mib"] > 0 for n in loops.values())
    assert all(0 < n["loop_max_cpu_ms"] <= n["loop_max_busy_ms"] + 1 for n in loops.values())
    # Every node wrote the entries to its WAL, within a loop turn.
    assert all(0 < n["wal_sync_max_ms"] <= n["loop_max_busy_ms"] for n in loops.values()), loops
    followers = [n for n in loops.values() if n["leader_gap_max_ms"] is not None]
    assert len(followers) >= 2, "each follower reports its leader's longest silence"
    assert out["heartbeat_gap_max_ms"] == max(n["leader_gap_max_ms"] for n in followers)


def test_write_with_reads_over_two_processes(cluster3: TestCluster) -> None:
    """bench write --read-ratio --procs: both kinds of operation succeed, from two processes."""
    out = _json(cluster3, "write", "--clients", "6", "--duration", "1", "--read-ratio", "0.5",
                "--procs", "2")
    assert out["procs"] == 2
    assert out["reads"] > 0 and out["writes"] > 0 and out["ops"] == out["reads"] + out["writes"]
    assert _ordered(out["latency_ms"])


def test_write_in_the_pipelined_and_per_connection_shapes(cluster3: TestCluster) -> None:
    """bench write --shape pipelined|per-connection: writes and reads succeed,
    every acknowledged write is in the log, and the report names the shape."""
    for shape in ("pipelined", "per-connection"):
        before = _commit(cluster3)
        out = _json(cluster3, "write", "--shape", shape, "--clients", "6", "--duration", "0.5",
                    "--read-ratio", "0.3")
        assert out["shape"] == shape and out["procs"] == 1
        assert out["writes"] > 0 and out["reads"] > 0, out
        assert out["errors"] == 0 and out["unknown"] == 0, out
        assert _commit(cluster3) - before >= out["writes"]
        assert _ordered(out["latency_ms"]) and out["loadgen_cpu_s"] > 0
        assert {n["node"] for n in out["node_cpu"]} == set(cluster3.node_ids())
    r = _invoke(cluster3, "write", "--shape", "pipelined", "--clients", "2", "--duration", "0.2")
    assert "2 pipelined clients" in r.output
    r = _invoke(cluster3, "write", "--shape", "pipelined", "--procs", "2", "--duration", "0.2")
    assert r.exit_code != 0 and "--procs applies to --shape virtual only" in r.output


def test_write_table_names_the_figures(cluster3: TestCluster) -> None:
    """Without --json, bench write prints a table with throughput, latency and CPU."""
    r = _invoke(cluster3, "write", "--clients", "2", "--duration", "0.5")
    assert r.exit_code == 0, r.output
    for label in ("operations/s", "latency p50", "unknown outcomes", "leader changes",
                  "CPU n1", "CPU load generator"):
        assert label in r.output


# --- bench read -------------------------------------------------------------------------


def test_read_spread_over_all_nodes_is_answered_by_each(cluster3: TestCluster) -> None:
    """bench read --nodes all: every node answers reads (followers by a read
    index from the leader), and the per-node counts add up to the reads."""
    out = _json(cluster3, "read", "--clients", "6", "--duration", "1", "--keys", "50")
    assert out["read_nodes"] == "all" and out["writes"] == 0 and out["reads"] > 0
    assert set(out["reads_by_node"]) == set(cluster3.node_ids())
    assert sum(out["reads_by_node"].values()) == out["reads"]
    assert out["reads_per_s"] > 0 and out["errors"] == 0 and _ordered(out["latency_ms"])


def test_read_at_the_leader_only_is_answered_by_the_leader(cluster3: TestCluster) -> None:
    """bench read --nodes leader: every read is answered by the leader."""
    lead = cluster3.leader()
    out = _json(cluster3, "read", "--clients", "4", "--duration", "0.5", "--nodes", "leader")
    assert list(out["reads_by_node"]) == [lead] and out["reads"] > 0
    r = _invoke(cluster3, "read", "--clients", "2", "--duration", "0.5")
    assert r.exit_code == 0, r.output
    for label in ("reads/s", "reads answered by"):
        assert label in r.output


def test_write_without_a_cluster_fails_with_a_message(tmp_path: Path) -> None:
    """bench write on a cluster that is not set up exits non-zero and says what to do."""
    r = _invoke(Cluster(tmp_path / "nothing", "absent"), "write", "--duration", "1")
    assert r.exit_code != 0
    assert "raftctl up" in r.output


# --- bench failover ---------------------------------------------------------------------


def test_failover_counts_trials_and_leaves_the_cluster_whole(cluster3: TestCluster) -> None:
    """bench failover: each trial kills the leader, sees a later-term leader and a write,
    and restarts the victim, which catches up; every node runs afterwards."""
    out = _json(cluster3, "failover", "--trials", "2")
    assert out["trials"] == out["completed"] == len(out["results"]) == 2
    for t in out["results"]:
        assert t["new_leader"] not in (None, t["victim"])
        assert t["new_term"] > t["old_term"]
        assert t["leader_ms"] > 0 and t["write_ms"] > 0 and t["catch_up_ms"] > 0
    for key in ("leader_ms", "write_ms"):
        assert 0 < out[key]["median"] <= out[key]["worst"]
    assert out["writes"] > 0
    assert cluster3.running_nodes() == cluster3.node_ids()


def test_failover_refuses_a_cluster_with_nodes_down(tmp_path: Path) -> None:
    """bench failover needs the whole cluster running and names the nodes that are not."""
    with make_cluster(tmp_path, 3) as c:
        r = _invoke(c, "failover", "--trials", "1")
        assert r.exit_code != 0 and "n1, n2, n3 not running" in r.output


# --- bench up ---------------------------------------------------------------------------


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Temporary directories of the bench under tmp_path; any node process
    left running from there is killed by pid at the end."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    try:
        yield d
    finally:
        for p in _nodes_under(d):
            p.kill()


def _nodes_under(d: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and str(d) in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_up_times_fresh_clusters_and_removes_them(own_tmp: Path, tmp_path: Path) -> None:
    """bench up: each trial's fresh cluster acknowledges a write; afterwards no node of
    it runs and its run directory is gone."""
    out = _json(Cluster(tmp_path / "users-cluster", "mine"), "up", "--trials", "1")
    assert out["trials"] == out["completed"] == len(out["results"]) == 1
    for t in out["results"]:
        assert 0 < t["spawned_ms"] < t["first_write_ms"]
    assert 0 < out["first_write_ms"]["median"] <= out["first_write_ms"]["worst"]
    assert not list(own_tmp.iterdir())
    assert not _nodes_under(own_tmp)
    assert not (tmp_path / "users-cluster").exists()
