"""`raftctl bench write|read --against etcd`: the same load on a real etcd
cluster beside a real raftctl cluster, interleaved rounds and their ratio;
an etcd started for the run is stopped and its files removed; wrong
addresses and shapes fail with a sentence. Needs the etcd binary (CI
installs Debian's etcd-server). No timing thresholds."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from raftctl.bench import etcd
from tests.procs import TestCluster, make_cluster, start_and_settle
from tests.test_bench import _invoke, _json

needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="the etcd binary is not installed (Debian: etcd-server)")


def _etcd_children() -> list[psutil.Process]:
    """etcd processes this test process started (and should have stopped)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if Path(p.exe()).name == "etcd" and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One raftctl cluster for the module: the comparison does not depend on
    the peer transport, which test_bench.py covers."""
    with make_cluster(tmp_path_factory.mktemp("raftctl3"), 3) as c:
        start_and_settle(c)
        yield c


@pytest.fixture(scope="module")
def etcd3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd.EtcdInfo]:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: etcd-server)")
    with etcd.local_etcd(3, tmp_path_factory.mktemp("etcd3")) as info:
        yield info


@needs_etcd
def test_write_against_a_running_etcd_interleaves_rounds(cluster3: TestCluster,
                                                        etcd3: etcd.EtcdInfo) -> None:
    """Both systems take the same writes, round after round; etcd holds them;
    each round's ratio is raftctl's rate over etcd's."""
    eps = ",".join(etcd3.endpoints)
    out = _json(cluster3, "write", "--against", f"etcd={eps}", "--clients", "4",
                "--duration", "0.5", "--rounds", "2", "--keys", "40")
    a = out["against"]
    assert out["shape"] == "per-connection" and out["writes"] > 0 and out["errors"] == 0
    assert len(a["rounds"]) == 2
    for p in a["rounds"]:
        assert p["raftctl_ops_per_s"] > 0 and p["other_ops_per_s"] > 0
        assert p["ratio"] == round(p["raftctl_ops_per_s"] / p["other_ops_per_s"], 3)
    o = a["other"]
    assert o["system"] == "etcd" and o["version"].startswith("3.") and not o["started_here"]
    assert o["leader"] in etcd3.endpoints and o["nodes"] == 3 and o["shape"] == "per-connection"
    assert o["writes"] > 0 and o["errors"] == 0 and o["unknown"] == 0
    assert 0 < o["latency_ms"]["p50"] <= o["latency_ms"]["p99"] <= o["latency_ms"]["max"]
    assert 0 < etcd.etcd_key_count(etcd3, "bench/") <= 40
    assert out["server_cpu_us_per_op"] > 0


@needs_etcd
def test_pipelined_reads_against_etcd_spread_over_its_members(cluster3: TestCluster,
                                                             etcd3: etcd.EtcdInfo) -> None:
    """bench read --shape pipelined --nodes all: every member of each system
    answers reads, and the table shows both columns."""
    eps = ",".join(etcd3.endpoints)
    _json(cluster3, "write", "--clients", "4", "--duration", "0.3", "--keys", "20")
    out = _json(cluster3, "read", "--against", f"etcd={eps}", "--shape", "pipelined",
                "--clients", "6", "--duration", "0.5", "--rounds", "1", "--keys", "20")
    assert set(out["reads_by_node"]) == set(cluster3.node_ids())
    o = out["against"]["other"]
    assert o["reads"] > 0 and o["writes"] == 0 and set(o["reads_by_node"]) == set(etcd3.endpoints)
    r = _invoke(cluster3, "read", "--against", f"etcd={eps}", "--clients", "2",
                "--duration", "0.3", "--rounds", "1", "--nodes", "leader")
    assert r.exit_code == 0, r.output
    for label in ("against etcd", "round 1: operations/s", "median ratio",
                  "server CPU per op"):
        assert label in r.output


@needs_etcd
def test_etcd_started_for_the_run_is_stopped_and_removed(cluster3: TestCluster) -> None:
    """--against etcd: a cluster of as many members runs here for the run;
    afterwards no etcd process of ours is left and its files are gone."""
    before = {p.pid for p in _etcd_children()}  # another test's etcd3, if it ran
    out = _json(cluster3, "write", "--against", "etcd", "--clients", "2", "--duration", "0.3",
                "--rounds", "1")
    o = out["against"]["other"]
    assert o["started_here"] and o["nodes"] == 3 and o["writes"] > 0
    assert o["server_cpu_s"] > 0 and o["server_cpu_us_per_op"] > 0
    assert out["against"]["cpu_per_op_ratio"] is not None
    left = [p for p in _etcd_children() if p.pid not in before]
    assert not left, f"an etcd member outlived the benchmark: {left}"
    assert not (cluster3.run_dir / "bench-etcd").exists()


def test_against_refuses_what_it_cannot_compare(cluster3: TestCluster) -> None:
    """Another system, the virtual shape, or an address nothing answers at:
    each fails with a sentence, before any load is run."""
    cases = [
        (("--against", "zookeeper"), "only etcd is supported"),
        (("--against", "etcd=nowhere"), "is not HOST:PORT"),
        (("--against", "etcd", "--shape", "virtual"), "--shape per-connection or pipelined"),
        (("--against", "etcd=127.0.0.1:1"), "did not answer its status"),
    ]
    for args, said in cases:
        r = _invoke(cluster3, "write", "--duration", "0.2", *args)
        assert r.exit_code != 0 and said in r.output, (args, r.output)


def test_the_http_reader_takes_chunked_and_sized_answers() -> None:
    """The pipelined shape's HTTP/1.1 reader: a sized answer, then a chunked
    one, on one kept-alive connection."""
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
               b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n"]

    async def main() -> list[int]:
        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            for a in answers:
                await r.readuntil(b"\r\n\r\n")
                await r.readexactly(2)
                w.write(a)
                await w.drain()
            w.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = etcd._Conn(f"127.0.0.1:{port}")
        try:
            return [await c.post("/x", b"{}"), await c.post("/y", b"{}")]
        finally:
            c.close()
            server.close()

    assert asyncio.run(main()) == [200, 503]
