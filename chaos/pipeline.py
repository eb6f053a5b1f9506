"""A chaos client that speaks the raw client protocol (docs/PROTOCOL.md): one
session with several writes in flight (`first_outstanding` releases what
was answered), each resent with its own seq until answered, redirected by the
leader hints, and every operation recorded with the outcome it can prove: ok,
fail (certainly no effect) or unknown. Single-threaded; a workload runs one
per thread. It talks to the cluster only through its sockets.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import zmq

from chaos.linearizability import FAIL, OK, UNKNOWN
from chaos.workload import (
    APPEND,
    CHAOS_OP_TIMEOUT_MS,
    CLOSE_SESSION,
    OPEN_SESSION,
    READ_SET,
    History,
    OpRecord,
    Pacer,
    parse_set,
)
from node.api import (
    AppendRequest,
    ClientRequest,
    ClientResponse,
    CloseSessionRequest,
    GetRequest,
    RegisterRequest,
    decode_responses,
)
from node.transport.zmq import CurveKeys, make_client_socket

# An operation unanswered for a while is sent again, as an impatient client
# does and the protocol allows: to the same node, then to the next one (which
# points back at the leader). A copy that crosses the first one's answer
# enters the log again, and the cluster must tell it from a new write: the
# exactly-once promise the set workload checks, also between faults. The
# wait adapts to the answers as TCP's retransmission timeout does (RFC 6298:
# smoothed latency plus four deviations, doubled at each resend until the
# next answer), within these bounds; it starts at the upper one. A
# registration waits the upper bound always: each copy is a session more.
CHAOS_RESEND_MIN_MS = 20
CHAOS_RESEND_MAX_MS = 1_000
_ATTEMPTS_PER_NODE = 2
# A ZeroMQ context's default limit is 1,023 sockets; hundreds of clients with
# a socket per node they talk to need more.
CHAOS_MAX_SOCKETS = 8192
# After a refusal without a usable leader hint (an election is on), wait this
# long before the next node is tried.
_BACKOFF_S = 0.05
# Answers that say the attempt was never proposed (so never applied).
_NOT_PROPOSED = {"not_leader", "busy", "bad_request", "too_large"}
_REDIRECTED = {"not_leader", "busy", "leader_changed"}
_encoder = msgspec.msgpack.Encoder()


class Latency:
    """The resend timeout the clients of a workload share (RFC 6298), learnt
    from the operations answered at their first attempt (Karn). Thread-safe."""

    def __init__(self) -> None:
        self._srtt_s: float | None = None
        self._rttvar_s = 0.0
        self._backoff = 1
        self._lock = threading.Lock()

    def timeout_s(self) -> float:
        with self._lock:
            if self._srtt_s is None:
                return CHAOS_RESEND_MAX_MS / 1000.0
            rto = (self._srtt_s + 4 * self._rttvar_s) * self._backoff
        return min(max(rto, CHAOS_RESEND_MIN_MS / 1000.0), CHAOS_RESEND_MAX_MS / 1000.0)

    def sample(self, latency_s: float) -> None:
        with self._lock:
            self._backoff = 1
            if self._srtt_s is None:
                self._srtt_s, self._rttvar_s = latency_s, latency_s / 2
                return
            self._rttvar_s = 0.75 * self._rttvar_s + 0.25 * abs(self._srtt_s - latency_s)
            self._srtt_s = 0.875 * self._srtt_s + 0.125 * latency_s

    def timed_out(self) -> None:
        """An attempt went unanswered: wait twice as long until the next answer."""
        with self._lock:
            self._backoff = min(self._backoff * 2, 64)


class Endpoint:
    """How raw-protocol clients reach the cluster: its client addresses and
    keys (None: no security, for tests only), and one ZeroMQ context for all
    of them (made on first use, with room for CHAOS_MAX_SOCKETS sockets)."""

    def __init__(self, nodes: Mapping[str, str], keys: CurveKeys | None) -> None:
        if not nodes:
            raise ValueError("an endpoint needs at least one node address")
        self.nodes = dict(nodes)
        self.keys = keys
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._lock = threading.Lock()

    def context(self) -> zmq.Context[zmq.Socket[bytes]]:
        with self._lock:
            if self._ctx is None:
                self._ctx = zmq.Context()
                self._ctx.set(zmq.MAX_SOCKETS, CHAOS_MAX_SOCKETS)
            return self._ctx

    def close(self) -> None:
        """End the context; every client must have closed its sockets."""
        with self._lock:
            if self._ctx is not None:
                self._ctx.destroy(linger=0)
                self._ctx = None


@dataclass
class _Op:
    """One operation in flight: its history fields, the request it repeats,
    and its attempts (request ids), those that may have been proposed too."""

    slot: str
    kind: str
    key: str
    value: str | None
    req: ClientRequest
    inv: int
    inv_s: float
    deadline: float
    target: str
    next_try: float
    seq: int | None = None
    session: int | None = None
    attempts: set[int] = field(default_factory=set)
    unsure: set[int] = field(default_factory=set)
    move_on: bool = False  # the next attempt goes to the node after `target`
    sent: int = 0  # attempts that left
    first_sent: float = 0.0
    here: int = 0  # of those, to `target` since it was chosen
    awaiting: bool = False  # the last attempt left and nothing answered it
    paced: bool = False  # its next copy waits for a turn of the pacer


class PipelinedClient:
    """One session (registered on demand) with up to `depth` operations in
    flight, each in its own slot: a slot is one history process, so every
    slot does one operation at a time, as Jepsen requires. Not thread-safe."""

    def __init__(self, endpoint: Endpoint, history: History, name: str, *, depth: int = 1,
                 latency: Latency | None = None, pacer: Pacer | None = None,
                 op_timeout_s: float = CHAOS_OP_TIMEOUT_MS / 1000.0) -> None:
        if depth < 1:
            raise ValueError("a pipeline holds at least one operation")
        self.endpoint = endpoint
        self.history = history
        self.slots = [name] if depth == 1 else [f"{name}.{j + 1}" for j in range(depth)]
        self.op_timeout_s = op_timeout_s
        self.latency = latency or Latency()
        # A copy sent because no answer came, past the first such, waits for
        # a turn as a new operation does: an overloaded cluster gets at most
        # one request more for each operation than --rate allows.
        self.pacer = pacer
        self.session: int | None = None
        self.opening = False  # a registration is in flight
        self.leader: str | None = None
        self._order = list(endpoint.nodes)
        self._seq = 0
        self._ids = itertools.count(1)
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        self._poller: zmq.Poller | None = None
        self._ops: dict[str, _Op] = {}  # by slot
        self._by_rid: dict[int, _Op] = {}
        self.done: list[OpRecord] = []  # completed since the caller last took them

    # --- what a workload calls ------------------------------------------------------

    def free_slot(self) -> str | None:
        return next((s for s in self.slots if s not in self._ops), None)

    def busy(self) -> int:
        return len(self._ops)

    def open_session(self, slot: str) -> None:
        """Register a session in `slot` (its answer sets `session`)."""
        self.opening = True
        self._start(slot, OPEN_SESSION, "", None, RegisterRequest())

    def append(self, slot: str, key: str, element: str) -> None:
        """Append `element` to the set in `key` (in the open session)."""
        assert self.session is not None, "append needs an open session"
        self._seq += 1
        self._start(slot, APPEND, key, element,
                    AppendRequest(session=self.session, seq=self._seq, key=key,
                                  value=(element + ",").encode()),
                    seq=self._seq, session=self.session)

    def read_set(self, slot: str, key: str) -> None:
        """A linearizable read of the set in `key`."""
        self._start(slot, READ_SET, key, None, GetRequest(key=key))

    def close_session(self, slot: str) -> None:
        """Close the session in `slot` (one short try; an unclosed session expires)."""
        assert self.session is not None, "no session to close"
        sid, self.session = self.session, None
        self._start(slot, CLOSE_SESSION, "", None, CloseSessionRequest(session=sid),
                    session=sid, deadline_s=min(self.op_timeout_s, 1.0))

    def vanish(self) -> None:
        """Disappear as a crashed client does: no close, operations in flight
        abandoned (unknown: they may still be applied), sockets dropped."""
        for op in list(self._ops.values()):
            self._finish(op, UNKNOWN if op.unsure else FAIL, error="client vanished")
        self.session = None
        self.close()

    def pump(self, until: float) -> None:
        """Send what is due, take answers and time out what is late, until
        `until` or until an operation completes (see `done`)."""
        while True:
            now = time.monotonic()
            self._due(now)
            if self.done or now >= until:
                return
            wake = min([until, *(op.next_try for op in self._ops.values()),
                        *(op.deadline for op in self._ops.values())])
            self._receive(max(0.0, wake - time.monotonic()))
            if self.done:
                return

    def take_done(self) -> list[OpRecord]:
        out, self.done = self.done, []
        return out

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()
        self._poller = None

    # --- operations -------------------------------------------------------------------

    def _start(self, slot: str, kind: str, key: str, value: str | None, req: ClientRequest,
               seq: int | None = None, session: int | None = None,
               deadline_s: float | None = None) -> None:
        assert slot not in self._ops, f"slot {slot} is busy"
        inv, inv_s = self.history.mark()
        now = time.monotonic()
        op = _Op(slot=slot, kind=kind, key=key, value=value, req=req, inv=inv, inv_s=inv_s,
                 deadline=now + (deadline_s or self.op_timeout_s),
                 target=self.leader or self._order[0], next_try=now, seq=seq, session=session)
        self._ops[slot] = op
        self._due(now)

    def _due(self, now: float) -> None:
        for op in list(self._ops.values()):
            if now >= op.deadline:
                if not op.unsure:
                    self._finish(op, FAIL, error="unavailable")
                else:
                    self._finish(op, UNKNOWN, error="timeout")
            elif now >= op.next_try:
                if op.awaiting and op.sent > 1 and self.pacer is not None and not op.paced:
                    op.next_try, op.paced = self.pacer.reserve(), True
                    if now < op.next_try:
                        continue
                op.paced = False
                self._attempt(op, now)

    def _attempt(self, op: _Op, now: float) -> None:
        if op.awaiting:
            self.latency.timed_out()  # due because no answer came, not after a refusal
        if op.move_on:
            op.target, op.here = self._next(op.target), 0
        rid = next(self._ids)
        req = msgspec.structs.replace(op.req, id=rid)
        if isinstance(req, AppendRequest):
            req = msgspec.structs.replace(req, first_outstanding=self._first_outstanding(op))
        op.attempts.add(rid)
        self._by_rid[rid] = op
        op.here += 1
        # Unless an answer says otherwise, a node gets a few tries, then the next one.
        op.move_on = op.here >= _ATTEMPTS_PER_NODE
        op.awaiting = self._send(op.target, req)
        if op.awaiting:
            if not op.sent:
                op.first_sent = now
            op.sent += 1
            if not isinstance(req, GetRequest):
                op.unsure.add(rid)
            wait = self.latency.timeout_s()
            if isinstance(req, RegisterRequest):
                wait = CHAOS_RESEND_MAX_MS / 1000.0
            op.next_try = now + wait
        else:
            op.move_on, op.next_try = True, now + _BACKOFF_S

    def _first_outstanding(self, op: _Op) -> int:
        """The lowest seq of this session still waiting for its answer."""
        assert op.seq is not None
        return min([op.seq, *(o.seq for o in self._ops.values()
                               if o.seq is not None and o.session == op.session)])

    def _next(self, node: str) -> str:
        return self._order[(self._order.index(node) + 1) % len(self._order)]

    def _on_answer(self, resp: ClientResponse) -> None:
        op = self._by_rid.pop(resp.id, None)
        if op is None or self._ops.get(op.slot) is not op:
            return  # a late answer to an attempt of an operation already done
        err = resp.error
        if err in _NOT_PROPOSED:
            op.unsure.discard(resp.id)
        if resp.ok:
            if op.sent == 1:  # Karn: a resent operation's latency says nothing
                self.latency.sample(time.monotonic() - op.first_sent)
            if op.kind == OPEN_SESSION:
                self.session, self.opening, self._seq = resp.session, False, 0
            self._finish(op, OK, index=resp.index, raw=resp.value,
                         session=resp.session if op.kind == OPEN_SESSION else op.session)
        elif err in _REDIRECTED:
            # Nothing decided: the same request again (same seq), to the
            # leader named, or after a pause to the next node.
            op.awaiting = False
            hint = resp.leader if resp.leader in self.endpoint.nodes else None
            if hint is not None:
                self.leader = hint
            if hint is not None and hint != op.target:
                op.target, op.here, op.move_on = hint, 0, False
                op.next_try = time.monotonic()
            else:
                op.move_on, op.next_try = True, time.monotonic() + _BACKOFF_S
        elif err == "session_expired":
            # This attempt was not applied; the session is gone, so no retry
            # can learn whether an earlier attempt was.
            op.unsure.discard(resp.id)
            self._session_lost(op.session)
        else:
            # stale_sequence, sequence_reused, too_many_outstanding, too_large,
            # bad_request: this attempt had no effect; an earlier one may have.
            op.unsure.discard(resp.id)
            self._finish(op, UNKNOWN if op.unsure else FAIL, error=err or "failed")

    def _session_lost(self, session: int | None) -> None:
        if session is not None and session == self.session:
            self.session = None
        for op in list(self._ops.values()):
            if op.kind == APPEND and op.session == session:
                self._finish(op, UNKNOWN if op.unsure else FAIL, error="session_expired")

    def _finish(self, op: _Op, outcome: str, *, index: int | None = None,
                raw: bytes | None = None, session: int | None = None,
                error: str | None = None) -> None:
        del self._ops[op.slot]
        for rid in op.attempts:
            self._by_rid.pop(rid, None)
        if op.kind == OPEN_SESSION:
            self.opening = False
        comp, comp_s = self.history.mark()
        rec = OpRecord(client=op.slot, kind=op.kind, key=op.key, value=op.value,
                       invoke=op.inv, complete=comp, invoke_s=round(op.inv_s, 4),
                       complete_s=round(comp_s, 4), outcome=outcome, error=error,
                       index=index if outcome == OK else None, seq=op.seq,
                       session=session if session is not None else op.session,
                       attempts=op.sent)
        if op.kind == READ_SET and outcome == OK:
            rec.elements = parse_set(raw)
        self.history.add(rec)
        self.done.append(rec)
        if outcome == UNKNOWN and op.kind == OPEN_SESSION:
            self.session = None  # a registration that may exist expires unused

    # --- sockets ----------------------------------------------------------------------

    def _send(self, node: str, req: ClientRequest) -> bool:
        s = self._socks.get(node)
        if s is None:
            s = make_client_socket(self.endpoint.context(), self.endpoint.nodes[node],
                                   self.endpoint.keys)
            self._socks[node] = s
            self._poller = None  # made again with this socket in it
        try:
            s.send(_encoder.encode(req), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _receive(self, wait_s: float) -> None:
        if not self._socks:
            time.sleep(wait_s)  # nothing to listen to until the next attempt is due
            return
        if self._poller is None:
            self._poller = zmq.Poller()
            for s in self._socks.values():
                self._poller.register(s, zmq.POLLIN)
        for s, _ in self._poller.poll(max(1, int(wait_s * 1000))):
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
                    self._on_answer(resp)
