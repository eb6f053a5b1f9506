"""Watches on the client side (docs/PROTOCOL.md, "Watches"): `Watch`, the
iterator node/client.py's `Client.watch` returns, which follows the cluster
across node deaths without a gap or a repeat.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec
import zmq

from node.api import ClientResponse
from node.api_range import WatchCancelRequest, WatchEvent, WatchRequest
from node.client import Unavailable, _raise_failed, drain_responses
from node.transport.zmq import make_client_socket

if TYPE_CHECKING:
    from node.client import Client

_encoder = msgspec.msgpack.Encoder()

# A watch asks its node for a progress notification after this long idle,
# and takes a node silent for WATCH_SILENT_FACTOR times as long for dead.
WATCH_PROGRESS_MS = 500
WATCH_SILENT_FACTOR = 4
# Frames of events a watch's socket reads ahead of its caller (each up to
# about 256 KiB): a caller slower than the cluster pushes back on its node.
WATCH_RECEIVE_FRAMES = 16


class Watch:
    """One watch, as an iterator of `WatchEvent`s (docs/PROTOCOL.md,
    "Watches"), on a socket of its own. `revision` is how far it is
    current: every change through it was delivered. When its node dies or
    goes silent it watches again from another node, from `revision` + 1, so
    nothing is missed or repeated. Raises Compacted when the history it
    needs is gone, ClientError when the node cancels it (a slow watcher),
    Unavailable when no node serves it within the client's timeout."""

    def __init__(self, client: Client, req: WatchRequest, *, progress: bool,
                 node: str | None) -> None:
        self._client = client
        self._req = req
        self._progress = progress
        self._order = list(client._order)
        if node is not None and node in self._order:
            self._order.remove(node)
            self._order.insert(0, node)
        self._at = 0
        self.revision = req.start_revision - 1 if req.start_revision else -1
        self.node: str | None = None
        self.resumes = 0
        self._sock: zmq.Socket[bytes] | None = None
        self._ids = itertools.count(1)
        self._wid = 0
        self._done = False
        # Events of revision `revision` + 1 already yielded: a frame may be
        # left half read, and the next watch skips those (every replica
        # holds the changes of a revision in the same order).
        self._partial = 0
        self._move_to: str | None = None

    def reconnect(self, node: str | None = None) -> None:
        """Watch from `node` (or the next one) from where the caller is:
        the iteration goes on there, without a gap or a repeat."""
        self._move_to = node or ""

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            while not self._done:
                if self._sock is None:
                    self._open()
                yield from self._receive()
        finally:
            self.close()

    def close(self) -> None:
        """Cancel the watch (best effort) and close its socket."""
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.send(_encoder.encode(WatchCancelRequest(id=next(self._ids),
                                                                   watch=self._wid)),
                                zmq.NOBLOCK)
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        """Open the watch on a node, from the revision after the last one
        delivered, trying the nodes in turn until the client's timeout."""
        cl = self._client
        deadline = time.monotonic() + cl.timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            node = self._order[self._at % len(self._order)]
            self._at += 1
            if self._move_to:
                node, self._move_to = self._move_to, None
            sock = make_client_socket(cl._ctx, cl.nodes[node], cl.keys,
                                      stream_frames=WATCH_RECEIVE_FRAMES)
            self._wid = next(self._ids)
            start = self.revision + 1 if self.revision >= 0 else 0
            try:
                sock.send(_encoder.encode(msgspec.structs.replace(
                    self._req, id=self._wid, start_revision=start)), zmq.NOBLOCK)
            except zmq.Again:
                sock.close(linger=0)
                last = f"{node} not connected"
                continue
            resp = _first_answer(sock, self._wid, min(deadline, time.monotonic()
                                                     + cl.attempt_timeout_s))
            if resp is not None and resp.ok and resp.created:
                self._sock, self.node = sock, node
                if self.revision < 0:
                    self.revision = resp.revision or 0
                return
            sock.close(linger=0)
            if resp is None:
                continue
            _raise_failed(resp)
            last = resp.error or last
        raise Unavailable("unavailable", f"no node opened the watch within "
                                         f"{cl.timeout_s:.1f}s ({last})")

    def _receive(self) -> Iterator[WatchEvent]:
        """Events until the watch ends or its node goes silent (then the
        socket is closed, and the caller opens the watch elsewhere)."""
        sock = self._sock
        assert sock is not None
        silent_ms = WATCH_PROGRESS_MS * WATCH_SILENT_FACTOR
        while True:
            if not sock.poll(silent_ms):
                sock.close(linger=0)
                self._sock = None
                self.resumes += 1
                return
            for resp in drain_responses(sock):
                if resp.id != self._wid:
                    continue
                if not resp.ok:
                    self._done = True
                    _raise_failed(resp)
                events = resp.events or []
                skip = self._partial
                for ev in events:
                    if ev.revision <= self.revision:
                        continue
                    if ev.revision > self.revision + 1:
                        # Every change of the revisions before it was yielded.
                        self.revision, self._partial, skip = ev.revision - 1, 0, 0
                    if skip:
                        skip -= 1
                        continue
                    self._partial += 1
                    yield ev
                    if self._move_to is not None:
                        self._move(sock)
                        return
                if resp.revision is not None and resp.revision > self.revision:
                    self.revision, self._partial = resp.revision, 0
                if not events and not resp.canceled and self._progress:
                    yield WatchEvent("progress", "", self.revision)
                if self._move_to is not None:
                    self._move(sock)
                    return
                if resp.canceled:
                    self._done = True
                    return

    def _move(self, sock: zmq.Socket[bytes]) -> None:
        """Leave this node (reconnect): the next turn of the iteration opens
        the watch again where `_move_to` says."""
        with contextlib.suppress(zmq.ZMQError):
            sock.send(_encoder.encode(WatchCancelRequest(id=next(self._ids), watch=self._wid)),
                      zmq.NOBLOCK)
        sock.close(linger=0)
        self._sock = None
        self.resumes += 1
        if self._move_to == "":
            self._move_to = None


def _first_answer(sock: zmq.Socket[bytes], wid: int, until: float) -> ClientResponse | None:
    """The answer to request `wid` on `sock`, or None by `until`."""
    while True:
        left = until - time.monotonic()
        if left <= 0 or not sock.poll(max(1, int(left * 1000))):
            return None
        for resp in drain_responses(sock):
            if resp.id == wid:
                return resp
