"""The client protocol: request and response messages (msgpack maps, see
docs/PROTOCOL.md) and `ClientApi`, which turns requests into proposals and
reads and answers them once applied. It does no socket I/O of its own: it is
handed a `reply` function by the runner.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from node.api_lease import (
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseReadRequest,
    LeaseRevokeRequest,
    LeaseTtlRequest,
    answer_lease_read,
)
from node.api_range import (
    CompactRequest,
    DeleteRangeRequest,
    RangeRequest,
    TxnRequest,
    WatchCancelRequest,
    WatchEvent,
    WatchRequest,
    kvs_of,
    read_range,
    txn_of,
)
from node.api_requests import (
    AppendRequest,
    CasRequest,
    CloseSessionRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    RegisterRequest,
    ReqId,
)
from node.config import (
    MAX_KEY_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_FIELDS,
)
from node.errors import NotLeader, ProposalDropped
from node.frames import map_len
from node.lessor import Lessor
from node.state.kv import (
    Append,
    Applied,
    Body,
    Cas,
    CloseSession,
    Command,
    CompactHistory,
    Delete,
    DeleteRange,
    ExpireLeases,
    KVStore,
    Op,
    Put,
    RegisterSession,
    Write,
    encode_command,
    encode_op,
)
from node.state.mvcc import RevisionError
from node.state.ops import LeaseGrant, LeaseRevoke
from node.state.sessions import KV, OpResult, Result

__all__ = [
    "AppendRequest", "CasRequest", "ClientRequest", "ClientResponse", "CloseSessionRequest",
    "DeleteRequest", "GetRequest", "PingRequest", "PutRequest", "RegisterRequest",
    "WriteRequest", "decode_request", "decode_responses", "encode_response",
]

if TYPE_CHECKING:  # the client side imports this module and needs no core
    from node.consensus import ConsensusCore
    from node.watch import WatchHub

ClientRequest = (PutRequest | DeleteRequest | CasRequest | AppendRequest | GetRequest
                 | PingRequest | RegisterRequest | CloseSessionRequest | RangeRequest
                 | DeleteRangeRequest | TxnRequest | CompactRequest | WatchRequest
                 | WatchCancelRequest | LeaseGrantRequest | LeaseRevokeRequest
                 | LeaseKeepAliveRequest | LeaseTtlRequest | LeaseListRequest)
WriteRequest = (PutRequest | DeleteRequest | CasRequest | AppendRequest | DeleteRangeRequest
                | TxnRequest | LeaseGrantRequest | LeaseRevokeRequest)
ReadRequest = GetRequest | RangeRequest | LeaseReadRequest


class ClientResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`ok` false always comes with an `error` code (docs/PROTOCOL.md)."""

    id: int = 0
    ok: bool
    value: bytes | None = None
    error: str | None = None
    message: str | None = None
    leader: str | None = None
    leader_addr: str | None = None
    index: int | None = None
    node: str | None = None
    session: int | None = None
    # The revisioned store (docs/PROTOCOL.md, "Revisions"): the store's
    # revision when the request was served or applied, the oldest revision
    # kept (with `compacted`), a range read's keys, how many in the range
    # and whether a limit left some out, a range delete's count, and a
    # transaction's outcome and what each of its operations answered.
    revision: int | None = None
    compacted: int | None = None
    kvs: list[KV] | None = None
    count: int | None = None
    more: bool | None = None
    deleted: int | None = None
    succeeded: bool | None = None
    responses: list[OpResult] | None = None
    # Watches (docs/PROTOCOL.md, "Watches"): the watch opened, its events,
    # and its end.
    created: bool | None = None
    events: list[WatchEvent] | None = None
    canceled: bool | None = None
    # Leases (docs/PROTOCOL.md, "Leases"): a lease's id, its TTL left (or
    # granted, in a grant's answer), its granted TTL, its keys; every id.
    lease: int | None = None
    ttl_ms: int | None = None
    granted_ttl_ms: int | None = None
    keys: list[str] | None = None
    leases: list[int] | None = None


_req_decoder: msgspec.msgpack.Decoder[ClientRequest] = msgspec.msgpack.Decoder(ClientRequest)
_resp_encoder = msgspec.msgpack.Encoder()

Route = list[bytes]  # the ROUTER envelope to send the reply back along
ReplyFn = Callable[[Route, bytes], None]


class RequestRefused(ValueError):
    """A frame or request the node does not handle; `code` is the answer's
    error (`bad_request` or `too_large`), the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_request(data: bytes) -> ClientRequest:
    """Parse one request; raises RequestRefused with a message for the
    client. Size and field count are checked before anything is decoded."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise RequestRefused("too_large", f"a frame of {len(data)} bytes exceeds the limit "
                             f"of {MAX_MESSAGE_BYTES}")
    fields = map_len(data)
    if fields is None:
        raise RequestRefused("bad_request", "a request must be a MessagePack map")
    if fields > MAX_REQUEST_FIELDS:
        raise RequestRefused("bad_request", f"a request of {fields} fields: a request has at "
                             f"most {MAX_REQUEST_FIELDS}")
    try:
        return _req_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise RequestRefused("bad_request", str(e)) from None
    except Exception as e:  # any other parse failure is still the client's bad input
        raise RequestRefused("bad_request", f"{type(e).__name__}: {e}") from None


def encode_response(resp: ClientResponse) -> bytes:
    return _resp_encoder.encode(resp)


_resp_decoder: msgspec.msgpack.Decoder[ClientResponse | list[ClientResponse]] = \
    msgspec.msgpack.Decoder(ClientResponse | list[ClientResponse])


def decode_responses(frame: bytes) -> list[ClientResponse]:
    """The responses a frame holds: one, or a batch frame's array. Raises
    msgspec.DecodeError (ValidationError is one) for anything else."""
    got = _resp_decoder.decode(frame)
    return got if isinstance(got, list) else [got]


class _IdOnly(msgspec.Struct, frozen=True):
    id: ReqId = 0


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def _request_id(data: bytes) -> int:
    """Best effort: the `id` of a request we could not parse, to echo it.
    Only a map within the limits is looked at, and nothing is built of it
    but the id (the rest is skipped by msgspec)."""
    fields = map_len(data)
    if fields is None or fields > MAX_REQUEST_FIELDS or len(data) > MAX_MESSAGE_BYTES:
        return 0
    try:
        return _id_decoder.decode(data).id
    except Exception:  # garbage, or a nesting too deep to skip: no id to echo
        return 0


def key_problem(key: str) -> str | None:
    """Why `key` is not a key (the schema counts characters, a key is
    limited in bytes of UTF-8), or None."""
    # 4 bytes is the longest UTF-8 character: shorter keys need no encoding.
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES:
        return f"a key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8"
    return None


def _written(req_id: int, result: Result, index: int, node: str) -> ClientResponse:
    """The answer to a write that succeeded (a put's as it always was)."""
    return ClientResponse(id=req_id, ok=True, value=result.value, index=index, node=node,
                          revision=result.revision, deleted=result.deleted,
                          succeeded=result.succeeded, responses=result.responses,
                          lease=result.lease, ttl_ms=result.ttl_ms)


@dataclass
class _Waiter:
    route: Route
    req_id: int


@dataclass
class ApiCounters:
    requests: int = 0
    writes_acked: int = 0
    reads_served: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


class ClientApi:
    """Client requests in, proposals and reads to the core, replies out."""

    def __init__(
        self,
        node_id: str,
        core: ConsensusCore[Any],
        kv: KVStore,
        reply: ReplyFn,
        client_addrs: dict[str, str],
        on_bad_request: Callable[[str], None],
        max_command_bytes: int = MAX_MESSAGE_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
        no_space: Callable[[bool], str | None] = lambda _needs_log: None,
        watches: WatchHub | None = None,
        lease_extension_ms: int = 0,
    ) -> None:
        self.node_id = node_id
        self.core = core
        self.kv = kv
        self._reply = reply
        self._client_addrs = client_addrs
        self._on_bad = on_bad_request
        self._max_command = max_command_bytes
        self._monotonic = monotonic
        # Why a request cannot be taken for want of disk space (None: it
        # can). Asked with True for what enters the log, with False for a
        # linearizable read, which needs the log running but not the disk.
        self._no_space = no_space
        self.watches = watches
        self.counters = ApiCounters()
        # Lease deadlines while this node leads (node/lessor.py); the
        # extension is the longest election timeout.
        self.lessor = Lessor(kv.leases, extension_ms=lease_extension_ms)
        # Writes by (session, seq): a retry still in flight waits with the first.
        self._writes: dict[tuple[int, int], list[_Waiter]] = {}
        # Registrations and closings, by the index they were proposed at, with
        # the term: a new leader may put another entry at that index, which
        # this node can apply before it hears that it lost its leadership.
        self._by_index: dict[int, tuple[int, _Waiter]] = {}
        self._read_seq = 0
        self._reads: dict[bytes, tuple[_Waiter, ReadRequest]] = {}
        self._ready_reads: deque[tuple[int, bytes]] = deque()
        # The cluster clock this node stamps its proposals with while it
        # leads (LogCabin's): the log's clock when the term's first proposal
        # was made, plus the time this node's own clock has run since.
        self._clock_term = -1
        self._clock_base_ms = 0
        self._clock_since = 0.0

    # --- requests -----------------------------------------------------------

    def handle(self, route: Route, data: bytes | ClientRequest) -> None:
        """Handle one request: its bytes, or already decoded (a batch's)."""
        self.counters.requests += 1
        if isinstance(data, bytes):
            try:
                req = decode_request(data)
            except RequestRefused as e:
                self._on_bad(str(e))
                self._send(route, ClientResponse(
                    id=_request_id(data), ok=False, error=e.code, message=str(e)))
                return
        else:
            req = data
        if isinstance(req, PingRequest):
            self._send(route, ClientResponse(id=req.id, ok=True, **self._leader_hint()))
        elif isinstance(req, GetRequest | RangeRequest):
            self._get(route, req)
        elif isinstance(req, LeaseKeepAliveRequest | LeaseTtlRequest | LeaseListRequest):
            if self.core.leader != self.node_id:
                # Never through a follower's read index: only the leader's
                # lessor holds deadlines, so only it renews.
                self._not_leader(_Waiter(route, req.id))
            else:
                self._confirm(_Waiter(route, req.id), req)
        elif isinstance(req, RegisterRequest):
            self._propose_indexed(_Waiter(route, req.id), RegisterSession())
        elif isinstance(req, CloseSessionRequest):
            self._propose_indexed(_Waiter(route, req.id), CloseSession(req.session))
        elif isinstance(req, WatchRequest | WatchCancelRequest):
            self._watch(route, req)
        elif isinstance(req, CompactRequest):
            self._propose_indexed(_Waiter(route, req.id), CompactHistory(req.revision))
        else:
            self._write(route, req)

    def _watch(self, route: Route, req: WatchRequest | WatchCancelRequest) -> None:
        waiter = _Waiter(route, req.id)
        if self.watches is None:
            self._fail(waiter, "bad_request", "this node serves no watches")
        elif isinstance(req, WatchCancelRequest):
            gone = self.watches.cancel(route, req)
            self._send(route, ClientResponse(id=req.id, ok=True, canceled=gone,
                                             node=self.node_id))
        else:
            got = self.watches.start(route, req)
            if isinstance(got, int):
                self._send(route, ClientResponse(id=req.id, ok=True, created=True, revision=got,
                                                 compacted=self.kv.compacted,
                                                 node=self.node_id))
            else:
                if got[0] == "bad_request":
                    self._on_bad(got[1])
                self._fail(waiter, got[0], got[1], compacted=self.kv.compacted,
                           revision=self.kv.revision)

    def refuse(self, route: Route, message: str, code: str = "bad_request") -> None:
        """Answer a frame that holds no request to handle (a bad batch)."""
        self.counters.requests += 1
        self._on_bad(message)
        self._send(route, ClientResponse(id=0, ok=False, error=code, message=message))

    def _write(self, route: Route, req: WriteRequest) -> None:
        waiter = _Waiter(route, req.id)
        first = req.seq if req.first_outstanding is None else req.first_outstanding
        try:
            if first > req.seq:
                raise ValueError(f"first_outstanding {first} is above seq {req.seq}: "
                                 "a write is outstanding until it is answered")
            # The ops check what the schema cannot, e.g. a key's length in bytes.
            op: Op
            if isinstance(req, PutRequest):
                op = Put(key=req.key, value=req.value, prev=req.prev, lease=req.lease)
            elif isinstance(req, DeleteRequest):
                op = Delete(key=req.key, prev=req.prev)
            elif isinstance(req, AppendRequest):
                op = Append(key=req.key, value=req.value)
            elif isinstance(req, DeleteRangeRequest):
                op = DeleteRange(req.key, req.range_end, req.prefix)
            elif isinstance(req, TxnRequest):
                op = txn_of(req)
            elif isinstance(req, LeaseGrantRequest):
                op = LeaseGrant(req.ttl_ms)
            elif isinstance(req, LeaseRevokeRequest):
                op = LeaseRevoke(req.lease)
            else:
                op = Cas(key=req.key, expected=req.expected, value=req.value)
        except ValueError as e:
            self._on_bad(str(e))
            self._fail(waiter, "bad_request", str(e))
            return
        key = (req.session, req.seq)
        if key in self._writes:
            # A retry of a write still in flight: answer both when it applies.
            self._writes[key].append(waiter)
            return
        if self._propose(waiter, Write(req.session, req.seq, first, encode_op(op))) is not None:
            self._writes[key] = [waiter]

    def _propose_indexed(self, waiter: _Waiter, body: Body) -> None:
        index = self._propose(waiter, body)
        if index is not None:
            self._by_index[index] = (self.core.term, waiter)

    def _propose(self, waiter: _Waiter, body: Body) -> int | None:
        """Stamp and propose `body`; its log index, or None if refused (and answered)."""
        full = self._no_space(True)
        if full is not None:
            self._fail(waiter, "no_space", full)
            return None
        data = encode_command(Command(self._stamp_ms(), body))
        if len(data) > self._max_command:
            # It could never be replicated (a UDP cluster sends one entry
            # per datagram at most), so it must not enter the log.
            self._fail(waiter, "too_large", f"the command is {len(data)} bytes; this cluster "
                       f"takes at most {self._max_command}")
            return None
        try:
            return self.core.propose(data)
        except NotLeader:
            self._not_leader(waiter)
        except ProposalDropped as e:
            self._fail(waiter, "busy", str(e))
        return None

    def _stamp_ms(self) -> int:
        """The time to stamp on a proposal (node/state/sessions.py expires by it).
        It never runs backwards within a term; a new leader starts from the
        log's clock as applied here, which lags the newest stamp at most by
        what is not yet applied: sessions may expire later, never early."""
        now = self._monotonic()
        if self.core.term != self._clock_term:
            self._clock_term = self.core.term
            self._clock_base_ms = self.kv.clock_ms
            self._clock_since = now
        return self._clock_base_ms + int((now - self._clock_since) * 1000)

    def _get(self, route: Route, req: GetRequest | RangeRequest) -> None:
        waiter = _Waiter(route, req.id)
        problem = key_problem(req.key)
        if problem is None and isinstance(req, RangeRequest):
            try:
                req.span()
            except ValueError as e:
                problem = str(e)
        if problem is not None:
            self._on_bad(problem)
            self._fail(waiter, "bad_request", problem)
            return
        if req.stale:
            self._answer_read(waiter, req)
            return
        self._confirm(waiter, req)

    def _confirm(self, waiter: _Waiter, req: ReadRequest) -> None:
        """Answer `req` once a quorum confirmed this node leads and it
        applied the log that far (§6.4)."""
        full = self._no_space(False)
        if full is not None:
            self._fail(waiter, "no_space", full)
            return
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        try:
            self.core.read_index(ctx)
        except NotLeader:
            self._not_leader(waiter)
            return
        self._reads[ctx] = (waiter, req)

    # --- what the runner reports back ---------------------------------------

    def applied(self, done: Applied | None, index: int, term: int) -> None:
        """The entry (`index`, `term`) was applied; answer whoever waits for it here."""
        self.lessor.applied(index)
        if done is None:
            return
        if done.seq == 0:
            waiting = self._by_index.get(index)
            if waiting is not None and waiting[0] == term:
                del self._by_index[index]
                w = waiting[1]
                if done.result.revision is not None:  # a compaction's
                    self._send(w.route, ClientResponse(
                        id=w.req_id, ok=True, revision=done.result.revision,
                        compacted=self.kv.compacted, index=index, node=self.node_id))
                    return
                self._send(w.route, ClientResponse(
                    id=w.req_id, ok=True, session=done.session, index=index, node=self.node_id))
            return
        waiters = self._writes.pop((done.session, done.seq), None)
        if not waiters:
            return
        result = done.result
        for w in waiters:
            self.counters.writes_acked += result.ok
            if result.ok:
                self._send(w.route, _written(w.req_id, result, done.index, self.node_id))
            else:
                self._fail(w, result.error or "failed", None, value=result.value,
                           index=done.index)

    def read_ready(self, ctx: bytes, index: int) -> None:
        self._ready_reads.append((index, ctx))
        self.serve_reads()

    def read_dropped(self, ctx: bytes) -> None:
        item = self._reads.pop(ctx, None)
        if item is not None:
            self._not_leader(item[0])

    def serve_reads(self) -> None:
        """Answer reads whose read index the state machine has reached (§6.4)."""
        while self._ready_reads and self._ready_reads[0][0] <= self.kv.applied_index:
            _, ctx = self._ready_reads.popleft()
            item = self._reads.pop(ctx, None)
            if item is not None:
                self._answer_read(item[0], item[1])

    def became_leader(self) -> None:
        """This node leads from now (a new term): every lease gets a deadline."""
        self.lessor.became_leader(self._monotonic() * 1000.0, self.core.log.last_index())

    def expire_leases(self) -> list[int]:
        """Propose the expiry of the leases whose deadline passed (leader
        only, one entry in flight at a time); the ids proposed."""
        ids = self.lessor.due(self._monotonic() * 1000.0)
        if not ids or self._no_space(True) is not None:
            return []
        try:
            index = self.core.propose(encode_command(Command(self._stamp_ms(),
                                                             ExpireLeases(ids))))
        except (NotLeader, ProposalDropped):
            return []  # the next turn tries again, or the next leader does
        self.lessor.proposed(index, ids)
        return ids

    def lost_leadership(self) -> None:
        """This node stopped leading: nothing it proposed is known to commit.
        The outcome is unknown to the client, who retries with the same seq."""
        self.lessor.lost_leadership()
        writes, self._writes = self._writes, {}
        indexed, self._by_index = self._by_index, {}
        for w in [*(w for ws in writes.values() for w in ws), *(w for _, w in indexed.values())]:
            self._fail(w, "leader_changed", "leadership changed; retry with the same seq",
                       **self._leader_hint())
        reads, self._reads = self._reads, {}
        self._ready_reads.clear()
        for w, _ in reads.values():
            self._not_leader(w)

    def pending(self) -> int:
        return (sum(len(v) for v in self._writes.values()) + len(self._by_index)
                + len(self._reads))

    # --- replies ------------------------------------------------------------

    def _answer_read(self, w: _Waiter, req: ReadRequest) -> None:
        if isinstance(req, GetRequest):
            self.counters.reads_served += 1
            self._send(w.route, ClientResponse(
                id=w.req_id, ok=True, value=self.kv.get(req.key), index=self.kv.applied_index,
                node=self.node_id))
            return
        if isinstance(req, LeaseKeepAliveRequest | LeaseTtlRequest | LeaseListRequest):
            kw = answer_lease_read(self.kv.leases, self.lessor, req, self._monotonic() * 1000.0)
            if kw["ok"]:
                self._send(w.route, ClientResponse(id=w.req_id, node=self.node_id, **kw))
            else:
                hint = self._leader_hint() if kw["error"] == "not_leader" else {}
                self._fail(w, kw["error"], kw["message"], **hint)
            return
        try:
            got = read_range(self.kv.mvcc, req)
        except RevisionError as e:
            self._fail(w, e.code, str(e), compacted=e.compacted, revision=self.kv.revision)
            return
        self.counters.reads_served += 1
        self._send(w.route, ClientResponse(
            id=w.req_id, ok=True, kvs=kvs_of(got, req.keys_only), count=got.count,
            more=got.more, revision=self.kv.revision, index=self.kv.applied_index,
            node=self.node_id))

    def _leader_hint(self) -> dict[str, Any]:
        leader = self.core.leader
        return {"leader": leader, "leader_addr": self._client_addrs.get(leader or "")}

    def _not_leader(self, w: _Waiter) -> None:
        self._fail(w, "not_leader", None, **self._leader_hint())

    def _fail(self, w: _Waiter, error: str, message: str | None, **kw: Any) -> None:
        self.counters.by_error[error] = self.counters.by_error.get(error, 0) + 1
        self._send(w.route, ClientResponse(
            id=w.req_id, ok=False, error=error, message=message, node=self.node_id, **kw))

    def _send(self, route: Route, resp: ClientResponse) -> None:
        self._reply(route, encode_response(resp))
