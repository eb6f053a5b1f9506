"""The UDP peer transport on free loopback ports: delivery, every kind of bad
datagram sent with a raw socket, size limits and the link filter on top (sizing
batches: test_udp_sizing.py). Every wait is a poll loop with a deadline."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from node import codec
from node.config import (
    UDP_MAX_IPV4_DATAGRAM_BYTES,
    UDP_MAX_NODE_ID_BYTES,
    UDP_MIN_DATAGRAM_BYTES,
    UDP_SMALL_PATH_DATAGRAM_BYTES,
)
from node.raft.messages import (
    AppendEntries,
    Entry,
    EntryKind,
)
from node.transport.auth import generate_keys
from node.transport.links import FaultyTransport, LinkFilter, LinkRule
from node.transport.udp import (
    UdpTransport,
    seal_datagram,
    udp_core_limits,
    udp_mac_key,
)

HOST = "127.0.0.1"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# Datagrams sent before the receiver reads: a default 208 KiB Linux receive
# buffer holds 256 small ones.
_RAW_CHUNK = 64


def handled(t: UdpTransport) -> int:
    """Datagrams `t` has read: delivered or dropped as bad."""
    return t.stats["received"] + sum(v for k, v in t.stats.items() if k.startswith("bad_"))


def handled_at_least(t: UdpTransport, n: int) -> Callable[[], bool]:
    return lambda: handled(t) >= n


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Net:
    """Transports of one cluster in this process, driven through `pump_until`
    as the runner's loop drives its transport: a zmq.Poller on their sockets."""

    def __init__(self, mac_key: bytes) -> None:
        self.mac_key = mac_key
        self.addrs: dict[str, tuple[str, int]] = {}
        self.nodes: dict[str, UdpTransport] = {}
        self.inbox: dict[str, list[tuple[str, bytes]]] = {}
        self.bad: dict[str, list[tuple[str, str]]] = {}
        self.calls: dict[str, list[int]] = {}
        self.raws: list[socket.socket] = []

    def ids(self, *ids: str) -> None:
        for i in ids:
            self.addrs.setdefault(i, (HOST, free_udp_port()))

    def start(self, node_id: str, **kw: Any) -> UdpTransport:
        self.bad[node_id] = []
        kw.setdefault("on_bad", lambda r, d: self.bad[node_id].append((r, d)))
        t = UdpTransport(node_id, self.addrs[node_id], self.addrs, kw.pop("mac_key", self.mac_key),
                         **kw)
        self.nodes[node_id] = t
        self.inbox[node_id] = []
        self.calls[node_id] = []
        return t

    def raw(self) -> socket.socket:
        """An unbound-to-any-node UDP socket on a fresh loopback port."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        self.raws.append(s)
        return s

    def send_raw(self, raw: socket.socket, to: str, datagrams: list[bytes]) -> None:
        """Send `datagrams` from `raw` to node `to` in chunks small enough for
        a kernel's default receive buffer, each chunk handled before the next."""
        t = self.nodes[to]
        for i in range(0, len(datagrams), _RAW_CHUNK):
            chunk = datagrams[i : i + _RAW_CHUNK]
            want = handled(t) + len(chunk)
            for d in chunk:
                raw.sendto(d, t.address)
            self.pump_until(handled_at_least(t, want), f"{to} to handle {want} datagrams")

    def pump_until(self, cond: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
        """Poll every node's socket and receive into the inboxes until `cond`
        holds; fail naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
            poller = zmq.Poller()
            for t in self.nodes.values():
                for s in t.poll_sockets():
                    poller.register(s, zmq.POLLIN)
            events = dict(poller.poll(10))
            for node_id, t in self.nodes.items():
                if any(s in events for s in t.poll_sockets()):
                    got = t.receive()
                    self.calls[node_id].append(len(got))
                    self.inbox[node_id].extend(got)

    def close(self) -> None:
        for t in self.nodes.values():
            t.close()
        for s in self.raws:
            s.close()


@pytest.fixture
def mac_key() -> bytes:
    return udp_mac_key(generate_keys())


@pytest.fixture
def net(mac_key: bytes) -> Iterator[Net]:
    n = Net(mac_key)
    yield n
    n.close()


@pytest.fixture
def ab(net: Net) -> tuple[UdpTransport, UdpTransport]:
    net.ids("a", "b")
    return net.start("a"), net.start("b")


def still_flows(net: Net, bad_key: str, count: int) -> None:
    """After `count` bad datagrams of kind `bad_key` were sent to b, a valid
    message from a still arrives, and nothing but it was delivered."""
    assert net.nodes["a"].send("b", b"valid")
    b = net.nodes["b"]
    net.pump_until(lambda: b.stats[bad_key] == count and ("a", b"valid") in net.inbox["b"],
                   f"{count} {bad_key} and the valid message")
    assert net.inbox["b"] == [("a", b"valid")]
    bad_total = sum(v for k, v in b.stats.items() if k.startswith("bad_"))
    assert bad_total == count, b.stats


# --- delivery ---------------------------------------------------------------


def test_three_transports_exchange_messages(net: Net) -> None:
    """In a three-node mesh every node gets exactly what each other node sent
    it, tagged with the sender's id (in any order)."""
    ids = ("n1", "n2", "n3")
    net.ids(*ids)
    for i in ids:
        net.start(i)
    for src in ids:
        for dst in ids:
            if src != dst:
                assert net.nodes[src].send(dst, f"{src}->{dst}".encode())
    expected = {
        dst: sorted((src, f"{src}->{dst}".encode()) for src in ids if src != dst) for dst in ids
    }
    net.pump_until(lambda: {i: sorted(net.inbox[i]) for i in ids} == expected, "all six messages")
    for t in net.nodes.values():
        assert t.stats["sent"] == t.stats["received"] == 2
        assert t.next_deadline_ms() is None


def test_zmq_poller_reports_the_socket_readable_only_when_a_datagram_waits(
    net: Net, ab: tuple[UdpTransport, UdpTransport]
) -> None:
    """A zmq.Poller polls what poll_sockets() gives and reports it readable
    under the same key, as the runner's `s in events` test needs."""
    a, b = ab
    (sock,) = b.poll_sockets()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    assert poller.poll(0) == []
    assert a.send("b", b"x")
    events = dict(poller.poll(5000))
    assert sock in events, "the socket did not become readable within 5 s"
    assert b.receive() == [("a", b"x")]
    assert poller.poll(0) == []


def test_a_burst_arrives_complete(net: Net, ab: tuple[UdpTransport, UdpTransport]) -> None:
    """A burst of small messages that fits the receive buffer all arrives, once each."""
    a, b = ab
    # As many as the receive buffer the kernel granted holds (~832 bytes each).
    count = min(2000, b.rcvbuf_bytes // 1024)
    assert count >= 200
    sent = {b"%d" % i for i in range(count)}
    assert all(a.send("b", m) for m in sent)
    net.pump_until(lambda: len(net.inbox["b"]) >= len(sent), f"{count} messages")
    assert sorted(d for _, d in net.inbox["b"]) == sorted(sent)


def test_empty_payload_is_delivered(net: Net, ab: tuple[UdpTransport, UdpTransport]) -> None:
    """The transport does not interpret payloads: an empty one arrives as sent."""
    assert ab[0].send("b", b"")
    net.pump_until(lambda: net.inbox["b"] == [("a", b"")], "the empty payload")


def test_receive_reads_at_most_one_batch(net: Net) -> None:
    """One receive() reads at most `recv_batch` datagrams; the rest wait for the next."""
    net.ids("a", "b")
    a = net.start("a")
    net.start("b", recv_batch=5)
    assert all(a.send("b", b"%d" % i) for i in range(12))
    net.pump_until(lambda: len(net.inbox["b"]) == 12, "12 messages")
    assert max(net.calls["b"]) <= 5
    assert len(net.calls["b"]) >= 3


def test_send_to_unknown_peer_is_refused(ab: tuple[UdpTransport, UdpTransport]) -> None:
    """A destination that is not a peer (or is the node itself) is refused and counted."""
    a, _ = ab
    assert a.send("nx", b"x") is False
    assert a.send("a", b"to myself") is False
    assert a.stats["dropped_send"] == a.stats["unknown_dst"] == 2
    assert a.stats["sent"] == 0


def test_sending_to_a_closed_port_breaks_nothing(net: Net) -> None:
    """Datagrams to a peer that is down leave (UDP cannot know) and any ICMP
    error they cause stops nothing: traffic flows, and reaches the peer once up."""
    net.ids("a", "b", "c")
    a = net.start("a")
    c = net.start("c")
    for _ in range(20):
        assert a.send("b", b"into the void")
    assert c.send("a", b"hello")
    net.pump_until(lambda: ("c", b"hello") in net.inbox["a"], "c's message at a")
    assert a.send("c", b"reply")
    net.pump_until(lambda: ("a", b"reply") in net.inbox["c"], "a's reply at c")
    net.start("b")
    assert a.send("b", b"now")
    net.pump_until(lambda: net.inbox["b"] == [("a", b"now")], "a's message at b")
    assert a.stats["send_error"] == a.stats["recv_error"] == 0


# --- size limits ----------------------------------------------------------------


def test_oversize_message_is_refused_never_truncated(net: Net) -> None:
    """A payload whose datagram would exceed the limit by one byte is not sent,
    is counted and reported; one of exactly the limit arrives whole."""
    net.ids("a", "b")
    oversize: list[tuple[str, int]] = []
    a = net.start("a", max_datagram=UDP_SMALL_PATH_DATAGRAM_BYTES,
                  on_oversize=lambda dst, n: oversize.append((dst, n)))
    net.start("b", max_datagram=UDP_SMALL_PATH_DATAGRAM_BYTES)
    fits = UDP_SMALL_PATH_DATAGRAM_BYTES - len(seal_datagram(net.mac_key, "a", "b", b""))
    assert a.send("b", bytes(fits + 1)) is False
    assert a.send("b", bytes(fits + 500)) is False
    assert a.stats["oversize"] == a.stats["dropped_send"] == 2
    assert oversize == [("b", UDP_SMALL_PATH_DATAGRAM_BYTES + 1)], "reported once per interval"
    assert a.send("b", b"\x01" * fits)
    net.pump_until(lambda: len(net.inbox["b"]) == 1, "the message of exactly the limit")
    assert net.inbox["b"] == [("a", b"\x01" * fits)]


def test_incoming_datagram_over_the_limit_is_dropped(net: Net) -> None:
    """A valid datagram longer than the receiver's limit is a bad datagram."""
    net.ids("a", "b")
    net.start("a")
    b = net.start("b", max_datagram=UDP_SMALL_PATH_DATAGRAM_BYTES)
    big = seal_datagram(net.mac_key, "a", "b", bytes(UDP_SMALL_PATH_DATAGRAM_BYTES))
    net.raw().sendto(big, b.address)
    still_flows(net, "bad_datagram", 1)


def test_datagram_limit_must_be_a_udp_size() -> None:
    """Limits below the minimum or above the largest IPv4 UDP payload are refused."""
    for bad in (UDP_MIN_DATAGRAM_BYTES - 1, UDP_MAX_IPV4_DATAGRAM_BYTES + 1):
        with pytest.raises(ValueError, match="datagram limit"):
            UdpTransport("a", (HOST, 0), {}, bytes(32), bad)
        with pytest.raises(ValueError, match="datagram limit"):
            udp_core_limits(bad)


def test_mac_key_of_the_wrong_length_is_refused() -> None:
    """A MAC key shorter than 16 bytes (or over 64) is a mistake, not a key."""
    for key in (b"", bytes(15), bytes(65)):
        with pytest.raises(ValueError, match="MAC key"):
            UdpTransport("a", (HOST, 0), {}, key)
        with pytest.raises(ValueError, match="MAC key"):
            seal_datagram(key, "a", "b", b"x")


def test_node_ids_longer_than_the_header_allows_are_refused() -> None:
    """A node id over UDP_MAX_NODE_ID_BYTES of UTF-8 cannot be used."""
    long_id = "é" * (UDP_MAX_NODE_ID_BYTES // 2 + 1)
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        UdpTransport(long_id, (HOST, 0), {}, bytes(32))
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        UdpTransport("a", (HOST, 0), {long_id: (HOST, 9)}, bytes(32))


# --- bad datagrams from a raw socket -------------------------------------------


def test_garbage_is_dropped(net: Net, ab: tuple[UdpTransport, UdpTransport]) -> None:
    """Bytes that are not a peer datagram (empty, text, random, a wrong
    version) are dropped as bad datagrams while valid traffic flows."""
    rng = random.Random(1)
    garbage = [b"", b"\x00", b"hello, raft", b"\x00" * 100, bytes([0xB7, 9]) + bytes(60)]
    garbage += [bytes([0x00]) + rng.randbytes(rng.randrange(1, 2000)) for _ in range(20)]
    net.send_raw(net.raw(), "b", garbage)
    still_flows(net, "bad_datagram", len(garbage))


def test_truncated_datagrams_are_dropped(
    net: Net, ab: tuple[UdpTransport, UdpTransport]
) -> None:
    """Every proper prefix of a valid datagram is dropped: a cut header as a
    bad datagram, a cut payload or MAC as a bad MAC."""
    _, b = ab
    whole = seal_datagram(net.mac_key, "a", "b", b"a payload of some length")
    net.send_raw(net.raw(), "b", [whole[:n] for n in range(len(whole))])
    assert net.nodes["a"].send("b", b"valid")
    net.pump_until(lambda: b.stats["bad_datagram"] + b.stats["bad_mac"] == len(whole)
                   and ("a", b"valid") in net.inbox["b"], "every prefix and the valid message")
    assert net.inbox["b"] == [("a", b"valid")]
    assert b.stats["bad_datagram"] > 0 and b.stats["bad_mac"] > 0


def test_bit_flipped_datagrams_are_dropped(
    net: Net, ab: tuple[UdpTransport, UdpTransport]
) -> None:
    """A valid datagram with any single bit flipped is dropped and counted."""
    _, b = ab
    whole = seal_datagram(net.mac_key, "a", "b", b"payload")
    damaged = [bytes(whole[:i]) + bytes([whole[i] ^ (1 << bit)]) + whole[i + 1 :]
               for i in range(len(whole)) for bit in range(8)]
    flips = len(damaged)
    net.send_raw(net.raw(), "b", damaged)
    assert net.nodes["a"].send("b", b"valid")
    net.pump_until(lambda: b.stats["bad_datagram"] + b.stats["bad_mac"] == flips
                   and ("a", b"valid") in net.inbox["b"], f"{flips} damaged and the valid one")
    assert net.inbox["b"] == [("a", b"valid")]


def test_forged_datagrams_fail_the_mac(net: Net, ab: tuple[UdpTransport, UdpTransport]) -> None:
    """Well-formed datagrams made without the cluster's key are dropped as bad
    MACs: sealed under a guessed key, or with the real key id and a made-up MAC."""
    genuine = seal_datagram(net.mac_key, "a", "b", b"x")
    forged = [
        seal_datagram(bytes(32), "a", "b", b"x"),
        seal_datagram(udp_mac_key(generate_keys()), "a", "b", b"x"),
        genuine[:-16] + bytes(16),
        genuine[:-17] + b"y" + genuine[-16:],
    ]
    net.send_raw(net.raw(), "b", forged)
    still_flows(net, "bad_mac", len(forged))


def test_datagrams_from_another_cluster_are_dropped(
    net: Net, ab: tuple[UdpTransport, UdpTransport]
) -> None:
    """A node of another cluster, with the same node ids, sending to this
    node's port is dropped as a bad MAC and reported as another key."""
    _, b = ab
    other_key = udp_mac_key(generate_keys())
    other_a = UdpTransport("a", (HOST, free_udp_port()), {"b": b.address}, other_key)
    try:
        for i in range(3):
            assert other_a.send("b", b"%d" % i)
        still_flows(net, "bad_mac", 3)
    finally:
        other_a.close()
    assert net.bad["b"] == [("bad_mac", net.bad["b"][0][1])]
    assert "another key" in net.bad["b"][0][1]


def test_replay_from_another_cluster_is_dropped(
    net: Net, ab: tuple[UdpTransport, UdpTransport]
) -> None:
    """A datagram captured in another cluster with the same ids and replayed to
    this node from the sending peer's own address is dropped as a bad MAC."""
    a, b = ab
    captured = seal_datagram(udp_mac_key(generate_keys()), "a", "b", b"old news")
    a.close()  # the raw socket takes a's address: only the key differs
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    net.raws.append(raw)
    raw.bind(net.addrs["a"])
    raw.sendto(captured, b.address)
    raw.sendto(seal_datagram(net.mac_key, "a", "b", b"valid"), b.address)
    net.pump_until(lambda: b.stats["bad_mac"] == 1 and net.inbox["b"] == [("a", b"valid")],
                   "the replay dropped and the valid datagram delivered")


def test_valid_datagram_from_a_sender_that_is_not_a_peer_is_dropped(
    net: Net, ab: tuple[UdpTransport, UdpTransport]
) -> None:
    """A datagram with the cluster's MAC but a sender id that is not a peer is bad_peer."""
    _, b = ab
    raw = net.raw()
    raw.sendto(seal_datagram(net.mac_key, "mallory", "b", b"x"), b.address)
    raw.sendto(seal_datagram(net.mac_key, "b", "b", b"from myself?"), b.address)
    still_flows(net, "bad_peer", 2)


def test_valid_datagram_from_the_wrong_address_is_dropped(
    net: Net, ab: tuple[UdpTransport, UdpTransport]
) -> None:
    """A peer's valid datagram arriving from an address that is not that
    peer's is bad_source, and reported with both addresses."""
    _, b = ab
    raw = net.raw()
    raw.sendto(seal_datagram(net.mac_key, "a", "b", b"spoofed"), b.address)
    still_flows(net, "bad_source", 1)
    ((reason, detail),) = net.bad["b"]
    assert reason == "bad_source"
    assert f"{raw.getsockname()[1]}" in detail and f"{net.addrs['a'][1]}" in detail


def test_valid_datagram_for_another_node_is_dropped(net: Net) -> None:
    """A datagram a peer made for a third node, delivered here, is bad_dst."""
    net.ids("a", "b", "c")
    net.start("a")
    b = net.start("b")
    net.start("c")
    net.raw().sendto(seal_datagram(net.mac_key, "a", "c", b"for c"), b.address)
    still_flows(net, "bad_dst", 1)


def test_bad_datagrams_are_reported_once_a_second_per_reason(net: Net) -> None:
    """on_bad fires at most once per second for each reason; every drop is counted."""
    clock = FakeClock()
    net.ids("a", "b")
    net.start("a")
    b = net.start("b", clock=clock)
    raw = net.raw()

    def send_and_wait(datagram: bytes, key: str, total: int) -> None:
        raw.sendto(datagram, b.address)
        net.pump_until(lambda: b.stats[key] == total, f"{total} {key}")

    for i in range(3):
        send_and_wait(b"junk", "bad_datagram", i + 1)
    send_and_wait(seal_datagram(bytes(32), "a", "b", b""), "bad_mac", 1)
    assert [r for r, _ in net.bad["b"]] == ["bad_datagram", "bad_mac"]
    clock.now += 0.9
    send_and_wait(b"junk", "bad_datagram", 4)
    assert len(net.bad["b"]) == 2
    clock.now += 0.1
    send_and_wait(b"junk", "bad_datagram", 5)
    assert [r for r, _ in net.bad["b"]] == ["bad_datagram", "bad_mac", "bad_datagram"]


# --- the link filter on top ------------------------------------------------------


def test_link_filter_loss_works_over_udp(net: Net) -> None:
    """FaultyTransport around UdpTransport: with 30% loss on a's link to b,
    exactly the messages the filter let through arrive, and some were lost."""
    net.ids("a", "b")
    inner = net.start("a")
    links = LinkFilter(random.Random(3))
    links.set_rules({"b": LinkRule(loss=0.3)})
    a = FaultyTransport(inner, links)
    b = net.start("b")
    sent = [b"%d" % i for i in range(200)]
    assert all(a.send("b", m) for m in sent)
    lost = a.stats["dropped_by_filter"]
    assert 0 < lost < len(sent)
    net.pump_until(lambda: len(net.inbox["b"]) == len(sent) - lost, "the messages not lost")
    got = [d for _, d in net.inbox["b"]]
    assert len(set(got)) == len(got) and set(got) <= set(sent)
    assert inner.stats["sent"] == b.stats["received"] == len(sent) - lost


def test_link_filter_block_cuts_a_udp_link(net: Net) -> None:
    """A blocked link over UDP delivers nothing, and healing it restores traffic."""
    net.ids("a", "b")
    links = LinkFilter(random.Random(4))
    links.set_rules({"b": LinkRule(block_out=True)})
    a = FaultyTransport(net.start("a"), links)
    b = net.start("b")
    for _ in range(10):
        a.send("b", b"blocked")
    links.clear()
    assert a.send("b", b"healed")
    net.pump_until(lambda: ("a", b"healed") in net.inbox["b"], "the message after healing")
    assert net.inbox["b"] == [("a", b"healed")]
    assert b.stats["received"] == 1


# --- keys -------------------------------------------------------------------------


def test_mac_key_is_derived_from_the_cluster_secret() -> None:
    """The MAC key is 32 bytes, fixed for a keypair, different for another,
    and not the secret itself."""
    k1, k2 = generate_keys(), generate_keys()
    assert udp_mac_key(k1) == udp_mac_key(k1)
    assert len(udp_mac_key(k1)) == 32
    assert udp_mac_key(k1) != udp_mac_key(k2)
    assert udp_mac_key(k1) not in (k1.secret, k1.public)


# The widest integer msgpack encodes, as in a long-lived cluster.
_U64_MAX = 2**63 - 1


def test_a_full_batch_crosses_loopback_at_the_small_path_limit(net: Net) -> None:
    """At the 1,400-byte-path setting the largest batch the limits allow is
    sent, arrives in one datagram and decodes to the same message."""
    net.ids("a", "b")
    a = net.start("a", max_datagram=UDP_SMALL_PATH_DATAGRAM_BYTES)
    net.start("b", max_datagram=UDP_SMALL_PATH_DATAGRAM_BYTES)
    limits = udp_core_limits(UDP_SMALL_PATH_DATAGRAM_BYTES)
    data = b"v" * limits.max_entry_data_bytes
    msg = AppendEntries(term=_U64_MAX, src="a", dst="b", prev_index=_U64_MAX, prev_term=_U64_MAX,
                        entries=[Entry(_U64_MAX, _U64_MAX, EntryKind.NORMAL, data)],
                        commit=_U64_MAX)
    assert a.send("b", codec.encode(msg))
    net.pump_until(lambda: len(net.inbox["b"]) == 1, "the full batch")
    src, payload = net.inbox["b"][0]
    assert src == "a" and codec.decode(payload) == msg
