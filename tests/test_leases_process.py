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
from click.testing import CliRunner, Result

from node.api import decode_responses
from node.client import ClientError, LeaseNotFound
from node.transport.zmq import make_client_socket
from raftctl.cli import main
from raftctl.exits import Exit
from tests.procs import TestCluster, make_cluster, start_and_settle, wait_until

ROOT = Path(__file__).parent.parent
# How long after its deadline a lapsed lease's keys may linger: the leader
# notices within a turn, then the expiry entry commits and applies.
EXPIRY_BOUND_S = 2.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A running 3-node cluster for every test of this module."""
    with make_cluster(tmp_path_factory.mktemp("leases"), 3) as c:
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


def test_kept_lease_notices_it_was_revoked(shared: TestCluster) -> None:
    """A kept lease revoked by someone else sets `lost` at its next
    keep-alive, within a third of its TTL; leaving the block then is quiet."""
    with shared.client() as cl, cl.kept_lease(1.5) as kl:
        cl.lease_revoke(kl.id)
        wait_until(kl.lost.is_set, 1.5, "the holder learned its lease is gone")


_HOLDER = """
import json, sys
from raftctl.cluster import Cluster
from node.client import Client
c = Cluster(__import__("pathlib").Path(sys.argv[1]), "test")
with Client(c.client_addrs(), c.keys()) as cl, cl.kept_lease(float(sys.argv[2])) as kl:
    cl.put("p/held", b"v", lease=kl.id)
    print(json.dumps({"lease": kl.id}), flush=True)
    while True:
        print(json.dumps({"renewed_at": kl.renewed_at}), flush=True)
        if kl.lost.wait(0.05):  # report every 50 ms until the lease is lost
            break
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


def cli(c: TestCluster, *args: str) -> Result:
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "-C", "test", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def test_cli_grant_put_ttl_ls_keepalive_revoke(shared: TestCluster) -> None:
    """The lease commands through the CLI, text and --json; a gone lease
    exits 4 with one sentence."""
    r = cli(shared, "lease", "grant", "30")
    assert r.exit_code == 0, r.output
    lid = int(r.stdout.strip())
    assert cli(shared, "put", "cli/a", "1", "--lease", str(lid)).exit_code == 0
    got = json.loads(cli(shared, "lease", "ttl", str(lid), "--keys", "--json").stdout)
    assert got["lease"] == lid and got["keys"] == ["cli/a"] and got["granted_ttl_ms"] == 30_000
    assert "30s" in cli(shared, "lease", "ttl", str(lid)).stdout
    assert lid in json.loads(cli(shared, "lease", "ls", "--json").stdout)["leases"]
    assert str(lid) in cli(shared, "lease", "ls").stdout.split()
    once = cli(shared, "lease", "keep-alive", str(lid), "--once", "--json")
    assert json.loads(once.stdout) == {"lease": lid, "ttl_ms": 30_000}
    assert "kept alive" in cli(shared, "lease", "keep-alive", str(lid), "--once").stdout
    r = cli(shared, "lease", "revoke", str(lid))
    assert r.exit_code == 0 and "revoked" in r.stdout
    assert cli(shared, "get", "cli/a").exit_code == Exit.NOT_FOUND
    gone = cli(shared, "lease", "ttl", str(lid))
    assert gone.exit_code == Exit.NOT_FOUND and "does not exist" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1
    bad = cli(shared, "put", "cli/b", "1", "--lease", str(lid), "--json")
    assert bad.exit_code == Exit.NOT_FOUND
    assert json.loads(bad.stdout)["error"] == "lease_not_found"
    bad = cli(shared, "put", "cli/b", "1", "--lease", str(lid))
    assert bad.exit_code == Exit.NOT_FOUND and "lease grant" in bad.stderr


def test_cli_txn_puts_under_a_lease(shared: TestCluster) -> None:
    """`raftctl txn` with `put KEY VALUE --lease ID`: the key is attached,
    and goes when the lease is revoked."""
    lid = int(cli(shared, "lease", "grant", "30").stdout.strip())
    text = f"if version(txn/owner) = 0\nthen put txn/owner me --lease {lid}\n"
    r = CliRunner().invoke(main, ["--run-dir", str(shared.run_dir), "-C", "test", "txn"],
                           input=text)
    assert r.exit_code == 0, r.output
    got = json.loads(cli(shared, "lease", "ttl", str(lid), "--keys", "--json").stdout)
    assert got["keys"] == ["txn/owner"]
    assert cli(shared, "lease", "revoke", str(lid)).exit_code == 0
    assert cli(shared, "get", "txn/owner").exit_code == Exit.NOT_FOUND


def test_cli_keepalive_streams_until_ctrl_c(shared: TestCluster) -> None:
    """`lease keep-alive` prints a line per renewal and exits 0 on Ctrl-C."""
    with shared.client() as cl:
        lid = cl.lease_grant(1.5).id
    proc = subprocess.Popen(
        [sys.executable, "-m", "raftctl", "--run-dir", str(shared.run_dir), "-C", "test",
         "lease", "keep-alive", str(lid)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(lines) >= 3, 10.0, "three renewals printed")
        assert all(f"lease {lid} kept alive" in x for x in lines[:3])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def small_snapshots(tmp_path: Path) -> Iterator[TestCluster]:
    """A 3-node cluster that snapshots every 50 entries and keeps no tail."""
    with make_cluster(tmp_path, 3, snapshot_entries=50, catchup_entries=0) as c:
        start_and_settle(c)
        yield c


def test_leases_survive_install_snapshot_and_restart(small_snapshots: TestCluster) -> None:
    """A follower that missed a lease's grant gets it by InstallSnapshot; after
    every node restarts (state from snapshot and log) the lease is still
    there with its keys, wherever the leadership lands."""
    c = small_snapshots
    lead = c.wait_for_leader(5.0)
    victim = next(n for n in c.node_ids() if n != lead)
    c.kill(victim)
    with c.client() as cl:
        lid = cl.lease_grant(120).id
        cl.put("s/a", b"1", lease=lid)
        cl.put("s/b", b"2", lease=lid)
        for i in range(200):
            cl.put(f"fill/{i}", b"v" * 100)
    wait_until(lambda: (c.statuses().get(lead) or {}).get("snapshot_index", 0) > lid, 10.0,
               "the leader compacted its log past the grant")
    c.start(victim)
    wait_until(lambda: '"snapshot_installed"' in c.log_path(victim).read_text(), 20.0,
               f"{victim} installed a snapshot")
    c.transfer(victim)
    wait_until(lambda: c.leader() == victim, 10.0, f"{victim} leads")
    with c.client() as cl:
        info = cl.lease_ttl(lid, keys=True)
        assert info.keys == ["s/a", "s/b"] and info.granted_ttl_ms == 120_000
    c.stop_all()
    c.start_all()
    c.wait_for_leader(10.0)
    with c.client() as cl:
        info = cl.lease_ttl(lid, keys=True)
        assert info.keys == ["s/a", "s/b"]
        # A new leader gives the lease its TTL and the longest election timeout.
        assert info.ttl_ms > 110_000
        assert cl.lease_list() == [lid]


@pytest.fixture
def paxos3(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 3, algorithm="paxos") as c:
        start_and_settle(c)
        yield c


def test_leases_on_a_paxos_cluster(paxos3: TestCluster) -> None:
    """Paxos shares the state machine, the read path and the leader's role
    changes: a lease is kept alive, survives a change of leader, and its
    keys go when it lapses."""
    c = paxos3
    with c.client() as cl:
        kept = cl.lease_grant(30)
        lapsing = cl.lease_grant(1)
        cl.put("px/kept", b"v", lease=kept.id)
        cl.put("px/lapsing", b"v", lease=lapsing.id)
        assert cl.lease_keepalive(kept.id) == 30_000
        wait_until(lambda: cl.get("px/lapsing") is None, 10.0, "the lapsed lease's key goes")
        lead = c.wait_for_leader(5.0)
        other = next(n for n in c.node_ids() if n != lead)
        c.transfer(other)
        wait_until(lambda: c.leader() not in (None, lead), 10.0, f"the leadership left {lead}")
        assert cl.lease_keepalive(kept.id) == 30_000
        assert cl.get("px/kept") == b"v" and cl.lease_list() == [kept.id]


def test_bench_lease_reports_its_rates(shared: TestCluster) -> None:
    """`bench lease` counts grants and keep-alives a second, and leaves no
    lease of its own behind once they lapse."""
    r = cli(shared, "bench", "lease", "--clients", "2", "--duration", "1", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["errors"] == 0, r.output
    assert doc["grants"] > 0 and doc["keepalives"] > 0 and doc["keepalives_per_s"] > 0
    lat = doc["keepalive_latency_ms"]
    assert lat["p50"] <= lat["p99"] <= lat["max"]
    text = cli(shared, "bench", "lease", "--clients", "1", "--duration", "0.4")
    assert "keep-alives/s" in text.stdout and "grants/s" in text.stdout
