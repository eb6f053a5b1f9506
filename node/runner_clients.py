"""The runner's side of its clients and operators: requests taken from the
client socket within the loop's time and answer budgets (a batch's requests
waiting in a backlog for the next turns), control requests answered now or
when their work is done, and the answers sent (node/replies.py). A mixin of
`NodeRunner` (node/runner.py)."""

from __future__ import annotations

import collections
import concurrent.futures
import time
from typing import TYPE_CHECKING, cast

import zmq

from node.api import ClientApi, ClientRequest, RequestRefused
from node.batches import is_batch, split_batch
from node.control import handle_control
from node.replies import ClientReplies
from node.transport.zmqio import recv_parts

if TYPE_CHECKING:
    from node.control import Controlled

# At most this many frames are taken from the client socket per loop turn,
# and for at most this long: ticks and heartbeats keep their rhythm under load.
_DRAIN_LIMIT = 2048
_CLIENT_DRAIN_BUDGET_S = 0.005
# Control requests taken per turn.
_CONTROL_DRAIN_LIMIT = 64


class ClientHandling:
    """Client and control sockets (see the module)."""

    if TYPE_CHECKING:
        # Set up by NodeRunner.__init__ (node/runner.py).
        api: ClientApi
        client_sock: zmq.Socket[bytes]
        control_sock: zmq.Socket[bytes]
        _replies: ClientReplies
        _poller: zmq.Poller
        _watching_clients: bool
        # Requests of a batch frame that the client drain's time budget left
        # for the next turns, in order, ahead of any new frame.
        _client_backlog: collections.deque[tuple[list[bytes], bytes | ClientRequest]]
        _control_deferred: list[tuple[list[bytes], concurrent.futures.Future[bytes]]]

        def _bad_request(self, reason: str) -> None: ...

    def _receive_clients(self) -> None:
        # The writes of one drain go into the log together (node/api.py).
        self.api.begin_batch()
        try:
            self._drain_clients()
        finally:
            self.api.end_batch()

    def _drain_clients(self) -> None:
        # A time budget as well as a count, checked per request: a batch
        # frame may hold thousands of requests, and a turn of the loop that
        # outlasts an election timeout sends no heartbeat. What is left waits
        # for the next turn: the rest of a batch here, new frames in ZeroMQ.
        # So is what the answers take: reads of large values stop the drain
        # while too many answers wait to leave (node/replies.py).
        until = time.monotonic() + _CLIENT_DRAIN_BUDGET_S
        backlog = self._client_backlog
        congested = self._replies.congested
        for _ in range(_DRAIN_LIMIT):
            while backlog:
                if time.monotonic() >= until or congested():
                    return
                self.api.handle(*backlog.popleft())
            if time.monotonic() >= until or congested():
                return
            try:
                frames = recv_parts(self.client_sock)
            except zmq.Again:
                return
            route, payload = _split_envelope(frames)
            if route is None:
                self._bad_request("request without an envelope")
                continue
            if not is_batch(payload):
                self.api.handle(route, payload)
                continue
            try:
                if len(route) != 1:
                    # A REQ socket takes one reply per request message.
                    raise ValueError("batch frames need a DEALER socket")
                items = split_batch(payload)
            except RequestRefused as e:
                self.api.refuse(route, str(e), e.code)
                continue
            except ValueError as e:
                self.api.refuse(route, str(e))
                continue
            backlog.extend((route, item) for item in items)

    def _receive_control(self) -> None:
        for _ in range(_CONTROL_DRAIN_LIMIT):
            try:
                frames = self.control_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            route, payload = _split_envelope(frames)
            if route is None:
                continue
            reply, bad = handle_control(cast("Controlled", self), payload)
            if bad is not None:
                self._bad_request(bad)
            if isinstance(reply, bytes):
                self.control_sock.send_multipart([*route, reply], zmq.NOBLOCK)
            else:
                self._control_deferred.append((route, reply))

    def _answer_deferred_control(self) -> None:
        """Send the answers of control requests whose work (off the loop) is done."""
        if not self._control_deferred:
            return
        waiting = []
        for route, fut in self._control_deferred:
            if fut.done():
                self.control_sock.send_multipart([*route, fut.result()], zmq.NOBLOCK)
            else:
                waiting.append((route, fut))
        self._control_deferred = waiting

    def _reply_client(self, route: list[bytes], data: bytes) -> None:
        self._replies.reply(route, data)

    def _flush_replies(self) -> None:
        """Send the answers of this turn (node/replies.py), and stop polling
        for client frames while the answers are congested: the loop would
        wake for frames it will not take."""
        self._replies.flush()
        watching = not self._replies.congested()
        if watching != self._watching_clients:
            self._watching_clients = watching
            self._poller.modify(self.client_sock, zmq.POLLIN if watching else 0)

    def _clients_waiting(self) -> bool:
        """Requests of a batch wait for a turn, and the answers let them."""
        return bool(self._client_backlog) and not self._replies.congested()


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes] | None, bytes]:
    """ROUTER frames are [identity, (empty delimiter from REQ clients), payload]."""
    if len(frames) < 2:
        return None, b""
    return frames[:-1], frames[-1]
