"""Follower reads on real node processes (thesis §6.4.1): a follower answers a
linearizable read with nothing older than a write acknowledged before the
read began, and a follower cut off from its leader fails or waits, never
answering from its stale state."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from chaos.faults import FaultState, cut_between, with_blocks
from node.transport.zmq import make_client_socket
from tests.procs import TestCluster, chaos_run, make_cluster, start_and_settle, wait_until

_ENC = msgspec.msgpack.Encoder()
# Rounds of write-then-read-at-a-follower in the sequential test.
_ROUNDS = 300


class _NodeSocket:
    """One DEALER socket to one node: a request goes there and nowhere else,
    so the answer is that node's (the library client would retry elsewhere)."""

    def __init__(self, c: TestCluster, node: str) -> None:
        self.node = node
        self.sock = make_client_socket(zmq.Context.instance(), c.client_addrs()[node], c.keys())
        self.ids = 0

    def get(self, key: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The node's answer to a linearizable get, or None if none came."""
        self.ids += 1
        rid = self.ids
        self.sock.send(_ENC.encode({"op": "get", "key": key, "id": rid}))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000)):
            frame = msgspec.msgpack.decode(self.sock.recv())
            for r in frame if isinstance(frame, list) else [frame]:
                if r["id"] == rid:
                    return dict(r)
        return None

    def close(self) -> None:
        self.sock.close(linger=0)


def _read_once(c: TestCluster, node: str, key: str) -> dict[str, Any]:
    """One get at `node` on a socket of its own; an empty dict if no answer."""
    s = _NodeSocket(c, node)
    try:
        return s.get(key, timeout_s=2.0) or {}
    finally:
        s.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestCluster, str]]:
    """A running 3-node cluster shared by this module's tests, and its leader."""
    tmp: Path = tmp_path_factory.mktemp("follower_reads")
    with make_cluster(tmp, 3) as c:
        yield c, start_and_settle(c)


def _served(answer: dict[str, Any] | None, node: str) -> bytes | None:
    assert answer is not None, f"{node} did not answer a read"
    assert answer["ok"], f"{node} refused a read: {answer}"
    assert answer["node"] == node, f"the read was served by {answer['node']}, not {node}"
    value = answer.get("value")
    assert value is None or isinstance(value, bytes)
    return value


def test_follower_read_never_older_than_a_write_acknowledged_before_it(
        cluster: tuple[TestCluster, str]) -> None:
    """Write, then read at each follower in turn: every read returns the value
    just acknowledged (one writer), served by the follower itself."""
    c, lead = cluster
    followers = [n for n in c.node_ids() if n != lead]
    socks = {f: _NodeSocket(c, f) for f in followers}
    try:
        with c.client() as w:
            for i in range(_ROUNDS):
                w.put("seq", str(i).encode())
                f = followers[i % len(followers)]
                got = _served(socks[f].get("seq"), f)
                assert got == str(i).encode(), f"round {i}: {f} read {got!r}"
    finally:
        for s in socks.values():
            s.close()


def test_concurrent_follower_reads_see_every_write_acknowledged_before_they_began(
        cluster: tuple[TestCluster, str]) -> None:
    """A writer runs on while readers read at the followers: a read that
    began after write n was acknowledged returns n or later."""
    c, lead = cluster
    followers = [n for n in c.node_ids() if n != lead]
    acked = [-1]
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def write() -> None:
        with c.client() as w:
            i = 0
            while not stop.is_set():
                w.put("ctr", str(i).encode())
                acked[0] = i
                i += 1

    def read(f: str) -> None:
        s = _NodeSocket(c, f)
        try:
            while not stop.is_set():
                floor = acked[0]
                ans = s.get("ctr")
                if ans is None or not ans["ok"] or ans["node"] != f:
                    problems.append(f"{f}: {ans}")
                    return
                got = int(ans["value"]) if ans.get("value") is not None else -1
                if got < floor:
                    problems.append(f"{f} read {got} after {floor} was acknowledged")
                    return
                reads[0] += 1
        finally:
            s.close()

    threads = [threading.Thread(target=write), *(threading.Thread(target=read, args=(f,))
                                                 for f in followers for _ in range(2))]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: reads[0] >= 2000 or problems, 30.0, "2000 follower reads")
    finally:
        stop.set()
        for t in threads:
            t.join(10.0)
    assert not problems, problems
    assert acked[0] > 0


def test_follower_cut_off_from_the_leader_fails_or_waits_never_answers_stale(
        cluster: tuple[TestCluster, str]) -> None:
    """With the links between the leader and a follower cut, writes go on
    (leader and the other follower) and every read at the cut-off follower
    fails with a retryable error or gets no answer: never its stale value."""
    c, lead = cluster
    cut = next(n for n in c.node_ids() if n != lead)
    with c.client() as w:
        w.put("part", b"before")
        wait_until(lambda: _read_once(c, cut, "part").get("value") == b"before", 5.0,
                   f"{cut} serves the value written before the cut")
        c.apply_faults(with_blocks(FaultState(), cut_between([[lead], [cut]]),
                                   f"{lead} and {cut} cut"))
        try:
            s = _NodeSocket(c, cut)
            try:
                w.put("part", b"after")
                answers = [s.get("part", timeout_s=2.0) for _ in range(6)]
            finally:
                s.close()
        finally:
            c.apply_faults(FaultState())
    stale = [a for a in answers if a is not None and a["ok"]]
    assert not stale, f"{cut} answered while cut off from {lead}: {stale}"
    errors = {a["error"] for a in answers if a is not None}
    assert errors and errors <= {"read_unavailable", "not_leader"}, answers
    assert any(a is not None for a in answers), f"{cut} never answered"
    wait_until(lambda: _read_once(c, cut, "part").get("value") == b"after", 10.0,
               f"{cut} serves the new value after the heal")


def test_chaos_run_with_lease_reads_is_clean(tmp_path: Path) -> None:
    """`chaos run` against a cluster in lease mode (`read_mode = "lease"`),
    with reads spread over every node, pauses among the faults (a stalled
    leader must not serve from a lease that ran out meanwhile): the
    linearizability check finds nothing."""
    with make_cluster(tmp_path, 3, read_mode="lease") as c:
        assert c.config().read_mode == "lease"
        start_and_settle(c)
        code, rep = chaos_run(c, "--duration", "8s", "--interval", "1s", "--nemesis",
                              "pause,partition,kill", "--seed", "4", "--recovery-timeout", "15s")
        assert code == 0, rep["verdict"]
        assert rep["verdict"]["ok"]
        assert rep["operations"]["read"]["ok"] > 50, rep["operations"]
        kinds = {e["kind"] for e in rep["events"] if not e.get("error")}
        assert "pause" in kinds, kinds


def test_with_follower_reads_off_a_follower_names_the_leader(tmp_path: Path) -> None:
    """`follower_reads = false`: a follower answers a linearizable read with
    not_leader and the leader's address, as before follower reads; the
    client library then reads at the leader."""
    with make_cluster(tmp_path, 3, follower_reads=False) as c:
        lead = start_and_settle(c)
        follower = next(n for n in c.node_ids() if n != lead)
        with c.client() as w:
            w.put("k", b"v")
            ans = _read_once(c, follower, "k")
            assert (ans.get("ok"), ans.get("error"), ans.get("leader")) == \
                (False, "not_leader", lead), ans
            assert ans.get("leader_addr") == c.client_addrs()[lead]
            assert w.get("k", node=follower) == b"v"
