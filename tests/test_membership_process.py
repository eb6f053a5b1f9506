"""Membership changes of real node processes (raftctl/members.py): a cluster
grows 3 -> 5 -> 3 under write load, leader included among the removed, and
a member whose data directory was deleted is replaced, with no acknowledged
write lost; the same changes over UDP; a removed node's messages dropped."""

from __future__ import annotations

import functools
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.client import Client, ClientError
from node.config import node_dir
from raftctl import members
from raftctl.cluster import ClusterError
from tests.procs import TestCluster, at_least, make_cluster, start_and_settle, wait_until


def _appender(c: TestCluster, stop: threading.Event, acked: list[bytes],
              unknown: list[bytes]) -> None:
    """Append unique tokens until told to stop; note which were acknowledged.
    The client learns members added later from the leader hints."""
    with Client(c.client_addrs(), c.keys(), timeout_s=5.0) as cl:
        n = 0
        while not stop.is_set():
            n += 1
            token = b"a%d," % n
            try:
                if cl.append("log", token).ok:
                    acked.append(token)
            except ClientError:
                unknown.append(token)


def _voters(c: TestCluster) -> list[str]:
    return members.conf_of(c.status()).voters


def _converged(c: TestCluster, nodes: list[str]) -> str | None:
    """The state digest if every node in `nodes` applied the same index."""
    got = [c.digest(n) for n in nodes]
    if any(d is None for d in got) or len({(d["applied"], d["digest"])  # type: ignore[index]
                                           for d in got}) != 1:
        return None
    return str(got[0]["digest"])  # type: ignore[index]


def test_grow_shrink_and_replace_under_load_lose_no_acknowledged_write(
        zmq3: TestCluster) -> None:
    """3 -> 5 -> 3 voters while a client appends, the leader among those
    removed, then a voter whose data was deleted is replaced: every
    acknowledged append is there exactly once and the replicas agree."""
    c = zmq3
    stop = threading.Event()
    acked: list[bytes] = []
    unknown: list[bytes] = []
    writer = threading.Thread(target=_appender, args=(c, stop, acked, unknown), daemon=True)
    writer.start()
    try:
        wait_until(at_least(acked, 20), 20.0, "writes acknowledged")
        for _ in range(2):
            new = members.add(c).node
            members.promote(c, new, wait_s=10.0)
        assert sorted(_voters(c)) == ["n1", "n2", "n3", "n4", "n5"]
        wait_until(at_least(acked, len(acked) + 20), 20.0, "writes on five voters")
        lead = c.wait_for_leader(5.0)
        other = next(n for n in ("n1", "n2", "n3") if n != lead)
        for gone in (lead, other):
            out = members.remove(c, gone)
            assert out.stopped == [gone] and gone not in out.voters
        assert len(_voters(c)) == 3
        assert {lead, other} <= set(c.removed_ids())
        wait_until(at_least(acked, len(acked) + 20), 20.0, "writes after shrinking")
        lead = c.wait_for_leader(5.0)
        victim = next(n for n in _voters(c) if n != lead)
        c.kill(victim)
        shutil.rmtree(node_dir(c.run_dir, victim) / "data")
        out = members.replace(c, victim)
        assert victim not in out.voters and out.started and out.started[0] in out.voters
        wait_until(at_least(acked, len(acked) + 20), 20.0, "writes after the replacement")
    finally:
        stop.set()
        writer.join(30.0)
    voters = _voters(c)
    wait_until(functools.partial(_converged, c, voters), 20.0, f"{voters} at one state")
    with c.client() as cl:
        value = cl.get("log") or b""
    tokens = Counter(t + b"," for t in value.split(b",")[:-1])
    assert [t for t, k in tokens.items() if k > 1] == [], "an append was applied twice"
    assert set(acked) <= set(tokens), "an acknowledged append was lost"
    assert set(tokens) <= set(acked) | set(unknown), "an append nobody made"




@pytest.fixture
def zmq3(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 3) as c:
        start_and_settle(c)
        yield c


@pytest.fixture
def udp3(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 3, transport="udp") as c:
        start_and_settle(c)
        yield c


def test_members_come_and_go_over_udp(udp3: TestCluster) -> None:
    """Over UDP too a new member is reached at the address its change
    carries, a removed one's datagrams are dropped, and writes go on."""
    c = udp3
    new = members.add(c).node
    members.promote(c, new, wait_s=10.0)
    lead = c.wait_for_leader(5.0)
    members.remove(c, lead)
    with c.client() as cl:
        assert cl.put("k", b"v").ok
        assert cl.get("k") == b"v"
    voters = _voters(c)
    assert new in voters and lead not in voters
    added = [ln for n in voters for ln in c.log_path(n).read_text().splitlines()
             if '"peer_removed"' in ln and f'"peer":"{lead}"' in ln.replace(" ", "")]
    assert added, f"no node dropped {lead} from its transport"


def test_refusals_say_why(udp3: TestCluster) -> None:
    """Unknown member, promoting a voter, removing with a quorum at stake
    and a name reused after its data was lost are refused, each with the
    reason, and change nothing."""
    c = udp3
    with pytest.raises(ClusterError, match="n9 is not a member"):
        members.remove(c, "n9")
    with pytest.raises(ClusterError, match="n1 is already a voter"):
        members.promote(c, "n1")
    members.add(c)
    members.remove(c, "n4")
    shutil.rmtree(node_dir(c.run_dir, "n4") / "data")
    with pytest.raises(ClusterError, match="n4 was a member and its data is gone"):
        members.add(c, "n4")
    assert "n4" in c.removed_ids()
    lead = c.wait_for_leader(5.0)
    down, keep = (n for n in ("n1", "n2", "n3") if n != lead)
    c.kill(down)
    with pytest.raises(ClusterError, match=rf"only {keep} run.*--force") as e:
        members.remove(c, lead)
    assert f"start {down} first" in str(e.value)
    assert sorted(_voters(c)) == ["n1", "n2", "n3"]
