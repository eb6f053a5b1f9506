"""`ClientReplies`: the answers a node owes its clients, on their way out of
the client ROUTER. Batched per connection per loop turn, held back while a
connection's queue is full, dropped for a client that stops reading them.
It bounds what answers cost in memory; it decides nothing about requests.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import zmq

from node.batches import batch_bounds, join_batch
from node.config import CLIENT_BATCH_MAX_BYTES, CLIENT_STUCK_TIMEOUT_MS, CLIENT_TURN_REPLY_BYTES
from node.transport.zmqio import send_parts


class ClientReplies:
    """Answers to clients of one ROUTER socket (set ROUTER_MANDATORY on it,
    or libzmq drops what a full queue cannot take instead of saying so).

    `reply()` collects; `flush()` sends what one turn collected, a
    connection's answers as few frames as CLIENT_BATCH_MAX_BYTES allows.
    A frame a connection's queue cannot take waits here, with every later
    one for that connection, until `flush()` finds room; the loop takes no
    new request while CLIENT_TURN_REPLY_BYTES wait so (`congested()`). A
    connection that takes nothing for CLIENT_STUCK_TIMEOUT_MS loses what
    waits for it (`dropped_frames`): one client not reading must not hold the
    others back for longer.
    """

    def __init__(self, sock: zmq.Socket[bytes],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._sock = sock
        self._monotonic = monotonic
        # DEALER connections by routing id: the answers of this turn.
        self._outbox: dict[bytes, list[bytes]] = {}
        # By the envelope's first frame: multipart messages not yet taken,
        # in order, and when that connection last took one.
        self._held: dict[bytes, tuple[collections.deque[list[bytes]], float]] = {}
        self.turn_bytes = 0
        self.held_bytes = 0
        self.dropped_frames = 0

    def reply(self, route: list[bytes], data: bytes) -> None:
        self.turn_bytes += len(data)
        if len(route) != 1:
            # A REQ socket takes one answer per request: no batching.
            self._send([*route, data])
            return
        self._outbox.setdefault(route[0], []).append(data)

    def push(self, route: list[bytes], data: bytes) -> bool | None:
        """Send one frame now if the connection's queue takes it: True if
        sent, False if it is full or holds answers still (try later; nothing
        was kept), None if the client went away. Watches stream so
        (node/watch.py): what a slow reader has not taken stays in the
        history, not here, and never counts against `congested`."""
        if len(route) != 1 or route[0] in self._held or route[0] in self._outbox:
            return False
        try:
            send_parts(self._sock, [route[0], data])
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            return None
        return True

    def congested(self) -> bool:
        """Enough answers wait that no new request should be taken now."""
        return (self.turn_bytes >= CLIENT_TURN_REPLY_BYTES
                or self.held_bytes >= CLIENT_TURN_REPLY_BYTES)

    def flush(self) -> None:
        """Send what was held back, then this turn's answers."""
        self.turn_bytes = 0
        if self._held:
            self._retry_held()
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, {}
        for rid, items in outbox.items():
            for a, b in batch_bounds([len(d) for d in items], CLIENT_BATCH_MAX_BYTES):
                self._send([rid, items[a] if b - a == 1 else join_batch(items[a:b])])

    def _send(self, msg: list[bytes]) -> None:
        held = self._held.get(msg[0])
        if held is not None:
            held[0].append(msg)
            self.held_bytes += len(msg[-1])
            return
        try:
            send_parts(self._sock, msg)
        except zmq.Again:
            self._held[msg[0]] = (collections.deque([msg]), self._monotonic())
            self.held_bytes += len(msg[-1])
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            # The client went away: nobody to answer.

    def _retry_held(self) -> None:
        now = self._monotonic()
        for rid in list(self._held):
            queue, since = self._held[rid]
            while queue:
                try:
                    send_parts(self._sock, queue[0])
                except zmq.Again:
                    break
                except zmq.ZMQError as e:
                    if e.errno != zmq.EHOSTUNREACH:
                        raise
                    self._drop(rid)
                    break
                self.held_bytes -= len(queue.popleft()[-1])
                since = now
            if rid not in self._held:
                continue
            if not queue:
                del self._held[rid]
            elif (now - since) * 1000.0 >= CLIENT_STUCK_TIMEOUT_MS:
                self.dropped_frames += len(queue)
                self._drop(rid)
            else:
                self._held[rid] = (queue, since)

    def _drop(self, rid: bytes) -> None:
        queue, _ = self._held.pop(rid)
        self.held_bytes -= sum(len(m[-1]) for m in queue)

    def stats(self) -> dict[str, Any]:
        return {"held_bytes": self.held_bytes, "held_connections": len(self._held),
                "dropped_frames": self.dropped_frames}
