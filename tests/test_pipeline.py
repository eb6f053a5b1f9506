"""The pipelined raw-protocol client against scripted nodes on loopback: the
outcome it records for each answer (ok, fail: certainly no effect, unknown),
the same seq on every copy of a write, first_outstanding released as answers
come, redirects to the leader, and a session that ends under its writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

from chaos.linearizability import FAIL, OK, UNKNOWN
from chaos.pipeline import (
    CHAOS_RESEND_MAX_MS,
    CHAOS_RESEND_MIN_MS,
    Endpoint,
    Latency,
    PipelinedClient,
)
from chaos.workload import APPEND, OPEN_SESSION, READ_SET, History, OpRecord, Pacer
from node.api import ClientResponse, encode_response
from node.transport.zmq import make_server_socket
from raftctl.cluster import free_ports
from tests.procs import wait_until


class FakeNode:
    """A ROUTER that hands over what clients sent and answers as told."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], port: int) -> None:
        self.addr = f"tcp://127.0.0.1:{port}"
        self.sock = make_server_socket(ctx, self.addr, None)
        self.got: list[tuple[list[bytes], dict[str, Any]]] = []

    def take(self, n: int, cl: PipelinedClient) -> list[tuple[list[bytes], dict[str, Any]]]:
        """Wait (pumping the client) until `n` more requests arrived; return them."""
        start = len(self.got)

        def arrived() -> bool:
            cl.pump(time.monotonic() + 0.005)
            while self.sock.poll(0):
                *route, data = self.sock.recv_multipart()
                self.got.append((route, msgspec.msgpack.decode(data)))
            return len(self.got) >= start + n

        wait_until(arrived, 5.0, f"{n} requests at {self.addr}", interval_s=0.0)
        return self.got[start:start + n]

    def answer(self, route: list[bytes], **resp: Any) -> None:
        self.sock.send_multipart([*route, encode_response(ClientResponse(**resp))])


@pytest.fixture
def nodes() -> Iterator[tuple[Endpoint, dict[str, FakeNode]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fakes = {f"n{i + 1}": FakeNode(ctx, p) for i, p in enumerate(free_ports(2))}
    ep = Endpoint({n: f.addr for n, f in fakes.items()}, None)
    try:
        yield ep, fakes
    finally:
        ep.close()
        for f in fakes.values():
            f.sock.close(linger=0)
        ctx.term()


def _done(cl: PipelinedClient, n: int = 1) -> list[OpRecord]:
    got: list[OpRecord] = []

    def finished() -> bool:
        cl.pump(time.monotonic() + 0.01)
        got.extend(cl.take_done())
        return len(got) >= n

    wait_until(finished, 5.0, f"{n} operations done", interval_s=0.0)
    return got


def _opened(ep: Endpoint, n1: FakeNode, sid: int = 5, **kw: Any) -> PipelinedClient:
    cl = PipelinedClient(ep, History(), "s1", **kw)
    cl.open_session(cl.slots[0])
    ((route, req),) = n1.take(1, cl)
    assert req["op"] == "register"
    n1.answer(route, id=req["id"], ok=True, session=sid, index=sid, node="n1")
    (op,) = _done(cl)
    assert (op.kind, op.outcome, op.session, cl.session) == (OPEN_SESSION, OK, sid, sid)
    return cl


def test_an_acknowledged_append_keeps_its_session_seq_and_index(
        nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    ep, f = nodes
    cl = _opened(ep, f["n1"])
    cl.append(cl.slots[0], "s0", "s1-1")
    ((route, req),) = f["n1"].take(1, cl)
    assert (req["op"], req["session"], req["seq"], req["first_outstanding"]) == (
        "append", 5, 1, 1)
    assert req["value"] == b"s1-1,"
    f["n1"].answer(route, id=req["id"], ok=True, index=9, node="n1")
    (op,) = _done(cl)
    assert (op.kind, op.outcome, op.value, op.session, op.seq, op.index, op.attempts) == (
        APPEND, OK, "s1-1", 5, 1, 9, 1)
    cl.close()


def test_pipelined_appends_release_answers_as_they_come(
        nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    """Three in flight all keep seq 1; once it is answered the next says 2."""
    ep, f = nodes
    cl = _opened(ep, f["n1"], depth=3)
    for k, slot in enumerate(cl.slots):
        cl.append(slot, "s0", f"{slot}-{k + 1}")
    got = f["n1"].take(3, cl)
    assert [(r["seq"], r["first_outstanding"]) for _, r in got] == [(1, 1), (2, 1), (3, 1)]
    route, first = got[0]
    f["n1"].answer(route, id=first["id"], ok=True, index=10)
    assert _done(cl)[0].seq == 1
    cl.append(cl.slots[0], "s0", "s1.1-4")
    ((_, nxt),) = f["n1"].take(1, cl)
    assert (nxt["seq"], nxt["first_outstanding"]) == (4, 2)
    cl.close()


def test_an_unanswered_append_is_sent_again_with_the_same_seq(
        nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    ep, f = nodes
    cl = _opened(ep, f["n1"])
    cl.append(cl.slots[0], "s0", "s1-1")
    (_, a), (route, b) = f["n1"].take(2, cl)
    assert (a["seq"], b["seq"]) == (1, 1) and a["id"] != b["id"]
    f["n1"].answer(route, id=b["id"], ok=True, index=3)
    (op,) = _done(cl)
    assert op.outcome == OK and op.attempts == 2
    cl.close()


def test_a_refusal_naming_the_leader_sends_the_write_there(
        nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    ep, f = nodes
    cl = _opened(ep, f["n1"])
    cl.append(cl.slots[0], "s0", "s1-1")
    ((route, req),) = f["n1"].take(1, cl)
    f["n1"].answer(route, id=req["id"], ok=False, error="not_leader", leader="n2")
    ((route2, again),) = f["n2"].take(1, cl)
    assert (again["session"], again["seq"]) == (5, 1)
    f["n2"].answer(route2, id=again["id"], ok=True, index=4)
    assert _done(cl)[0].outcome == OK and cl.leader == "n2"
    cl.close()


def test_session_expired_on_the_only_attempt_is_a_failure(
        nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    """That attempt was certainly not applied: fail, and the session is gone."""
    ep, f = nodes
    cl = _opened(ep, f["n1"])
    cl.append(cl.slots[0], "s0", "s1-1")
    ((route, req),) = f["n1"].take(1, cl)
    f["n1"].answer(route, id=req["id"], ok=False, error="session_expired")
    (op,) = _done(cl)
    assert (op.outcome, op.error, cl.session) == (FAIL, "session_expired", None)
    cl.close()


def test_session_expired_after_an_unanswered_copy_is_unknown(
        nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    """An earlier copy may have been applied before the session ended, and
    no retry can tell: unknown; the session's other writes end with it."""
    ep, f = nodes
    cl = _opened(ep, f["n1"], depth=2)
    cl.append(cl.slots[0], "s0", "s1.1-1")
    (_, _first), (route, second) = f["n1"].take(2, cl)
    cl.append(cl.slots[1], "s0", "s1.2-2")
    f["n1"].take(1, cl)
    f["n1"].answer(route, id=second["id"], ok=False, error="session_expired")
    ops = {o.value: o for o in _done(cl, 2)}
    assert ops["s1.1-1"].outcome == UNKNOWN and ops["s1.1-1"].error == "session_expired"
    assert ops["s1.2-2"].outcome == UNKNOWN  # its one copy was sent, unanswered
    assert cl.session is None
    cl.close()


def test_deadlines_and_vanishing(nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    """Past its deadline an append sent and unanswered is unknown, a read
    failed; a client that vanishes leaves its append in flight unknown."""
    ep, f = nodes
    cl = _opened(ep, f["n1"], depth=2)
    cl.op_timeout_s = 0.3
    cl.append(cl.slots[0], "s0", "s1.1-1")
    cl.read_set(cl.slots[1], "s0")
    ops = {o.kind: o for o in _done(cl, 2)}
    assert (ops[APPEND].outcome, ops[APPEND].error) == (UNKNOWN, "timeout")
    assert (ops[READ_SET].outcome, ops[READ_SET].error) == (FAIL, "unavailable")
    cl.append(cl.slots[0], "s0", "s1.1-2")
    f["n1"].take(1, cl)
    cl.vanish()
    (gone,) = cl.take_done()
    assert (gone.outcome, gone.error, cl.session) == (UNKNOWN, "client vanished", None)


def test_copies_past_the_first_wait_for_the_pacer(
        nodes: tuple[Endpoint, dict[str, FakeNode]]) -> None:
    """An unanswered write is sent again at once when its time comes; a
    third copy waits for a turn of the pacer, as a new operation would."""
    ep, f = nodes
    pacer = Pacer(5.0)
    cl = _opened(ep, f["n1"], pacer=pacer)
    for _ in range(5):
        pacer.reserve()  # the next turn is a second away
    cl.append(cl.slots[0], "s0", "s1-1")
    f["n1"].take(2, cl)
    second = time.monotonic()
    got = f["n2"].take(1, cl)  # two tries a node, then the next one
    assert got[0][1]["seq"] == 1
    assert time.monotonic() - second > 0.7
    cl.vanish()


def test_the_resend_timeout_learns_from_answers() -> None:
    """RFC 6298: the upper bound until an answer is timed, then smoothed
    latency plus four deviations (never under the lower bound), doubled at
    each attempt that timed out until the next answer."""
    lat = Latency()
    assert lat.timeout_s() == CHAOS_RESEND_MAX_MS / 1000.0
    for _ in range(20):
        lat.sample(0.004)
    assert lat.timeout_s() == CHAOS_RESEND_MIN_MS / 1000.0
    for _ in range(20):
        lat.sample(0.1)
    base = lat.timeout_s()
    assert 0.1 < base < 0.5
    lat.timed_out()
    assert lat.timeout_s() == pytest.approx(min(2 * base, CHAOS_RESEND_MAX_MS / 1000.0))
    lat.sample(0.1)
    assert lat.timeout_s() < base
