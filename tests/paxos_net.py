"""Helpers of the Paxos rule tests (tests/test_paxos_*.py): lone `PaxosCore`s
fed by hand, and a small network of them whose every Ready is handled in
node/raft/ready.py's order, with messages that can be held back, dropped
and delivered when a test says so."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.config import CoreConfig
from node.paxos.core import PaxosCore
from node.paxos.messages import PaxosMessage
from node.raft.base import Role
from node.raft.confchange import initial
from node.raft.messages import ConfState, Entry, Hup, Snapshot
from node.raft.ready import Ready, Step, handle_ready
from node.storage import MemoryStorage, Storage

E = 10  # election_ticks of paxos_config()


def paxos_config(**kw: Any) -> CoreConfig:
    """Short timeouts; CheckQuorum off unless a test is about it."""
    return CoreConfig(**{"election_ticks": E, "heartbeat_ticks": 2, "check_quorum": False, **kw})


def members(n: int = 3) -> ConfState:
    return initial([f"n{i}" for i in range(1, n + 1)])


def lone(nid: str = "n1", n: int = 3, storage: Storage | None = None, seed: int = 1,
         **cfg: Any) -> PaxosCore:
    """A core of an `n`-node cluster, alone: the test plays everyone else."""
    return PaxosCore(nid, storage or MemoryStorage(), paxos_config(**cfg), random.Random(seed),
                     members=members(n))


def drain(c: PaxosCore) -> Ready[PaxosMessage]:
    rd = c.ready()
    c.advance(rd)
    return rd


def ents(ballot: int, *data: bytes, start: int = 1) -> list[Entry]:
    return [Entry(ballot, start + i, data=d) for i, d in enumerate(data)]


@dataclass
class _Io:
    """One node's side of a Ready: its disk, the network, its applied log."""

    net: PaxosNet
    nid: str

    def reconfigure(self, conf: ConfState) -> None:
        """Fixed membership: never called."""

    def send(self, messages: Sequence[PaxosMessage]) -> None:
        self.net.wire.extend(messages)

    def persist(self, rd: Ready[PaxosMessage]) -> None:
        st = self.net.disks[self.nid]
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)

    def install(self, snapshot: Snapshot) -> None:
        self.net.applied[self.nid] = [(snapshot.meta.index, b"<snapshot>")]

    def apply(self, entries: Sequence[Entry]) -> None:
        self.net.applied[self.nid].extend((e.index, e.data) for e in entries)

    def finish(self, rd: Ready[PaxosMessage]) -> None:
        self.net.events.extend((self.nid, name, kw) for name, kw in rd.events)
        self.net.reads.extend((self.nid, r.ctx, r.index) for r in rd.read_states)
        self.net.reads.extend((self.nid, ctx, None) for ctx in rd.dropped_reads)

    def reached(self, step: Step) -> None:
        """No crash inside a Ready here (the simulator does those)."""


@dataclass
class PaxosNet:
    """`n` cores on a network a test drives: `run` ticks and delivers until
    quiet; `held` keeps what a `hold` rule matches for `release`."""

    n: int = 3
    seed: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    cores: dict[str, PaxosCore] = field(default_factory=dict)
    disks: dict[str, MemoryStorage] = field(default_factory=dict)
    applied: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    # Reads answered (node, ctx, index) or dropped (index None).
    reads: list[tuple[str, bytes, int | None]] = field(default_factory=list)
    wire: list[PaxosMessage] = field(default_factory=list)
    held: list[PaxosMessage] = field(default_factory=list)
    cut: set[tuple[str, str]] = field(default_factory=set)
    hold: Callable[[PaxosMessage], bool] | None = None

    def __post_init__(self) -> None:
        conf = members(self.n)
        for k, nid in enumerate(conf.voters):
            self.disks[nid] = MemoryStorage()
            self.applied[nid] = []
            self.cores[nid] = PaxosCore(nid, self.disks[nid], paxos_config(**self.config),
                                        random.Random(self.seed * 100 + k), members=conf)

    @property
    def ids(self) -> list[str]:
        return list(self.cores)

    def handle(self, nid: str) -> None:
        c = self.cores[nid]
        while c.has_ready():
            handle_ready(c, _Io(self, nid))

    def deliver(self) -> int:
        """Deliver what is on the wire (and what that sends) until it is quiet."""
        done = 0
        while self.wire:
            m = self.wire.pop(0)
            if (m.src, m.dst) in self.cut:
                continue
            if self.hold is not None and self.hold(m):
                self.held.append(m)
                continue
            self.cores[m.dst].step(m)
            self.handle(m.dst)
            done += 1
        return done

    def release(self) -> None:
        """Put every held message back on the wire (hold rule off)."""
        self.hold = None
        self.wire.extend(self.held)
        self.held.clear()
        self.deliver()

    def run(self, ticks: int = 1, only: Sequence[str] | None = None) -> None:
        for _ in range(ticks):
            for nid in only or self.ids:
                self.cores[nid].tick()
                self.handle(nid)
            self.deliver()

    def leader(self) -> str | None:
        leaders = [n for n, c in self.cores.items() if c.role is Role.LEADER]
        return max(leaders, key=lambda n: self.cores[n].ballot) if leaders else None

    def elect(self, nid: str) -> None:
        """Have `nid` run phase 1 now and deliver until quiet."""
        self.cores[nid].step(Hup())
        self.handle(nid)
        self.deliver()

    def isolate(self, nid: str) -> None:
        self.cut |= {(nid, o) for o in self.ids if o != nid}
        self.cut |= {(o, nid) for o in self.ids if o != nid}

    def heal(self) -> None:
        self.cut.clear()

    def names(self, nid: str | None = None) -> list[str]:
        """The events logged, in order (by `nid` only, if given)."""
        return [name for n, name, _ in self.events if nid is None or n == nid]
