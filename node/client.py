"""The client library used by the CLI, the tests and the chaos workload: it
finds the leader, follows redirects, retries a write with the same sequence
number, keeps a deadline, and reports an outcome it cannot know as unknown.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import zmq

from node.api import (
    CasRequest,
    ClientRequest,
    ClientResponse,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    decode_responses,
)
from node.transport.zmq import CurveKeys, make_client_socket

_encoder = msgspec.msgpack.Encoder()

# Errors after which another attempt (same seq) is safe and may succeed.
_RETRYABLE = {"not_leader", "leader_changed", "busy"}


class ClientError(Exception):
    """The request failed; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class OutcomeUnknown(ClientError):
    """The deadline passed after the write may have reached a leader: it may
    or may not have been applied. Until the deadline the client already
    retried it with the same session and seq, which the cluster applies at
    most once; a caller that must know reads the key back."""


class Unavailable(ClientError):
    """No node answered in time, and the request certainly had no effect."""


@dataclass(frozen=True)
class WriteResult:
    ok: bool
    value: bytes | None  # previous value (put/delete) or current one (failed cas)
    index: int | None
    error: str | None = None


class Client:
    """A synchronous client of one cluster. Not thread-safe."""

    def __init__(
        self,
        nodes: Mapping[str, str],
        keys: CurveKeys,
        *,
        timeout_s: float = 5.0,
        attempt_timeout_s: float = 1.0,
        client_id: str | None = None,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a client needs at least one node address")
        self.nodes = dict(nodes)
        self.keys = keys
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.client_id = client_id or uuid.uuid4().hex
        self.seq = 0
        self.leader: str | None = None
        self._ctx = ctx or zmq.Context.instance()
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        self._ids = itertools.count(1)
        self._order = list(self.nodes)

    # --- operations ---------------------------------------------------------

    def put(self, key: str, value: bytes) -> WriteResult:
        self.seq += 1
        return self._write(PutRequest(client=self.client_id, seq=self.seq, key=key, value=value))

    def delete(self, key: str) -> WriteResult:
        self.seq += 1
        return self._write(DeleteRequest(client=self.client_id, seq=self.seq, key=key))

    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult:
        self.seq += 1
        return self._write(CasRequest(
            client=self.client_id, seq=self.seq, key=key, expected=expected, value=value))

    def get(self, key: str, *, stale: bool = False, node: str | None = None) -> bytes | None:
        """A linearizable read (from the leader), or with `stale` the local
        value of `node` (or any node)."""
        resp = self._call(GetRequest(key=key, stale=stale), prefer=node, write=False)
        return resp.value

    def ping(self, node: str) -> ClientResponse:
        """Ask one node who leads; raises Unavailable if it does not answer."""
        return self._call(PingRequest(), prefer=node, write=False, only=node)

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the retry loop -----------------------------------------------------

    def _write(self, req: PutRequest | DeleteRequest | CasRequest) -> WriteResult:
        resp = self._call(req, prefer=None, write=True)
        if resp.ok:
            return WriteResult(True, resp.value, resp.index)
        return WriteResult(False, resp.value, resp.index, resp.error)

    def _call(
        self, req: ClientRequest, *, prefer: str | None, write: bool, only: str | None = None
    ) -> ClientResponse:
        deadline = time.monotonic() + self.timeout_s
        maybe_applied = False
        attempt_ids: set[int] = set()
        target = prefer or self.leader or self._order[0]
        last_error = "no answer"
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            rid = next(self._ids)
            attempt_ids.add(rid)
            sent = self._send(target, msgspec.structs.replace(req, id=rid))
            resp = None
            if sent:
                maybe_applied = maybe_applied or write
                resp = self._wait(attempt_ids, min(deadline, now + self.attempt_timeout_s))
            if resp is not None and (resp.ok or resp.error not in _RETRYABLE):
                if resp.node and (write or (isinstance(req, GetRequest) and not req.stale)):
                    # Only the leader acknowledges writes and linearizable
                    # reads: remember it, so the next request goes straight there.
                    self.leader = resp.node
                if resp.error == "bad_request":
                    raise ClientError("bad_request", resp.message or "bad request")
                return resp
            if only is not None:
                if resp is not None:
                    return resp
                continue
            if resp is not None:
                last_error = resp.error or last_error
                if resp.error == "leader_changed":
                    maybe_applied = True
                if resp.leader and resp.leader in self.nodes and resp.leader != target:
                    target = self.leader = resp.leader
                    continue
                # No usable hint (an election is on): back off a little, still
                # listening for a late answer to an earlier attempt.
                late = self._wait(attempt_ids, min(deadline, time.monotonic() + 0.05))
                if late is not None and (late.ok or late.error not in _RETRYABLE):
                    return late
            else:
                last_error = "no answer" if sent else "not connected"
            target = self._order[(self._order.index(target) + 1) % len(self._order)]
        if maybe_applied:
            raise OutcomeUnknown(
                "unknown", f"no answer within {self.timeout_s:.1f}s after the write was sent "
                f"({last_error}); it may or may not have been applied")
        raise Unavailable(
            "unavailable", f"no node answered within {self.timeout_s:.1f}s ({last_error})")

    def _sock(self, node: str) -> zmq.Socket[bytes]:
        s = self._socks.get(node)
        if s is None:
            s = make_client_socket(self._ctx, self.nodes[node], self.keys)
            self._socks[node] = s
        return s

    def _send(self, node: str, req: ClientRequest) -> bool:
        try:
            self._sock(node).send(_encoder.encode(req), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _wait(self, ids: set[int], until: float) -> ClientResponse | None:
        poller = zmq.Poller()
        for s in self._socks.values():
            poller.register(s, zmq.POLLIN)
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return None
            for s, _ in poller.poll(max(1, int(left * 1000))):
                while True:
                    try:
                        data = s.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        got = decode_responses(data)
                    except msgspec.DecodeError:
                        continue
                    for resp in got:
                        if resp.id in ids:
                            return resp
