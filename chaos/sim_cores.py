"""The algorithms the simulator runs, each with its own checks: Raft's cores
against chaos/invariants.py, Paxos's against chaos/paxos_invariants.py. The
simulation (chaos/sim.py) is the same for both; only building a core and
telling the checker what a node now holds differ.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import msgspec

from chaos.invariants import ConfView, NodeState, RaftInvariants, Violation
from chaos.paxos_invariants import AcceptorState, PaxosInvariants
from chaos.sim_nemesis import FAULT_KINDS
from chaos.sim_watches import WATCH_COVERAGE
from node.config import CoreConfig
from node.consensus import ConsensusCore
from node.paxos.core import PaxosCore
from node.raft.base import Role
from node.raft.confchange import initial
from node.raft.core import RaftCore
from node.raft.messages import ConfState
from node.storage import MemoryStorage

SIM_ALGORITHMS = ("raft", "paxos")

# Raft's coverage: the paths a sweep should have gone through.
RAFT_COVERAGE: tuple[str, ...] = (
    "became_leader", "crashes", "compactions", "entries_evicted", "snapshot_installed",
    "leadership_transferred", "append_rejected", "membership_changed", "messages_delivered",
    "messages_dropped", "ops_ok", "ops_unknown", "ops_fail", "follower_reads", "range_reads",
    "range_reads_compared", *WATCH_COVERAGE,
)
_PAXOS_MIN_CHUNK_BYTES = 32
PAXOS_COVERAGE: tuple[str, ...] = (
    "pre_prepare_sent", "prepare_sent", "promised", "became_leader", "preempted",
    "campaign_abandoned", "crashes", "compactions", "snapshot_installed",
    "leadership_transferred", "messages_delivered", "messages_dropped", "ops_ok", "ops_unknown",
    "ops_fail", "range_reads", "range_reads_compared", *WATCH_COVERAGE,
)


class SimAlgorithm(Protocol):
    """One algorithm as the simulator runs and checks it."""

    name: str
    # The fault kinds (chaos/sim_nemesis.py) it takes part in.
    faults: frozenset[str]
    coverage: tuple[str, ...]

    def new_core(self, node: str, peers: list[str], storage: MemoryStorage,
                 config: CoreConfig, rng: random.Random,
                 base: ConfState | None) -> ConsensusCore[Any]: ...

    def observe(self, tick: int, node: str, core: ConsensusCore[Any],
                applied: int) -> list[Violation]:
        """The node's state after a step, as it is in memory and on disk."""
        ...

    def observe_disk(self, tick: int, node: str, storage: MemoryStorage) -> list[Violation]:
        """A crashed node, as its disk holds it."""
        ...

    def executed(self, tick: int, node: str, session: int, seq: int,
                 index: int) -> list[Violation]: ...

    def node_down(self, node: str) -> None: ...


class RaftSim:
    name = "raft"
    faults = frozenset(FAULT_KINDS)
    coverage: tuple[str, ...] = RAFT_COVERAGE

    def __init__(self) -> None:
        self.checker = RaftInvariants()

    def new_core(self, node: str, peers: list[str], storage: MemoryStorage,
                 config: CoreConfig, rng: random.Random,
                 base: ConfState | None) -> ConsensusCore[Any]:
        return RaftCore(node, peers, storage, config, rng, base=base)

    def observe(self, tick: int, node: str, core: ConsensusCore[Any],
                applied: int) -> list[Violation]:
        assert isinstance(core, RaftCore)
        log = core.log
        return self.checker.observe(tick, NodeState(
            node, core.term, core.role.value, log.commit, applied,
            # Entries evicted from memory are applied and stored: the checker
            # sees the log from the first one still held, like a snapshot.
            log.mem_base, log.term(log.mem_base) or 0, log.entries, vote=core.vote,
            confs=[ConfView(p.index, frozenset(p.conf.voters), frozenset(p.conf.voters_outgoing))
                   for p in core.conf_history()]))

    def observe_disk(self, tick: int, node: str, storage: MemoryStorage) -> list[Violation]:
        # What the node promised is on its disk: the checker sees it once more
        # as the disk holds it (its votes and entries count in quorums).
        st = storage.initial_state()
        return self.checker.observe(tick, NodeState(
            node, st.hard_state.term, Role.FOLLOWER.value, st.hard_state.commit,
            st.snapshot.index, st.snapshot.index, st.snapshot.term, st.entries,
            vote=st.hard_state.vote))

    def executed(self, tick: int, node: str, session: int, seq: int,
                 index: int) -> list[Violation]:
        return self.checker.executed(tick, node, session, seq, index)

    def node_down(self, node: str) -> None:
        self.checker.node_down(node)


class PaxosSim:
    """Multi-Paxos on the cluster's fixed membership. `forget_promises` is
    for tests: acceptors that accept below their promise, which the checks
    must catch."""

    name = "paxos"
    # Membership is fixed for Paxos (node/paxos/core.py).
    faults = frozenset(FAULT_KINDS) - {"membership"}
    coverage: tuple[str, ...] = PAXOS_COVERAGE

    def __init__(self, members: list[str], forget_promises: bool = False) -> None:
        self._members = initial(members)
        self._forget = forget_promises
        self.checker = PaxosInvariants(self._members.voters)

    def new_core(self, node: str, peers: list[str], storage: MemoryStorage,
                 config: CoreConfig, rng: random.Random,
                 base: ConfState | None) -> ConsensusCore[Any]:
        # Paxos sends a snapshot a chunk per round trip to every acceptor
        # behind at once; images hold the history of revisions now (~700
        # bytes here), and at 16 bytes a chunk three installs outlasted the
        # liveness bound after healing though every chunk arrived (seed 445).
        if config.snapshot_chunk_bytes < _PAXOS_MIN_CHUNK_BYTES:
            config = msgspec.structs.replace(config, snapshot_chunk_bytes=_PAXOS_MIN_CHUNK_BYTES)
        return PaxosCore(node, storage, config, rng, members=self._members,
                         forget_promises=self._forget)

    def observe(self, tick: int, node: str, core: ConsensusCore[Any],
                applied: int) -> list[Violation]:
        assert isinstance(core, PaxosCore)
        log = core.log
        return self.checker.observe(tick, AcceptorState(
            node, core.promised, core.role.value, core.ballot, log.commit, applied,
            log.snapshot.index, log.entries))

    def observe_disk(self, tick: int, node: str, storage: MemoryStorage) -> list[Violation]:
        st = storage.initial_state()
        return self.checker.observe(tick, AcceptorState(
            node, st.hard_state.term, Role.FOLLOWER.value, 0, st.hard_state.commit,
            st.snapshot.index, st.snapshot.index, st.entries))

    def executed(self, tick: int, node: str, session: int, seq: int,
                 index: int) -> list[Violation]:
        return self.checker.executed(tick, node, session, seq, index)

    def node_down(self, node: str) -> None:
        self.checker.node_down(node)


def sim_algorithm(name: str, members: list[str], forget_promises: bool = False) -> SimAlgorithm:
    if name not in SIM_ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(SIM_ALGORITHMS)}")
    if name == "paxos":
        return PaxosSim(members, forget_promises)
    if forget_promises:
        raise ValueError("forget_promises breaks a Paxos acceptor; Raft has none")
    return RaftSim()
