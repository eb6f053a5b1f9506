"""Fixtures for tests that run real node processes: a cluster in a temporary
run directory on free loopback ports, every process it started killed by pid
at the end (pass or fail), and `wait_until` for conditions with deadlines."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import time
from collections.abc import Callable, Iterator, Sized
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psutil
import pytest
import zmq
from click.testing import CliRunner

from node.client import Client
from node.transport.zmq import make_client_socket
from raftctl.cluster import Cluster, make_config
from raftctl.clusterfile import started_at

T = TypeVar("T")


def wait_until(cond: Callable[[], T | None], timeout_s: float, what: str,
               interval_s: float = 0.02) -> T:
    """Poll `cond` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval_s)  # polling cadence; the condition is what we wait for
    pytest.fail(f"timed out after {timeout_s:.1f}s waiting for: {what} (last: {last!r})")


def at_least(items: Sized, n: int) -> Callable[[], bool]:
    """A condition for `wait_until`: `items` holds at least `n` things."""
    return lambda: len(items) >= n


class TestCluster(Cluster):
    """A Cluster that remembers every process it started, to reap them."""

    __test__ = False  # not a test class for pytest

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, "test")
        self.started: list[tuple[int, float]] = []

    def start(self, node_id: str, force_rejoin: bool = False) -> int:
        pid = super().start(node_id, force_rejoin)
        self.started.append((pid, psutil.Process(pid).create_time()))
        return pid

    def start_all(self) -> None:
        for n in self.node_ids():
            self.start(n)

    def reap(self) -> None:
        for pid, ctime in self.started:
            try:
                p = psutil.Process(pid)
                if not started_at(p.create_time(), ctime):
                    continue
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(5)
            except psutil.Error:
                continue

    def client(self, **kw: Any) -> Client:
        return Client(self.client_addrs(), self.keys(), **kw)

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {s.id: s.status for s in self.status(timeout_s=0.5) if s.status is not None}


_ENC = msgspec.msgpack.Encoder()


class RawClient:
    """A client of the raw protocol (docs/PROTOCOL.md) on one DEALER socket,
    to send one request more than once as a client that lost its answer does."""

    def __init__(self, c: TestCluster) -> None:
        self.c = c
        self.sock: zmq.Socket[bytes] | None = None
        self.node = ""
        self.ids = 0

    def ask(self, req: dict[str, Any], copies: int = 1) -> list[dict[str, Any]]:
        """Send `req` `copies` times (the same session and seq); every answer."""
        while True:
            lead = self.c.leader()
            if lead is not None:
                break
        if lead != self.node or self.sock is None:
            if self.sock is not None:
                self.sock.close(linger=0)
            self.node = lead
            self.sock = make_client_socket(zmq.Context.instance(), self.c.client_addrs()[lead],
                                           self.c.keys())
        ids = []
        for _ in range(copies):
            self.ids += 1
            ids.append(self.ids)
            self.sock.send(_ENC.encode({**req, "id": self.ids}))
        got: dict[int, dict[str, Any]] = {}
        while len(got) < copies and self.sock.poll(5000):
            frame = msgspec.msgpack.decode(self.sock.recv())
            for r in frame if isinstance(frame, list) else [frame]:
                if r["id"] in ids:
                    got[r["id"]] = r
        return [got[i] for i in ids if i in got]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)


@contextlib.contextmanager
def make_cluster(tmp_path: Path, n: int = 3, **settings: Any) -> Iterator[TestCluster]:
    """A cluster of `n` nodes, created, not started; every process it started
    is killed when the `with` block ends, however it ends. (A generator
    looped over with `for` would not do it when the block raised: the
    traceback pytest keeps holds the generator, so its `finally` never ran
    and a failed test left its nodes running.)"""
    c = TestCluster(tmp_path / "run")
    c.create(make_config(n, name="test", **settings))
    try:
        yield c
    finally:
        c.reap()


def start_and_settle(c: TestCluster) -> str:
    """Start every node and return the leader once every node knows it: a
    follower learns who won from the leader's first append, a moment after
    the leader itself reports it, so tests start once all know."""
    c.start_all()
    lead = c.wait_for_leader(10.0)
    wait_until(functools.partial(_all_follow, c, lead), 10.0, f"every node knows {lead} leads")
    return lead


@pytest.fixture
def cluster3(tmp_path: Path, transport: str) -> Iterator[TestCluster]:
    """A running 3-node cluster with a leader, on each peer transport."""
    with make_cluster(tmp_path, 3, transport=transport) as c:
        start_and_settle(c)
        yield c


def _all_follow(c: TestCluster, lead: str) -> bool:
    st = c.statuses()
    return len(st) == len(c.node_ids()) and all(s.get("leader") == lead for s in st.values())


def make_kernel_cluster(tmp_path: Path, mode: str, **settings: Any) -> Iterator[TestCluster]:
    """A running 3-node cluster in kernel mode `mode` (raftctl/netns.py);
    its namespaces are removed at the end, pass or fail."""
    c = TestCluster(tmp_path / "run")
    c.create(c.with_netns_addresses(make_config(3, name="test", **settings), mode))
    try:
        c.prepare_kernel()
        c.start_all()
        c.wait_for_leader(10.0)
        yield c
    finally:
        c.reap()
        removed = c.teardown_kernel()
        assert removed, "teardown removed nothing"
        assert not c.kernel().exists(), "the namespaces outlived teardown"


def chaos_run(c: Cluster, *args: str) -> tuple[int, dict[str, Any]]:
    """`raftctl chaos run --json ARGS` against `c`: its exit code and report."""
    from raftctl import chaos_cmd

    r = CliRunner().invoke(chaos_cmd.chaos, ["run", "--json", *args], obj=c)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, json.loads(r.output)
