"""A pipelining asyncio client: any number of concurrent requests from many
tasks over one DEALER per node, batched into batch frames, in one session
whose writes are numbered and released as docs/PROTOCOL.md says.

How to pipeline correctly (docs/PROTOCOL.md, "Sessions" and "Batch frames"):

- One session for the whole client. Each write takes the next `seq` when it
  is first sent and keeps it for every retry (after a timeout, a
  `not_leader` hint or `leader_changed`), so the cluster applies it at most
  once however many copies arrive.
- `first_outstanding` is the lowest `seq` whose answer the client still
  needs, not the write's own `seq`: a resent older write must still find its
  answer kept. A write whose answer arrived, or that was given up as
  unknown, stops holding it back. At most `PIPELINE_MAX_OUTSTANDING_WRITES`
  seqs are open past it (the cluster refuses more), so a new write waits
  for room.
- Requests that become ready in one turn of the event loop go to their node
  in one frame (an array), cut at CLIENT_BATCH_MAX_BYTES; answers come back
  in frames of one or many, matched by `id`.
- `session_expired`: the write was not applied. If an earlier attempt of it
  may have been, its outcome is unknown (`OutcomeUnknown`); otherwise the
  client registers a new session once (however many writes saw the expiry)
  and sends the write again as a new `seq` there.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import zmq
import zmq.asyncio

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
from node.api_lease import (
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseRevokeRequest,
    LeaseTtlRequest,
)
from node.api_range import (
    CompactRequest,
    DeleteRangeRequest,
    RangeRequest,
    TxnCompare,
    TxnItem,
    TxnRequest,
)
from node.batches import batch_bounds, join_batch
from node.client import (
    ClientError,
    OutcomeUnknown,
    RangeResult,
    TxnResult,
    Unavailable,
    WriteResult,
)

# A failed answer means the same to both clients; client.py keeps the name.
from node.client import _raise_failed as raise_failed
from node.client_lease import Lease, LeaseInfo
from node.client_lease import _raise_failed as raise_lease_failed
from node.config import CLIENT_BATCH_MAX_BYTES
from node.transport.zmq import CurveKeys, make_client_socket

# The cluster keeps at most 1,024 answers past `first_outstanding`
# (`too_many_outstanding` beyond); a little below it leaves room for the
# session's own bookkeeping.
PIPELINE_MAX_OUTSTANDING_WRITES = 1_000
# After an error without a usable leader hint (an election is on), wait
# this long before the next node is tried.
PIPELINE_BACKOFF_MS = 20
# `close()` gives closing the session this long, then leaves it to expire.
PIPELINE_CLOSE_TIMEOUT_MS = 1_000

# Errors after which another attempt (same seq) is safe and may succeed.
_RETRYABLE = frozenset({"not_leader", "leader_changed", "busy", "not_sent",
                        "read_unavailable"})
# Answers that say the attempt was never proposed (so never applied).
_NOT_PROPOSED = frozenset({"not_leader", "busy", "bad_request", "too_large", "no_space",
                           "not_sent", "read_unavailable"})

_encode = msgspec.msgpack.Encoder().encode


class _Op:
    """One call in flight: the ids of its attempts and the answers to them
    not yet looked at."""

    __slots__ = ("answers", "rids", "wake")

    def __init__(self) -> None:
        self.rids: set[int] = set()
        self.answers: list[ClientResponse] = []
        self.wake: asyncio.Future[None] | None = None

    def deliver(self, resp: ClientResponse) -> None:
        self.answers.append(resp)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


@dataclass
class _Answer:
    """The answer a call ended with, and whether an attempt other than the
    one answered may have been proposed too (so may have been applied)."""

    resp: ClientResponse
    others_unsure: bool


@dataclass
class PipelineStats:
    """What went over the wire: request frames sent, requests in them,
    and attempts after the first of a call."""

    frames: int = 0
    requests: int = 0
    retries: int = 0
    by_node: dict[str, int] = field(default_factory=dict)


class AsyncClient:
    """An asyncio client of one cluster that pipelines: call its methods
    from as many tasks as you like, concurrently. Make it, and use it, in
    one event loop; `async with AsyncClient(...) as c:` closes it. `keys`
    None speaks to nodes without security (tests only)."""

    def __init__(
        self,
        nodes: Mapping[str, str],
        keys: CurveKeys | None,
        *,
        timeout_s: float = 5.0,
        attempt_timeout_s: float = 1.0,
        ctx: zmq.asyncio.Context | None = None,
        order: Sequence[str] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a client needs at least one node address")
        self.nodes = dict(nodes)
        self.keys = keys
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.leader: str | None = None
        # The node that last answered a read: where reads go while no leader
        # is known (any node answers them, so reads alone teach no leader).
        self._reader: str | None = None
        self.stats = PipelineStats()
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._order = [n for n in (order or []) if n in self.nodes]
        self._order += [n for n in self.nodes if n not in self._order]
        self._socks: dict[str, zmq.asyncio.Socket] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, _Op] = {}
        self._outq: dict[str, list[tuple[_Op, int, bytes]]] = {}
        self._flush_due = False
        # The session and its seqs: `_low` is the lowest seq whose answer is
        # still needed, `_done` the seqs above it that are not.
        self.session: int | None = None
        self._next_seq = 1
        self._low = 1
        self._done: set[int] = set()
        self._room: asyncio.Event | None = None
        self._register_lock: asyncio.Lock | None = None
        self._closed = False

    # --- operations ---------------------------------------------------------

    async def put(self, key: str, value: bytes, *, prev: bool = False,
                  lease: int = 0) -> WriteResult:
        """Set `key`; with `prev`, `value` of the result is the value it
        replaced. The key is attached to `lease` (0: to none, which detaches
        it); an unknown lease fails with error `lease_not_found`."""
        return _write_result(await self._write(lambda s, q, f: PutRequest(
            session=s, seq=q, first_outstanding=f, key=key, value=value, prev=prev,
            lease=lease)))

    async def delete(self, key: str, *, prev: bool = False) -> WriteResult:
        return _write_result(await self._write(lambda s, q, f: DeleteRequest(
            session=s, seq=q, first_outstanding=f, key=key, prev=prev)))

    async def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult:
        return _write_result(await self._write(lambda s, q, f: CasRequest(
            session=s, seq=q, first_outstanding=f, key=key, expected=expected, value=value)))

    async def append(self, key: str, value: bytes) -> WriteResult:
        """Add `value` to the end of `key`'s value."""
        return _write_result(await self._write(lambda s, q, f: AppendRequest(
            session=s, seq=q, first_outstanding=f, key=key, value=value)))

    async def txn(self, compare: Sequence[TxnCompare], success: Sequence[TxnItem] = (),
                  failure: Sequence[TxnItem] = ()) -> TxnResult:
        """If every compare holds, run `success`, else `failure`, atomically."""
        resp = await self._write(lambda s, q, f: TxnRequest(
            session=s, seq=q, first_outstanding=f, compare=list(compare),
            success=list(success), failure=list(failure)))
        raise_failed(resp)
        return TxnResult(bool(resp.succeeded), resp.responses or [], resp.revision or 0,
                         resp.index)

    async def delete_range(self, key: str, range_end: str | None = None, *,
                           prefix: bool = False) -> tuple[int, int]:
        """Delete the keys from `key` up to `range_end` (or starting with
        `key`, with `prefix`); how many went, and the revision after."""
        resp = await self._write(lambda s, q, f: DeleteRangeRequest(
            session=s, seq=q, first_outstanding=f, key=key, range_end=range_end, prefix=prefix))
        raise_failed(resp)
        return resp.deleted or 0, resp.revision or 0

    async def compact(self, revision: int) -> int:
        """Forget the history before `revision` on every replica; the oldest
        revision kept after it."""
        resp = (await self._call(CompactRequest(revision=revision), prefer=None,
                                 write=True)).resp
        raise_failed(resp)
        return resp.compacted or 0

    # --- leases (docs/PROTOCOL.md, "Leases"; as node/client_lease.py's) -------

    async def lease_grant(self, ttl_s: float) -> Lease:
        """Grant a lease of `ttl_s` seconds (exactly once, as a write)."""
        resp = await self._write(lambda s, q, f: LeaseGrantRequest(
            session=s, seq=q, first_outstanding=f, ttl_ms=round(ttl_s * 1000)))
        raise_lease_failed(resp)
        return Lease(resp.lease or 0, resp.ttl_ms or 0)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease for its whole TTL; that TTL in ms. LeaseNotFound
        if it is gone (expired or revoked)."""
        resp = (await self._call(LeaseKeepAliveRequest(lease=lease_id), prefer=None,
                                 write=False)).resp
        raise_lease_failed(resp)
        return resp.ttl_ms or 0

    async def lease_revoke(self, lease_id: int) -> None:
        """End the lease; its keys go at one revision. LeaseNotFound if gone."""
        raise_lease_failed(await self._write(lambda s, q, f: LeaseRevokeRequest(
            session=s, seq=q, first_outstanding=f, lease=lease_id)))

    async def lease_ttl(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        """What is left of the lease (by the leader's clock) and, with
        `keys`, the keys attached to it."""
        resp = (await self._call(LeaseTtlRequest(lease=lease_id, keys=keys), prefer=None,
                                 write=False)).resp
        raise_lease_failed(resp)
        return LeaseInfo(lease_id, resp.ttl_ms or 0, resp.granted_ttl_ms or 0, resp.keys or [])

    async def lease_list(self) -> list[int]:
        """Every lease's id, in order."""
        resp = (await self._call(LeaseListRequest(), prefer=None, write=False)).resp
        raise_lease_failed(resp)
        return resp.leases or []

    async def get(self, key: str, *, stale: bool = False,
                  node: str | None = None) -> bytes | None:
        """A linearizable read (from the leader), or with `stale` the local
        value of `node` (or any node)."""
        got = await self._call(GetRequest(key=key, stale=stale), prefer=node, write=False)
        return got.resp.value

    async def range(self, key: str, range_end: str | None = None, *, prefix: bool = False,
                    revision: int = 0, limit: int = 0, keys_only: bool = False,
                    count_only: bool = False, stale: bool = False,
                    node: str | None = None) -> RangeResult:
        """Read a key or a range at `revision` (0: now): linearizable, or
        with `stale` from `node` (or any node). Raises Compacted."""
        req = RangeRequest(key=key, range_end=range_end, prefix=prefix, revision=revision,
                           limit=limit, keys_only=keys_only, count_only=count_only, stale=stale)
        resp = (await self._call(req, prefer=node, write=False)).resp
        raise_failed(resp)
        return RangeResult(resp.kvs or [], resp.count or 0, bool(resp.more), resp.revision or 0)

    async def ping(self, node: str) -> ClientResponse:
        """Ask one node who leads; raises Unavailable if it does not answer."""
        return (await self._call(PingRequest(), prefer=node, write=False, only=node)).resp

    async def open_session(self) -> int:
        """Register the session now (the first write does it when there is none)."""
        return await self._session(None)

    async def close(self) -> None:
        """Close the session (one short try; an unclosed session expires by
        itself), stop reading and close the sockets."""
        if self._closed:
            return
        if self.session is not None:
            sid, self.session = self.session, None
            saved, self.timeout_s = self.timeout_s, min(self.timeout_s,
                                                        PIPELINE_CLOSE_TIMEOUT_MS / 1000)
            try:
                await self._call(CloseSessionRequest(session=sid), prefer=None, write=True)
            except ClientError:
                pass
            finally:
                self.timeout_s = saved
        self._closed = True
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers.clear()
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the session ----------------------------------------------------------

    async def _session(self, expired: int | None) -> int:
        """The session to write in; a new one when there is none or when
        `expired` (the one a write just found expired) is still current.
        One registration however many writes ask at once."""
        if self.session is not None and self.session != expired:
            return self.session  # the common case, without queueing on the lock
        if self._register_lock is None:
            self._register_lock = asyncio.Lock()
        async with self._register_lock:
            if self.session is not None and self.session != expired:
                return self.session
            try:
                got = await self._call(RegisterRequest(), prefer=None, write=True)
            except OutcomeUnknown:
                # Any session it made expires unused: no write was at stake.
                raise Unavailable(
                    "unavailable", f"could not open a session within {self.timeout_s:.1f}s "
                    "(no quorum answered); nothing was written") from None
            if not got.resp.ok or got.resp.session is None:
                raise ClientError(got.resp.error or "failed",
                                  got.resp.message or "the cluster refused a session")
            self.session = got.resp.session
            self._next_seq, self._low, self._done = 1, 1, set()
            self._wake_room()
            return self.session

    async def _take_seq(self) -> tuple[int, int]:
        """A session and the next seq in it, once the pipeline has room."""
        while True:
            session = await self._session(None)
            if self._next_seq - self._low < PIPELINE_MAX_OUTSTANDING_WRITES:
                seq, self._next_seq = self._next_seq, self._next_seq + 1
                return session, seq
            if self._room is None or self._room.is_set():
                self._room = asyncio.Event()
            await self._room.wait()

    def _release(self, session: int, seq: int) -> None:
        """The answer of `seq` is no longer needed: raise `_low` past it."""
        if session != self.session:
            return  # a write of a session since replaced
        self._done.add(seq)
        moved = False
        while self._low in self._done:
            self._done.discard(self._low)
            self._low += 1
            moved = True
        if moved:
            self._wake_room()

    def _first_outstanding(self, session: int, seq: int) -> int:
        """What a write of `seq` tells the cluster it still waits for. A write
        of a session since replaced (it will find it expired) tells only its
        own seq: the new session's count says nothing of the old one's."""
        return self._low if session == self.session else seq

    def _wake_room(self) -> None:
        if self._room is not None:
            self._room.set()

    async def _write(self, make: Callable[[int, int, int], WriteRequest]) -> ClientResponse:
        for _ in range(2):
            session, seq = await self._take_seq()
            try:
                got = await self._call(make(session, seq, self._first_outstanding(session, seq)),
                                       prefer=None, write=True, release=(session, seq))
            finally:
                self._release(session, seq)
            resp = got.resp
            if resp.error == "session_expired":
                # Expired sessions never apply a write; only an earlier
                # attempt, applied before the session ended, could have.
                if got.others_unsure:
                    raise OutcomeUnknown(
                        "unknown", "the session expired while the write was retried; "
                        "an earlier attempt may or may not have been applied")
                await self._session(session)
                continue  # certainly not applied: once more in a new session
            return resp
        raise ClientError("session_expired", "the cluster expired two new sessions in a row")

    # --- the retry loop -----------------------------------------------------

    async def _call(self, req: ClientRequest, *, prefer: str | None, write: bool,
                    only: str | None = None,
                    release: tuple[int, int] | None = None) -> _Answer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        op = _Op()
        unsure: set[int] = set()
        target = prefer or self.leader or (None if write else self._reader) or self._order[0]
        last_error = "no answer"
        first = True
        try:
            while loop.time() < deadline:
                if not first:
                    self.stats.retries += 1
                first = False
                if release is not None:
                    # A retry tells the cluster what was released meanwhile.
                    req = msgspec.structs.replace(
                        cast(WriteRequest, req),
                        first_outstanding=self._first_outstanding(*release))
                rid = self._enqueue(target, op, req)
                if write:
                    unsure.add(rid)
                resp = await self._next(op, min(deadline, loop.time() + self.attempt_timeout_s))
                if resp is not None and resp.error in _NOT_PROPOSED:
                    unsure.discard(resp.id)
                if resp is not None and (resp.ok or resp.error not in _RETRYABLE):
                    self._note_leader(req, resp, write)
                    if resp.error == "bad_request":
                        raise ClientError("bad_request", resp.message or "bad request")
                    return _Answer(resp, bool(unsure - {resp.id}))
                if only is not None:
                    if resp is not None and resp.error != "not_sent":
                        return _Answer(resp, False)
                    continue
                if resp is None:
                    last_error = "no answer"
                else:
                    last_error = resp.error or last_error
                    hint = self._hint(resp)
                    if hint is not None and hint != target:
                        target = self.leader = hint
                        continue
                    # No usable hint (an election is on): back off a little,
                    # still listening for a late answer to an earlier attempt.
                    late = await self._next(op, min(deadline,
                                                    loop.time() + PIPELINE_BACKOFF_MS / 1000))
                    if late is not None and late.error in _NOT_PROPOSED:
                        unsure.discard(late.id)
                    if late is not None and (late.ok or late.error not in _RETRYABLE):
                        self._note_leader(req, late, write)
                        return _Answer(late, bool(unsure - {late.id}))
                target = self._order[(self._order.index(target) + 1) % len(self._order)]
        finally:
            for rid in op.rids:
                self._pending.pop(rid, None)
        if unsure:
            raise OutcomeUnknown(
                "unknown", f"no answer within {self.timeout_s:.1f}s after the write was sent "
                f"({last_error}); it may or may not have been applied")
        raise Unavailable(
            "unavailable", f"no node answered within {self.timeout_s:.1f}s ({last_error})")

    def _hint(self, resp: ClientResponse) -> str | None:
        """The leader an error names, learning the address of a member
        added after this client was made (docs/MEMBERSHIP.md)."""
        if resp.leader and resp.leader_addr and resp.leader not in self.nodes:
            self.nodes[resp.leader] = resp.leader_addr
            self._order.append(resp.leader)
        return resp.leader if resp.leader in self.nodes else None

    def _note_leader(self, req: ClientRequest, resp: ClientResponse, write: bool) -> None:
        # Only the leader acknowledges writes (any node may answer a read,
        # a follower by a read index): remember it, so the next request goes
        # straight there.
        if write and resp.node in self.nodes:
            self.leader = resp.node
        elif resp.ok and resp.node in self.nodes:
            self._reader = resp.node

    async def _next(self, op: _Op, until: float) -> ClientResponse | None:
        """The next answer to one of `op`'s attempts, or None at `until`."""
        loop = asyncio.get_running_loop()
        while not op.answers:
            left = until - loop.time()
            if left <= 0:
                return None
            op.wake = loop.create_future()
            timer = loop.call_later(left, _resolve, op.wake)
            try:
                await op.wake
            finally:
                timer.cancel()
                op.wake = None
        return op.answers.pop(0)

    # --- frames -----------------------------------------------------------------

    def _enqueue(self, node: str, op: _Op, req: ClientRequest) -> int:
        """Queue one attempt for `node`; the queue goes out, in as few frames
        as the size limit allows, once this turn of the loop is over."""
        if self._closed:
            raise ClientError("closed", "the client was closed; make a new one")
        rid = next(self._ids)
        op.rids.add(rid)
        self._pending[rid] = op
        self._outq.setdefault(node, []).append(
            (op, rid, _encode(msgspec.structs.replace(req, id=rid))))
        if not self._flush_due:
            self._flush_due = True
            # call_soon runs after every callback already ready: the tasks
            # woken in this turn queue their requests first.
            asyncio.get_running_loop().call_soon(self._flush)
        return rid

    def _flush(self) -> None:
        self._flush_due = False
        outq, self._outq = self._outq, {}
        for node, queued in outq.items():
            sock = self._sock(node)
            for a, b in batch_bounds([len(d) for _, _, d in queued], CLIENT_BATCH_MAX_BYTES):
                frame = queued[a][2] if b - a == 1 else join_batch([d for _, _, d in queued[a:b]])
                sent = cast("asyncio.Future[Any]", sock.send(frame, zmq.NOBLOCK))
                # pyzmq tries a NOBLOCK send at once: the future is done.
                if sent.done() and sent.exception() is not None:
                    for op, rid, _ in queued[a:b]:
                        op.deliver(ClientResponse(id=rid, ok=False, error="not_sent"))
                    continue
                self.stats.frames += 1
                self.stats.requests += b - a
                self.stats.by_node[node] = self.stats.by_node.get(node, 0) + b - a

    def _sock(self, node: str) -> zmq.asyncio.Socket:
        s = self._socks.get(node)
        if s is None:
            s = cast(zmq.asyncio.Socket,
                     make_client_socket(cast(Any, self._ctx), self.nodes[node], self.keys))
            self._socks[node] = s
            self._readers.append(asyncio.get_running_loop().create_task(self._read(s)))
        return s

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        """Hand every answer on `sock` to the call waiting for it."""
        pending = self._pending
        while True:
            data = await sock.recv()
            try:
                answers = decode_responses(data)
            except msgspec.DecodeError:
                continue  # not an answer of ours; its caller times out
            for resp in answers:
                op = pending.get(resp.id)
                if op is not None:
                    op.deliver(resp)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _write_result(resp: ClientResponse) -> WriteResult:
    if resp.ok:
        return WriteResult(True, resp.value, resp.index)
    return WriteResult(False, resp.value, resp.index, resp.error)
