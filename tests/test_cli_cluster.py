"""The command line against real node processes, for what a newcomer hit:
exit codes of status and get, a named node that cannot answer, clients that
never wait on a down node, process commands over several nodes, values
from stdin, `ls` of a running cluster, --json, an interrupted chaos run and
the failover table's columns. Clusters run on the default transport: none
of this depends on the peers' transport."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from node.client import Client
from raftctl.cli import main
from raftctl.cluster import Cluster
from raftctl.exits import Exit
from tests.procs import TestCluster, make_cluster, start_and_settle, wait_until

ROOT = Path(__file__).parent.parent


@pytest.fixture
def c(tmp_path: Path) -> Iterator[TestCluster]:
    """A running 3-node cluster whose every node knows the leader."""
    with make_cluster(tmp_path, 3) as cl:
        start_and_settle(cl)
        yield cl


def _adopt(c: TestCluster) -> None:
    """Every process the cluster file names is reaped with the cluster's own."""
    for info in c.load().processes.values():
        if (info.pid, info.create_time) not in c.started:
            c.started.append((info.pid, info.create_time))


def cli(c: TestCluster, *args: str, stdin: bytes | None = None) -> Result:
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "-C", "test", *args],
                           input=stdin)
    _adopt(c)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def _leader(c: TestCluster, other_than: str | None = None) -> str:
    return wait_until(lambda: next((n for n, s in c.statuses().items()
                                    if s["role"] == "leader" and n != other_than), None),
                      10.0, "a leader" + (f" other than {other_than}" if other_than else ""))


def _requests(c: TestCluster) -> dict[str, int]:
    return {n: s["counters"]["client_requests"] for n, s in c.statuses().items()}


# --- misleading answers ----------------------------------------------------------------


def test_stale_get_from_a_named_node_that_cannot_answer_fails(c: TestCluster) -> None:
    """`get --stale --node N` answers from N or fails naming N (exit 3):
    never silently from another node."""
    cli(c, "put", "k", "v")
    wait_until(lambda: all(s["applied"] == max(x["commit"] for x in c.statuses().values())
                           for s in c.statuses().values()), 10.0, "every node applied the put")
    assert cli(c, "get", "k", "--stale", "--node", "n1").stdout == "v\n"
    cli(c, "pause", "n1")
    r = cli(c, "get", "k", "--stale", "--node", "n1")
    assert r.exit_code == Exit.UNAVAILABLE and "node n1 is paused" in r.stderr, r.output
    cli(c, "kill", "n1")
    r = cli(c, "get", "k", "--stale", "--node", "n1", "--json")
    assert r.exit_code == Exit.UNAVAILABLE, r.output
    err = json.loads(r.stdout)["error"]
    assert err["reason"] == "unavailable"
    assert "node n1 is down, so it cannot answer" in err["message"]


def test_a_linearizable_get_from_a_named_follower_sees_the_last_write(c: TestCluster) -> None:
    """`get --node N` without --stale on a follower is linearizable: right
    after a put is acknowledged, the follower answers the new value (it asks
    the leader for a read index, never its own copy as it stands)."""
    for i in range(5):
        cli(c, "put", "lin", f"v{i}")
        followers = [n for n, s in c.statuses().items() if s.get("role") == "follower"]
        assert followers, "no follower to ask"
        assert cli(c, "get", "lin", "--node", followers[i % len(followers)]).stdout == f"v{i}\n"


def test_a_named_node_is_the_only_one_asked(c: TestCluster,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """If N dies between the supervisor's look and the read (here: the look
    is made to miss it), `get --stale --node N` still asks N alone, and
    fails naming it once its timeout passes."""
    cli(c, "put", "k", "v")
    cli(c, "kill", "n1")
    real = Cluster.process_state
    monkeypatch.setattr(Cluster, "process_state", lambda self, n: (
        (1, "running") if n == "n1" else real(self, n)))
    r = cli(c, "get", "k", "--stale", "--node", "n1", "--timeout", "0.5")
    assert r.exit_code == Exit.UNAVAILABLE, r.output
    assert "node n1 did not answer within 0.5s" in r.stderr


def test_status_and_leader_exit_3_without_a_leader(c: TestCluster) -> None:
    """With every node down, status still prints each node but exits 3, and
    so does `leader`; `start` with no names brings all of them back."""
    r = cli(c, "kill", "n1", "n2", "n3")
    assert r.exit_code == 0, r.output
    r = cli(c, "status")
    assert r.exit_code == Exit.UNAVAILABLE and "no node is running" in r.stderr
    assert r.stdout.count("down") == 3
    assert cli(c, "leader").exit_code == Exit.UNAVAILABLE
    r = cli(c, "start", "--json")
    assert r.exit_code == 0, r.output
    assert [(x["node"], x["result"]) for x in json.loads(r.stdout)["nodes"]] == [
        ("n1", "started"), ("n2", "started"), ("n3", "started")]
    _leader(c)
    assert cli(c, "status").exit_code == 0


def test_get_of_a_missing_key_exits_4(c: TestCluster) -> None:
    """A missing key exits 4, as text or JSON; a present one 0."""
    r = cli(c, "get", "nosuch")
    assert r.exit_code == Exit.NOT_FOUND and "key nosuch not found" in r.stderr
    r = cli(c, "get", "nosuch", "--json")
    assert r.exit_code == Exit.NOT_FOUND
    assert json.loads(r.stdout) == {"key": "nosuch", "found": False, "value": None}
    r = cli(c, "cas", "nosuch", "x", "y", "--json")
    assert r.exit_code == Exit.FAILED and json.loads(r.stdout)["error"] == "cas_failed"


def test_a_write_without_a_quorum_exits_3_and_says_nothing_was_written(c: TestCluster) -> None:
    """With both followers paused, a put cannot even open its session: the
    cluster is unavailable (exit 3), and the sentence says nothing was written."""
    lead = _leader(c)
    followers = [n for n in c.node_ids() if n != lead]
    cli(c, "pause", *followers)
    r = cli(c, "put", "k", "v", "--timeout", "0.5")
    assert r.exit_code == Exit.UNAVAILABLE, r.output
    assert "nothing was written" in r.stderr, r.stderr


def test_a_write_without_a_quorum_after_its_session_exits_5(
        c: TestCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put the leader took but could not commit (the followers paused once
    its session was open) has an unknown outcome: exit 5, and the sentence
    says it may have been applied."""
    lead = _leader(c)
    followers = [n for n in c.node_ids() if n != lead]
    opened = Client.open_session

    def open_then_lose_the_quorum(self: Client) -> int:
        sid = opened(self)
        for n in followers:
            c.pause(n)
        return sid

    monkeypatch.setattr(Client, "open_session", open_then_lose_the_quorum)
    r = cli(c, "put", "k", "v", "--timeout", "0.5")
    assert r.exit_code == Exit.UNKNOWN_OUTCOME, r.output
    assert "may or may not have been applied" in r.stderr


# --- stuck or slow ---------------------------------------------------------------------


def test_clients_skip_down_nodes(c: TestCluster) -> None:
    """With n1 and n2 down, a stale read answers at once from n3 instead of
    waiting out a 1 s attempt on each down node first."""
    cli(c, "put", "k", "v")
    wait_until(lambda: c.statuses()["n3"]["applied"] >= c.statuses()[_leader(c)]["commit"],
               10.0, "n3 applied the put")
    cli(c, "kill", "n1", "n2")
    start = time.monotonic()
    r = cli(c, "get", "k", "--stale")
    took = time.monotonic() - start
    assert r.stdout == "v\n", r.output
    assert took < 1.0, f"the read took {took:.2f}s: it waited on a down node"


def test_clients_try_the_last_seen_leader_first(c: TestCluster) -> None:
    """After `transfer n3`, a put (its session's registration, the write and
    the closing) is sent to n3 alone: no other node sees a request it would
    have to redirect."""
    target = "n3" if _leader(c) != "n3" else "n2"
    r = cli(c, "transfer", target, "--json")
    assert r.exit_code == 0, r.output
    moved = json.loads(r.stdout)
    assert moved["to"] == target and moved["moved"] and moved["from"] != target
    before = _requests(c)
    assert cli(c, "put", "k", "v").exit_code == 0
    after = _requests(c)
    assert {n: after[n] - before[n] for n in after} == {
        n: 3 * int(n == target) for n in after}, (before, after)


def test_up_on_a_partly_down_cluster_suggests_start(c: TestCluster) -> None:
    """`up` with one node down refuses (exit 1) and names `raftctl start`."""
    cli(c, "stop", "n2")
    r = cli(c, "up")
    assert r.exit_code == Exit.FAILED
    assert "partly up (n1, n3 running, n2 down)" in r.stderr and "raftctl start" in r.stderr


def test_kill_goes_on_past_a_node_already_down(c: TestCluster) -> None:
    """`kill n1 n2 n3` with n2 down kills n1 and n3 and reports each (exit 0);
    `pause` of a down node fails for that node only, with exit 3."""
    cli(c, "kill", "n2")
    r = cli(c, "pause", "n1", "n2", "n3")
    assert r.exit_code == Exit.UNAVAILABLE
    assert "n1: paused" in r.stdout and "n3: paused" in r.stdout
    assert "n2: node n2 is down, so it cannot be paused" in r.stderr
    r = cli(c, "kill", "n1", "n2", "n3", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["action"] == "kill"
    assert [(x["node"], x["ok"], x["result"]) for x in doc["nodes"]] == [
        ("n1", True, "killed"), ("n2", True, "already down"), ("n3", True, "killed")]
    assert all(s.process == "down" for s in c.status())


def test_kill_says_so_when_the_node_does_not_exit(
        c: TestCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed node still there after the wait (a process inside a
    request to a stalled disk exits only when it ends) is reported as
    such, not as killed: a start of it now would find it running."""
    monkeypatch.setattr(Cluster, "_wait_gone", lambda self, node, timeout_s: False)
    monkeypatch.setattr(Cluster, "process_state", lambda self, node: (1, "running"))
    r = cli(c, "kill", "n1", "n2")
    assert r.exit_code == Exit.FAILED, r.output
    for n in ("n1", "n2"):
        assert f"node {n} (pid" in r.stderr and "has not exited within 5 s: it is running" \
            in r.stderr, r.stderr
    assert "killed" not in r.stdout, r.stdout


def test_kill_of_a_node_gone_just_after_the_wait_is_a_kill(
        c: TestCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait gave up, but the node is down when looked at again: killed."""
    monkeypatch.setattr(Cluster, "_wait_gone", lambda self, node, timeout_s: False)
    sent: list[str] = []
    signal = Cluster.signal

    def signalled(self: Cluster, node: str, sig: int) -> int:
        sent.append(node)
        return signal(self, node, sig)

    monkeypatch.setattr(Cluster, "signal", signalled)
    monkeypatch.setattr(Cluster, "process_state",
                        lambda self, node: (None, "down") if node in sent else (1, "running"))
    r = cli(c, "kill", "n1")
    assert r.exit_code == 0 and "n1: killed" in r.stdout, r.output


def test_unpause_is_resume(c: TestCluster) -> None:
    """`unpause` (docker's word) resumes a paused node; with no names, every
    paused one."""
    cli(c, "pause", "n1", "n2")
    r = cli(c, "unpause")
    assert r.exit_code == 0 and "n1: resumed" in r.stdout and "n2: resumed" in r.stdout
    assert [c.process_state(n)[1] for n in ("n1", "n2")] == ["running", "running"]


def test_put_reads_a_one_mib_value_from_stdin(c: TestCluster) -> None:
    """`put k -` stores a value too long for a command line, byte for byte."""
    value = bytes(range(32, 127)) * (1024 * 1024 // 95) + b"x" * (1024 * 1024 % 95)
    assert len(value) == 1024 * 1024
    r = cli(c, "put", "big", "-", stdin=value)
    assert r.exit_code == 0 and "OK put" in r.stdout, r.output
    assert cli(c, "get", "big").stdout_bytes == value + b"\n"


def test_ls_finds_a_running_cluster_outside_the_home(c: TestCluster, tmp_path: Path) -> None:
    """A cluster started in any directory is listed by `ls` from an empty
    home while it runs, with its nodes up and its leader."""
    lead = _leader(c)
    empty = tmp_path / "empty-home"
    r = CliRunner().invoke(main, ["--home", str(empty), "ls", "--json"])
    mine = [f for f in json.loads(r.stdout) if f["run_dir"] == str(c.run_dir.resolve())]
    assert len(mine) == 1, r.output
    assert (mine[0]["name"], mine[0]["up"], mine[0]["nodes"], mine[0]["leader"],
            mine[0]["current"]) == ("test", 3, 3, lead, False)


# --- chaos and bench -------------------------------------------------------------------


def test_an_interrupted_chaos_run_does_not_exit_0(c: TestCluster) -> None:
    """Ctrl-C during the fault phase: the run heals, judges, prints its
    report, and exits 130."""
    env = {**os.environ, "RAFTCTL_RUN_DIR": str(c.run_dir)}
    p = subprocess.Popen([sys.executable, "-m", "raftctl", "chaos", "run", "--json",
                          "--duration", "60s", "--interval", "0.5s", "--nemesis", "partition",
                          "--seed", "3"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: p.poll() is not None or not c.load_faults().is_clear(), 20.0,
                   "the chaos run's first partition")
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
        _adopt(c)
    assert p.returncode == Exit.INTERRUPTED, err
    rep: dict[str, Any] = json.loads(out)
    assert any("interrupted" in e["detail"] for e in rep["events"]), rep["events"]
    assert "verdict" in rep and c.load_faults().is_clear()
    # The run's lines of every node's log are saved beside its report, and
    # explain tells them from there: the partition the run made among them.
    out_dir = Path(rep["out_dir"])
    for n in c.node_ids():
        assert (out_dir / "nodes" / n / "node.log").is_file(), n
    told = CliRunner().invoke(main, ["explain", "--from", str(out_dir), "--json"])
    assert told.exit_code == 0, told.output
    assert any(json.loads(line).get("event") == "link_faults_set"
               for line in told.output.splitlines()), told.output[-2000:]


def test_failover_table_names_each_column_once(c: TestCluster) -> None:
    """`bench failover`'s table has no two columns with one title."""
    from raftctl.bench_cmd import FAILOVER_COLUMNS

    r = cli(c, "bench", "failover", "--trials", "1")
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if "TRIAL" in line)
    titles = [t.strip() for t in header.strip("┃│ ").split("┃") if t.strip()]
    assert titles == list(FAILOVER_COLUMNS) and len(set(titles)) == len(titles), header
