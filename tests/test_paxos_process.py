"""Multi-Paxos in real node processes: `raftctl up --algorithm paxos` and an
operator's day on it (status and logs in ballots and slots, a decree, a
failover), writes applied exactly once, linearizable reads across a change
of leader, and `chaos run` on both transports."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chaos.faults import FaultState, isolate, with_blocks
from node.client import Client, OutcomeUnknown, Unavailable
from raftctl.bench_cmd import bench
from tests.procs import (
    RawClient,
    TestCluster,
    chaos_run,
    make_cluster,
    start_and_settle,
    wait_until,
)
from tests.test_cli import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path)
    try:
        yield c
    finally:
        c.reap()


@pytest.fixture(scope="module")
def paxos3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A running 3-node Paxos cluster (ZeroMQ) shared by the tests that
    leave it as they found it: running, every link whole."""
    with make_cluster(tmp_path_factory.mktemp("paxos3"), 3, algorithm="paxos") as c:
        start_and_settle(c)
        yield c


def _leader(st: dict[str, dict[str, Any]]) -> str | None:
    leaders = [n for n, r in st.items() if r["state"] == "leader"]
    return leaders[0] if len(leaders) == 1 else None


def test_operators_day_on_paxos(cli: Cli) -> None:
    """`up --algorithm paxos` records the algorithm; status shows ballots and
    slots; put/get work; a decree is chosen by all and its instance shows in
    the logs; the leader's death elects another; membership changes are
    refused with the reason."""
    out = cli("up", "--algorithm", "paxos").stdout
    assert "BALLOT" in out and "SLOTS" in out, out
    cfg = json.loads((cli.run_dir / "cluster.json").read_text())
    assert cfg["config"]["algorithm"] == "paxos", cfg["config"]
    old = wait_until(lambda: _leader(cli.status()), 10, "a Paxos leader")
    assert "OK put" in cli("put", "colour", "blue").stdout
    assert cli("get", "colour").stdout.strip() == "blue"
    row = cli.status()[old]
    assert row["algorithm"] == "paxos" and row["ballot"].endswith(f".{old}"), row
    assert row["slots"]["chosen"] >= 2 and row["commit"] == row["slots"]["chosen"], row

    d = json.loads(cli("paxos", "decree", "hello", "--json").stdout)
    assert d["chosen_by"] == ["n1", "n2", "n3"] and d["waiting_for"] == [], d
    steps = [ev["event"] for ev in d["lines"]]
    for ev in ("prepare_sent", "promised", "accept_sent", "accepted", "chosen"):
        assert ev in steps, (ev, steps)
    logs = cli("logs", "--tail", "40").stdout
    assert f" b{d['ballot']}" in logs and "chosen slot=" in logs, logs

    refused = cli("member", "add", ok=False)
    assert refused.returncode != 0 and "runs Paxos" in refused.stderr, refused

    cli("kill", "--leader")
    new = wait_until(lambda: _leader(cli.status()), 15, "a new leader after killing the leader")
    assert new != old
    cli("put", "colour", "green")
    cli("start", old)

    def caught_up() -> bool:
        s = cli.status()
        return bool(s[old]["state"] == "follower" and s[old]["applied"] == s[new]["commit"])
    wait_until(caught_up, 15, f"{old} rejoined and caught up")
    assert cli("get", "colour", "--stale", "--node", old).stdout.strip() == "green"
    cli("down")
    assert cli.alive() == [], "node processes survived `raftctl down`"


def test_a_retried_write_is_applied_once(paxos3: TestCluster) -> None:
    """The same (session, seq) sent three times is acknowledged three times
    with one slot, and its append shows once in the value."""
    raw = RawClient(paxos3)
    try:
        session = raw.ask({"op": "register"})[0]["session"]
        req = {"op": "append", "session": session, "seq": 1, "key": "once", "value": b"x,"}
        answers = raw.ask(req, copies=3)
        assert len(answers) == 3 and all(a["ok"] for a in answers), answers
        assert len({a["index"] for a in answers}) == 1, answers
        again = raw.ask(req)
        assert again and again[0]["index"] == answers[0]["index"], again
    finally:
        raw.close()
    with paxos3.client() as cl:
        assert cl.get("once") == b"x,"


def test_reads_see_the_last_write_across_a_change_of_leader(paxos3: TestCluster) -> None:
    """A write acknowledged by one leader is read back, linearizably, by a
    client of the next leader; the leader's status names its slots."""
    old = paxos3.wait_for_leader(10.0)
    with paxos3.client() as cl:
        cl.put("handed", b"before")
        to = next(n for n in paxos3.node_ids() if n != old)
        paxos3.transfer(to)
        new = paxos3.wait_for_leader(10.0, exclude={old})
        assert cl.get("handed") == b"before"
        cl.put("handed", b"after")
    with paxos3.client() as other:
        assert other.get("handed") == b"after"
    st = paxos3.statuses()[new]
    assert st["ballot"].endswith(f".{new}") and st["slots"]["chosen"] == st["commit"], st


def test_an_isolated_leader_acknowledges_nothing(paxos3: TestCluster) -> None:
    """A leader cut off from both acceptors has no write chosen: its client
    is never told it was applied; the majority elects another leader and
    goes on, and after the heal every node holds the majority's values."""
    c = paxos3
    old = c.wait_for_leader(10.0)
    c.apply_faults(with_blocks(FaultState(), isolate(old, c.node_ids()), f"{old} isolated"))
    try:
        iso = Client({old: c.client_addrs()[old]}, c.keys(), timeout_s=1.5,
                     attempt_timeout_s=0.5)
        with iso, contextlib.suppress(OutcomeUnknown, Unavailable):
            assert not iso.put("isolated", b"never").ok, "the isolated leader acknowledged"
        new = wait_until(lambda: next((n for n, s in c.statuses().items()
                                       if n != old and s["role"] == "leader"), None),
                         10.0, "a new leader among the majority")
        with Client({n: a for n, a in c.client_addrs().items() if n != old}, c.keys()) as cl:
            for i in range(5):
                assert cl.put(f"during{i}", b"v").ok
    finally:
        c.apply_faults(FaultState())
    commit = wait_until(lambda: c.statuses()[new]["commit"], 5.0, f"{new}'s commit")

    def converged() -> bool:
        ds = [c.digest(n) for n in c.node_ids()]
        return all(d is not None and d["applied"] >= commit for d in ds) and \
            len({(d["applied"], d["digest"]) for d in ds if d is not None}) == 1
    wait_until(converged, 15.0, "every node applied the majority's slots with equal state")
    with c.client() as cl:
        assert cl.get("isolated") is None
        assert [cl.get(f"during{i}") for i in range(5)] == [b"v"] * 5


def test_bench_write_runs_on_paxos(paxos3: TestCluster) -> None:
    """`raftctl bench write` measures a Paxos cluster as it does Raft's:
    writes acknowledged, none failed, and the cluster's commit moved by them."""
    before = max(int(s["commit"]) for s in paxos3.statuses().values())
    r = CliRunner().invoke(bench, ["write", "--clients", "4", "--duration", "1", "--json"],
                           obj=paxos3, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["ops"] > 0 and out["errors"] == 0, out
    after = max(int(s["commit"]) for s in paxos3.statuses().values())
    assert after - before >= out["ops"], (before, after, out["ops"])


# Over UDP as a soak: the default suite runs Raft chaos over UDP (tests/test_nemesis.py).
@pytest.mark.parametrize("transport", ["zmq", pytest.param("udp", marks=pytest.mark.soak)])
def test_chaos_run_on_paxos(tmp_path: Path, transport: str) -> None:
    """A short `chaos run` against a Paxos cluster finds its history
    linearizable and no acknowledged write or element lost, on each transport."""
    with make_cluster(tmp_path, 3, algorithm="paxos", transport=transport) as c:
        start_and_settle(c)
        code, rep = chaos_run(c, "--duration", "6s", "--interval", "1s", "--seed", "5",
                              "--nemesis", "kill,isolate,partition,pause,transfer")
        checks = rep["verdict"]["checks"]
        assert code == 0 and rep["verdict"]["ok"], rep["verdict"]
        assert checks["linearizable"].startswith("ok"), checks
        assert checks["acknowledged writes"].startswith("ok"), checks
        assert checks["lost elements"].startswith("ok"), checks
        assert sum(f["injected"] for f in rep["faults"].values()) >= 3, rep["faults"]
