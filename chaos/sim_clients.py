"""The simulator's clients: one operation at a time each, writes in
registered sessions (thesis §6.3), reads at any node, and the history they
record for the linearizability check. A mixin of `Simulation` (sim.py)."""

from __future__ import annotations

from chaos.linearizability import FAIL, OK, READ, UNKNOWN, WRITE, Operation
from chaos.sim_base import SIM_TICK_MS, SimState, _Client
from node.errors import NotLeader, ProposalDropped
from node.state.kv import (
    Body,
    Command,
    Put,
    RegisterSession,
    Txn,
    Write,
    encode_command,
    encode_op,
)

# A client waits this long, in ticks, for one node to answer,
SIM_CLIENT_ATTEMPT_TICKS = 12
# and this long for an operation before giving up.
SIM_CLIENT_OP_TICKS = 60
# The share of the workload's reads that are range reads of every key at
# once: each key's value is checked as a read of it, and the whole answer
# against another replica's history (sim_node.py `_serve_range`).
SIM_RANGE_READ_SHARE = 0.3


class SimClients(SimState):
    """The clients' part of `Simulation`: stepped once a tick."""

    def _client_step(self, c: _Client) -> None:
        if not c.busy:
            if self._workload and self.now >= c.next_at:
                self._invoke(c)
        elif self.now >= c.deadline:
            self._complete(c, UNKNOWN if c.kind == WRITE and c.accepted else FAIL, None)
        elif self.now >= c.retry_at:
            if c.waiting:
                # No answer in time: the node may be cut off; try another.
                c.target = self._rng.choice([p for p in self._ids if p != c.target] or self._ids)
            self._attempt(c)

    def _invoke(self, c: _Client, kind: str | None = None, key: str | None = None) -> None:
        rng = self._rng
        c.busy, c.accepted, c.ranged = True, False, False
        c.ops += 1
        c.key = key if key is not None else rng.choice(self._keys)
        # A script's operation goes where the script says; the workload's
        # reads go to any node.
        spread = kind is None
        if kind is None:
            kind = WRITE if rng.random() < 0.5 else READ
        c.proposals = 0
        if kind == WRITE:
            c.kind = WRITE
            c.seq += 1
            c.value = f"{c.id}.{c.seq}"
        else:
            c.kind, c.value = READ, None
            if spread:
                # Any node serves a read: a follower by a read index from the
                # leader (thesis §6.4.1), which the linearizability check covers.
                c.target = self._reads_rng.choice(self._ids)
                c.ranged = self._ranges_rng.random() < SIM_RANGE_READ_SHARE
        self._clock += 1
        c.invoke, c.invoke_tick = self._clock, self.now
        c.deadline = self.now + SIM_CLIENT_OP_TICKS
        self._log(c.id, f"invoke {c.kind} {c.key}" + (f"={c.value}" if c.value else ""))
        self._attempt(c)

    def _attempt(self, c: _Client) -> None:
        n = self._nodes[c.target]
        c.retry_at = self.now + 1
        c.waiting = False
        if n.core is None:
            c.target = self._rng.choice(self._ids)
            return
        try:
            if c.kind == WRITE and c.session is None:
                # A session first (thesis §6.3), then the write in it.
                index = n.core.propose(self._command(RegisterSession()))
                n.waiting_registrations[(index, n.core.term)] = c
            elif c.kind == WRITE:
                assert c.session is not None and c.value is not None
                # Half the writes as a put, half as the transaction that is
                # one (the same for every attempt: retries must match).
                put = Put(c.key, c.value.encode())
                op = encode_op(put if c.seq % 2 else Txn([], [put]))
                n.core.propose(self._command(Write(c.session, c.seq, c.seq, op)))
                c.accepted = True
                c.proposals += 1
                n.waiting_writes[(c.session, c.seq)] = c
            else:
                c.attempt += 1
                ctx = f"{c.id}/{c.ops}/{c.attempt}".encode()
                n.core.read_index(ctx)
                n.waiting_reads[ctx] = (c, c.ops)
        except NotLeader as exc:
            c.target = exc.leader or self._rng.choice(self._ids)
            return
        except ProposalDropped:
            return
        c.retry_at = self.now + SIM_CLIENT_ATTEMPT_TICKS
        c.waiting = True
        self._handle(n)

    def _command(self, body: Body) -> bytes:
        """A command stamped with the simulated cluster clock, as a leader does."""
        return encode_command(Command(self.now * SIM_TICK_MS, body))

    def _registered(self, c: _Client, session: int) -> None:
        c.session = session
        self._log(c.id, f"session {session}")
        c.waiting = False
        c.retry_at = self.now  # the write goes out at the client's next step

    def _complete(self, c: _Client, outcome: str, value: str | None,
                  others: dict[str, str | None] | None = None) -> None:
        """End `c`'s operation; a range read's `others` are the values it
        read of the other keys, each recorded as a read of its key with the
        same invocation and completion."""
        self._clock += 1
        done = outcome != UNKNOWN
        for key, got in ((c.key, value), *(others or {}).items()):
            self._history.append(Operation(
                c.id, c.kind, key, c.value if c.kind == WRITE else got, c.invoke,
                self._clock if done else None, outcome, c.invoke_tick,
                self.now if done else None))
        self._stats[f"ops_{outcome}"] += 1
        self._log(c.id, f"{outcome} {c.kind} {c.key}"
                  + (f" -> {value!r}" if c.kind == READ and outcome == OK else ""))
        c.busy = False
        c.next_at = self.now + self._rng.randrange(4)

    def _finish_clients(self) -> None:
        for c in self._clients:
            if c.busy:
                self._complete(c, UNKNOWN if c.kind == WRITE and c.accepted else FAIL, None)
