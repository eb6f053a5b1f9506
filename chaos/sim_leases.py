"""Leases in the simulator: clients that grant leases, put keys under them,
keep some alive (keep-alives confirmed by the leader's read index, as the
node does) and let others lapse; each leader runs the node's own lessor
(node/lessor.py) on the simulated clock. Checked at every applied entry:
replicas agree on leases and their keys, and no lease expires early.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chaos.invariants import Violation
from node.errors import NotLeader, ProposalDropped
from node.lessor import Lessor
from node.raft.base import Role
from node.raft.messages import Entry, EntryKind
from node.state.kv import (
    SESSION_EXPIRED,
    Applied,
    CommandError,
    ExpireLeases,
    Put,
    RegisterSession,
    Write,
    decode_command,
    encode_op,
)
from node.state.leases import LeaseTable
from node.state.ops import LeaseGrant, LeaseRevoke, Op

if TYPE_CHECKING:
    from chaos.sim import Simulation
    from chaos.sim_base import _Node

# Checks of this module (chaos/invariants.py holds the others).
LEASE_AGREEMENT = "lease_agreement"
LEASE_EARLY_EXPIRY = "lease_early_expiry"

# The counters that show which lease paths a sweep went through.
LEASE_COVERAGE = ("leases_granted", "keepalives_acked", "keepalives_refused", "leases_expired",
                  "leases_revoked", "leases_lost", "expiries_proposed")

# The TTLs clients ask for (the state machine's minimum is a second), and
# how many keys each puts under a lease.
SIM_LEASE_TTLS_MS = (1_000, 1_500)
SIM_KEYS_PER_LEASE = 2
# With lease clients the simulator sends snapshot chunks of this many bytes
# at least (chaos/sim.py).
SIM_LEASE_MIN_CHUNK_BYTES = 64
# A lease client waits this long for an answer before it tries again.
SIM_LEASE_ATTEMPT_TICKS = 12
# Test-only: a new leader gives every lease no time at all (not TTL plus
# the longest election timeout), for the early-expiry check to catch.
BREAK_NEW_LEADER_EXTENSION = "new_leader_extension"


@dataclass(slots=True)
class _LeaseClient:
    """A client that holds one lease at a time: `step` says what it does
    next (register, grant, put, keep, revoke), `keep` whether it renews."""

    id: str
    target: str
    rng: random.Random
    session: int | None = None
    seq: int = 0
    step: str = "register"
    lease: int = 0
    ttl_ms: int = 0
    keep: bool = True
    puts: int = 0
    # Where the current request waits: node, and the (index, term) of a
    # registration or (session, seq) of a write, or the keep-alive's ctx.
    waiting_on: str = ""
    waiting_key: tuple[int, int] | None = None
    ctx: bytes = b""
    sent_ms: int = 0
    first_sent_ms: int = 0
    retry_at: int = 0
    next_at: int = 0
    attempt: int = 0


class SimLeases:
    """The lease clients, each node's lessor while it leads, and the checks."""

    def __init__(self, sim: Simulation, seed: int, ids: list[str], clients: int, *,
                 tick_ms: int, extension_ms: int, breaks: frozenset[str] = frozenset()) -> None:
        self.sim = sim
        self._tick_ms = tick_ms
        # A generator of its own: the paths the simulator's takes stay the same.
        self._rng = random.Random(seed ^ 0x1EA5E)
        self._ids = ids
        self._extension_ms = extension_ms
        self._breaks = breaks
        self._clients = [_LeaseClient(f"l{i}", self._rng.choice(ids), self._rng)
                         for i in range(clients)]
        self._lessors: dict[str, tuple[Lessor, int]] = {}
        # The lease state every replica must reach at each index, by the first
        # replica that applied it.
        self._digests: dict[int, str] = {}
        # Per lease: the time (ms) before which it must not expire.
        self._floor_ms: dict[int, int] = {}
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    @property
    def now_ms(self) -> int:
        return self.sim.now * self._tick_ms

    # --- hooks the simulator calls ----------------------------------------------

    def node_changed(self, n: _Node) -> None:
        """After a node's Ready: start or drop its lessor as its role says."""
        core = n.core
        held = self._lessors.get(n.id)
        if core is None or core.role is not Role.LEADER:
            if held is not None:
                del self._lessors[n.id]
            return
        if held is not None and held[1] == core.term and held[0].table is n.kv.leases:
            return
        lessor = Lessor(n.kv.leases, extension_ms=self._extension_ms)
        if BREAK_NEW_LEADER_EXTENSION in self._breaks:
            lessor.extension_ms = -max(SIM_LEASE_TTLS_MS)
        lessor.became_leader(self.now_ms, core.log.last_index())
        self._lessors[n.id] = (lessor, core.term)

    def node_down(self, node: str) -> None:
        self._lessors.pop(node, None)

    def before_apply(self, n: _Node, e: Entry) -> list[Violation]:
        """An expiry about to be applied: none of its leases that still
        exist may expire before its floor."""
        if e.kind is not EntryKind.NORMAL or not e.data or e.index in self._digests:
            return []
        try:
            body = decode_command(e.data).body
        except CommandError:
            return []
        if not isinstance(body, ExpireLeases):
            return []
        out = []
        for lid in body.ids:
            floor = self._floor_ms.get(lid, 0)
            if lid in n.kv.leases and self.now_ms < floor:
                out.append(Violation(
                    check=LEASE_EARLY_EXPIRY, tick=self.sim.now,
                    detail=f"{n.id} applied the expiry of lease {lid} at {self.now_ms} ms; "
                           f"its holder was promised it until {floor} ms"))
            self._count("leases_expired")
        return out

    def applied(self, n: _Node, index: int, term: int, done: Applied | None) -> list[Violation]:
        """After `n` applied `index`: compare its leases with the other
        replicas' at that index, and answer the lease client waiting on it."""
        held = self._lessors.get(n.id)
        if held is not None:
            held[0].applied(index)
        found = self.check_agreement(n.id, index, n.kv.leases)
        if done is not None:
            self._answer(n, index, term, done)
        return found

    def check_agreement(self, node: str, index: int, table: LeaseTable) -> list[Violation]:
        digest = hashlib.sha256(repr(table.image()).encode()).hexdigest()
        first = self._digests.setdefault(index, digest)
        if first == digest:
            return []
        return [Violation(check=LEASE_AGREEMENT, tick=self.sim.now,
                          detail=f"{node} holds other leases or keys at index {index} than "
                                 "the first replica that applied it")]

    def read_ready(self, n: _Node, ctx: bytes) -> None:
        """A read index `n` confirmed is applied: a keep-alive's, maybe."""
        for c in self._clients:
            if c.step == "keep" and c.ctx == ctx and c.waiting_on == n.id:
                held = self._lessors.get(n.id)
                c.waiting_on, c.ctx = "", b""
                if held is None:
                    # Deposed since it was asked (the node answers not_leader).
                    c.retry_at = self.sim.now + 1
                    return
                ttl = held[0].renew(c.lease, self.now_ms)
                if ttl is None:
                    self._count("keepalives_refused")
                    self._lost(c)
                    return
                self._count("keepalives_acked")
                self._floor_ms[c.lease] = max(self._floor_ms.get(c.lease, 0),
                                              c.sent_ms + ttl)
                c.next_at = self.sim.now + max(1, c.ttl_ms // 3 // self._tick_ms)
                if self._rng.random() < 0.05:
                    c.step = "revoke"
                return

    def tick(self) -> None:
        """Each leader proposes the expiries due; each client takes a step."""
        for node, (lessor, _) in list(self._lessors.items()):
            ids = lessor.due(self.now_ms)
            n = self.sim._nodes[node]
            if not ids or n.core is None:
                continue
            try:
                index = n.core.propose(self.sim._command(ExpireLeases(ids)))
            except (NotLeader, ProposalDropped):
                continue
            lessor.proposed(index, ids)
            self._count("expiries_proposed")
            self.sim._log(node, f"proposed the expiry of leases {ids} at {index}")
            self.sim._handle(n)
        for c in self._clients:
            if self.sim.now >= c.retry_at and self.sim.now >= c.next_at:
                self._attempt(c)

    # --- the clients ------------------------------------------------------------

    def _attempt(self, c: _LeaseClient) -> None:
        sim = self.sim
        n = sim._nodes[c.target]
        c.retry_at = sim.now + SIM_LEASE_ATTEMPT_TICKS
        if n.core is None:
            c.target = self._rng.choice(self._ids)
            return
        if c.step == "grant" and c.waiting_key is None:
            # A new grant (not a retry): the promise starts when it is sent.
            c.first_sent_ms = self.now_ms
        c.sent_ms = self.now_ms
        try:
            if c.step == "register":
                index = n.core.propose(sim._command(RegisterSession()))
                c.waiting_key = (index, n.core.term)
            elif c.step == "keep":
                if n.core.role is not Role.LEADER:
                    # Only a leader takes keep-alives, as the node's API.
                    raise NotLeader(n.core.leader)
                c.attempt += 1
                c.ctx = f"{c.id}/lease/{c.attempt}".encode()
                n.core.read_index(c.ctx)
            else:
                assert c.session is not None
                if c.waiting_key is None:
                    c.seq += 1
                    if c.step == "grant":
                        c.ttl_ms = self._rng.choice(SIM_LEASE_TTLS_MS)
                c.waiting_key = (c.session, c.seq)
                n.core.propose(sim._command(Write(c.session, c.seq, c.seq,
                                                  encode_op(self._op(c)))))
        except NotLeader as exc:
            c.target = exc.leader or self._rng.choice(self._ids)
            c.retry_at = sim.now + 1
            return
        except ProposalDropped:
            return
        c.waiting_on = n.id
        sim._handle(n)

    def _op(self, c: _LeaseClient) -> Op:
        if c.step == "grant":
            return LeaseGrant(c.ttl_ms)
        if c.step == "revoke":
            return LeaseRevoke(c.lease)
        return Put(f"{c.id}/{c.lease}/{c.puts}", b"v", lease=c.lease)

    def _answer(self, n: _Node, index: int, term: int, done: Applied) -> None:
        for c in self._clients:
            if c.waiting_on != n.id or c.waiting_key is None:
                continue
            if c.step == "register":
                if done.seq == 0 and (index, term) == c.waiting_key and done.session == index:
                    c.session, c.seq, c.step = index, 0, "grant"
                    self._done(c)
                    c.waiting_key = None
                continue
            if (done.session, done.seq) != c.waiting_key:
                continue
            c.waiting_key = None
            result = done.result
            self._done(c)
            if result.error == SESSION_EXPIRED:
                c.session, c.step = None, "register"
            elif c.step == "grant" and result.ok and result.lease:
                c.lease, c.puts = result.lease, 0
                c.keep = self._rng.random() < 0.6
                self._floor_ms[c.lease] = c.first_sent_ms + c.ttl_ms
                self._count("leases_granted")
                c.step = "put"
            elif c.step == "put":
                if not result.ok:  # the lease lapsed meanwhile
                    self._lost(c)
                    continue
                c.puts += 1
                if c.puts >= SIM_KEYS_PER_LEASE:
                    c.step = "keep"
                    if not c.keep:
                        # Let it lapse: come back for a new one after its TTL.
                        c.step = "grant"
                        c.next_at = self.sim.now + 2 * c.ttl_ms // self._tick_ms
                    elif self._rng.random() < 0.2:
                        c.step = "revoke"
            elif c.step == "revoke":
                self._count("leases_revoked")
                c.step = "grant"
            else:
                c.step = "grant"

    def _done(self, c: _LeaseClient) -> None:
        c.waiting_on = ""
        c.retry_at = self.sim.now

    def _lost(self, c: _LeaseClient) -> None:
        self._count("leases_lost")
        c.step, c.lease, c.waiting_key = "grant", 0, None
        c.retry_at = self.sim.now
