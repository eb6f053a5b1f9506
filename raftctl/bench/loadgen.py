"""A pipelined load generator for the client protocol: many virtual clients in
one process (or a few), each its own session with at most one request in
flight, over one DEALER per node. It measures and returns figures; it never prints.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from node.api import (
    ClientRequest,
    ClientResponse,
    CloseSessionRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    RegisterRequest,
    decode_responses,
)
from node.batches import batch_bounds, join_batch
from node.client import drain_responses
from node.config import (
    CLIENT_BATCH_MAX_BYTES,
)
from node.transport.zmq import CurveKeys, make_client_socket

# Timing and limits of the load generator.
LOADGEN_ATTEMPT_TIMEOUT_MS = 500  # no answer from one node this long: try the next, same seq
LOADGEN_OP_TIMEOUT_MS = 5_000  # an operation still unanswered then is unknown (write) or failed
LOADGEN_BACKOFF_MS = 20  # after an error without a usable leader hint: an election is on
LOADGEN_CONNECT_TIMEOUT_MS = 5_000  # every node should answer a ping by then
LOADGEN_PROGRESS_INTERVAL_MS = 250
LOADGEN_MAX_CLIENTS = 1_000  # below MAX_SESSIONS, so no session is evicted mid-run
# A load generator whose loop thread is busy this fraction of the wall time is
# the bottleneck itself: its figures are a lower bound on the cluster's.
LOADGEN_SATURATED_CPU_FRACTION = 0.9


# Errors after which the same request (same session and seq) may be sent again;
# the state machine applies a (session, seq) at most once (docs/PROTOCOL.md).
_RETRYABLE = frozenset({"not_leader", "leader_changed", "busy", "read_unavailable"})
# Where reads go: where writes go (the leader), or spread over every node
# (each virtual client reads at one node; followers serve reads too,
# docs/PROTOCOL.md "Reads").
READ_NODES = ("leader", "all")
# Log-linear histogram buckets: values below 2**_SUB_BITS microseconds are
# exact, larger ones keep their top _SUB_BITS bits (under 1% error).
_SUB_BITS = 8
# The loop wakes at least this often to notice stop() and the end of the run.
_MAX_WAIT_MS = 50

_encode = msgspec.msgpack.Encoder().encode


class LoadError(Exception):
    """The load could not be generated (no node reachable, a worker failed)."""


class Histogram(msgspec.Struct, kw_only=True):
    """Latencies in microseconds, bucketed so that histograms from several
    processes merge exactly; percentiles never exceed the recorded maximum."""

    counts: dict[int, int] = {}
    count: int = 0
    sum_us: int = 0
    max_us: int = 0

    def record(self, us: int) -> None:
        if us < (1 << _SUB_BITS):
            k = us
        else:
            shift = us.bit_length() - _SUB_BITS
            k = (shift << _SUB_BITS) | (us >> shift)
        self.counts[k] = self.counts.get(k, 0) + 1
        self.count += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for k, n in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
        self.count += other.count
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, q: float) -> int:
        """The smallest bucket bound at or above a fraction `q` of the values."""
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= rank:
                return min(_bucket_top(k), self.max_us)
        return self.max_us

    def mean_us(self) -> float:
        return self.sum_us / self.count if self.count else 0.0


def _bucket_top(k: int) -> int:
    shift = k >> _SUB_BITS
    if shift == 0:
        return k
    return (((k & ((1 << _SUB_BITS) - 1)) + 1) << shift) - 1


class LoadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to run: `nodes` maps node id to client address."""

    nodes: dict[str, str]
    keys: CurveKeys
    clients: int
    duration_s: float  # math.inf: until stop()
    value_size: int = 100
    key_space: int = 100_000
    read_ratio: float = 0.0
    read_nodes: str = "leader"  # one of READ_NODES
    key_prefix: str = "bench/"
    attempt_timeout_s: float = LOADGEN_ATTEMPT_TIMEOUT_MS / 1000
    op_timeout_s: float = LOADGEN_OP_TIMEOUT_MS / 1000
    backoff_s: float = LOADGEN_BACKOFF_MS / 1000
    seed: int | None = None


class LoadResult(msgspec.Struct, kw_only=True):
    """Outcomes of one run. `started`/`ended` are time.monotonic() values,
    comparable between processes of one machine."""

    started: float = 0.0
    ended: float = 0.0
    writes: int = 0  # acknowledged
    reads: int = 0  # answered
    reads_by_node: dict[str, int] = {}  # answered, by the node that answered
    unknown: int = 0  # writes sent but never answered by their deadline
    errors: dict[str, int] = {}  # failed operations by code ("timeout": reads, unsent writes)
    retries: int = 0  # attempts after the first, each with the same seq
    latency: Histogram = msgspec.field(default_factory=Histogram)
    cpu_s: float = 0.0  # the process, every thread (ZeroMQ's I/O thread too)
    loop_cpu_s: float = 0.0  # the thread that ran the loop
    procs: int = 1
    saturated_procs: int = 0

    @property
    def ops(self) -> int:
        return self.writes + self.reads

    @property
    def wall_s(self) -> float:
        return max(self.ended - self.started, 1e-9)

    def saturated(self) -> bool:
        return self.loop_cpu_s >= LOADGEN_SATURATED_CPU_FRACTION * self.wall_s

    def merge(self, other: LoadResult) -> None:
        """Fold in another process's result (same run)."""
        self.started = min(self.started, other.started)
        self.ended = max(self.ended, other.ended)
        self.writes += other.writes
        self.reads += other.reads
        for node, n in other.reads_by_node.items():
            self.reads_by_node[node] = self.reads_by_node.get(node, 0) + n
        self.unknown += other.unknown
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        self.retries += other.retries
        self.latency.merge(other.latency)
        self.cpu_s += other.cpu_s
        self.loop_cpu_s += other.loop_cpu_s
        self.saturated_procs += other.saturated_procs
        self.procs += other.procs


class _VClient:
    """One virtual client: a session, its seq, and the operation in flight."""

    __slots__ = ("deadline", "is_write", "key", "n", "rids", "sent", "seq", "session",
                 "started", "target", "token")

    def __init__(self, n: int, session: int, target: str) -> None:
        self.n = n
        self.session = session
        self.seq = 0
        self.key = ""
        self.is_write = True
        self.started = 0.0
        self.deadline = 0.0
        self.target = target
        self.rids: list[int] = []
        self.sent = False  # a write that may have reached a leader
        self.token = 0  # bumped on every new attempt: older timers are void


_ATTEMPT_TIMEOUT = 0
_RESEND = 1

AckHook = Callable[[float, str | None], None]


class LoadGen:
    """The closed-loop generator: a virtual client sends its next operation as
    soon as the previous one is answered. One thread; sockets are made in
    the thread that calls connect() or run()."""

    def __init__(self, spec: LoadSpec, *, ctx: zmq.Context[Any] | None = None,
                 on_ack: AckHook | None = None) -> None:
        if spec.clients < 1:
            raise ValueError("the load generator needs at least one client")
        if not spec.nodes:
            raise ValueError("the load generator needs at least one node address")
        self.spec = spec
        self._ctx = ctx or zmq.Context.instance()
        self._on_ack = on_ack
        self._order = sorted(spec.nodes)
        self._next_node = {n: self._order[(i + 1) % len(self._order)]
                           for i, n in enumerate(self._order)}
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        self._poller = zmq.Poller()
        self._rng = random.Random(spec.seed)
        self._value = self._rng.randbytes(spec.value_size)
        self._ids = itertools.count(1)
        self.leader: str | None = None
        self._stop = False

    # --- set-up ----------------------------------------------------------------

    def open(self) -> None:
        """Make the sockets; they connect (and queue requests) in the background."""
        if self._socks:
            return
        for n in self._order:
            s = make_client_socket(self._ctx, self.spec.nodes[n], self.spec.keys)
            self._socks[n] = s
            self._poller.register(s, zmq.POLLIN)

    def connect(self, timeout_s: float = LOADGEN_CONNECT_TIMEOUT_MS / 1000) -> set[str]:
        """Open the sockets and ping every node (so the CURVE handshakes are
        done before the clock starts); returns the nodes that answered and
        remembers the leader they name."""
        self.open()
        pings: dict[int, str] = {}
        for n, s in self._socks.items():
            rid = next(self._ids)
            pings[rid] = n
            s.send(_encode(PingRequest(id=rid)), zmq.NOBLOCK)
        answered: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while len(answered) < len(pings):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for sock, _ in self._poller.poll(left_ms):
                try:
                    got = decode_responses(sock.recv())
                except msgspec.DecodeError:
                    continue
                for resp in got:
                    node = pings.get(resp.id)
                    if node is not None:
                        answered.add(node)
                        if resp.leader in self.spec.nodes:
                            self.leader = resp.leader
        return answered

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()

    def stop(self) -> None:
        """Send no new operations; run() returns once those in flight end.
        Safe to call from another thread or from a hook."""
        self._stop = True

    # --- the loop --------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> LoadResult:
        """Run for `spec.duration_s` (or until stop()), then let the operations
        in flight finish or time out. `progress(ops)` is called every
        LOADGEN_PROGRESS_INTERVAL_MS."""
        self.open()
        spec = self.spec
        res = LoadResult()
        self._res = res
        self._owner: dict[int, _VClient] = {}
        self._outq: dict[str, list[tuple[_VClient, bytes]]] = {}
        self._timers: list[tuple[float, int, int, int, int]] = []
        self._timer_ids = itertools.count()
        start_node = self.leader or self._order[0]
        sessions = self.open_sessions(spec.clients)
        clients = [_VClient(i, sid, start_node) for i, sid in enumerate(sessions)]
        progress_every = LOADGEN_PROGRESS_INTERVAL_MS / 1000
        t_cpu, thread_cpu = os.times(), time.thread_time()
        now = time.monotonic()
        res.started = now
        end = now + spec.duration_s
        next_progress = now + progress_every
        self._running = True
        self._busy = len(clients)
        for c in clients:
            self._new_op(c, now)
        timers = self._timers
        poller = self._poller
        while self._busy:
            now = time.monotonic()
            if self._running and (self._stop or now >= end):
                self._running = False
            while timers and timers[0][0] <= now:
                _, _, n, token, kind = heapq.heappop(timers)
                c = clients[n]
                if c.token == token:
                    self._on_timer(c, kind, now)
            if progress is not None and now >= next_progress:
                progress(res.ops)
                next_progress = now + progress_every
            if not self._busy:
                break
            self._flush(now)
            wake = min(timers[0][0] if timers else math.inf, next_progress)
            if self._running:
                wake = min(wake, end)
            wait_ms = min(_MAX_WAIT_MS, max(0, math.ceil((wake - now) * 1000)))
            for sock, _ in poller.poll(wait_ms):
                self._drain(sock)
        res.ended = time.monotonic()
        t_cpu2 = os.times()
        res.cpu_s = (t_cpu2.user - t_cpu.user) + (t_cpu2.system - t_cpu.system)
        res.loop_cpu_s = time.thread_time() - thread_cpu
        res.saturated_procs = int(res.saturated())
        if progress is not None:
            progress(res.ops)
        self.close_sessions(sessions)
        return res

    # --- sessions --------------------------------------------------------------

    def open_sessions(self, n: int,
                      timeout_s: float = LOADGEN_CONNECT_TIMEOUT_MS / 1000) -> list[int]:
        """Register `n` sessions at the leader (before the clock starts: a
        registration is a write of its own); raises LoadError if it cannot."""
        self.open()
        got: list[int] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            if time.monotonic() >= deadline:
                raise LoadError(f"registered {len(got)} of {n} sessions within {timeout_s:.0f}s")
            want = n - len(got)
            answers = self._exchange([RegisterRequest() for _ in range(want)],
                                     min(deadline, time.monotonic() + self.spec.attempt_timeout_s))
            before = len(got)
            for resp in answers:
                if resp.ok and resp.session is not None:
                    got.append(resp.session)
                elif resp.leader in self.spec.nodes:
                    self.leader = resp.leader
            if len(got) == before:
                time.sleep(self.spec.backoff_s)  # an election is on: back off (§5.2)
        return got[:n]

    def close_sessions(self, sessions: list[int]) -> None:
        """Close sessions, best effort: one try each (unclosed ones expire)."""
        if sessions:
            self._exchange([CloseSessionRequest(session=s) for s in sessions],
                           time.monotonic() + self.spec.attempt_timeout_s)

    def _exchange(self, reqs: list[ClientRequest], until: float) -> list[ClientResponse]:
        """Send `reqs` to the leader (or the first node) in batch frames and
        collect what is answered by `until`."""
        target = self.leader or self._order[0]
        ids: set[int] = set()
        frames: list[bytes] = []
        for r in reqs:
            rid = next(self._ids)
            ids.add(rid)
            frames.append(_encode(msgspec.structs.replace(r, id=rid)))
        for a, b in batch_bounds([len(f) for f in frames], CLIENT_BATCH_MAX_BYTES):
            try:
                frame = frames[a] if b - a == 1 else join_batch(frames[a:b])
                self._socks[target].send(frame, zmq.NOBLOCK)
            except zmq.Again:
                return []
        out: list[ClientResponse] = []
        while ids:
            left_ms = math.ceil((until - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for sock, _ in self._poller.poll(left_ms):
                for resp in drain_responses(sock):
                    if resp.id in ids:
                        ids.discard(resp.id)
                        out.append(resp)
        if ids and not out:
            # Nobody answered: the next exchange tries the next node.
            self.leader = self._next_node[target]
        return out

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        owner = self._owner
        now = time.monotonic()
        for resp in drain_responses(sock):
            c = owner.get(resp.id)
            if c is not None:
                self._on_response(c, resp, now)

    def _new_op(self, c: _VClient, now: float) -> None:
        spec = self.spec
        rng = self._rng
        c.key = f"{spec.key_prefix}{rng.randrange(spec.key_space)}"
        c.is_write = not (spec.read_ratio > 0.0 and rng.random() < spec.read_ratio)
        if c.is_write:
            c.seq += 1
        c.started = now
        c.deadline = now + spec.op_timeout_s
        c.sent = False
        c.rids = []
        if not c.is_write and spec.read_nodes == "all":
            c.target = self._order[c.n % len(self._order)]
        else:
            c.target = self.leader or c.target
        self._attempt(c, now)

    def _attempt(self, c: _VClient, now: float) -> None:
        rid = next(self._ids)
        c.rids.append(rid)
        self._owner[rid] = c
        c.token += 1
        if c.is_write:
            data = _encode(PutRequest(id=rid, session=c.session, seq=c.seq, key=c.key,
                                      value=self._value))
        else:
            data = _encode(GetRequest(id=rid, key=c.key))
        # Sent with the others for this node at the end of the loop
        # iteration, in one frame (node/api.py, batch frames).
        self._outq.setdefault(c.target, []).append((c, data))

    def _flush(self, now: float) -> None:
        """Send each node's queued requests, as few frames as the frame size
        allows (a node drops the connection of a frame over its limit)."""
        outq, self._outq = self._outq, {}
        for target, queued in outq.items():
            bounds = batch_bounds([len(d) for _, d in queued], CLIENT_BATCH_MAX_BYTES)
            for start, end in bounds:
                self._send_batch(target, queued[start:end], now)

    def _send_batch(self, target: str, items: list[tuple[_VClient, bytes]], now: float) -> None:
        frame = items[0][1] if len(items) == 1 else join_batch([d for _, d in items])
        try:
            self._socks[target].send(frame, zmq.NOBLOCK)
        except zmq.Again:
            # The node's queue is full or it was never reachable.
            for c, _ in items:
                c.target = self._next_node[c.target]
                self._timer(min(now + self.spec.backoff_s, c.deadline), c, _RESEND)
            return
        for c, _ in items:
            c.sent = c.sent or c.is_write
            self._timer(min(now + self.spec.attempt_timeout_s, c.deadline), c, _ATTEMPT_TIMEOUT)

    def _timer(self, when: float, c: _VClient, kind: int) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_ids), c.n, c.token, kind))

    def _on_timer(self, c: _VClient, kind: int, now: float) -> None:
        if now >= c.deadline:
            self._finish(c, now, None, "unknown" if c.sent else "timeout")
            return
        if kind == _ATTEMPT_TIMEOUT:
            c.target = self._next_node[c.target]
        self._res.retries += 1
        self._attempt(c, now)

    def _on_response(self, c: _VClient, resp: ClientResponse, now: float) -> None:
        if resp.ok:
            if c.is_write and resp.node in self.spec.nodes:
                # Only the leader acknowledges writes; any node answers reads.
                self.leader = resp.node
            self._finish(c, now, resp.node, None)
            return
        if resp.error not in _RETRYABLE:
            self._finish(c, now, resp.node, resp.error or "failed")
            return
        if resp.id != c.rids[-1]:
            return  # an earlier attempt, already superseded by a later one
        hint = resp.leader
        self._res.retries += 1
        if hint is not None and hint in self.spec.nodes and hint != c.target:
            c.target = hint
            self.leader = hint
            self._attempt(c, now)
            return
        # No usable hint: an election is on (§5.2); try the next node shortly.
        c.target = self._next_node[c.target]
        c.token += 1
        self._timer(min(now + self.spec.backoff_s, c.deadline), c, _RESEND)

    def _finish(self, c: _VClient, now: float, node: str | None, failure: str | None) -> None:
        owner = self._owner
        for rid in c.rids:
            owner.pop(rid, None)
        c.token += 1
        res = self._res
        if failure is None:
            res.latency.record(int((now - c.started) * 1_000_000))
            if c.is_write:
                res.writes += 1
                if self._on_ack is not None:
                    self._on_ack(now, node)
            else:
                res.reads += 1
                if node is not None:
                    res.reads_by_node[node] = res.reads_by_node.get(node, 0) + 1
        elif failure == "unknown" and c.is_write:
            res.unknown += 1
        else:
            res.errors[failure] = res.errors.get(failure, 0) + 1
        if self._running and not self._stop:
            self._new_op(c, now)
        else:
            self._busy -= 1
