"""The client library used by the CLI, the tests and the chaos workload: it
opens a session, finds the leader, follows redirects, retries a write with
the same session and sequence number, keeps a deadline, and reports an
outcome it cannot know as unknown.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import msgspec
import zmq

from node.api import (
    AppendRequest,
    CasRequest,
    ClientRequest,
    ClientResponse,
    CloseSessionRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    RegisterRequest,
    WriteRequest,
    decode_responses,
)
from node.transport.zmq import CurveKeys, make_client_socket

_encoder = msgspec.msgpack.Encoder()

# Errors after which another attempt (same seq) is safe and may succeed.
_RETRYABLE = {"not_leader", "leader_changed", "busy"}
# Answers that say the attempt was never proposed (so never applied).
_NOT_PROPOSED = {"not_leader", "busy", "bad_request", "too_large", "no_space"}
# `close()` gives closing the session this long, then leaves it to expire.
_CLOSE_TIMEOUT_S = 1.0


def drain_responses(sock: zmq.Socket[bytes]) -> Iterator[ClientResponse]:
    """Every response waiting on `sock` now, one frame holding one or a
    batch of them; a frame that does not decode is skipped."""
    while True:
        try:
            data = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            yield from decode_responses(data)
        except msgspec.DecodeError:
            continue


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
    value: bytes | None  # previous value (put/delete with prev) or current one (failed cas)
    index: int | None  # where the write was applied (a retry's: where it first was)
    error: str | None = None


@dataclass
class _Answer:
    """The answer a call ended with, and whether an attempt other than the
    one answered may have been proposed too (so may have been applied)."""

    resp: ClientResponse
    others_unsure: bool


class Client:
    """A synchronous client of one cluster. Not thread-safe.

    Writes run in a session (docs/PROTOCOL.md, Sessions) that the client
    registers before its first write and closes in `close()`; a retry
    carries the same session and seq, and the cluster applies it at most once.
    """

    def __init__(
        self,
        nodes: Mapping[str, str],
        keys: CurveKeys,
        *,
        timeout_s: float = 5.0,
        attempt_timeout_s: float = 1.0,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        order: Sequence[str] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a client needs at least one node address")
        self.nodes = dict(nodes)
        self.keys = keys
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.session: int | None = None
        self.seq = 0
        self.leader: str | None = None
        self._ctx = ctx or zmq.Context.instance()
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        self._ids = itertools.count(1)
        # The order in which nodes are tried; the first one is tried first.
        self._order = [n for n in (order or []) if n in self.nodes]
        self._order += [n for n in self.nodes if n not in self._order]

    # --- operations ---------------------------------------------------------

    def put(self, key: str, value: bytes, *, prev: bool = False) -> WriteResult:
        """Set `key`; with `prev`, `value` of the result is the value it replaced."""
        return self._write(lambda s, q: PutRequest(
            session=s, seq=q, key=key, value=value, prev=prev))

    def delete(self, key: str, *, prev: bool = False) -> WriteResult:
        return self._write(lambda s, q: DeleteRequest(session=s, seq=q, key=key, prev=prev))

    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult:
        return self._write(lambda s, q: CasRequest(
            session=s, seq=q, key=key, expected=expected, value=value))

    def append(self, key: str, value: bytes) -> WriteResult:
        """Add `value` to the end of `key`'s value."""
        return self._write(lambda s, q: AppendRequest(session=s, seq=q, key=key, value=value))

    def get(self, key: str, *, stale: bool = False, node: str | None = None) -> bytes | None:
        """A linearizable read (from the leader), or with `stale` the local
        value of `node` (or any node)."""
        resp = self._call(GetRequest(key=key, stale=stale), prefer=node, write=False).resp
        return resp.value

    def ping(self, node: str) -> ClientResponse:
        """Ask one node who leads; raises Unavailable if it does not answer."""
        return self._call(PingRequest(), prefer=node, write=False, only=node).resp

    def open_session(self) -> int:
        """Register a session now (a write does it when there is none)."""
        if self.session is None:
            try:
                got = self._call(RegisterRequest(), prefer=None, write=True)
            except OutcomeUnknown:
                # Any session it made expires unused: no write was at stake.
                raise Unavailable(
                    "unavailable", f"could not open a session within {self.timeout_s:.1f}s "
                    "(no quorum answered); nothing was written") from None
            if not got.resp.ok or got.resp.session is None:
                raise ClientError(got.resp.error or "failed",
                                  got.resp.message or "the cluster refused a session")
            self.session, self.seq = got.resp.session, 0
        return self.session

    def close(self) -> None:
        """Close the session (best effort: one short try; an unclosed session
        expires by itself) and the sockets."""
        if self.session is not None:
            sid, self.session = self.session, None
            saved = self.timeout_s
            self.timeout_s = min(saved, _CLOSE_TIMEOUT_S)
            try:
                self._call(CloseSessionRequest(session=sid), prefer=None, write=True)
            except ClientError:
                pass
            finally:
                self.timeout_s = saved
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the retry loop -----------------------------------------------------

    def _write(self, make: Callable[[int, int], WriteRequest]) -> WriteResult:
        for _ in range(2):
            session = self.open_session()
            self.seq += 1
            got = self._call(make(session, self.seq), prefer=None, write=True)
            resp = got.resp
            if resp.error == "session_expired":
                # Expired sessions never apply a write; only an earlier
                # attempt, applied before the session ended, could have.
                self.session = None
                if got.others_unsure:
                    raise OutcomeUnknown(
                        "unknown", "the session expired while the write was retried; "
                        "an earlier attempt may or may not have been applied")
                continue  # certainly not applied: once more in a new session
            if resp.ok:
                return WriteResult(True, resp.value, resp.index)
            return WriteResult(False, resp.value, resp.index, resp.error)
        raise ClientError("session_expired", "the cluster expired two new sessions in a row")

    def _call(
        self, req: ClientRequest, *, prefer: str | None, write: bool, only: str | None = None
    ) -> _Answer:
        deadline = time.monotonic() + self.timeout_s
        # Attempts of a write that may have been proposed: no answer yet, or
        # an answer that does not rule it out.
        unsure: set[int] = set()
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
                if write:
                    unsure.add(rid)
                resp = self._wait(attempt_ids, min(deadline, now + self.attempt_timeout_s))
            if resp is not None and resp.error in _NOT_PROPOSED:
                unsure.discard(resp.id)
            if resp is not None and (resp.ok or resp.error not in _RETRYABLE):
                if resp.node and (write or (isinstance(req, GetRequest) and not req.stale)):
                    # Only the leader acknowledges writes and linearizable
                    # reads: remember it, so the next request goes straight there.
                    self.leader = resp.node
                if resp.error == "bad_request":
                    raise ClientError("bad_request", resp.message or "bad request")
                return _Answer(resp, bool(unsure - {resp.id}))
            if only is not None:
                if resp is not None:
                    return _Answer(resp, False)
                continue
            if resp is not None:
                last_error = resp.error or last_error
                if resp.leader and resp.leader_addr and resp.leader not in self.nodes:
                    # A member added after this client was made: the hint
                    # brings its address (docs/MEMBERSHIP.md).
                    self.nodes[resp.leader] = resp.leader_addr
                    self._order.append(resp.leader)
                if resp.leader and resp.leader in self.nodes and resp.leader != target:
                    target = self.leader = resp.leader
                    continue
                # No usable hint (an election is on): back off a little, still
                # listening for a late answer to an earlier attempt.
                late = self._wait(attempt_ids, min(deadline, time.monotonic() + 0.05))
                if late is not None and late.error in _NOT_PROPOSED:
                    unsure.discard(late.id)
                if late is not None and (late.ok or late.error not in _RETRYABLE):
                    return _Answer(late, bool(unsure - {late.id}))
            else:
                last_error = "no answer" if sent else "not connected"
            target = self._order[(self._order.index(target) + 1) % len(self._order)]
        if unsure:
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
                for resp in drain_responses(s):
                    if resp.id in ids:
                        return resp
