"""The revisioned store against real node processes, through node/client.py
and the command line: range reads at a revision, range deletes,
transactions (cas among them), compaction by the operator. One cluster is
shared by the tests of this module; each test works under its own prefix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
from click.testing import CliRunner, Result

from node.api import decode_responses
from node.api_range import TxnCompare, TxnDelete, TxnItem, TxnPut, TxnRange, WatchEvent
from node.client import Client, ClientError, Compacted
from node.transport.auth import set_curve_client
from raftctl.cli import main
from raftctl.exits import Exit
from tests.procs import TestCluster, chaos_run, make_cluster, start_and_settle, wait_until

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A running 3-node cluster for every test of this module."""
    with make_cluster(tmp_path_factory.mktemp("revisions"), 3) as c:
        start_and_settle(c)
        yield c


def cli(c: TestCluster, *args: str, stdin: str | None = None) -> Result:
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "-C", "test", *args],
                           input=stdin)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def test_range_reads_at_past_revisions_and_compaction(shared: TestCluster) -> None:
    """A prefix read honours limit and count; a read at a past revision sees
    the store as it was; after the operator compacts, an older revision is
    refused naming the oldest kept."""
    with shared.client() as cl:
        for i in range(4):
            cl.put(f"r/{i}", b"v%d" % i)
        now = cl.range("r/", prefix=True)
        assert [kv.key for kv in now.kvs] == ["r/0", "r/1", "r/2", "r/3"] and now.count == 4
        first = now.kvs[0].create_revision
        cl.put("r/0", b"changed")
        cut = cl.range("r/", prefix=True, limit=2)
        assert len(cut.kvs) == 2 and cut.more and cut.count == 4
        assert cut.kvs[0].version == 2 and cut.kvs[0].value == b"changed"
        then = cl.range("r/", prefix=True, revision=first + 1)
        assert [(kv.key, kv.value) for kv in then.kvs] == [("r/0", b"v0"), ("r/1", b"v1")]
        kept = cl.compact(first + 2)
        assert kept == first + 2
        with pytest.raises(Compacted) as e:
            cl.range("r/", prefix=True, revision=first + 1)
        assert e.value.compacted == kept and str(kept) in str(e.value)


def test_transaction_takes_one_branch_atomically(shared: TestCluster) -> None:
    """A transaction whose compares hold runs `success` at one revision; run
    again it takes `failure`; cas answers as before."""
    with shared.client() as cl:
        compare = [TxnCompare("t/lock", "version", "=", 0)]
        success: list[TxnItem] = [TxnPut("t/lock", b"me"), TxnPut("t/data", b"1"),
                                  TxnRange("t/", prefix=True)]
        failure: list[TxnItem] = [TxnRange("t/lock")]
        got = cl.txn(compare, success, failure)
        assert got.succeeded and got.responses[2].count == 2
        assert {kv.mod_revision for kv in got.responses[2].kvs or []} == {got.revision}
        again = cl.txn(compare, success, failure)
        assert not again.succeeded and again.revision == got.revision
        assert [kv.value for kv in again.responses[0].kvs or []] == [b"me"]
        assert cl.cas("t/lock", b"me", b"you").ok
        assert cl.cas("t/lock", b"me", b"x").value == b"you"
        with pytest.raises(ClientError) as bad:
            cl.txn([], [TxnPut("t/a", b"1"), TxnDelete("t/", prefix=True)])
        assert bad.value.code == "bad_request" and "puts and deletes" in str(bad.value)


def test_cli_prefix_reads_deletes_and_txn(shared: TestCluster) -> None:
    """`get --prefix`, `del --prefix` and `txn` (line syntax and JSON on
    stdin) work end to end, with the exit codes docs/CLI.md gives."""
    for k in ("c/a", "c/b", "c/c"):
        assert cli(shared, "put", k, k.upper()).exit_code == 0
    r = cli(shared, "get", "--prefix", "c/", "--limit", "2")
    assert r.stdout == "c/a\tC/A\nc/b\tC/B\n" and "1 more" in r.stderr
    r = cli(shared, "get", "--prefix", "c/", "--json")
    doc = json.loads(r.stdout)
    assert doc["count"] == 3 and doc["kvs"][0]["version"] == 1
    rev = doc["revision"]
    r = cli(shared, "txn", stdin='if value(c/a) = C/A\nthen put c/a "new a"\nelse get c/a\n')
    assert r.exit_code == 0 and r.stdout.startswith("SUCCESS"), r.output
    r = cli(shared, "txn", "--json", stdin=json.dumps({
        "compare": [{"key": "c/a", "target": "value", "cmp": "=", "value": "C/A"}],
        "failure": [{"op": "range", "key": "c/a"}]}))
    assert r.exit_code == Exit.FAILED
    assert json.loads(r.stdout)["responses"][0]["kvs"][0]["value"] == "new a"
    assert cli(shared, "get", "c/a", "--rev", str(rev)).stdout == "C/A\n"
    r = cli(shared, "del", "--prefix", "c/")
    assert r.exit_code == 0 and "deleted 3 key(s)" in r.stdout
    assert cli(shared, "get", "--prefix", "c/", "--count-only").stdout == "0\n"
    r = cli(shared, "txn", stdin="then frobnicate x\n")
    assert r.exit_code == Exit.USAGE and "line 1" in r.stderr


def test_history_survives_a_restart_from_the_snapshot(shared: TestCluster) -> None:
    """Revisions and history come back from the snapshot image and the log:
    a node restarted after a snapshot serves the same past reads."""
    node = "n1"
    with shared.client() as cl:
        cl.put("s/k", b"1")
        rev = cl.range("s/k").kvs[0].mod_revision
        cl.put("s/k", b"2")
        wait_until(lambda: shared.statuses()[node]["applied"] >= cl.range("s/k").revision,
                   10.0, f"{node} applied the puts")
    assert shared.compact(node)["started"]
    wait_until(lambda: shared.statuses()[node]["snapshot_index"] > 0, 10.0,
               f"{node} took a snapshot")
    shared.stop(node)
    shared.start(node)
    with Client({node: shared.client_addrs()[node]}, shared.keys()) as cl:
        def served() -> bool:
            try:
                got = cl.range("s/k", revision=rev, stale=True, node=node)
            except ClientError:
                return False
            return [kv.value for kv in got.kvs] == [b"1"]

        wait_until(served, 10.0, f"{node} serves revision {rev} after its restart")


def _revision(c: TestCluster) -> int:
    with c.client() as cl:
        return cl.range("", prefix=True, count_only=True).revision


def test_a_watch_survives_the_death_of_its_node_without_gap_or_repeat(
        shared: TestCluster) -> None:
    """A watcher on one node sees that node killed while a writer goes on:
    it resumes from another node after the last revision it got, and gets
    every acknowledged change exactly once, in revision order."""
    start = _revision(shared) + 1
    lead = shared.wait_for_leader(10.0)
    victim = next(n for n in shared.node_ids() if n != lead)
    got: list[WatchEvent] = []
    done = threading.Event()
    with shared.client() as cl:
        w = cl.watch("k/", prefix=True, start_revision=start, node=victim)

        def read() -> None:
            for ev in w:
                got.append(ev)
                if ev.key == "k/last":
                    break
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        written: list[tuple[str, int]] = []
        for i in range(30):
            if i == 10:
                wait_until(lambda: w.node == victim and len(got) >= 5, 10.0,
                           f"the watch runs on {victim} and got its first events")
                shared.kill(victim)
            key = f"k/{i % 4}"
            r = cl.txn([], [TxnPut(key, b"%d" % i)])
            written.append((key, r.revision))
        r = cl.txn([], [TxnPut("k/last", b"end")])
        written.append(("k/last", r.revision))
        wait_until(done.is_set, 20.0, "the watcher got the last write")
    shared.start(victim)
    assert [(e.key, e.revision) for e in got] == written
    assert w.resumes >= 1 and w.node != victim


def test_cli_watch_key_prints_a_json_line_per_change(shared: TestCluster) -> None:
    """`watch-key --prefix P --rev R --count N --json` prints the N changes
    from R, one JSON object per line; --once prints the first one."""
    start = _revision(shared) + 1
    base = [sys.executable, "-m", "raftctl", "--run-dir", str(shared.run_dir), "-C", "test",
            "watch-key"]
    procs = [subprocess.Popen([*base, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for args in (["--prefix", "cw/", "--rev", str(start), "--count", "3", "--json"],
                          ["cw/b", "--rev", str(start), "--once"])]
    try:
        for k, v in (("cw/a", "1"), ("cw/b", "2"), ("cw/a", "3")):
            assert cli(shared, "put", k, v).exit_code == 0
        outs = [p.communicate(timeout=30.0) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = [json.loads(x) for x in outs[0][0].decode().splitlines()]
    assert [(x["type"], x["key"], x["value"]) for x in lines] == [
        ("put", "cw/a", "1"), ("put", "cw/b", "2"), ("put", "cw/a", "3")]
    assert lines[0]["revision"] == start and lines[2]["version"] == 2
    assert outs[1][0].decode() == f"PUT cw/b 2 (revision {start + 1})\n"


def test_bench_txn_and_watch_report_their_rates(shared: TestCluster) -> None:
    """`bench txn` counts transactions a second; `bench watch` delivers every
    change to every watcher and says how fast."""
    r = cli(shared, "bench", "txn", "--clients", "2", "--duration", "1", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["txns"] > 0 and doc["txns_per_s"] > 0
    assert doc["failed_compares"] == 0 and doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"]
    r = cli(shared, "bench", "watch", "--watchers", "10", "--writers", "2", "--duration", "1",
            "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["complete"] and doc["writes"] > 0
    assert doc["events"] == doc["writes"] * 10 and doc["events_per_s"] > 0


def test_chaos_run_checks_transactions_range_reads_and_watches(shared: TestCluster) -> None:
    """`chaos run --workload txn` records transactions, range reads and two
    watchers' events under faults, and its verdict has their rows, clean."""
    code, rep = chaos_run(shared, "--duration", "6s", "--interval", "1.5s", "--seed", "5",
                          "--workload", "txn")
    rows = rep["verdict"]["checks"]
    assert code == 0, rep["verdict"]["violations"]
    assert rows["txn order"].startswith("ok: ") and "range reads" in rows["txn order"]
    assert rows["watch delivery"].startswith("ok: ") and "to 2 watchers" in rows["watch delivery"]
    assert rep["operations"]["watch-event"]["ok"] > 0


@pytest.fixture
def slow_limit(tmp_path: Path) -> Iterator[TestCluster]:
    """A 3-node cluster whose nodes cancel a watcher 5 revisions behind."""
    with make_cluster(tmp_path, 3, watch_max_lag_revisions=5) as c:
        start_and_settle(c)
        yield c


def test_a_watcher_that_never_reads_is_cancelled_and_slows_nothing(
        slow_limit: TestCluster) -> None:
    """A watch whose client reads nothing fills its connection; the node
    keeps serving writes (each answered in well under a second, its loop
    never stalled) and cancels the watch once it is 5 revisions behind.
    What the client then reads ends, if its connection survived, with the
    reason (node/watch.py; the frame's content is tests/test_watch.py's)."""
    c = slow_limit
    lead = c.wait_for_leader(10.0)
    # A socket that reads one frame ahead into a small kernel buffer, so
    # that it pushes back within a few frames, long before the node's
    # heartbeats would drop it.
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.RECONNECT_IVL, -1)
    set_curve_client(sock, c.keys())
    sock.connect(c.client_addrs()[lead])
    try:
        wait_until(lambda: sock.poll(10, zmq.POLLOUT), 5.0, "the watch socket connected")
        sock.send(msgspec.msgpack.encode({"op": "watch", "id": 1, "key": "slow/",
                                          "prefix": True}))
        assert sock.poll(5000), "no answer to the watch"
        assert decode_responses(sock.recv())[0].created
        c.statuses()  # reading status resets the node's longest loop turn
        worst = 0.0
        with c.client() as cl:
            for i in range(400):
                t0 = time.monotonic()
                assert cl.put(f"slow/{i % 8}", b"x" * 65536).ok
                worst = max(worst, time.monotonic() - t0)
        st = c.statuses()[lead]
        assert worst < 1.0 and st["loop_max_busy_ms"] < 500, (worst, st["loop_max_busy_ms"])
        assert st["counters"]["watches"]["watches_cancelled_slow"] == 1, st["counters"]["watches"]
        ends = []
        while sock.poll(2000):
            ends += [r for r in decode_responses(sock.recv()) if r.canceled]
        assert all(r.error == "slow_watcher" and "(at most 5)" in (r.message or "")
                   for r in ends), ends
        assert c.statuses()[lead]["counters"]["watches"]["watches"] == 0
    finally:
        sock.close(linger=0)
