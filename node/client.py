"""The client library used by the CLI, the tests and the chaos workload: it
opens a session, finds the leader, follows redirects, retries a write with
the same session and sequence number, keeps a deadline, and reports an
outcome it cannot know as unknown.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
from node.api_lease import LeaseKeepAliveRequest, LeaseListRequest, LeaseTtlRequest
from node.api_range import (
    CompactRequest,
    DeleteRangeRequest,
    RangeRequest,
    TxnCompare,
    TxnItem,
    TxnRequest,
    WatchRequest,
)
from node.client_lease import KeptLease, Lease, LeaseInfo, LeaseMethods, LeaseNotFound
from node.errors import ClientError
from node.state.sessions import KV, OpResult
from node.transport.zmq import CurveKeys, make_client_socket

__all__ = ["ClientError", "Compacted", "KeptLease", "Lease", "LeaseInfo", "LeaseNotFound",
           "OutcomeUnknown", "Unavailable"]

if TYPE_CHECKING:
    from node.client_watch import Watch
    from node.recipes.election import Election
    from node.recipes.lock import Lock

_encoder = msgspec.msgpack.Encoder()

# Errors after which another attempt (same seq) is safe and may succeed.
_RETRYABLE = {"not_leader", "leader_changed", "busy", "read_unavailable"}
# Answers that say the attempt was never proposed (so never applied).
_NOT_PROPOSED = {"not_leader", "busy", "bad_request", "too_large", "no_space"}
# Requests only a leader answers, besides writes (lease keep-alive, ttl and list).
_LEADER_READS = (LeaseKeepAliveRequest, LeaseTtlRequest, LeaseListRequest)
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


class OutcomeUnknown(ClientError):
    """The deadline passed after the write may have reached a leader: it may
    or may not have been applied. Until the deadline the client already
    retried it with the same session and seq, which the cluster applies at
    most once; a caller that must know reads the key back."""


class Unavailable(ClientError):
    """No node answered in time, and the request certainly had no effect."""


class Compacted(ClientError):
    """The revision asked for was compacted away: `compacted` is the oldest
    one the cluster still keeps (docs/PROTOCOL.md, "Revisions")."""

    def __init__(self, message: str, compacted: int) -> None:
        super().__init__("compacted", message)
        self.compacted = compacted


@dataclass(frozen=True)
class WriteResult:
    ok: bool
    value: bytes | None  # previous value (put/delete with prev) or current one (failed cas)
    index: int | None  # where the write was applied (a retry's: where it first was)
    error: str | None = None


@dataclass(frozen=True)
class RangeResult:
    """The keys of a range in key order (`more`: a limit left some out), how
    many the range holds, and the store's revision when it was read."""

    kvs: list[KV]
    count: int
    more: bool
    revision: int


@dataclass(frozen=True)
class TxnResult:
    """Whether the compares held, what each operation of the branch that
    ran answered, the store's revision after it, and its log index."""

    succeeded: bool
    responses: list[OpResult]
    revision: int
    index: int | None


@dataclass
class _Answer:
    """The answer a call ended with, and whether an attempt other than the
    one answered may have been proposed too (so may have been applied)."""

    resp: ClientResponse
    others_unsure: bool


class Client(LeaseMethods):
    """A synchronous client of one cluster. Not thread-safe (a KeptLease
    keeps its lease alive with a Client of its own).

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
        # The node that last answered a read: where the next read goes while
        # no leader is known (any node answers reads, so a client that only
        # reads never learns one, and must not wait on a dead node each time).
        self._reader: str | None = None
        self._ctx = ctx or zmq.Context.instance()
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        self._ids = itertools.count(1)
        # The order in which nodes are tried; the first one is tried first.
        self._order = [n for n in (order or []) if n in self.nodes]
        self._order += [n for n in self.nodes if n not in self._order]

    # --- operations ---------------------------------------------------------

    def put(self, key: str, value: bytes, *, prev: bool = False, lease: int = 0) -> WriteResult:
        """Set `key`; with `prev`, `value` of the result is the value it
        replaced. The key is attached to `lease` (0: to none, which detaches
        it); an unknown lease fails with error `lease_not_found`."""
        return self._write(lambda s, q: PutRequest(
            session=s, seq=q, key=key, value=value, prev=prev, lease=lease))

    def delete(self, key: str, *, prev: bool = False) -> WriteResult:
        return self._write(lambda s, q: DeleteRequest(session=s, seq=q, key=key, prev=prev))

    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult:
        return self._write(lambda s, q: CasRequest(
            session=s, seq=q, key=key, expected=expected, value=value))

    def append(self, key: str, value: bytes) -> WriteResult:
        """Add `value` to the end of `key`'s value."""
        return self._write(lambda s, q: AppendRequest(session=s, seq=q, key=key, value=value))

    def delete_range(self, key: str, range_end: str | None = None, *,
                     prefix: bool = False) -> tuple[int, int]:
        """Delete the keys from `key` up to `range_end` (or starting with
        `key`, with `prefix`); how many went, and the revision after."""
        resp = self._write_resp(lambda s, q: DeleteRangeRequest(
            session=s, seq=q, key=key, range_end=range_end, prefix=prefix))
        _raise_failed(resp)
        return resp.deleted or 0, resp.revision or 0

    def txn(self, compare: Sequence[TxnCompare], success: Sequence[TxnItem] = (),
            failure: Sequence[TxnItem] = ()) -> TxnResult:
        """If every compare holds, run `success`, else `failure`, atomically
        (docs/PROTOCOL.md, "Transactions")."""
        resp = self._write_resp(lambda s, q: TxnRequest(
            session=s, seq=q, compare=list(compare), success=list(success),
            failure=list(failure)))
        _raise_failed(resp)
        return TxnResult(bool(resp.succeeded), resp.responses or [], resp.revision or 0,
                         resp.index)

    def range(self, key: str, range_end: str | None = None, *, prefix: bool = False,
              revision: int = 0, limit: int = 0, keys_only: bool = False,
              count_only: bool = False, stale: bool = False,
              node: str | None = None) -> RangeResult:
        """Read a key or a range at `revision` (0: now): linearizable, or
        with `stale` from `node` (or any node). Raises Compacted."""
        req = RangeRequest(key=key, range_end=range_end, prefix=prefix, revision=revision,
                           limit=limit, keys_only=keys_only, count_only=count_only, stale=stale)
        resp = self._call(req, prefer=node, write=False).resp
        _raise_failed(resp)
        return RangeResult(resp.kvs or [], resp.count or 0, bool(resp.more), resp.revision or 0)

    def compact(self, revision: int) -> int:
        """Forget the history before `revision` on every replica; the oldest
        revision kept after it."""
        resp = self._call(CompactRequest(revision=revision), prefer=None, write=True).resp
        _raise_failed(resp)
        return resp.compacted or 0

    def watch(self, key: str, range_end: str | None = None, *, prefix: bool = False,
              start_revision: int = 0, once: bool = False, progress: bool = False,
              node: str | None = None) -> Watch:
        """Every change of `key` (or the range, or the prefix) from
        `start_revision` (0: from the next change) on, as an iterator of
        events in revision order (docs/PROTOCOL.md, "Watches"). It follows
        the cluster across node deaths, resuming after the last revision it
        delivered; with `progress`, it also yields `progress` events saying
        how far it is current. `node`: the node to watch from first."""
        from node.client_watch import WATCH_PROGRESS_MS, Watch  # it imports this module
        return Watch(self, WatchRequest(key=key, range_end=range_end, prefix=prefix,
                                        start_revision=start_revision, once=once,
                                        progress_ms=WATCH_PROGRESS_MS),
                     progress=progress, node=node)

    def get(self, key: str, *, stale: bool = False, node: str | None = None) -> bytes | None:
        """A linearizable read, served by `node` if given (a follower asks
        the leader for a read index, docs/PROTOCOL.md "Reads"), or with
        `stale` the local value of `node` (or any node)."""
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

    def _request(self, req: ClientRequest, *, write: bool) -> ClientResponse:
        return self._call(req, prefer=None, write=write).resp

    def _twin(self, timeout_s: float) -> Client:
        """A client of the same cluster, for another thread."""
        return Client(self.nodes, self.keys, timeout_s=timeout_s,
                      attempt_timeout_s=min(self.attempt_timeout_s, timeout_s),
                      ctx=self._ctx, order=[self.leader] if self.leader else None)

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the retry loop -----------------------------------------------------

    def _write(self, make: Callable[[int, int], WriteRequest]) -> WriteResult:
        resp = self._write_resp(make)
        if resp.ok:
            return WriteResult(True, resp.value, resp.index)
        return WriteResult(False, resp.value, resp.index, resp.error)

    def _write_resp(self, make: Callable[[int, int], WriteRequest]) -> ClientResponse:
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
            return resp
        raise ClientError("session_expired", "the cluster expired two new sessions in a row")

    def _call(
        self, req: ClientRequest, *, prefer: str | None, write: bool, only: str | None = None
    ) -> _Answer:
        deadline = time.monotonic() + self.timeout_s
        # Attempts of a write that may have been proposed: no answer yet, or
        # an answer that does not rule it out.
        unsure: set[int] = set()
        attempt_ids: set[int] = set()
        target = prefer or self.leader or (None if write else self._reader) or self._order[0]
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
                if resp.node and (write or isinstance(req, _LEADER_READS)):
                    # Only the leader acknowledges writes and answers lease
                    # keep-alives (followers serve reads too): remember it, so
                    # the next such request goes straight there.
                    self.leader = resp.node
                elif resp.node and resp.ok:
                    self._reader = resp.node
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

    # --- recipes (node/recipes/) ----------------------------------------------

    def lock(self, name: str, ttl_s: float,
             timeout_s: float | None = None) -> contextlib.AbstractContextManager[Lock]:
        """Hold lock `name` for a `with` block, under a kept lease of `ttl_s`
        (node/recipes/lock.py): the block gets the Lock and its fencing token."""
        from node.recipes.lock import hold  # the recipes import this module
        return hold(self, name, ttl_s, timeout_s)

    def election(self, name: str,
                 ttl_s: float = 10.0) -> contextlib.AbstractContextManager[Election]:
        """Be a candidate in election `name` for a `with` block, under a kept
        lease of `ttl_s` (node/recipes/election.py); it resigns on exit."""
        from node.recipes.election import stand  # the recipes import this module
        return stand(self, name, ttl_s)


def _raise_failed(resp: ClientResponse) -> None:
    """Raise what a failed answer of the revisioned requests means."""
    if resp.ok:
        return
    message = resp.message or resp.error or "failed"
    if resp.error == "compacted":
        raise Compacted(message, resp.compacted or 0)
    raise ClientError(resp.error or "failed", message)
