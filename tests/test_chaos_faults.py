"""Faults on real node processes: an isolated or paused leader is replaced and
steps down, a one-way block or a returning node deposes no healthy leader
(PreVote, CheckQuorum), a killed majority acknowledges nothing, and the
partition/block/netem/heal commands reach every node, also one started later."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chaos.faults import FaultState, add_blocks, isolate, one_way, with_blocks
from node.client import Client, OutcomeUnknown, Unavailable
from raftctl.cli import main
from tests.procs import TestCluster, cluster3, make_cluster, wait_until

__all__ = ["cluster3"]


# Over UDP as a soak (CI runs it): the default suite keeps UDP's node and
# fault paths in tests/test_node_input.py, tests/test_nemesis.py,
# tests/test_udp_cluster.py and tests/test_transport_udp.py, and stays
# under 10 minutes.
@pytest.fixture(params=["zmq", pytest.param("udp", marks=pytest.mark.soak)])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _offset(c: TestCluster, node: str) -> int:
    p = c.log_path(node)
    return p.stat().st_size if p.exists() else 0


def _events(c: TestCluster, node: str, since: int, name: str) -> list[dict[str, Any]]:
    """The node's log events called `name` written after byte `since`."""
    with open(c.log_path(node), "rb") as f:
        f.seek(since)
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        if ev.get("event") == name:
            out.append(ev)
    return out


def _converged(c: TestCluster, nodes: list[str], at_least: int) -> bool:
    ds = [c.digest(n) for n in nodes]
    if any(d is None for d in ds):
        return False
    return (len({(d["applied"], d["digest"]) for d in ds if d is not None}) == 1
            and all(d is not None and d["applied"] >= at_least for d in ds))


def _leader_other_than(c: TestCluster, old: str, term: int) -> str | None:
    for n, st in c.statuses().items():
        if n != old and st["role"] == "leader" and st["term"] > term:
            return n
    return None


def _write_some(c: TestCluster, prefix: str, n: int) -> dict[str, bytes]:
    acked = {}
    with c.client() as cl:
        for i in range(n):
            key, val = f"{prefix}{i}", f"{prefix}-v{i}".encode()
            assert cl.put(key, val).ok
            acked[key] = val
    return acked


def _all_present(c: TestCluster, acked: dict[str, bytes]) -> list[str]:
    with c.client() as cl:
        return [k for k, v in acked.items() if cl.get(k) != v]


def _not_acknowledged(cl: Client, key: str, value: bytes) -> bool:
    try:
        return not cl.put(key, value).ok
    except (OutcomeUnknown, Unavailable):
        return True


@pytest.fixture
def slow_lease3(tmp_path: Path, transport: str) -> Iterator[TestCluster]:
    """A 3-node cluster whose election timeout (300-600 ms) leaves an
    isolated leader time to accept a write before CheckQuorum deposes it."""
    with make_cluster(tmp_path, 3, election_ticks=30, transport=transport) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


def test_isolated_leader_is_replaced_and_its_write_is_lost_not_acknowledged(
        slow_lease3: TestCluster) -> None:
    """The majority elects a new leader and commits; the write sent to the
    isolated old leader is never acknowledged and, after heal, is replaced
    by the new leader's log everywhere; no acknowledged write is lost."""
    c = slow_lease3
    acked = _write_some(c, "before", 10)
    old = c.leader()
    assert old is not None
    old_term = c.statuses()[old]["term"]
    since = _offset(c, old)
    c.apply_faults(with_blocks(FaultState(), isolate(old, c.node_ids()), f"{old} isolated"))
    with Client({old: c.client_addrs()[old]}, c.keys(), timeout_s=2.0,
                attempt_timeout_s=0.5) as iso:
        assert _not_acknowledged(iso, "isolated", b"never"), "the isolated leader acknowledged"
    st_old = c.statuses()[old]
    assert st_old["log_last"] > st_old["commit"], f"no uncommitted entry on {old}: {st_old}"
    new = wait_until(lambda: _leader_other_than(c, old, old_term), 10.0,
                     "a new leader among the majority")
    acked |= _write_some(c, "during", 10)

    c.apply_faults(FaultState())
    new_term = c.statuses()[new]["term"]
    wait_until(lambda: (lambda s: s["role"] == "follower" and s["term"] >= new_term)(
        c.statuses()[old]), 10.0, f"{old} follows after heal")
    commit = c.statuses()[new]["commit"]
    wait_until(lambda: _converged(c, c.node_ids(), max(commit, st_old["log_last"])), 10.0,
               f"every node applied past {old}'s old entries with equal state")
    with c.client() as cl:
        assert cl.get("isolated") is None
        assert cl.get("isolated", stale=True, node=old) is None
    assert _all_present(c, acked) == []
    assert _events(c, old, since, "stepped_down"), f"{old} logged no stepped_down"


def test_one_way_block_does_not_depose_the_leader(cluster3: TestCluster) -> None:
    """With leader->follower cut one way, the follower only pre-votes; the
    others ignore it (leader lease) and the term never changes (thesis §9.6, §6.2)."""
    c = cluster3
    lead = c.leader()
    assert lead is not None
    cut, other = [n for n in c.node_ids() if n != lead]
    term = c.statuses()[lead]["term"]
    since = {n: _offset(c, n) for n in c.node_ids()}
    c.apply_faults(add_blocks(FaultState(), one_way(lead, cut), f"{lead}->{cut} blocked"))
    wait_until(lambda: len(_events(c, cut, since[cut], "prevote_started")) >= 3, 10.0,
               f"{cut} pre-voted three times")
    wait_until(lambda: [e for n in (lead, other) for e in _events(c, n, since[n], "vote_ignored")
                        if e.get("candidate") == cut and e.get("reason") == "leader_lease"],
               5.0, f"{cut}'s pre-votes ignored under the leader lease")
    _write_some(c, "oneway", 5)
    st = c.statuses()
    assert st[lead]["role"] == "leader"
    assert {n: s["term"] for n, s in st.items()} == {n: term for n in c.node_ids()}
    assert _events(c, cut, since[cut], "election_started") == []


def test_returning_isolated_node_does_not_depose_the_leader(cluster3: TestCluster) -> None:
    """A follower cut off for several election timeouts only pre-votes, so it
    comes back at the same term and the leader keeps leading."""
    c = cluster3
    lead = c.leader()
    assert lead is not None
    node = next(n for n in c.node_ids() if n != lead)
    term = c.statuses()[lead]["term"]
    since = _offset(c, node)
    c.apply_faults(with_blocks(FaultState(), isolate(node, c.node_ids()), f"{node} isolated"))
    wait_until(lambda: len(_events(c, node, since, "prevote_started")) >= 3, 10.0,
               f"{node} pre-voted three times while cut off")
    acked = _write_some(c, "away", 5)
    c.apply_faults(FaultState())
    commit = c.statuses()[lead]["commit"]
    wait_until(lambda: _converged(c, c.node_ids(), commit), 10.0, f"{node} caught up")
    st = c.statuses()
    assert st[lead]["role"] == "leader"
    assert st[node]["leader"] == lead
    assert {n: s["term"] for n, s in st.items()} == {n: term for n in c.node_ids()}
    assert _events(c, node, since, "election_started") == []
    assert _all_present(c, acked) == []


def test_paused_leader_is_replaced_and_steps_down_on_resume(cluster3: TestCluster) -> None:
    """SIGSTOP the leader past the election timeout: a new leader commits;
    SIGCONT: the old leader steps down to follow it."""
    c = cluster3
    old = c.leader()
    assert old is not None
    old_term = c.statuses()[old]["term"]
    since = _offset(c, old)
    c.pause(old)
    new = wait_until(lambda: _leader_other_than(c, old, old_term), 10.0,
                     "a new leader while the old one is paused")
    acked = _write_some(c, "paused", 5)
    c.resume(old)
    wait_until(lambda: (lambda s: s is not None and s["role"] == "follower"
                        and s["leader"] == new)(c.statuses().get(old)), 10.0,
               f"{old} follows {new} after resume")
    assert _events(c, old, since, "stepped_down"), f"{old} logged no stepped_down"
    assert _all_present(c, acked) == []


def test_killed_majority_acknowledges_nothing_then_recovers(cluster3: TestCluster) -> None:
    """With two of three nodes killed no write is acknowledged; restarted,
    the cluster serves again with every earlier acknowledged write."""
    c = cluster3
    acked = _write_some(c, "kept", 10)
    lead = c.leader()
    assert lead is not None
    victims = [lead, next(n for n in c.node_ids() if n != lead)]
    for n in victims:
        c.kill(n)
    with c.client(timeout_s=1.5, attempt_timeout_s=0.3) as cl:
        assert _not_acknowledged(cl, "minority", b"x"), "a minority acknowledged a write"
    for n in victims:
        c.start(n)
    c.wait_for_leader(15.0)
    acked |= _write_some(c, "after", 3)
    assert _all_present(c, acked) == []


# --- the fault commands, on one cluster shared by the tests below -------------------


@pytest.fixture(scope="module")
def shared3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One cluster for the command tests: they check what the supervisor
    records and pushes, which is the same on either peer transport."""
    with make_cluster(tmp_path_factory.mktemp("faults"), 3) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


@pytest.fixture
def faults3(shared3: TestCluster) -> Iterator[TestCluster]:
    """The shared cluster, healed and whole before and after each test."""
    _whole(shared3)
    yield shared3
    _whole(shared3)


def _whole(c: TestCluster) -> None:
    c.apply_faults(FaultState())
    for s in c.status(timeout_s=0.5):
        if s.process == "paused":
            c.resume(s.id)
        elif s.process == "down":
            c.start(s.id)
    wait_until(lambda: len(c.statuses()) == 3, 10.0, "all three nodes answer")


def _raftctl(c: TestCluster, *args: str) -> str:
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "-C", c.name, *args])
    assert r.exit_code == 0, r.output
    return r.output


def _faults(c: TestCluster) -> dict[str, dict[str, Any]]:
    return {row["node"]: row["faults"] for row in json.loads(_raftctl(c, "status", "--json"))}


def test_partition_command_cuts_links_and_status_shows_them(faults3: TestCluster) -> None:
    """`partition n1 n2,n3` cuts n1 off both ways, `status` lists it, `heal` undoes it."""
    c = faults3
    assert "n1 | n2,n3" in _raftctl(c, "partition", "n1", "n2,n3")
    f = _faults(c)
    assert set(f["n1"]) == {"n2", "n3"}
    assert f["n1"]["n2"]["block_out"] and f["n1"]["n2"]["block_in"]
    assert set(f["n2"]) == {"n1"} and set(f["n3"]) == {"n1"}
    assert "healed" in _raftctl(c, "heal")
    assert _faults(c) == {"n1": {}, "n2": {}, "n3": {}}


def test_node_started_during_a_partition_has_it_at_once(faults3: TestCluster) -> None:
    """A node started while a fault is active reports it in its first status."""
    c = faults3
    c.kill("n3")
    out = _raftctl(c, "partition", "--isolate", "n3")
    assert "n3" in out and "will get the faults when started" in out
    c.start("n3")
    first = wait_until(lambda: c.node_status("n3", timeout_s=0.3).status, 10.0,
                       "n3 answers its first status request")
    assert set(first["links"]) == {"n1", "n2"}
    assert all(r["block_out"] and r["block_in"] for r in first["links"].values())


def test_block_one_way_cuts_only_one_direction(faults3: TestCluster) -> None:
    """`block n1 n2 --one-way` drops n1->n2 at both ends and leaves n2->n1 up."""
    c = faults3
    _raftctl(c, "block", "n1", "n2", "--one-way")
    f = _faults(c)
    assert f["n1"]["n2"]["block_out"] and not f["n1"]["n2"]["block_in"]
    assert f["n2"]["n1"]["block_in"] and not f["n2"]["n1"]["block_out"]
    assert f["n3"] == {}


def test_netem_command_sets_rates_and_heal_clears_them(faults3: TestCluster) -> None:
    """`netem` puts delay and loss on every link; `netem --clear` removes them."""
    c = faults3
    _raftctl(c, "netem", "--delay", "20ms", "--jitter", "5ms", "--loss", "5%")
    for node, links in _faults(c).items():
        assert len(links) == 2, node
        for r in links.values():
            assert (r["delay_ms"], r["jitter_ms"], r["loss"]) == (20.0, 5.0, 0.05)
    with c.client() as cl:
        assert cl.put("under-netem", b"1").ok
    _raftctl(c, "netem", "--clear")
    assert _faults(c) == {"n1": {}, "n2": {}, "n3": {}}


def test_resumed_node_gets_fault_changes_made_while_paused(faults3: TestCluster) -> None:
    """A heal issued while a node is paused reaches it when it is resumed."""
    c = faults3
    c.apply_faults(with_blocks(FaultState(), isolate("n2", c.node_ids()), "n2 isolated"))
    c.pause("n2")
    assert c.apply_faults(FaultState()) == ["n2"]
    c.resume("n2")
    assert c.statuses()["n2"]["links"] == {}
