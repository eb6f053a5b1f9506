"""Kernel mode: the cut made by iptables, not by the nodes' transports; in
bridge mode (root) each node has its own network namespace, in sandbox mode
(any user with user namespaces) they share one. CI runs as root with
iproute2, iptables and util-linux installed, so neither mode is skipped there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.faults import FaultState, isolate, with_blocks
from node.client import Client, ClientError
from node.control import StatusRequest
from raftctl import netns
from tests.procs import TestCluster, make_kernel_cluster, wait_until


@pytest.fixture(params=netns.MODES)
def kernel_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    why = netns.unavailable(mode)
    if why is not None:
        pytest.skip(why)
    return mode


@pytest.fixture
def kernel_cluster(tmp_path: Path, transport: str, kernel_mode: str) -> Iterator[TestCluster]:
    yield from make_kernel_cluster(tmp_path, kernel_mode, transport=transport)


def test_kernel_cut_isolates_the_leader(kernel_cluster: TestCluster) -> None:
    """With the leader cut off by iptables: the majority elects a new leader
    and commits, a write sent to the old leader is never acknowledged, and
    after healing the old leader follows and nothing acknowledged is lost."""
    c = kernel_cluster
    nodes = c.node_ids()
    with c.client() as cl:
        for i in range(20):
            assert cl.put(f"before{i}", b"v").ok
    old = c.leader()
    assert old is not None
    c.apply_faults(with_blocks(FaultState(), isolate(old, nodes), f"{old} isolated"))
    assert len(c.kernel().rules()[old]) == 2, "two DROP rules for the old leader's way in"
    r = c.control(old, StatusRequest())
    assert r is not None and r.ok and r.data is not None
    assert r.data["links"] == {}, "the transport must not be the one cutting"

    new = wait_until(lambda: next((s.id for s in c.status(timeout_s=0.5)
                                   if s.status and s.status["role"] == "leader"
                                   and s.id != old), None), 10.0, "a leader in the majority")
    with c.client() as cl:
        for i in range(20):
            assert cl.put(f"after{i}", b"w").ok
    lone = Client({old: c.client_addrs()[old]}, c.keys(), timeout_s=1.0,
                  attempt_timeout_s=0.5)
    with lone:
        try:
            res = lone.put("lost", b"never")
            assert not res.ok, f"the isolated old leader acknowledged a write: {res}"
        except ClientError:
            pass  # not_leader once it steps down, or no answer: both are right

    c.apply_faults(FaultState())
    wait_until(lambda: (c.statuses().get(old) or {}).get("leader") == new, 10.0,
               f"{old} follows {new} after the heal")
    with c.client() as cl:
        for i in range(20):
            assert cl.get(f"before{i}") == b"v" and cl.get(f"after{i}") == b"w"
        assert cl.get("lost") is None
