"""The ZeroMQ peer transport between transports of one process (and one child
process) on free loopback ports, CURVE on: delivery, identities, dead and
returning peers, size limits. Every wait is a poll loop with a deadline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from node.config import MAX_MESSAGE_BYTES, PEER_HEARTBEAT_TIMEOUT_MS
from node.transport.auth import CurveKeys, ZapHandler, generate_keys
from node.transport.zmq import ZmqTransport, make_client_socket, set_common_options
from node.transport.zmqio import recv_parts, send_parts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


class Net:
    """Transports of one process sharing a context and its ZAP handler; the
    test drives everything through `pump_until`, as the runner's loop would."""

    def __init__(self, keys: CurveKeys | None) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.keys = keys
        self.rejected: list[tuple[str, bytes]] = []
        self.zap = (
            ZapHandler(self.ctx, {keys.public}, lambda a, k: self.rejected.append((a, k)))
            if keys is not None else None
        )
        self.ports: dict[str, int] = {}
        self.nodes: dict[str, ZmqTransport] = {}
        self.inbox: dict[str, list[tuple[str, bytes]]] = {}
        self.raw: list[zmq.Socket[bytes]] = []

    def ids(self, *ids: str) -> None:
        for i in ids:
            self.ports.setdefault(i, free_port())

    def start(self, node_id: str, timeout_s: float = 5.0,
              on_unknown: Callable[[str], None] | None = None) -> ZmqTransport:
        """Start `node_id`, retrying the bind while a just-closed socket of
        the same port is still being torn down by libzmq's I/O thread."""
        peers = {p: tcp(port) for p, port in self.ports.items() if p != node_id}
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                t = ZmqTransport(self.ctx, node_id, tcp(self.ports[node_id]), peers, self.keys,
                                 on_unknown=on_unknown)
                break
            except zmq.ZMQError as e:
                if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # back-off between bind attempts, not a sync
        self.nodes[node_id] = t
        self.inbox[node_id] = []
        return t

    def stop(self, node_id: str) -> None:
        self.nodes.pop(node_id).close()

    def raw_dealer(
        self, keys: CurveKeys | None, to: str, routing_id: bytes | None
    ) -> zmq.Socket[bytes]:
        sock = make_client_socket(self.ctx, tcp(self.ports[to]), keys, routing_id=routing_id)
        self.raw.append(sock)
        return sock

    def pump_until(
        self, cond: Callable[[], bool], what: str, timeout_s: float = 5.0,
        each: Callable[[], object] | None = None,
    ) -> None:
        """Run the loop (ZAP, receive into inboxes, then `each`) until `cond`
        holds; fail naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            if each is not None:
                each()
            poller = zmq.Poller()
            if self.zap is not None:
                poller.register(self.zap.socket, zmq.POLLIN)
            for t in self.nodes.values():
                for s in t.poll_sockets():
                    poller.register(s, zmq.POLLIN)
            poller.poll(5)
            if self.zap is not None:
                self.zap.handle()
            for node_id, t in self.nodes.items():
                self.inbox[node_id].extend(t.receive())
            if cond():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s}s waiting for {what}")

    def send_until_accepted(self, src: str, dst: str, data: bytes) -> None:
        """Send once the link is up: with IMMEDIATE a send fails until then."""
        done: list[bool] = []

        def attempt() -> None:
            if not done and self.nodes[src].send(dst, data):
                done.append(True)

        self.pump_until(lambda: bool(done), f"{src}->{dst} to connect", each=attempt)

    def got(self, node_id: str, item: tuple[str, bytes]) -> Callable[[], bool]:
        return lambda: item in self.inbox[node_id]

    def close(self) -> None:
        for t in self.nodes.values():
            t.close()
        for s in self.raw:
            s.close(linger=0)
        if self.zap is not None:
            self.zap.close()
        self.ctx.term()


@pytest.fixture
def keys() -> CurveKeys:
    return generate_keys()


@pytest.fixture
def net(keys: CurveKeys) -> Iterator[Net]:
    n = Net(keys)
    yield n
    n.close()


def test_two_transports_exchange_messages(net: Net) -> None:
    """Each side receives the other's payload tagged with the sender's node id."""
    net.ids("n1", "n2")
    a, b = net.start("n1"), net.start("n2")
    net.send_until_accepted("n1", "n2", b"ping")
    net.send_until_accepted("n2", "n1", b"pong")
    net.pump_until(lambda: net.got("n2", ("n1", b"ping"))() and net.got("n1", ("n2", b"pong"))(),
                   "ping and pong")
    assert a.stats["received"] == b.stats["received"] == 1
    assert a.poll_sockets() and a.next_deadline_ms() is None


def test_three_transports_route_by_identity(net: Net) -> None:
    """In a three-node mesh every node gets exactly what each other node sent it."""
    ids = ("n1", "n2", "n3")
    net.ids(*ids)
    for i in ids:
        net.start(i)
    for src in ids:
        for dst in ids:
            if src != dst:
                net.send_until_accepted(src, dst, f"{src}->{dst}".encode())
    expected = {
        dst: sorted((src, f"{src}->{dst}".encode()) for src in ids if src != dst) for dst in ids
    }
    net.pump_until(lambda: {i: sorted(net.inbox[i]) for i in ids} == expected, "all six messages")


def test_messages_on_one_link_keep_their_order(net: Net) -> None:
    """Five hundred messages from one peer arrive complete and in order."""
    net.ids("n1", "n2")
    a = net.start("n1")
    net.start("n2")
    net.send_until_accepted("n1", "n2", b"first")
    assert all(a.send("n2", b"%d" % i) for i in range(500))
    net.pump_until(lambda: len(net.inbox["n2"]) == 501, "501 messages")
    assert [d for _, d in net.inbox["n2"][1:]] == [b"%d" % i for i in range(500)]


def test_send_to_unknown_peer_returns_false(net: Net) -> None:
    """A destination that is not a peer is refused and counted."""
    net.ids("n1")
    a = net.start("n1")
    assert a.send("nx", b"x") is False
    assert a.send("n1", b"to myself") is False
    assert a.stats["dropped_send"] == a.stats["unknown_dst"] == 2


def test_frames_from_an_unknown_identity_are_dropped(net: Net, keys: CurveKeys) -> None:
    """A DEALER with the cluster keys but no peer's identity is heard by nobody."""
    net.ids("n1", "n2")
    net.start("n1")
    net.start("n2")
    mallory = net.raw_dealer(keys, "n1", b"mallory")
    anonymous = net.raw_dealer(keys, "n1", None)
    mallory.send(b"from mallory")
    anonymous.send(b"from nobody")
    net.pump_until(lambda: net.nodes["n1"].stats["bad_peer"] >= 2, "two bad_peer drops")
    net.send_until_accepted("n2", "n1", b"legit")
    net.pump_until(net.got("n1", ("n2", b"legit")), "the legitimate message")
    assert net.inbox["n1"] == [("n2", b"legit")]


def test_a_peer_added_at_run_time_is_heard_and_reached(net: Net) -> None:
    """A node not among the peers is dropped and reported as unknown; once
    added it is heard and reached (a member that joined the cluster)."""
    net.ids("n1", "n2")
    unknown: list[str] = []
    n1 = net.start("n1", on_unknown=unknown.append)
    net.ids("n3")
    net.start("n3")
    net.send_until_accepted("n3", "n1", b"before")
    net.pump_until(lambda: unknown == ["n3"], "n3 reported as unknown")
    assert net.inbox["n1"] == [] and n1.stats["bad_peer"] == 1
    n1.set_peer("n3", tcp(net.ports["n3"]))
    assert set(n1.peers()) == {"n2", "n3"}
    net.send_until_accepted("n3", "n1", b"after")
    net.pump_until(net.got("n1", ("n3", b"after")), "n3 heard once added")
    net.send_until_accepted("n1", "n3", b"back")
    net.pump_until(net.got("n3", ("n1", b"back")), "n3 reached once added")


def test_a_removed_peer_is_neither_reached_nor_heard(net: Net) -> None:
    """After remove_peer, sends to it fail and its frames are dropped."""
    net.ids("n1", "n2")
    n1 = net.start("n1")
    net.start("n2")
    net.send_until_accepted("n2", "n1", b"member")
    net.pump_until(net.got("n1", ("n2", b"member")), "n2 heard while a member")
    n1.remove_peer("n2")
    assert n1.peers() == {} and n1.send("n2", b"x") is False
    net.send_until_accepted("n2", "n1", b"removed")
    net.pump_until(lambda: n1.stats["bad_peer"] >= 1, "n2's frame dropped")
    assert ("n2", b"removed") not in net.inbox["n1"]


def test_multipart_messages_are_dropped(net: Net, keys: CurveKeys) -> None:
    """A peer's message of more than one frame is dropped and counted as bad_frame."""
    net.ids("n1", "n2")
    net.start("n1")
    impostor = net.raw_dealer(keys, "n1", b"n2")
    impostor.send_multipart([b"a", b"b"])
    impostor.send(b"single")
    net.pump_until(net.got("n1", ("n2", b"single")), "the single-frame message")
    assert net.nodes["n1"].stats["bad_frame"] == 1
    assert net.inbox["n1"] == [("n2", b"single")]


def test_send_to_a_peer_never_started_fails_at_once(net: Net) -> None:
    """With nobody listening, ten thousand sends all return False quickly."""
    net.ids("n1", "n2")
    a = net.start("n1")
    t0 = time.monotonic()
    results = [a.send("n2", b"x") for _ in range(10_000)]
    elapsed = time.monotonic() - t0
    assert not any(results)
    assert a.stats["dropped_send"] == 10_000
    assert elapsed < 1.0, f"10000 failing sends took {elapsed:.3f}s"


def test_send_to_a_stopped_peer_never_blocks(net: Net) -> None:
    """After a peer stops, sends keep returning at once and soon all fail."""
    net.ids("n1", "n2")
    a = net.start("n1")
    net.start("n2")
    net.send_until_accepted("n1", "n2", b"hello")
    net.stop("n2")
    slowest = 0.0
    for i in range(20_000):
        t0 = time.monotonic()
        a.send("n2", b"%d" % i)
        slowest = max(slowest, time.monotonic() - t0)
    assert slowest < 0.05, f"one send took {slowest:.3f}s"
    net.pump_until(lambda: not a.send("n2", b"probe"), "sends to the stopped peer to fail")


def test_messages_sent_while_a_peer_is_down_are_not_delivered_when_it_returns(
    net: Net,
) -> None:
    """IMMEDIATE: what was sent during an outage is lost, not delivered late in a burst."""
    net.ids("n1", "n2")
    a = net.start("n1")
    net.start("n2")
    net.send_until_accepted("n1", "n2", b"before")
    net.stop("n2")
    sent = [0]

    def send_down() -> None:
        a.send("n2", b"down-%d" % sent[0])
        sent[0] += 1

    net.pump_until(lambda: not a.send("n2", b"down-probe"), "n1 to notice n2 is down",
                   each=send_down)
    assert not any(a.send("n2", b"down-late-%d" % i) for i in range(100))
    net.start("n2")
    ups = iter(range(1_000_000))
    # Whatever n1 still queued would reach n2 ahead of the first "up" message
    # on the new connection, so the first "up" ends the window for a burst.
    net.pump_until(lambda: any(d.startswith(b"up-") for _, d in net.inbox["n2"]),
                   "n2 to hear n1 again", each=lambda: a.send("n2", b"up-%d" % next(ups)))
    net.pump_until(lambda: True, "one more drain")
    late = [d for _, d in net.inbox["n2"] if d.startswith(b"down")]
    assert late == [], f"{len(late)} messages from the outage arrived late"


def test_without_immediate_a_returning_peer_does_get_a_burst() -> None:
    """Control for the test above: a plain DEALER delivers the outage's messages late."""
    ctx: zmq.Context[Any] = zmq.Context()
    port = free_port()
    dealer = make_client_socket(ctx, tcp(port), None, routing_id=b"n1")
    monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    routers: list[zmq.Socket[bytes]] = []

    def bind_router() -> zmq.Socket[bytes]:
        deadline = time.monotonic() + 5
        while True:
            r: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
            set_common_options(r)
            try:
                r.bind(tcp(port))
                routers.append(r)
                return r
            except zmq.ZMQError:
                r.close(linger=0)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # back-off between bind attempts, not a sync

    def recv_until(r: zmq.Socket[bytes], pred: Callable[[bytes], bool], what: str) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not any(pred(d) for d in got):
            if r.poll(20):
                got.append(r.recv_multipart()[1])
            elif time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
        return got

    try:
        router = bind_router()
        dealer.send(b"before")
        recv_until(router, lambda d: d == b"before", "the first message")
        router.close(linger=0)
        # Queue the outage's messages only once the DEALER has seen the
        # connection go; earlier ones would die with the old connection.
        if not monitor.poll(5_000):
            pytest.fail("timed out waiting for the DEALER to see the disconnect")
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        for i in range(50):
            dealer.send(b"down-%d" % i, zmq.NOBLOCK)
        dealer.send(b"up")
        got = recv_until(bind_router(), lambda d: d == b"up", "the message after the outage")
        assert sum(d.startswith(b"down") for d in got) > 0
    finally:
        dealer.disable_monitor()
        monitor.close(linger=0)
        dealer.close(linger=0)
        for r in routers:
            r.close(linger=0)
        ctx.term()


def test_a_message_of_the_maximum_size_is_delivered(net: Net) -> None:
    """A payload of exactly MAX_MESSAGE_BYTES passes the receiver's limit under CURVE."""
    net.ids("n1", "n2")
    net.start("n1")
    net.start("n2")
    big = bytes(MAX_MESSAGE_BYTES)
    net.send_until_accepted("n1", "n2", big)
    net.pump_until(lambda: len(net.inbox["n2"]) == 1, "the large message")
    assert net.inbox["n2"][0] == ("n1", big)


def test_a_message_over_the_maximum_is_refused_by_the_sender(net: Net) -> None:
    """send() refuses a payload one byte over MAX_MESSAGE_BYTES and counts it."""
    net.ids("n1", "n2")
    a = net.start("n1")
    net.start("n2")
    net.send_until_accepted("n1", "n2", b"up")
    assert a.send("n2", bytes(MAX_MESSAGE_BYTES + 1)) is False
    assert a.stats["oversize"] == 1 and a.stats["dropped_send"] >= 1


def test_an_oversized_frame_is_dropped_and_the_receiver_keeps_working(
    net: Net, keys: CurveKeys
) -> None:
    """A frame over the ROUTER's MAXMSGSIZE is discarded; the node still hears its peers."""
    net.ids("n1", "n2", "n3")
    net.start("n1")
    net.start("n3")
    impostor = net.raw_dealer(keys, "n1", b"n2")
    impostor.send(bytes(MAX_MESSAGE_BYTES + 1))
    sent = iter(range(1_000_000))
    net.pump_until(lambda: any(d.startswith(b"after") for _, d in net.inbox["n1"]),
                   "a small message after the big one",
                   each=lambda: impostor.send(b"after-%d" % next(sent), zmq.NOBLOCK))
    net.send_until_accepted("n3", "n1", b"from n3")
    net.pump_until(net.got("n1", ("n3", b"from n3")), "n3's message")
    assert all(len(d) <= MAX_MESSAGE_BYTES for _, d in net.inbox["n1"])


def test_transports_without_keys_talk_in_the_clear() -> None:
    """keys=None (tests only) gives working transports with no ZAP handler."""
    n = Net(None)
    try:
        n.ids("n1", "n2")
        n.start("n1")
        n.start("n2")
        n.send_until_accepted("n1", "n2", b"plain")
        n.pump_until(n.got("n2", ("n1", b"plain")), "the plain message")
    finally:
        n.close()


_PEER_PROCESS = """
import sys, zmq
from node.transport.zmq import ZmqTransport
ctx = zmq.Context()
t = ZmqTransport(ctx, "n2", sys.argv[1], {"n1": sys.argv[2]}, None)
while True:
    zmq.Poller().poll(10)
    for src, data in t.receive():
        t.send(src, data)
"""


def test_a_paused_peer_is_cut_off_within_the_heartbeat_timeout() -> None:
    """A peer process that stops answering (SIGSTOP) fails sends within ~the heartbeat timeout."""
    net = Net(None)
    net.ids("n1", "n2")
    a = net.start("n1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEER_PROCESS, tcp(net.ports["n2"]), tcp(net.ports["n1"])],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        # The child echoes, so an echo shows both directions connected.
        net.pump_until(net.got("n1", ("n2", b"echo")), "the child's echo", timeout_s=15,
                       each=lambda: a.send("n2", b"echo"))
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        net.pump_until(lambda: not a.send("n2", b"while paused"), "sends to fail", timeout_s=5)
        elapsed_ms = (time.monotonic() - t0) * 1000
        assert elapsed_ms < PEER_HEARTBEAT_TIMEOUT_MS + 700, f"cut off after {elapsed_ms:.0f} ms"
    finally:
        proc.kill()  # SIGKILL ends a stopped process too
        proc.wait(timeout=10)
        net.close()


def test_multipart_helpers_carry_every_frame_and_raise_again_when_empty() -> None:
    """send_parts/recv_parts (pyzmq's multipart calls without enum flag
    arithmetic): a ROUTER gets the sender's identity and every frame, in
    order; the answer reaches that sender alone; an empty socket raises Again."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind("inproc://zmqio")
        dealer.setsockopt(zmq.IDENTITY, b"d1")
        dealer.connect("inproc://zmqio")
        with pytest.raises(zmq.Again):
            recv_parts(router)
        send_parts(dealer, [b"", b"a", b"bc"], 0)
        assert router.poll(2000), "the router never became readable"
        assert recv_parts(router) == [b"d1", b"", b"a", b"bc"]
        send_parts(router, [b"d1", b"answer"])
        assert dealer.poll(2000), "the answer never arrived"
        assert recv_parts(dealer) == [b"answer"]
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
