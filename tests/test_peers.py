"""Where a node reaches the members of its configuration (node/peers.py):
addresses from the configuration, peers added and dropped with it on the
UDP transport, and a sender the log does not know yet placed from
cluster.json, unless the supervisor removed it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from node.config import ClusterConfig, NodeSpec
from node.control import MemberChange
from node.peers import ClusterView, PeerBook, decode_addr, encode_addr, to_conf_change
from node.raft.confchange import apply_change, initial, leave_joint
from node.raft.messages import ConfChangeType, ConfState
from node.transport.auth import generate_keys
from node.transport.udp import UdpTransport, udp_mac_key

HOST = "127.0.0.1"


def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _spec(node: str) -> NodeSpec:
    return NodeSpec(id=node, peer_port=_port(), client_port=_port(), control_port=_port())


class FakeTransport:
    """Records the peers it is told about."""

    def __init__(self, peers: dict[str, Any]) -> None:
        self.stats: dict[str, int] = {"sent": 0, "received": 0, "dropped_send": 0, "bad_peer": 0}
        self.addrs = dict(peers)

    def poll_sockets(self) -> list[Any]:
        return []

    def peers(self) -> dict[str, Any]:
        return dict(self.addrs)

    def set_peer(self, peer: str, addr: Any) -> None:
        self.addrs[peer] = addr

    def remove_peer(self, peer: str) -> None:
        self.addrs.pop(peer, None)

    def send(self, dst: str, data: bytes) -> bool:
        return dst in self.addrs

    def receive(self) -> list[tuple[str, bytes]]:
        return []

    def next_deadline_ms(self) -> float | None:
        return None

    def close(self) -> None:
        """Nothing to close."""


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def _book(tmp_path: Path, specs: list[NodeSpec], removed: tuple[str, ...] = ()) -> tuple[
        PeerBook, FakeTransport, dict[str, str], list[tuple[str, dict[str, Any]]], Clock]:
    """n1's book over a cluster.json holding `specs`, its transport made
    from the initial configuration n1,n2,n3."""
    cfg = ClusterConfig(nodes=specs, initial_members=["n1", "n2", "n3"])
    (tmp_path / "cluster.json").write_bytes(
        msgspec.json.encode(ClusterView(config=cfg, removed=list(removed))))
    events: list[tuple[str, dict[str, Any]]] = []
    client_addrs: dict[str, str] = {}
    clock = Clock()
    book = PeerBook("n1", tmp_path, {s.id: s for s in specs[:3]},
                    lambda s: (s.host, s.peer_port), client_addrs,
                    lambda event, **kw: events.append((event, kw)), clock)
    t = FakeTransport(book.wanted(initial(["n1", "n2", "n3"])))
    book.attach(t)
    return book, t, client_addrs, events, clock


def test_addresses_travel_in_the_change_and_round_trip() -> None:
    """A new member's address is its spec, carried in the change itself."""
    spec = _spec("n4")
    cc = to_conf_change([MemberChange(type="add_learner", node="n4", spec=spec),
                         MemberChange(type="remove", node="n2")])
    assert [c.type for c in cc.changes] == [ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE]
    assert decode_addr(cc.changes[0].addr) == spec
    assert decode_addr("") is None and decode_addr("{not json") is None
    assert decode_addr(encode_addr(spec)) == spec


def test_the_transport_follows_the_configuration(tmp_path: Path) -> None:
    """A member added is reached at the address its change carries; one
    that left is dropped, with its client address."""
    specs = [_spec(f"n{i}") for i in (1, 2, 3)]
    book, t, client_addrs, events, _ = _book(tmp_path, specs)
    assert set(t.addrs) == {"n2", "n3"}
    n4 = _spec("n4")
    c0 = initial(["n1", "n2", "n3"])
    c1 = leave_joint(apply_change(c0, to_conf_change(
        [MemberChange(type="add_learner", node="n4", spec=n4)])))
    book.apply(c1)
    assert t.addrs["n4"] == (n4.host, n4.peer_port)
    assert client_addrs["n4"] == n4.client_addr()
    book.apply(leave_joint(apply_change(c1, to_conf_change(
        [MemberChange(type="remove", node="n2")]))))
    assert set(t.addrs) == {"n3", "n4"} and "n2" not in client_addrs
    assert ("peer_added", {"peer": "n4", "source": "configuration"}) in events
    assert ("peer_removed", {"peer": "n2"}) in events


def test_a_sender_not_yet_in_the_log_is_placed_from_cluster_json(tmp_path: Path) -> None:
    """n5 joined after n1's log ends: n1 finds its address in cluster.json
    (once a second at most), unless the supervisor marked it removed."""
    specs = [_spec(f"n{i}") for i in (1, 2, 3, 5, 6)]
    book, t, _, events, clock = _book(tmp_path, specs, removed=("n6",))
    book.unknown_sender("n6")
    assert "n6" not in t.addrs
    book.unknown_sender("n5")
    assert t.addrs["n5"] == (specs[3].host, specs[3].peer_port)
    assert ("peer_added", {"peer": "n5", "source": "cluster.json"}) in events
    t.remove_peer("n5")
    book.unknown_sender("n5")
    assert "n5" not in t.addrs, "looked up twice within a second"
    clock.now += 1.0
    book.unknown_sender("n5")
    assert "n5" in t.addrs


def test_a_configuration_member_without_an_address_is_reported(tmp_path: Path) -> None:
    """A member whose address nobody gave is not reached, and said so."""
    specs = [_spec(f"n{i}") for i in (1, 2, 3)]
    book, t, _, events, _ = _book(tmp_path, specs)
    book.apply(ConfState(voters=("n1", "n2", "n3", "n7")))
    assert "n7" not in t.addrs and ("peer_unknown", {"peer": "n7"}) in events


# --- the UDP transport: peers at run time -------------------------------------------


@pytest.fixture
def udp() -> Iterator[Callable[..., UdpTransport]]:
    key = udp_mac_key(generate_keys())
    made: list[UdpTransport] = []

    def make(node: str, port: int, peers: dict[str, tuple[str, int]],
             on_unknown: Callable[[str], None] | None = None) -> UdpTransport:
        t = UdpTransport(node, (HOST, port), peers, key, on_unknown=on_unknown)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def _recv(t: UdpTransport, cond: Callable[[list[tuple[str, bytes]]], bool],
          what: str) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + 5.0
    while not cond(got):
        got += t.receive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)  # polling cadence; the condition is what we wait for
    return got


def test_udp_peers_come_and_go_at_run_time(udp: Callable[..., UdpTransport]) -> None:
    """An authenticated stranger is dropped and reported; added, it is heard
    and reached; removed, it is dropped again."""
    p1, p3 = _port(), _port()
    unknown: list[str] = []
    a = udp("n1", p1, {}, on_unknown=unknown.append)
    c = udp("n3", p3, {"n1": (HOST, p1)})
    assert c.send("n1", b"stranger")
    _recv(a, lambda _: a.stats["bad_peer"] == 1, "the stranger's datagram")
    assert unknown == ["n3"]
    a.set_peer("n3", (HOST, p3))
    assert a.peers() == {"n3": (HOST, p3)}
    assert c.send("n1", b"member")
    assert _recv(a, lambda g: bool(g), "the member's datagram") == [("n3", b"member")]
    assert a.send("n3", b"back")
    assert _recv(c, lambda g: bool(g), "the reply") == [("n1", b"back")]
    a.remove_peer("n3")
    assert a.send("n3", b"x") is False
    assert c.send("n1", b"removed")
    _recv(a, lambda _: a.stats["bad_peer"] == 2, "the removed node's datagram dropped")
