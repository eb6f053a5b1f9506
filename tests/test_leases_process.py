"""Leases against real node processes (docs/PROTOCOL.md, "Leases"): grant,
keep-alive, ttl, list and revoke through node/client.py; keys going with
their lease when it lapses; a kept lease whose holder is paused across a
leader change. One cluster is shared by the tests of this module; each test
works under its own prefix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from node.api import decode_responses
from node.client import ClientError, LeaseNotFound
from node.transport.zmq import make_client_socket
from tests.procs import TestCluster, make_cluster, start_and_settle, wait_until

ROOT = Path(__file__).parent.parent
# How long after its deadline a lapsed lease's keys may linger: the leader
# notices within a turn, then the expiry entry commits and applies.
EXPIRY_BOUND_S = 2.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A running 3-node cluster for every test of this module."""
    for c in make_cluster(tmp_path_factory.mktemp("leases"), 3):
        start_and_settle(c)
        yield c


def test_grant_keepalive_ttl_list_revoke(shared: TestCluster) -> None:
    """A granted lease is listed, renewed, reports its TTL and keys; revoking
    it deletes its keys at one revision; a put under an unknown lease
    changes nothing."""
    with shared.client() as cl:
        lease = cl.lease_grant(30)
        assert lease.id > 0 and lease.ttl_ms == 30_000
        assert lease.id in cl.lease_list()
        assert cl.lease_keepalive(lease.id) == 30_000
        cl.put("g/a", b"1", lease=lease.id)
        cl.put("g/b", b"2", lease=lease.id)
        cl.put("g/c", b"3", lease=lease.id)
        cl.put("g/c", b"4")  # a put without a lease detaches
        info = cl.lease_ttl(lease.id, keys=True)
        assert info.keys == ["g/a", "g/b"] and info.granted_ttl_ms == 30_000
        assert 25_000 < info.ttl_ms <= 30_000
        before = cl.range("g/", prefix=True).revision
        cl.lease_revoke(lease.id)
        after = cl.range("g/", prefix=True)
        assert [kv.key for kv in after.kvs] == ["g/c"] and after.revision == before + 1
        assert lease.id not in cl.lease_list()
        with pytest.raises(LeaseNotFound):
            cl.lease_keepalive(lease.id)
        with pytest.raises(LeaseNotFound):
            cl.lease_revoke(lease.id)
        got = cl.put("g/x", b"1", lease=lease.id)
        assert not got.ok and got.error == "lease_not_found"
        assert cl.get("g/x") is None


def test_bad_ttl_is_refused_with_a_sentence(shared: TestCluster) -> None:
    """A TTL outside the allowed range is refused before it enters the log."""
    with shared.client() as cl, pytest.raises(ClientError) as e:
        cl.lease_grant(0.1)
    assert e.value.code == "bad_request" and "TTL must be" in str(e.value)


def test_followers_refuse_keepalive_with_a_hint(shared: TestCluster) -> None:
    """Only the leader renews a lease: a follower answers not_leader and
    names the leader."""
    with shared.client() as cl:
        lease = cl.lease_grant(10)
    lead = shared.wait_for_leader(5.0)
    follower = next(n for n in shared.node_ids() if n != lead)
    sock = make_client_socket(zmq.Context.instance(), shared.client_addrs()[follower],
                              shared.keys())
    try:
        sock.send(msgspec.msgpack.encode({"op": "lease_keepalive", "lease": lease.id, "id": 7}))
        assert sock.poll(5000), f"{follower} did not answer"
        got = decode_responses(sock.recv())[0]
        assert got.error == "not_leader" and got.leader == lead
    finally:
        sock.close(linger=0)


def test_keys_vanish_after_ttl_without_keepalive(shared: TestCluster) -> None:
    """A lease not kept alive expires by the leader's decision: its keys are
    there until TTL has passed, and gone within TTL and a bound."""
    with shared.client() as cl:
        granted = time.monotonic()
        lease = cl.lease_grant(1.5)
        cl.put("x/k", b"v", lease=lease.id)
        assert cl.get("x/k") == b"v"
        wait_until(lambda: cl.get("x/k") is None, 1.5 + EXPIRY_BOUND_S + 5.0,
                   "the lapsed lease's key is deleted")
        gone = time.monotonic() - granted
        assert gone >= 1.5, f"the key went {gone:.2f}s after the grant, before its TTL"
        assert gone <= 1.5 + EXPIRY_BOUND_S + 1.0
        assert lease.id not in cl.lease_list()


def test_kept_lease_outlives_its_ttl_and_is_revoked_on_exit(shared: TestCluster) -> None:
    """kept_lease renews from its thread, so the key outlives several TTLs;
    leaving the block revokes the lease and its key goes at once."""
    with shared.client() as cl:
        with cl.kept_lease(1.0) as kl:
            cl.put("k/held", b"v", lease=kl.id)
            end = time.monotonic() + 3.0
            wait_until(lambda: time.monotonic() >= end or kl.lost.is_set(), 5.0,
                       "three TTLs pass")
            assert not kl.lost.is_set() and kl.renewals >= 5
            assert cl.get("k/held") == b"v"
        assert cl.get("k/held") is None
        assert kl.id not in cl.lease_list()


_HOLDER = """
import json, sys, time
from raftctl.cluster import Cluster
from node.client import Client
c = Cluster(__import__("pathlib").Path(sys.argv[1]), "test")
with Client(c.client_addrs(), c.keys()) as cl, cl.kept_lease(float(sys.argv[2])) as kl:
    cl.put("p/held", b"v", lease=kl.id)
    print(json.dumps({"lease": kl.id}), flush=True)
    while not kl.lost.is_set():
        print(json.dumps({"renewed_at": kl.renewed_at}), flush=True)
        time.sleep(0.05)
"""


def test_paused_holder_across_a_leader_change(shared: TestCluster) -> None:
    """A holder paused (SIGSTOP) while the leadership moves keeps its keys
    until TTL has passed since its last keep-alive: the new leader extends
    every lease; they go within TTL and a bound after the pause."""
    ttl_s = 3.0
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(shared.run_dir), str(ttl_s)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines: list[dict[str, float]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(lines) >= 3 and any("renewed_at" in x for x in lines[1:])
                   and lines[-1]["renewed_at"] > lines[1]["renewed_at"], 10.0,
                   "the holder renewed its lease at least once")
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        renewed = max(x.get("renewed_at", 0.0) for x in list(lines))
        lead = shared.wait_for_leader(5.0)
        other = next(n for n in shared.node_ids() if n != lead)
        shared.transfer(other)
        wait_until(lambda: shared.leader() not in (None, lead), 10.0,
                   f"the leadership moved off {lead}")
        with shared.client() as cl:
            while time.monotonic() < renewed + ttl_s - 0.2:
                assert cl.get("p/held") == b"v", (
                    f"the key went {time.monotonic() - renewed:.2f}s after the last renewal")
            wait_until(lambda: cl.get("p/held") is None, stopped + ttl_s + 30.0
                       - time.monotonic(), "the paused holder's key is deleted")
            gone = time.monotonic() - stopped
            # The new leader's extension (the longest election timeout)
            # comes on top of the TTL.
            bound = shared.config().max_election_timeout_ms() / 1000.0 + EXPIRY_BOUND_S
            assert gone <= ttl_s + bound, f"the key lingered {gone:.2f}s after the pause"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(5)
