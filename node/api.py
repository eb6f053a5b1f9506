"""`ClientApi`, which turns client requests into proposals and reads and
answers them once applied; their messages and codec are node/api_wire.py's
(re-exported here). It does no socket I/O of its own: it is handed a
`reply` function by the runner.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.api_lease import (
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseListRequest,
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
)
from node.api_wire import (
    ClientRequest,
    ClientResponse,
    ReadRequest,
    ReplyFn,
    RequestRefused,
    Route,
    WriteRequest,
    decode_request,
    decode_responses,
    encode_response,
    key_problem,
    request_id,
)
from node.config import MAX_MESSAGE_BYTES
from node.errors import NotLeader, ProposalDropped
from node.lessor import Lessor
from node.state.kv import (
    ERA,
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
from node.state.sessions import Result

__all__ = [
    "AppendRequest", "CasRequest", "ClientRequest", "ClientResponse", "CloseSessionRequest",
    "DeleteRequest", "GetRequest", "PingRequest", "PutRequest", "RegisterRequest",
    "RequestRefused", "WriteRequest", "decode_request", "decode_responses", "encode_response",
]

if TYPE_CHECKING:  # the client side imports this module and needs no core
    from node.consensus import ConsensusCore
    from node.watch import WatchHub


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
        # Writes taken but not yet proposed (between `begin_batch` and
        # `end_batch`), in order: (session, seq) and the command's bytes.
        self._batch: list[tuple[tuple[int, int], bytes]] = []
        self._batching = False
        # Registrations and closings, by the index they were proposed at, with
        # the term: a new leader may put another entry at that index, which
        # this node can apply before it hears that it lost its leadership.
        self._by_index: dict[int, tuple[int, _Waiter]] = {}
        self._read_seq = 0
        self._reads: dict[bytes, tuple[_Waiter, ReadRequest]] = {}
        # Reads this node serves as a follower, with a read index it asked
        # the leader for (thesis §6.4.1): by ctx, the leader it asked.
        self._forwarded: dict[bytes, str | None] = {}
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
                    id=request_id(data), ok=False, error=e.code, message=str(e)))
                return
        else:
            req = data
        # By the request's exact type (the decoder makes no subclasses):
        # one dict lookup, where a chain of isinstance checks against unions
        # built each call cost a leader ~1 us per write.
        handler = _HANDLERS.get(type(req))
        if handler is None:
            self._write(route, req)  # type: ignore[arg-type]
        else:
            handler(self, route, req)

    def _ping(self, route: Route, req: PingRequest) -> None:
        self._send(route, ClientResponse(id=req.id, ok=True, **self._leader_hint()))

    def _lease_read(self, route: Route,
                    req: LeaseKeepAliveRequest | LeaseTtlRequest | LeaseListRequest) -> None:
        if self.core.leader != self.node_id:
            # Never through a follower's read index: only the leader's
            # lessor holds deadlines, so only it renews.
            self._not_leader(_Waiter(route, req.id))
        else:
            self._confirm(_Waiter(route, req.id), req)

    def _register(self, route: Route, req: RegisterRequest) -> None:
        self._propose_indexed(_Waiter(route, req.id), RegisterSession())

    def _close(self, route: Route, req: CloseSessionRequest) -> None:
        self._propose_indexed(_Waiter(route, req.id), CloseSession(req.session))

    def _compact(self, route: Route, req: CompactRequest) -> None:
        self._propose_indexed(_Waiter(route, req.id), CompactHistory(req.revision))

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
        data = self._command(waiter, Write(req.session, req.seq, first, encode_op(op)))
        if data is None:
            return
        self._writes[key] = [waiter]
        self._batch.append((key, data))
        if not self._batching:
            self._propose_batch()

    def begin_batch(self) -> None:
        """Writes handled from now until `end_batch` are proposed together,
        in the order they came, with one append to the log."""
        self._batching = True

    def end_batch(self) -> None:
        self._batching = False
        self._propose_batch()

    def _propose_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        why: str | None = None
        try:
            taken, why = self.core.propose_many([data for _, data in batch])
        except NotLeader:
            taken, why = 0, None
        except ProposalDropped as e:
            taken, why = 0, str(e)
        for key, _ in batch[taken:]:
            for w in self._writes.pop(key, ()):
                if why is None:
                    self._not_leader(w)
                else:
                    self._fail(w, "busy", why)

    def _propose_indexed(self, waiter: _Waiter, body: Body) -> None:
        index = self._propose(waiter, body)
        if index is not None:
            self._by_index[index] = (self.core.term, waiter)

    def _command(self, waiter: _Waiter, body: Body) -> bytes | None:
        """`body` stamped and encoded, or None if it cannot be proposed (and
        `waiter` was answered why)."""
        full = self._no_space(True)
        if full is not None:
            self._fail(waiter, "no_space", full)
            return None
        data = encode_command(Command(self._stamp_ms(), body, ERA))
        if len(data) > self._max_command:
            # It could never be replicated (a UDP cluster sends one entry
            # per datagram at most), so it must not enter the log.
            self._fail(waiter, "too_large", f"the command is {len(data)} bytes; this cluster "
                       f"takes at most {self._max_command}")
            return None
        return data

    def _propose(self, waiter: _Waiter, body: Body) -> int | None:
        """Stamp and propose `body` after the writes waiting in a batch; its
        log index, or None if refused (and answered)."""
        self._propose_batch()
        data = self._command(waiter, body)
        if data is None:
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
        if self.core.leader != self.node_id:
            self._forwarded[ctx] = self.core.leader

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
        asked = self._forwarded.pop(ctx, "")
        if item is None:
            return
        if asked == "":
            self._not_leader(item[0])
            return
        # Never a local answer instead: this node's state may be stale.
        self._fail(item[0], "read_unavailable",
                   f"{self.node_id} got no read index from leader {asked or 'unknown'} "
                   "(leadership changed, or no answer within an election timeout); retry",
                   **self._leader_hint())

    def serve_reads(self) -> None:
        """Answer reads whose read index the state machine has reached (§6.4)."""
        while self._ready_reads and self._ready_reads[0][0] <= self.kv.applied_index:
            _, ctx = self._ready_reads.popleft()
            self._forwarded.pop(ctx, None)
            item = self._reads.pop(ctx, None)
            if item is not None:
                self._answer_read(item[0], item[1])

    def became_leader(self) -> None:
        """This node leads from now (a new term): every lease gets a deadline."""
        self.lessor.became_leader(self._monotonic() * 1000.0, self.core.log.last_index())

    def expire_leases(self) -> list[int]:
        """Propose the expiry of the leases whose deadline passed (leader
        only, one entry in flight at a time); the ids proposed."""
        self._propose_batch()
        ids = self.lessor.due(self._monotonic() * 1000.0)
        if not ids or self._no_space(True) is not None:
            return []
        try:
            index = self.core.propose(encode_command(Command(self._stamp_ms(),
                                                             ExpireLeases(ids), ERA)))
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
        self._forwarded.clear()
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


# What `ClientApi.handle` does with each request type that is not a write.
_HANDLERS: dict[type, Callable[[ClientApi, Route, Any], None]] = {
    PingRequest: ClientApi._ping,
    GetRequest: ClientApi._get,
    RangeRequest: ClientApi._get,
    LeaseKeepAliveRequest: ClientApi._lease_read,
    LeaseTtlRequest: ClientApi._lease_read,
    LeaseListRequest: ClientApi._lease_read,
    RegisterRequest: ClientApi._register,
    CloseSessionRequest: ClientApi._close,
    WatchRequest: ClientApi._watch,
    WatchCancelRequest: ClientApi._watch,
    CompactRequest: ClientApi._compact,
}
