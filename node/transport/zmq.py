"""The ZeroMQ peer transport: one bound ROUTER per node, one DEALER per peer,
and the socket factories the node's client and control sockets share.

Nothing here blocks: every send is NOBLOCK and a full or cut link loses the
message instead of holding it for a late burst.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from node.config import (
    CURVE_FRAME_OVERHEAD_BYTES,
    MAX_MESSAGE_BYTES,
    PEER_CONNECT_TIMEOUT_MS,
    PEER_HANDSHAKE_TIMEOUT_MS,
    PEER_HEARTBEAT_IVL_MS,
    PEER_HEARTBEAT_TIMEOUT_MS,
    PEER_HEARTBEAT_TTL_MS,
    PEER_QUEUE_MSGS,
    PEER_RECONNECT_IVL_MAX_MS,
    PEER_RECONNECT_IVL_MS,
    PEER_RECV_BATCH_MSGS,
)
from node.transport.auth import (
    CurveKeys,
    KeysError,
    generate_keys,
    read_keys,
    set_curve_client,
    set_curve_server,
    write_keys,
)
from node.transport.zmqio import recv_parts

__all__ = [
    "CurveKeys",
    "KeysError",
    "ZmqTransport",
    "generate_keys",
    "make_client_socket",
    "make_server_socket",
    "read_keys",
    "set_common_options",
    "write_keys",
]


def set_common_options(sock: zmq.Socket[Any]) -> None:
    """Options every socket of a node shares: no linger on close, short
    queues, heartbeats that drop a silent connection (and what it queued)
    within PEER_HEARTBEAT_TIMEOUT_MS, and quick reconnects."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, PEER_QUEUE_MSGS)
    sock.setsockopt(zmq.RCVHWM, PEER_QUEUE_MSGS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, PEER_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, PEER_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, PEER_HEARTBEAT_TTL_MS)
    sock.setsockopt(zmq.HANDSHAKE_IVL, PEER_HANDSHAKE_TIMEOUT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, PEER_RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, PEER_RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, PEER_CONNECT_TIMEOUT_MS)


def _max_frame_bytes(keys: CurveKeys | None, payload_bytes: int = MAX_MESSAGE_BYTES) -> int:
    # libzmq checks MAXMSGSIZE against the frame on the wire, which CURVE
    # makes larger than the payload; a payload of exactly `payload_bytes`
    # must still pass.
    return payload_bytes + (CURVE_FRAME_OVERHEAD_BYTES if keys is not None else 0)


def make_server_socket(
    ctx: zmq.Context[Any], bind_addr: str, keys: CurveKeys | None, *,
    max_frame_bytes: int = MAX_MESSAGE_BYTES, send_queue_frames: int = PEER_QUEUE_MSGS,
) -> zmq.Socket[bytes]:
    """A ROUTER bound to `bind_addr` ("tcp://host:port"): a CURVE server with
    the cluster keys (None: no security, for tests only), frames above
    `max_frame_bytes` dropped with their connection, at most
    `send_queue_frames` frames queued for sending per connection, and a
    reconnecting client taking over its identity at once (ROUTER_HANDOVER).

    Requires a `ZapHandler` on `ctx` when `keys` is given, or no client is
    admitted."""
    sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    try:
        set_common_options(sock)
        sock.setsockopt(zmq.SNDHWM, send_queue_frames)
        sock.setsockopt(zmq.MAXMSGSIZE, _max_frame_bytes(keys, max_frame_bytes))
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if keys is not None:
            set_curve_server(sock, keys)
        sock.bind(bind_addr)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


def make_client_socket(
    ctx: zmq.Context[Any],
    connect_addr: str,
    keys: CurveKeys | None,
    *,
    routing_id: bytes | None = None,
    immediate: bool = False,
    stream_frames: int | None = None,
) -> zmq.Socket[bytes]:
    """A DEALER connected to a node's ROUTER at `connect_addr`, a CURVE
    client with the cluster keys (None: no security, for tests only).

    `immediate=False` (clients) queues a request until the connection is up,
    so the first send after creating the socket does not fail; the caller's
    timeout bounds how long it waits. Peers use `immediate=True`, so a message
    to a peer that is not connected fails at once instead of arriving late.
    `stream_frames` makes a socket for a stream of answers (a watch): libzmq
    reads at most that many frames ahead of the caller, so a slow reader
    pushes back on the node; with neither heartbeats nor reconnection, since
    libzmq aborts the process when it reattaches a connection whose input
    was stopped by a full receive queue (libzmq issue 3937). The caller
    finds a dead node by the stream's own progress messages instead.
    """
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    try:
        set_common_options(sock)
        sock.setsockopt(zmq.MAXMSGSIZE, _max_frame_bytes(keys))
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if stream_frames is not None:
            sock.setsockopt(zmq.RCVHWM, stream_frames)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, -1)
        if keys is not None:
            set_curve_client(sock, keys)
        sock.connect(connect_addr)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


def _routing_id(node_id: str) -> bytes:
    rid = node_id.encode()
    # libzmq reserves identities starting with a zero byte for ones it makes up.
    if not 1 <= len(rid) <= 255 or rid[0] == 0:
        raise ValueError(f"node id {node_id!r} cannot be a ZeroMQ routing id")
    return rid


class ZmqTransport:
    """`PeerTransport` over ZeroMQ.

    Binds one ROUTER at `bind_addr` ("tcp://host:port") for every peer's
    DEALER and connects one DEALER per peer (`peers`: node id ->
    "tcp://host:port"; this node's own id is ignored), whose ROUTING_ID is
    this node's id, so the receiving ROUTER sees frames [sender id, payload].
    With `keys` every socket speaks CURVE with the cluster keypair and the
    context needs a `ZapHandler`; `keys=None` is for tests only.

    DEALERs use IMMEDIATE: while a peer is not connected (down, or its
    connection dropped by the heartbeat after PEER_HEARTBEAT_TIMEOUT_MS of
    silence) `send` returns False at once, and nothing queued meanwhile is
    delivered when it comes back. Frames from an identity that is not a peer
    are dropped (`stats["bad_peer"]`) and, since CURVE admitted them, the
    identity is reported to `on_unknown` (a member this node does not know
    yet, or one removed); multi-part messages are dropped too
    (`stats["bad_frame"]`); a frame over MAX_MESSAGE_BYTES is dropped by
    libzmq together with the connection that sent it. Peers come and go
    with `set_peer` and `remove_peer` (membership changes).
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        node_id: str,
        bind_addr: str,
        peers: dict[str, str],
        keys: CurveKeys | None,
        on_unknown: Callable[[str], None] | None = None,
    ) -> None:
        own = _routing_id(node_id)
        self.node_id = node_id
        self._ctx = ctx
        self._own = own
        self._keys = keys
        self._on_unknown = on_unknown
        self.stats: dict[str, int] = {
            "sent": 0, "received": 0, "dropped_send": 0, "unknown_dst": 0,
            "oversize": 0, "bad_peer": 0, "bad_frame": 0,
        }
        self._peer_of: dict[bytes, str] = {
            _routing_id(p): p for p in peers if p != node_id
        }
        self._router = make_server_socket(ctx, bind_addr, keys)
        self._dealers: dict[str, zmq.Socket[bytes]] = {}
        self._addrs: dict[str, str] = {}
        try:
            for peer, addr in peers.items():
                if peer != node_id:
                    self.set_peer(peer, addr)
        except zmq.ZMQError:
            self.close()
            raise

    @property
    def address(self) -> str:
        """The endpoint the ROUTER is bound to (resolves a port given as *)."""
        return self._router.getsockopt_string(zmq.LAST_ENDPOINT)

    def poll_sockets(self) -> list[Any]:
        """The ROUTER: DEALERs only send, so nothing else becomes readable."""
        return [self._router]

    def peers(self) -> dict[str, str]:
        """Each peer and the endpoint its DEALER connects to."""
        return dict(self._addrs)

    def set_peer(self, peer: str, addr: str) -> None:
        """Reach `peer` at `addr` ("tcp://host:port") from now on, and take
        its frames; a known peer at another address is reconnected."""
        if peer == self.node_id or self._addrs.get(peer) == addr:
            return
        self.remove_peer(peer)
        self._dealers[peer] = make_client_socket(
            self._ctx, addr, self._keys, routing_id=self._own, immediate=True)
        self._addrs[peer] = addr
        self._peer_of[_routing_id(peer)] = peer

    def remove_peer(self, peer: str) -> None:
        """Forget `peer`: what is queued for it is dropped, nothing more is
        sent to it, and its frames are dropped as a stranger's."""
        sock = self._dealers.pop(peer, None)
        if sock is not None:
            sock.close(linger=0)
        self._addrs.pop(peer, None)
        self._peer_of = {r: p for r, p in self._peer_of.items() if p != peer}

    def send(self, dst: str, data: bytes) -> bool:
        """Queue `data` for `dst`; False (counted in `dropped_send`) when
        `dst` is not a peer, is not connected, its queue of PEER_QUEUE_MSGS
        is full, or `data` exceeds MAX_MESSAGE_BYTES (`oversize`; the peer
        would drop it and the connection with it)."""
        sock = self._dealers.get(dst)
        if sock is None:
            self.stats["unknown_dst"] += 1
            self.stats["dropped_send"] += 1
            return False
        if len(data) > MAX_MESSAGE_BYTES:
            self.stats["oversize"] += 1
            self.stats["dropped_send"] += 1
            return False
        try:
            sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.stats["dropped_send"] += 1
            return False
        self.stats["sent"] += 1
        return True

    def receive(self) -> list[tuple[str, bytes]]:
        """Everything ready now (at most PEER_RECV_BATCH_MSGS messages; the
        ROUTER stays readable if more wait), as (sender id, payload)."""
        out: list[tuple[str, bytes]] = []
        router = self._router
        for _ in range(PEER_RECV_BATCH_MSGS):
            try:
                frames = recv_parts(router)
            except zmq.Again:
                break
            if len(frames) != 2:
                self.stats["bad_frame"] += 1
                continue
            peer = self._peer_of.get(frames[0])
            if peer is None:
                self.stats["bad_peer"] += 1
                if self._on_unknown is not None:
                    self._on_unknown(frames[0].decode(errors="replace"))
                continue
            out.append((peer, frames[1]))
        self.stats["received"] += len(out)
        return out

    def next_deadline_ms(self) -> float | None:
        """Always None: nothing is held back here."""
        return None

    def close(self) -> None:
        for sock in self._dealers.values():
            sock.close(linger=0)
        self._dealers.clear()
        self._router.close(linger=0)
