"""What the parts of the simulator share: its records (a node, a client),
the exceptions that end a step, and `SimState`, the declaration of the
state that `Simulation` (chaos/sim.py) sets up and its mixins use."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chaos.invariants import RaftInvariants, Violation
from chaos.linearizability import READ, Operation
from chaos.sim_cores import SimAlgorithm
from chaos.sim_nemesis import Nemesis
from chaos.sim_network import SimNetwork
from node.config import TICK_MS, CoreConfig
from node.consensus import ConsensusCore
from node.raft.messages import ConfState, HardState
from node.raft.ready import ReadState, Step
from node.state.kv import Body, KVStore
from node.storage import MemoryStorage

if TYPE_CHECKING:  # sim_leases.py is built on the simulator, not the other way
    from chaos.sim_leases import SimLeases
    from chaos.sim_watches import SimWatches

# The simulated cluster clock runs at the runner's default tick.
SIM_TICK_MS = TICK_MS


@dataclass(slots=True)
class _Node:
    """One simulated node: its disk (survives crashes), its core and state
    machine (do not), and the clients waiting on it."""

    id: str
    peers: list[str]
    new_kv: Callable[[], KVStore]
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    core: ConsensusCore[Any] | None = None
    kv: KVStore = field(default_factory=KVStore)
    applied: int = 0
    waiting_writes: dict[tuple[int, int], _Client] = field(default_factory=dict)
    # By (index, term) proposed at: another leader may put another entry there.
    waiting_registrations: dict[tuple[int, int], _Client] = field(default_factory=dict)
    waiting_reads: dict[bytes, tuple[_Client, int]] = field(default_factory=dict)
    read_states: list[ReadState] = field(default_factory=list)
    crash_at: Step | None = None  # crash at this point of its next Ready
    unsynced_hs: HardState | None = None
    # A node added after the start: it joins this initial configuration.
    base: ConfState | None = None


@dataclass(slots=True)
class _Client:
    """A client with one operation at a time: whom it believes leads, its
    session sequence number, and where its current operation stands."""

    id: str
    target: str
    session: int | None = None
    seq: int = 0
    ops: int = 0
    proposals: int = 0  # entries its current write (or registration) may have made
    kind: str = ""
    key: str = ""
    value: str | None = None
    invoke: int = 0
    invoke_tick: int = 0
    busy: bool = False
    waiting: bool = False
    accepted: bool = False
    deadline: int = 0
    retry_at: int = 0
    next_at: int = 0
    attempt: int = 0
    # Its read is a range read of every key at once (sim_node.py
    # `_serve_range`), not a get of `key`.
    ranged: bool = False


def _reading(c: _Client, op: int) -> bool:
    """The client still waits for the read it numbered `op`: an answer to an
    older read of its may predate the current one's invocation."""
    return c.busy and c.kind == READ and c.ops == op


class _Stop(Exception):
    """A step broke an invariant; the run ends there."""


class _Crashed(Exception):
    """The node crashed at a point of its Ready (`_Node.crash_at`)."""


class SimState:
    """Everything the parts of the simulator read and write, declared once:
    clients (sim_clients.py) and nodes with their Readies (sim_node.py) are
    mixins of `Simulation`, whose `__init__` (sim.py) sets it all up."""

    seed: int
    faults: frozenset[str]
    config: CoreConfig
    now: int  # the virtual clock, in ticks
    # The main generator decides the run; the other two draw what was added
    # later, so that the main one's paths for a seed stay as they were.
    _rng: random.Random
    _reads_rng: random.Random
    _ranges_rng: random.Random
    _history_rng: random.Random
    _net: SimNetwork
    _algo: SimAlgorithm
    _revision_checker: RaftInvariants
    _nemesis: Nemesis
    _leases: SimLeases | None
    _watches: SimWatches | None
    _ids: list[str]
    _nodes: dict[str, _Node]
    _keys: list[str]
    _clients: list[_Client]
    _workload: bool
    _faulty: bool  # in the fault phase, before healing
    _clock: int  # the history's order of invocations and completions
    _violations: list[Violation]
    _history: list[Operation]
    _stats: Counter[str]
    _trace: list[str] | None
    _sent: int
    _delivered: int
    _dropped: int

    def _log(self, who: str, text: str) -> None:
        if self._trace is not None:
            self._trace.append(f"{self.now:>5} {who:<4} {text}")

    if TYPE_CHECKING:
        # Defined by the mixins and by Simulation.
        def _command(self, body: Body) -> bytes: ...
        def _complete(self, c: _Client, outcome: str, value: str | None,
                      others: dict[str, str | None] | None = None) -> None: ...
        def _registered(self, c: _Client, session: int) -> None: ...
        def _handle(self, n: _Node) -> None: ...
        def _leader(self) -> _Node | None: ...
