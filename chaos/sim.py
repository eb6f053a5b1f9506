"""The deterministic simulator: `RaftCore`s (or `PaxosCore`s) on a seeded
virtual network and disk, with faults, clients, and the algorithm's
invariants checked after every step (chaos/sim_cores.py). No sockets,
threads, sleeps or wall clock: one seed decides the whole run.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from chaos.invariants import (
    CORE_ERROR,
    LIVENESS,
    RaftInvariants,
    RevisionView,
    Violation,
    check_linearizable,
)
from chaos.linearizability import FAIL, OK, READ, UNKNOWN, WRITE, Operation
from chaos.sim_cores import RAFT_COVERAGE, SimAlgorithm, sim_algorithm
from chaos.sim_leases import LEASE_COVERAGE, SIM_LEASE_MIN_CHUNK_BYTES, SimLeases
from chaos.sim_members import Members
from chaos.sim_nemesis import FAULT_KINDS, Nemesis, format_faults
from chaos.sim_network import SimNetwork, WireMessage, describe
from node.config import (
    HISTORY_REVISIONS,
    TICK_MS,
    CoreConfig,
)
from node.consensus import ConsensusCore
from node.errors import NotLeader, ProposalDropped
from node.paxos.core import PaxosCore
from node.raft.base import Role
from node.raft.confchange import describe_conf, initial
from node.raft.core import RaftCore
from node.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
)
from node.raft.quorum import majority
from node.raft.ready import ReadState, Ready, Step, handle_ready
from node.state.kv import (
    SESSION_EXPIRED,
    Body,
    Command,
    CompactHistory,
    KVStore,
    Put,
    RegisterSession,
    Txn,
    Write,
    encode_command,
    encode_image,
    encode_op,
)
from node.state.mvcc import Span
from node.storage import MemoryStorage

# The simulator's timing, in ticks of its virtual clock.
SIM_FAULT_TICKS = 300  # the fault phase of one run
SIM_LIVENESS_TICKS = 150  # after healing, a fresh entry must commit within this
SIM_CLIENT_ATTEMPT_TICKS = 12  # a client waits this long for one node to answer
SIM_CLIENT_OP_TICKS = 60  # and this long for an operation before giving up



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
        snapshot_chunk_bytes=rng.choice((16, 64, 4096)),
        catchup_entries=rng.choice((0, 0, 3, 20)),
        log_cache_entries=_LOG_CACHE_ENTRIES,
        prevote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
    )


def _max_election_ms(config: CoreConfig) -> int:
    """The longest election timeout of `config` on the simulated clock."""
    jitter = config.election_ticks if config.election_jitter_ticks is None \
        else config.election_jitter_ticks
    return (config.election_ticks + jitter) * SIM_TICK_MS


# --- nodes, their state machine and clients ----------------------------------


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


def _reading(c: _Client, op: int) -> bool:
    """The client still waits for the read it numbered `op`: an answer to an
    older read of its may predate the current one's invocation."""
    return c.busy and c.kind == READ and c.ops == op


class _Stop(Exception):
    """A step broke an invariant; the run ends there."""


class _Crashed(Exception):
    """The node crashed at a point of its Ready (`_Node.crash_at`)."""


# The simulated cluster clock runs at the runner's default tick.
SIM_TICK_MS = TICK_MS


# With `snapshot` on: per node and tick, the chance it compacts its log, and
# the fewest newly applied entries worth a snapshot.
_COMPACT_CHANCE = 0.1
_COMPACT_MIN_ENTRIES = 3
# Per tick, the chance that the leader proposes to compact the history (as an
# operator's `raftctl compact --revision` does).
_COMPACT_HISTORY_CHANCE = 0.03
# A core still asking for a Ready after this many rounds in one step is stuck.
_READY_LOOP_LIMIT = 200


class Simulation:
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
    ) -> None:
        """`algorithm` is `raft` or `paxos`; `forget_promises` (Paxos, for
        tests) breaks every acceptor's promise, for the checks to catch.
        `lease_clients` clients grant and keep leases (chaos/sim_leases.py);
        `lease_breaks` names its test-only bugs."""
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.seed = seed
        self.faults = faults
        self._rng = random.Random(seed)
        self.config = config or sim_core_config(self._rng)
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

    # --- one node: handling its Ready -----------------------------------------

    def _handle(self, n: _Node) -> None:
        """Handle the node's Readies as the runner does (node/raft/ready.py)."""
        core = n.core
        assert core is not None
        io = _SimReady(self, n)
        loops = 0
        while core.has_ready():
            loops += 1
            if loops > _READY_LOOP_LIMIT:
                raise RuntimeError(f"{n.id} still has a Ready after {loops - 1} rounds")
            try:
                handle_ready(core, io)
            except _Crashed as crash:
                self._crash(n, str(crash))
                return
        if core.evict_log():
            self._stats["entries_evicted"] += 1
        if io.changed:
            self._observe(n)
        if self._leases is not None:
            self._leases.node_changed(n)

    def _send_all(self, n: _Node, msgs: Sequence[WireMessage]) -> None:
        self._sent += len(msgs)
        for m in msgs:
            lost = self._net.send(self.now, m)
            if lost is not None:
                self._dropped += 1
                if self._trace is not None:
                    self._log(n.id, f"drop({lost}) {describe(m)}")

    def _event(self, n: _Node, name: str, kw: dict[str, object]) -> None:
        self._stats[name] += 1
        if name == "became_leader" and self._faulty:
            self._nemesis.new_leader(self.now, n.id)
        if self._trace is not None and n.core is not None:
            self._log(n.id, " ".join([name, f"term={n.core.term}",
                                      *(f"{k}={v}" for k, v in kw.items())]))

    def _apply(self, n: _Node, e: Entry) -> None:
        if e.index != n.applied + 1:
            raise AssertionError(f"{n.id} was handed entry {e.index} after applying {n.applied}")
        n.applied = e.index
        found = [] if self._leases is None else self._leases.before_apply(n, e)
        done = n.kv.apply(e.index, e.data if e.kind is EntryKind.NORMAL else b"")
        self._check_revisions(n)
        if self._leases is not None:
            found += self._leases.applied(n, e.index, e.term, done)
        if found:
            self._violations.extend(found)
            raise _Stop
        if done is None:
            return
        if done.executed:
            found = self._algo.executed(self.now, n.id, done.session, done.seq, e.index)
            if found:
                self._violations.extend(found)
                raise _Stop
        if done.seq == 0:
            c = n.waiting_registrations.pop((e.index, e.term), None)
            if c is not None and c.busy and c.session is None and done.session == e.index:
                self._registered(c, e.index)
            return
        c = n.waiting_writes.pop((done.session, done.seq), None)
        if c is None or not (c.busy and c.kind == WRITE and c.session == done.session
                             and c.seq == done.seq):
            return
        if done.result.ok:
            self._complete(c, OK, c.value)
        elif done.result.error == SESSION_EXPIRED:
            # Expired sessions never apply a write: only an earlier proposal
            # of it, applied before the session ended, could have.
            c.session = None
            self._complete(c, UNKNOWN if c.proposals > 1 else FAIL, None)
        else:
            raise AssertionError(f"{n.id}: a put of {c.id} failed with {done.result.error}")

    def _check_revisions(self, n: _Node) -> None:
        found = self._revision_checker.observe_revisions(self.now, n.id, n.applied,
                                                         revision_view(n.kv))
        if self._leases is not None and n.applied:
            found += self._leases.check_agreement(n.id, n.applied, n.kv.leases)
        if found:
            self._violations.extend(found)
            raise _Stop

    def _serve_reads(self, n: _Node) -> None:
        keep: list[ReadState] = []
        for rs in n.read_states:
            if rs.index > n.applied:
                keep.append(rs)
                continue
            waiter = n.waiting_reads.pop(rs.ctx, None)
            if waiter is None and self._leases is not None:
                self._leases.read_ready(n, rs.ctx)
            if waiter is not None and _reading(*waiter):
                value = n.kv.get(waiter[0].key)
                self._complete(waiter[0], OK, None if value is None else value.decode())
        n.read_states = keep

    def _observe(self, n: _Node) -> None:
        core = n.core
        assert core is not None
        found = self._algo.observe(self.now, n.id, core, n.applied)
        if found:
            self._violations.extend(found)
            if self._trace is not None:
                for v in found:
                    self._log(n.id, f"VIOLATION {v.check}: {v.detail}")
            raise _Stop

    def _start(self, n: _Node) -> None:
        """Start (or restart) a node from what its disk holds."""
        snap = n.storage.snapshot()
        n.kv = n.new_kv()
        if snap.data:
            n.kv.restore(snap.data)
        n.applied = snap.meta.index
        if snap.data:
            self._check_revisions(n)
        n.core = self._algo.new_core(n.id, n.peers, n.storage, self.config,
                                     random.Random(self._rng.getrandbits(64)), n.base)
        self._observe(n)
        self._handle(n)

    def _crash(self, n: _Node, how: str) -> None:
        self._violations.extend(self._algo.observe_disk(self.now, n.id, n.storage))
        n.core = None
        n.kv = n.new_kv()
        n.applied = 0
        n.waiting_writes.clear()
        n.waiting_registrations.clear()
        n.waiting_reads.clear()
        n.read_states.clear()
        n.crash_at = None
        n.unsynced_hs = None
        self._algo.node_down(n.id)
        if self._leases is not None:
            self._leases.node_down(n.id)
        self._stats["crashes"] += 1
        self._log(n.id, f"crashed {how}")

    def _compact_history(self) -> None:
        lead = self._leader()
        if lead is None or lead.core is None:
            return
        rev = max(1, lead.kv.revision - self._history_rng.randrange(4))
        try:
            lead.core.propose(self._command(CompactHistory(rev)))
        except (NotLeader, ProposalDropped):
            return
        self._handle(lead)

    def _compact(self, n: _Node) -> None:
        core = n.core
        assert core is not None
        if n.applied - core.snapshot_meta.index < _COMPACT_MIN_ENTRIES:
            return
        meta = core.snapshot_point(n.applied)
        n.storage.create_snapshot(meta, encode_image(n.kv.freeze()))
        core.compact(meta)
        self._stats["compactions"] += 1
        self._log(n.id, f"compacted through {meta.index} (term {meta.term})")
        self._observe(n)

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

    # --- clients ------------------------------------------------------------------

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
        c.busy, c.accepted = True, False
        c.ops += 1
        c.key = key if key is not None else rng.choice(self._keys)
        if kind is None:
            kind = WRITE if rng.random() < 0.5 else READ
        c.proposals = 0
        if kind == WRITE:
            c.kind = WRITE
            c.seq += 1
            c.value = f"{c.id}.{c.seq}"
        else:
            c.kind, c.value = READ, None
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

    def _complete(self, c: _Client, outcome: str, value: str | None) -> None:
        self._clock += 1
        done = outcome != UNKNOWN
        self._history.append(Operation(
            c.id, c.kind, c.key, c.value if c.kind == WRITE else value, c.invoke,
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

    def _log(self, who: str, text: str) -> None:
        if self._trace is not None:
            self._trace.append(f"{self.now:>5} {who:<4} {text}")


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a sweep keeps of one run (small, so it crosses processes cheaply)."""

    seed: int
    violations: tuple[tuple[str, int, str], ...]
    live_after_ticks: int | None
    ticks: int
    stats: dict[str, int]


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


def revision_view(kv: KVStore) -> RevisionView:
    """What the revision invariant compares of a replica's store."""
    mv = kv.mvcc
    live = mv.read(Span("", None, one=False)).kvs
    return RevisionView(
        mv.revision, mv.compacted, tuple((k, r.create, r.mod, r.version) for k, r in live),
        tuple((c.rev, c.key, c.after is None) for c in mv.log.since(0)))


class _SimReady:
    """The simulator's side of each step of a Ready (node/raft/ready.py): the
    virtual network and disk, the real state machine, and a crash at the
    point the nemesis or a script chose."""

    def __init__(self, sim: Simulation, n: _Node) -> None:
        self.sim = sim
        self.n = n
        # Term, vote, commit, role, log and applied index change only through
        # these steps; a Ready of messages alone changes nothing the
        # invariants look at.
        self.changed = False

    def reconfigure(self, conf: ConfState) -> None:
        # The virtual network reaches every node by its id: nothing to
        # rewire; the configuration is in the next observation.
        self.changed = True

    def send(self, messages: Sequence[WireMessage]) -> None:
        self.sim._send_all(self.n, messages)

    def persist(self, rd: Ready[Any]) -> None:
        n = self.n
        self.changed = self.changed or bool(rd.entries) or rd.hard_state is not None \
            or rd.snapshot is not None
        st = n.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
        # A hard state whose term and vote are unchanged is written but not
        # synced (node/raft/ready.py): it reaches the disk with the next sync,
        # and a crash before that loses it.
        if rd.hard_state is not None:
            n.unsynced_hs = rd.hard_state
        if rd.must_sync() and n.unsynced_hs is not None:
            st.set_hard_state(n.unsynced_hs)
            n.unsynced_hs = None

    def install(self, snapshot: Snapshot) -> None:
        n = self.n
        n.kv = n.new_kv()
        n.kv.restore(snapshot.data)
        n.applied = snapshot.meta.index
        self.sim._check_revisions(n)

    def apply(self, entries: Sequence[Entry]) -> None:
        self.changed = True
        for e in entries:
            self.sim._apply(self.n, e)

    def finish(self, rd: Ready[Any]) -> None:
        sim, n = self.sim, self.n
        self.changed = self.changed or rd.soft_state is not None
        n.read_states.extend(rd.read_states)
        if n.read_states:
            sim._serve_reads(n)
        for ctx in rd.dropped_reads:
            waiter = n.waiting_reads.pop(ctx, None)
            if waiter is not None and _reading(*waiter):
                waiter[0].target = (n.core.leader if n.core else None) or waiter[0].target
                waiter[0].retry_at = sim.now + 1
                waiter[0].waiting = False
        for name, kw in rd.events:
            sim._event(n, name, kw)

    def reached(self, step: Step) -> None:
        if self.n.crash_at is step:
            raise _Crashed(f"at its Ready, {step.value}")
