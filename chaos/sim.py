"""The deterministic simulator: `RaftCore`s (or `PaxosCore`s) on a seeded
virtual network and disk, with faults, clients, and the algorithm's
invariants checked after every step (chaos/sim_cores.py). No sockets,
threads, sleeps or wall clock: one seed decides the whole run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from chaos.invariants import (
    CORE_ERROR,
    LIVENESS,
    RaftInvariants,
    Violation,
    check_linearizable,
)
from chaos.linearizability import Operation
from chaos.sim_base import SIM_TICK_MS, _Client, _Node, _Stop
from chaos.sim_clients import SimClients
from chaos.sim_cores import RAFT_COVERAGE, SimAlgorithm, sim_algorithm
from chaos.sim_leases import LEASE_COVERAGE, SIM_LEASE_MIN_CHUNK_BYTES, SimLeases
from chaos.sim_members import Members
from chaos.sim_nemesis import FAULT_KINDS, Nemesis, format_faults
from chaos.sim_network import SimNetwork, WireMessage, describe
from chaos.sim_node import SimNodes
from chaos.sim_watches import SimWatches
from node.config import HISTORY_REVISIONS, CoreConfig
from node.consensus import ConsensusCore
from node.errors import NotLeader, ProposalDropped
from node.paxos.core import PaxosCore
from node.raft.base import Role
from node.raft.confchange import describe_conf, initial
from node.raft.core import RaftCore
from node.raft.messages import ConfChange
from node.raft.quorum import majority
from node.raft.ready import Step
from node.state.kv import KVStore
from node.storage import MemoryStorage

# The simulator's timing, in ticks of its virtual clock.
SIM_FAULT_TICKS = 300  # the fault phase of one run
SIM_LIVENESS_TICKS = 150  # after healing, a fresh entry must commit within this
SIM_WATCHERS = 3  # clients watching ranges of the keys (chaos/sim_watches.py)

# Applied entries a core holds in memory: few, so that followers that lag are
# sent entries read back from storage (node/raft/log.py, evict) all the time.
_LOG_CACHE_ENTRIES = 4


def sim_core_config(rng: random.Random | None = None) -> CoreConfig:
    """Short timeouts keep runs short; small batches, pipelines and snapshot
    chunks make the flow-control and chunked-snapshot paths run often. With
    `rng`, a seed also picks its variant of the settings a user may change."""
    if rng is None:
        return CoreConfig(election_ticks=10, heartbeat_ticks=2, max_append_entries=4,
                          max_inflight_appends=4, snapshot_chunk_bytes=64, catchup_entries=0,
                          log_cache_entries=_LOG_CACHE_ENTRIES)
    return CoreConfig(
        election_ticks=10,
        heartbeat_ticks=2,
        max_append_entries=rng.choice((1, 4, 64)),
        max_inflight_appends=rng.choice((1, 4, 64)),
        # 32 bytes at least, as Paxos's (chaos/sim_cores.py): images hold the
        # revision history (~700 bytes), and at 16 bytes a chunk an install
        # to a node the quorum needed outlasted the liveness bound after
        # healing though every chunk arrived (seeds 1021 and 1234; 77 and
        # 179 once reads went to followers and the runs took other paths).
        snapshot_chunk_bytes=rng.choice((32, 64, 4096)),
        catchup_entries=rng.choice((0, 0, 3, 20)),
        log_cache_entries=_LOG_CACHE_ENTRIES,
        prevote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
    )


def _with_read_mode(config: CoreConfig, rng: random.Random) -> CoreConfig:
    """A third of the seeds with CheckQuorum read under leases (thesis
    §6.4.1): the simulated nodes' clocks tick together, so a lease holds
    as long as its rules do."""
    if config.check_quorum and rng.random() < 1 / 3:
        return msgspec.structs.replace(config, read_mode="lease")
    return config


def _max_election_ms(config: CoreConfig) -> int:
    """The longest election timeout of `config` on the simulated clock."""
    jitter = config.election_ticks if config.election_jitter_ticks is None \
        else config.election_jitter_ticks
    return (config.election_ticks + jitter) * SIM_TICK_MS


@dataclass(slots=True)
class SimResult:
    """What one run did: its violations (empty when all held), the client
    history, counters, and the trace when asked for."""

    seed: int
    violations: list[Violation]
    ticks: int
    live_after_ticks: int | None
    history: list[Operation]
    stats: dict[str, int]
    trace: list[str]


# With `snapshot` on: per node and tick, the chance it compacts its log
# (sim_node.py says when that is worth a snapshot).
_COMPACT_CHANCE = 0.1
# Per tick, the chance that the leader proposes to compact the history (as an
# operator's `raftctl compact --revision` does).
_COMPACT_HISTORY_CHANCE = 0.03


class Simulation(SimClients, SimNodes):
    """One seeded run: a fault phase, then everything healed, then a check
    that a leader commits a fresh entry on a majority within a bound."""

    def __init__(
        self,
        seed: int,
        nodes: int = 5,
        faults: frozenset[str] = frozenset(FAULT_KINDS),
        config: CoreConfig | None = None,
        *,
        ticks: int = SIM_FAULT_TICKS,
        liveness_ticks: int = SIM_LIVENESS_TICKS,
        clients: int = 3,
        keys: int = 3,
        workload: bool = True,
        trace: bool = False,
        algorithm: str = "raft",
        forget_promises: bool = False,
        lease_clients: int = 0,
        lease_breaks: frozenset[str] = frozenset(),
        watchers: int = SIM_WATCHERS,
    ) -> None:
        """`algorithm` is `raft` or `paxos`; `forget_promises` (Paxos, for
        tests) breaks every acceptor's promise, for the checks to catch.
        `lease_clients` clients grant and keep leases (chaos/sim_leases.py);
        `lease_breaks` names its test-only bugs; `watchers` watch ranges of
        the keys (chaos/sim_watches.py)."""
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.seed = seed
        self.faults = faults
        self._rng = random.Random(seed)
        # Drawn from a generator of its own, as the history bounds below:
        # the main one's paths for a seed stay as they were.
        self._reads_rng = random.Random(seed * 7919 + 1)
        # Which reads are range reads, and the past revisions they compare.
        self._ranges_rng = random.Random(seed * 7919 + 2)
        if config is None:
            config = sim_core_config(self._rng)
            if algorithm == "raft":
                config = _with_read_mode(config, self._reads_rng)
        self.config = config
        if lease_clients and self.config.snapshot_chunk_bytes < SIM_LEASE_MIN_CHUNK_BYTES:
            # The lease workload's keys and leases make images several times
            # larger: sent 16 bytes at a time, they outlast the liveness bound.
            self.config = msgspec.structs.replace(
                self.config, snapshot_chunk_bytes=SIM_LEASE_MIN_CHUNK_BYTES)
        self.ticks = ticks
        self.liveness_ticks = liveness_ticks
        self._workload = workload
        self._net = SimNetwork(self._rng)
        ids = [f"n{i}" for i in range(1, nodes + 1)]
        # Revisions are the state machine's, the same for either algorithm:
        # only this check of RaftInvariants is used on them.
        self._revision_checker = RaftInvariants()
        self._algo: SimAlgorithm = sim_algorithm(algorithm, ids, forget_promises)
        unsupported = sorted(faults - self._algo.faults)
        if unsupported:
            raise ValueError(f"{algorithm} does not take the fault kind(s) "
                             f"{', '.join(unsupported)}: its membership is fixed")
        self._ids = ids
        self._initial = list(ids)
        # Session rules, the same on every replica; small, so that sessions
        # expire and are evicted during runs (node/state/sessions.py).
        timeout_ms = self._rng.choice((300, 3_000, 60_000))
        max_sessions = self._rng.choice((2, clients + 1, 64))
        # History bounds, as small as a few revisions so that the store
        # compacts by itself during runs (node/state/mvcc.py).
        # Drawn from a generator of their own so that the paths the main one
        # takes for a seed (and the seeds tests name) stay as they were.
        self._history_rng = random.Random(seed)
        history = self._history_rng.choice((4, 32, HISTORY_REVISIONS))

        def new_kv() -> KVStore:
            return KVStore(session_timeout_ms=timeout_ms, max_sessions=max_sessions,
                           history_revisions=history)

        self._nodes = {i: _Node(i, [p for p in ids if p != i], new_kv) for i in ids}
        self._new_kv = new_kv
        self._members = Members(self._rng, ids, min_voters=min(3, nodes))
        self._keys = [f"k{i}" for i in range(keys)]
        self._clients = [_Client(f"c{i}", self._rng.choice(ids)) for i in range(clients)]
        self._violations: list[Violation] = []
        self._history: list[Operation] = []
        self._stats: Counter[str] = Counter()
        self._trace: list[str] | None = [] if trace else None
        self._nemesis = Nemesis(self._rng, ids, faults)
        self._faulty = True
        self._clock = 0
        self.now = 0
        self._probe: tuple[str, int, int] | None = None
        self._stopped = False
        self._in_tick = False
        self._sent = self._delivered = self._dropped = 0
        self._leases = SimLeases(self, seed, ids, lease_clients, tick_ms=SIM_TICK_MS,
                                 extension_ms=_max_election_ms(self.config),
                                 breaks=lease_breaks) if lease_clients else None
        self._watches = SimWatches(seed, watchers) if watchers else None
        self._log("--", f"seed {seed}, {nodes} nodes, faults {format_faults(faults)}, "
                        f"{self.config}" + ("" if algorithm == "raft" else f", {algorithm}"))
        for n in self._nodes.values():
            self._start(n)

    # --- the run ------------------------------------------------------------

    def run(self) -> SimResult:
        live_after: int | None = None
        self._in_tick = True
        try:
            for _ in range(self.ticks):
                self._tick(faulty=True)
            self._faulty = False
            self._log("--", "heal: every link restored, every node up")
            self._nemesis.heal(self)
            heal_tick = self.now
            for _ in range(self.liveness_ticks):
                self._tick(faulty=False)
                if self._live():
                    live_after = self.now - heal_tick
                    break
            else:
                self._violations.append(Violation(
                    check=LIVENESS, tick=self.now,
                    detail=f"no fresh entry committed on a majority within "
                    f"{self.liveness_ticks} ticks of healing ({self._roles()})"))
        except _Stop:
            pass
        except Exception as exc:  # whatever the core raises is a finding to report
            self._core_error(exc)
        finally:
            self._in_tick = False
        return self.finish(live_after)

    def finish(self, live_after: int | None = None) -> SimResult:
        """End the run: open operations become unknown (writes that a leader
        took) or failed, and the history is checked for linearizability."""
        self._finish_clients()
        self._stats.update({f"fault_{k}": v for k, v in self._nemesis.started.items()})
        self._stats["messages_sent"] = self._sent
        self._stats["messages_delivered"] = self._delivered
        self._stats["messages_dropped"] = self._dropped
        if self._leases is not None:
            self._stats.update(self._leases.stats)
        if self._watches is not None:
            self._stats.update(self._watches.stats)
        if not self._violations:
            self._violations.extend(check_linearizable(self._history))
        return SimResult(self.seed, self._violations, self.now, live_after, self._history,
                         dict(sorted(self._stats.items())), self._trace or [])

    def _core_error(self, exc: Exception) -> None:
        self._violations.append(Violation(check=CORE_ERROR, tick=self.now,
                                         detail=f"{type(exc).__name__}: {exc}"))
        self._log("--", f"VIOLATION {CORE_ERROR}: {exc!r}")

    # --- scripting: tests drive a scenario tick by tick -------------------------

    @property
    def network(self) -> SimNetwork:
        return self._net

    @property
    def coverage(self) -> tuple[str, ...]:
        """The counters that show which paths of this algorithm a run took."""
        return self._algo.coverage

    @property
    def violations(self) -> list[Violation]:
        return self._violations

    def core(self, node: str) -> RaftCore | None:
        """The node's Raft core, or None while it is down."""
        c = self._nodes[node].core
        assert c is None or isinstance(c, RaftCore), "a Paxos run: use paxos_core()"
        return c

    def paxos_core(self, node: str) -> PaxosCore | None:
        """The node's Paxos core, or None while it is down."""
        c = self._nodes[node].core
        assert c is None or isinstance(c, PaxosCore), "a Raft run: use core()"
        return c

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        lead = self._leader()
        return None if lead is None else lead.id

    def tick(self) -> bool:
        """Advance one tick (no nemesis); False once an invariant has failed."""
        if self._stopped:
            return False
        try:
            self._tick(faulty=False)
        except _Stop:
            self._stopped = True
        except Exception as exc:  # whatever the core raises is a finding to report
            self._core_error(exc)
            self._stopped = True
        return not self._stopped

    def propose(self, node: str, data: bytes) -> int:
        """Propose `data` at `node` directly (raises `NotLeader`)."""
        n = self._nodes[node]
        if n.core is None:
            raise NotLeader(None)
        index = n.core.propose(data)
        self._guard(lambda: self._handle(n))
        return index

    def invoke(self, client: int, kind: str, key: str, node: str) -> None:
        """Start a recorded client operation (`read` or `write`) at `node`."""
        c = self._clients[client]
        if c.busy:
            raise RuntimeError(f"{c.id} is still busy")
        c.target = node
        self._guard(lambda: self._invoke(c, kind, key))

    def busy(self, client: int) -> bool:
        return self._clients[client].busy

    def crash(self, node: str, at: Step | None = None) -> None:
        """Crash `node` now, or (`at`) at that point of its next Ready
        (node/raft/ready.py: between any two of its steps)."""
        n = self._nodes[node]
        if at is not None:
            n.crash_at = at
        elif n.core is not None:
            self._crash(n, "by the script")

    def restart(self, node: str) -> None:
        """Start a crashed node again from its disk (and cancel a pending
        crash inside a Ready); not one stopped for good after its removal."""
        if node in self._members.removed:
            return
        n = self._nodes[node]
        n.crash_at = None
        if n.core is None:
            self._log(node, "restarted")
            self._guard(lambda: self._start(n))

    def alive(self) -> list[str]:
        return [n.id for n in self._nodes.values() if n.core is not None]

    def transfer(self, to: str) -> None:
        """Ask the current leader, if any, to hand leadership to `to`."""
        lead = self._leader()
        if lead is not None and lead.core is not None and lead.id != to:
            try:
                lead.core.transfer_leader(to)
            except ValueError as e:  # not a voter (any more): refused, as it should be
                self._log(lead.id, f"transfer to {to} refused: {e}")
                return
            self._guard(lambda: self._handle(lead))

    def note(self, who: str, text: str) -> None:
        """Add a line to the trace (if there is one)."""
        self._log(who, text)

    def storage(self, node: str) -> MemoryStorage:
        """The node's disk: what survives its crashes."""
        return self._nodes[node].storage

    def _guard(self, step: Callable[[], None]) -> None:
        """Run a step for a script; inside a tick (the nemesis) a broken
        invariant still ends the tick at once."""
        if self._in_tick:
            step()
            return
        try:
            step()
        except _Stop:
            self._stopped = True

    # --- membership, for the supervisor (chaos/sim_members.py) ----------------

    def change_members(self, action: str) -> str | None:
        """Ask the leader for a membership change (`add`, `promote`,
        `remove`, `replace`); what was asked, or None if nothing could be."""
        return self._members.change(self, action)

    def leader_core(self) -> tuple[str, ConsensusCore[Any]] | None:
        lead = self._leader()
        return None if lead is None or lead.core is None else (lead.id, lead.core)

    def propose_change(self, leader: str, cc: ConfChange) -> None:
        n = self._nodes[leader]
        assert n.core is not None
        n.core.propose_conf_change(cc)
        self._guard(lambda: self._handle(n))

    def new_node(self, node: str) -> None:
        n = _Node(node, [], self._new_kv, base=initial(self._initial))
        self._nodes[node] = n
        self._ids.append(node)
        self._log(node, "started with an empty disk, to join")
        self._guard(lambda: self._start(n))

    def stop(self, node: str) -> None:
        n = self._nodes[node]
        n.crash_at = None
        if n.core is not None:
            self._crash(n, "and stopped for good: its removal committed")

    def revive(self, node: str) -> None:
        self._log(node, "started again from its disk, to join again")
        self.restart(node)

    def _tick(self, faulty: bool) -> None:
        self.now += 1
        outer, self._in_tick = self._in_tick, True
        try:
            self._members.step(self)
            if faulty:
                self._nemesis.step(self)
            for n in self._nodes.values():
                if n.core is not None:
                    n.core.tick()
                    self._handle(n)
            for m in self._net.due(self.now):
                self._deliver(m)
            for c in self._clients:
                self._client_step(c)
            if self._leases is not None:
                self._leases.tick()
            if self._watches is not None:
                found = self._watches.tick(self.now, [n for n in self._nodes.values()
                                                      if n.core is not None])
                if found:
                    self._violations.extend(found)
                    raise _Stop
            if faulty and self._history_rng.random() < _COMPACT_HISTORY_CHANCE:
                self._compact_history()
            if faulty and "snapshot" in self.faults:
                for n in self._nodes.values():
                    if n.core is not None and self._rng.random() < _COMPACT_CHANCE:
                        self._compact(n)
        finally:
            self._in_tick = outer

    def _deliver(self, m: WireMessage) -> None:
        n = self._nodes[m.dst]
        if n.core is None or self._net.blocked(m.src, m.dst):
            self._dropped += 1
            if self._trace is not None:
                why = "down" if n.core is None else "blocked"
                self._log(m.dst, f"drop({why}) {describe(m)}")
            return
        self._delivered += 1
        if self._trace is not None:
            self._log(m.dst, f"recv {describe(m)}")
        n.core.step(m)
        self._handle(n)

    # --- faults ------------------------------------------------------------------

    def _leader(self) -> _Node | None:
        best: _Node | None = None
        for n in self._nodes.values():
            if n.core is not None and n.core.role is Role.LEADER and (
                    best is None or best.core is None or n.core.term > best.core.term):
                best = n
        return best

    def _live(self) -> bool:
        """A leader exists and a fresh entry of its term is committed on a
        majority (what a client needs from a healed cluster)."""
        lead = self._leader()
        if lead is None or lead.core is None:
            return False
        core = lead.core
        if self._probe is None or self._probe[0] != lead.id or self._probe[2] != core.term:
            try:
                index = core.propose(b"probe")
            except (NotLeader, ProposalDropped):
                return False
            self._probe = (lead.id, index, core.term)
            self._log(lead.id, f"liveness probe proposed at {index}")
            self._handle(lead)
        _, index, term = self._probe
        voters = core.conf.voters
        holders = sum(1 for v in voters if (n := self._nodes.get(v)) is not None
                      and n.core is not None and n.core.log.commit >= index
                      and n.core.log.term(index) == term)
        return holders >= majority(len(voters))

    def _roles(self) -> str:
        lead = self._leader()
        conf = "" if lead is None or lead.core is None else \
            f"; {describe_conf(lead.core.conf)} at {lead.id}"
        return ", ".join(f"{n.id}:{'down' if n.core is None else n.core.role.value}"
                         f"@{0 if n.core is None else n.core.term}"
                         for n in self._nodes.values()) + conf


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a sweep keeps of one run (small, so it crosses processes cheaply)."""

    seed: int
    violations: tuple[tuple[str, int, str], ...]
    live_after_ticks: int | None
    ticks: int
    stats: dict[str, int]


def sweep_pool(jobs: int) -> multiprocessing.pool.Pool:
    """Worker processes for a sweep of seeds, forked from a fresh server
    process: forking the caller itself (a test process with threads of
    earlier tests, holding a lock at that instant) can leave a worker stuck,
    and the pool then never ends."""
    return multiprocessing.get_context("forkserver").Pool(jobs)


def run_seed(seed: int, nodes: int, faults: frozenset[str], ticks: int,
             algorithm: str = "raft", lease_clients: int = 0) -> RunSummary:
    """Run one seed without a trace; for worker processes."""
    sim = Simulation(seed, nodes, faults, ticks=ticks, algorithm=algorithm,
                     lease_clients=lease_clients)
    r = sim.run()
    stats = {k: v for k, v in r.stats.items() if k in sim.coverage or k in LEASE_COVERAGE}
    stats["operations"] = len(r.history)
    return RunSummary(seed, tuple((v.check, v.tick or 0, v.detail) for v in r.violations),
                      r.live_after_ticks, r.ticks, stats)


# The counters a sweep of Raft adds up to show which paths its runs went
# through (chaos/sim_cores.py has Paxos's).
COVERAGE_STATS = RAFT_COVERAGE


