"""A real node facing bad input on every socket: malformed, unknown-op,
wrong-type and oversized requests get an error reply and change nothing;
garbage peer messages are counted; a socket without the cluster's key gets
nothing at all; and the node keeps serving throughout."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import msgspec
import zmq

from node import codec
from node.raft.messages import AppendEntries, Entry
from node.transport.auth import generate_keys, set_curve_client
from node.transport.zmq import make_client_socket
from tests.procs import TestCluster, cluster3, wait_until

__all__ = ["cluster3"]


def _ask(
    sock: zmq.Socket[bytes], payload: bytes, timeout_ms: int = 3000
) -> dict[str, Any] | None:
    sock.send(payload)
    if not sock.poll(timeout_ms):
        return None
    reply = msgspec.msgpack.decode(sock.recv())
    assert isinstance(reply, dict)
    return reply


def _register(sock: zmq.Socket[bytes]) -> int:
    """Open a session over a raw socket, as a client in any language would."""
    reply = _ask(sock, msgspec.msgpack.encode({"op": "register", "id": 1}))
    assert reply is not None and reply["ok"], reply
    return int(reply["session"])


def _counters(c: TestCluster, node: str) -> dict[str, Any]:
    st = c.statuses()[node]
    return dict(st["counters"])


def test_bad_client_requests_get_errors_and_change_nothing(cluster3: TestCluster) -> None:
    """Garbage, unknown op, wrong types and a too-long key: each answered
    with bad_request, counted, no state change; good requests still work."""
    c = cluster3
    lead = c.leader()
    assert lead is not None
    before = _counters(c, lead)["bad_requests"]
    applied = c.statuses()[lead]["applied"]
    sock = make_client_socket(zmq.Context.instance(), c.client_addrs()[lead], c.keys())
    try:
        sid = _register(sock)
        applied += 1
        bad = [
            b"\xff\x00garbage",
            msgspec.msgpack.encode({"op": "explode", "id": 7}),
            msgspec.msgpack.encode({"op": "put", "id": 8, "session": sid, "seq": "one",
                                    "key": "k", "value": b"v"}),
            msgspec.msgpack.encode({"op": "put", "id": 9, "session": sid, "seq": 1,
                                    "key": "k" * 5000, "value": b"v"}),
            msgspec.msgpack.encode({"op": "put", "id": 11, "session": sid, "seq": 2,
                                    "first_outstanding": 3, "key": "k", "value": b"v"}),
            msgspec.msgpack.encode({"op": "put", "id": 12, "client": "old-style", "seq": 1,
                                    "key": "k", "value": b"v"}),
            msgspec.msgpack.encode("a string"),
            b"\x93\x01",  # an array of three that ends after one item
        ]
        for payload in bad:
            reply = _ask(sock, payload)
            assert reply is not None, f"no reply to {payload[:20]!r}"
            assert reply["ok"] is False and reply["error"] == "bad_request", reply
        echoed = _ask(sock, msgspec.msgpack.encode({"op": "explode", "id": 7}))
        assert echoed is not None and echoed["id"] == 7, "the request id is echoed"
        good = _ask(sock, msgspec.msgpack.encode(
            {"op": "put", "id": 10, "session": sid, "seq": 1, "key": "k", "value": b"v"}))
        assert good is not None and good["ok"] is True
    finally:
        sock.close(linger=0)
    after = c.statuses()[lead]
    assert after["counters"]["bad_requests"] >= before + len(bad)
    assert after["applied"] == applied + 1, "only the one good write was applied"


def test_bad_control_request_gets_an_error(cluster3: TestCluster) -> None:
    """The control socket answers garbage and unknown ops with bad_request."""
    c = cluster3
    node = c.node_ids()[0]
    spec = c.config().node(node)
    sock = make_client_socket(zmq.Context.instance(), spec.control_addr(), c.keys())
    try:
        for payload in (b"\x00\x01", msgspec.msgpack.encode({"op": "format_disk"})):
            reply = _ask(sock, payload)
            assert reply is not None and reply["ok"] is False
            assert reply["error"] == "bad_request"
    finally:
        sock.close(linger=0)
    assert c.statuses()[node]["role"] in ("leader", "follower")


def test_garbage_and_spoofed_peer_messages_are_counted(cluster3: TestCluster) -> None:
    """Peer frames that do not decode, or that claim another sender, are
    dropped and counted; the cluster keeps committing."""
    c = cluster3
    target, other = c.node_ids()[0], c.node_ids()[1]
    before = _counters(c, target)
    if c.config().transport == "udp":
        spec = c.config().node(target)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for payload in (b"", b"\x00" * 40, b"garbage" * 100):
                s.sendto(payload, (spec.host, spec.peer_port))
        wait_until(lambda: sum(_counters(c, target)["transport"].get(k, 0) for k in
                               ("bad_datagram", "bad_mac", "bad_peer", "bad_source"))
                   >= 3, 5.0, "three bad datagrams counted")
    else:
        spec = c.config().node(target)
        sock = make_client_socket(zmq.Context.instance(), spec.peer_addr(), c.keys(),
                                  routing_id=other.encode())
        try:
            sock.send(b"\x93\xa2hb")  # truncated msgpack
            spoof = AppendEntries(term=10**6, src="n9", dst=target, prev_index=0, prev_term=0,
                                  entries=[Entry(10**6, 1)], commit=0)
            sock.send(codec.encode(spoof))
            wait_until(lambda: _counters(c, target)["bad_messages"] > before["bad_messages"]
                       and _counters(c, target)["spoofed_messages"]
                       > before["spoofed_messages"], 5.0, "bad and spoofed peer frames counted")
        finally:
            sock.close(linger=0)
    st = c.statuses()[target]
    assert st["term"] < 10**6, "a spoofed message changed the term"
    with c.client() as cl:
        assert cl.put("still", b"serving").ok


def test_socket_with_another_key_gets_nothing(cluster3: TestCluster) -> None:
    """A client that knows the node's public key but holds another keypair
    cannot read status, write a key or send Raft messages; it is logged."""
    c = cluster3
    node = c.leader()
    assert node is not None
    spec = c.config().node(node)
    cluster_keys = c.keys()
    intruder = generate_keys()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    addrs = [spec.client_addr(), spec.control_addr()]
    if c.config().transport == "zmq":
        addrs.append(spec.peer_addr())
    for addr in addrs:
        s: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_serverkey = cluster_keys.public
        s.curve_publickey = intruder.public
        s.curve_secretkey = intruder.secret
        s.connect(addr)
        with contextlib.suppress(zmq.Again):  # not even queued: nothing can arrive
            s.send(msgspec.msgpack.encode({"op": "status"}), zmq.NOBLOCK)
        s.send(msgspec.msgpack.encode(
            {"op": "put", "id": 1, "session": 1, "seq": 1, "key": "intruder", "value": b"x"}))
        assert not s.poll(1000), f"{addr} answered a socket with another key"
        s.close(linger=0)
    wait_until(lambda: _counters(c, node)["auth_rejected"] >= 1, 5.0, "auth_rejected counted")
    with c.client() as cl:
        assert cl.get("intruder") is None
    assert '"auth_rejected"' in c.log_path(node).read_text()


def test_multibyte_key_over_the_byte_limit_is_refused(cluster3: TestCluster) -> None:
    """A key within 1,024 characters but over 1,024 bytes of UTF-8 gets
    bad_request (it once crashed the node's loop), and the node serves on."""
    c = cluster3
    with c.client() as cl:
        lead = c.leader()
        assert lead is not None
        sock = make_client_socket(zmq.Context.instance(), c.client_addrs()[lead], c.keys())
        try:
            reply = _ask(sock, msgspec.msgpack.encode({
                "op": "put", "id": 3, "session": _register(sock), "seq": 1, "key": "é" * 1024,
                "value": b"v"}))
        finally:
            sock.close(linger=0)
        assert reply is not None and reply["error"] == "bad_request", reply
        assert cl.put("after", b"ok").ok


def _answers(sock: zmq.Socket[bytes], want: int, timeout_ms: int = 3000) -> list[dict[str, Any]]:
    """Responses until `want` have come, each frame one response or an array."""
    got: list[dict[str, Any]] = []
    while len(got) < want and sock.poll(timeout_ms):
        frame = msgspec.msgpack.decode(sock.recv())
        got.extend(frame if isinstance(frame, list) else [frame])
    return got


def test_a_batch_frame_is_answered_request_by_request(cluster3: TestCluster) -> None:
    """A DEALER frame holding an array of requests: each is handled as if
    sent alone (a bad one gets bad_request, the others apply), and answers
    that finish together come back as an array in one frame."""
    c = cluster3
    lead = c.leader()
    assert lead is not None
    applied = c.statuses()[lead]["applied"]
    sock = make_client_socket(zmq.Context.instance(), c.client_addrs()[lead], c.keys())
    try:
        sid = _register(sock)
        applied += 1
        items = [msgspec.msgpack.encode({"op": "put", "id": 100 + i, "session": sid,
                                         "seq": i + 1, "key": f"b{i}", "value": b"v"})
                 for i in range(5)]
        items.insert(2, msgspec.msgpack.encode({"op": "explode", "id": 99}))
        sock.send(msgspec.msgpack.encode([msgspec.Raw(i) for i in items]))
        got = _answers(sock, 6)
        by_id = {r["id"]: r for r in got}
        assert sorted(by_id) == [99, 100, 101, 102, 103, 104], got
        assert by_id[99]["error"] == "bad_request"
        assert all(by_id[100 + i]["ok"] for i in range(5)), got
        assert c.statuses()[lead]["applied"] == applied + 5, "one entry a good put"
        sock.send(msgspec.msgpack.encode({"op": "get", "id": 7, "key": "b4"}))
        sock.send(msgspec.msgpack.encode([msgspec.Raw(i) for i in items[:2]]))
        again = {r["id"]: r for r in _answers(sock, 3)}
        assert again[7]["ok"] and again[7]["value"] == b"v", again
        # Seqs 1 and 2 of a session whose client released their answers (each
        # put said it needs none below its own seq): refused, not applied again.
        assert again[100]["error"] == again[101]["error"] == "stale_sequence", again
    finally:
        sock.close(linger=0)
    assert c.statuses()[lead]["applied"] == applied + 7, "the two stale puts are entries too"


def test_a_batch_frame_on_a_req_socket_is_refused(cluster3: TestCluster) -> None:
    """A REQ socket takes one reply per request message, so a batch frame
    from one gets a single bad_request saying why."""
    c = cluster3
    lead = c.leader()
    assert lead is not None
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    set_curve_client(sock, c.keys())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(c.client_addrs()[lead])
    try:
        reply = _ask(sock, msgspec.msgpack.encode([{"op": "ping", "id": 1}]))
        assert reply is not None and reply["error"] == "bad_request", reply
        assert "DEALER" in reply["message"]
    finally:
        sock.close(linger=0)
