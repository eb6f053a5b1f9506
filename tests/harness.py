"""A deterministic in-memory network of `RaftCore`s for the protocol tests:
seeded message loss, cuts, crashes and restarts; no sockets, clocks or sleeps.

Every `Ready` is handled in the order `node/raft/ready.py` prescribes, and the
harness checks persist-before-send, election safety and state-machine safety
as it goes, so every test that uses it also checks those properties.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from chaos.sim_network import SimNetwork
from node.config import CoreConfig
from node.raft.confchange import initial
from node.raft.core import RaftCore, Role
from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Hup,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    PeerMessage,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from node.raft.progress import Progress
from node.raft.ready import ReadState, Ready, Step, handle_ready
from node.storage import MemoryStorage

MsgFilter = Callable[[PeerMessage], bool]

# The state machine of a test node is the list of (index, data) of the normal
# entries it applied; a snapshot holds that list, msgpack-encoded.
_SM_DECODER = msgspec.msgpack.Decoder(list[tuple[int, bytes]])


def ids_for(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def small_config(**kw: Any) -> CoreConfig:
    """Small timeouts as in etcd's tests: election 10 ticks, heartbeat 1; a
    compaction keeps no catch-up tail unless a test asks for one."""
    base: dict[str, Any] = {"election_ticks": 10, "heartbeat_ticks": 1, "catchup_entries": 0}
    base.update(kw)
    return CoreConfig(**base)


# --- rendering (scenario output, assertion messages) ------------------------


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def fmt_entries(entries: Sequence[Entry], term: int | None = None) -> str:
    """`[4..6]` when every entry has `term`, else runs with terms: `[4..5@1,6@2]`."""
    if not entries:
        return "[]"
    if term is not None and all(e.term == term for e in entries):
        return f"[{_span(entries[0].index, entries[-1].index)}]"
    runs: list[str] = []
    start = entries[0]
    prev = entries[0]
    for e in [*entries[1:], None]:
        if e is None or e.term != prev.term:
            runs.append(f"{_span(start.index, prev.index)}@{prev.term}")
            if e is not None:
                start = e
        if e is not None:
            prev = e
    return "[" + ",".join(runs) + "]"


def fmt_msg(m: PeerMessage) -> str:
    """One message on one line: `n1->n2 ae term=2 prev=(3,1) entries=[4..6] commit=3`.
    Pairs in parentheses are (index,term)."""
    head = f"{m.src}->{m.dst}"
    if isinstance(m, AppendEntries):
        return (f"{head} ae term={m.term} prev=({m.prev_index},{m.prev_term}) "
                f"entries={fmt_entries(m.entries, m.term)} commit={m.commit}")
    if isinstance(m, AppendEntriesResponse):
        if m.success:
            return f"{head} aer term={m.term} index={m.index}"
        return (f"{head} aer term={m.term} reject index={m.index} last={m.last_index} "
                f"hint=({m.conflict_index},{m.conflict_term})")
    if isinstance(m, Heartbeat):
        return f"{head} hb term={m.term} commit={m.commit} seq={m.seq}"
    if isinstance(m, HeartbeatResponse):
        return f"{head} hbr term={m.term} seq={m.seq}"
    if isinstance(m, RequestVote):
        flags = (" prevote" if m.prevote else "") + (" transfer" if m.transfer else "")
        return f"{head} rv term={m.term} last=({m.last_index},{m.last_term}){flags}"
    if isinstance(m, RequestVoteResponse):
        verdict = "granted" if m.granted else "rejected"
        return f"{head} rvr term={m.term} {verdict}" + (" prevote" if m.prevote else "")
    if isinstance(m, InstallSnapshot):
        return (f"{head} is term={m.term} snap=({m.meta.index},{m.meta.term}) "
                f"offset={m.offset} len={len(m.data)} size={m.size}"
                + (" done" if m.done else ""))
    if isinstance(m, InstallSnapshotResponse):
        return (f"{head} isr term={m.term} snap=({m.meta.index},{m.meta.term}) "
                f"next={m.next_offset}")
    if isinstance(m, ReadIndex):
        return f"{head} ri term={m.term} ctx={_fmt_value(m.ctx)}"
    if isinstance(m, ReadIndexResponse):
        answer = f"index={m.index}" if m.ok else "refused"
        return f"{head} rir term={m.term} ctx={_fmt_value(m.ctx)} {answer}"
    assert isinstance(m, TimeoutNow)
    return f"{head} tn term={m.term}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode(errors="backslashreplace")
    return str(v)


def fmt_event(node: str, term: int, name: str, kw: dict[str, Any]) -> str:
    parts = [f"{node} {name} term={term}"]
    parts.extend(f"{k}={_fmt_value(v)}" for k, v in kw.items())
    return " ".join(parts)


def _ready_is_empty(rd: Ready) -> bool:
    return not (
        rd.must_sync() or rd.messages or rd.committed_entries or rd.read_states
        or rd.dropped_reads or rd.soft_state is not None or rd.events
    )


# --- the network ------------------------------------------------------------


@dataclass
class Node:
    """One node: durable storage, the (volatile) core and state machine."""

    id: str
    storage: MemoryStorage
    seed: int
    core: RaftCore | None = None
    applied: list[tuple[int, bytes]] = field(default_factory=list)
    applied_index: int = 0
    reads_waiting: list[ReadState] = field(default_factory=list)
    reads_served: list[ReadState] = field(default_factory=list)
    reads_dropped: list[bytes] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    readies: int = 0
    restarts: int = 0


class Network:
    """etcd-style test network: `tick`, `stabilize`, `send`, `drop`, `cut`,
    `isolate`, `recover`, `crash`, `restart`, and inspection helpers.

    Messages that nodes send wait in `queue` until delivered; link faults act
    at delivery, so a cut also loses what was in flight on it.
    """

    def __init__(
        self,
        n: int | Sequence[str] = 3,
        config: CoreConfig | None = None,
        seed: int = 0,
        storages: dict[str, MemoryStorage] | None = None,
    ) -> None:
        self.ids = ids_for(n) if isinstance(n, int) else list(n)
        # The cluster's initial configuration; nodes added later join it.
        self.initial = list(self.ids)
        self.config = config or small_config()
        self.rng = random.Random(seed)
        self.nodes: dict[str, Node] = {}
        for k, nid in enumerate(self.ids):
            store = (storages or {}).get(nid) or MemoryStorage()
            self.nodes[nid] = Node(nid, store, seed=seed * 1000 + k)
            self._start(nid)
        self.queue: list[PeerMessage] = []
        self.sent: list[PeerMessage] = []
        self.dropped: list[PeerMessage] = []
        self.lines: list[str] = []
        # Link faults: the simulator's network model (chaos/sim_network.py);
        # delivery here stays etcd-style, a queue stepped until quiet.
        self.links = SimNetwork(self.rng)
        self._filters: list[MsgFilter] = []
        self._leader_of_term: dict[int, str] = {}
        self._applied_at: dict[int, tuple[int, EntryKind, bytes]] = {}

    # --- nodes --------------------------------------------------------------

    def _start(self, nid: str) -> None:
        node = self.nodes[nid]
        rng = random.Random(node.seed + 7919 * node.restarts)
        if nid in self.initial:
            peers = [p for p in self.initial if p != nid]
            node.core = RaftCore(nid, peers, node.storage, self.config, rng)
        else:
            node.core = RaftCore(nid, [], node.storage, self.config, rng,
                                 base=initial(self.initial))
        snap = node.storage.snapshot()
        node.applied = _SM_DECODER.decode(snap.data) if snap.data else []
        node.applied_index = snap.meta.index
        node.reads_waiting = []

    def core(self, nid: str) -> RaftCore:
        c = self.nodes[nid].core
        if c is None:
            raise AssertionError(f"{nid} is crashed")
        return c

    def add_node(self, nid: str) -> None:
        """Start a new node with an empty log, outside the configuration
        until a change adds it (it learns the rest from the leader)."""
        assert nid not in self.nodes, f"{nid} exists"
        self.ids.append(nid)
        self.nodes[nid] = Node(nid, MemoryStorage(), seed=len(self.ids) * 7 + 1)
        self._start(nid)

    def live(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].core is not None]

    def crash(self, nid: str) -> None:
        """Lose everything volatile: the core, the state machine, its inbox."""
        self.nodes[nid].core = None
        self.queue = [m for m in self.queue if m.dst != nid]
        self.lines.append(f"{nid} crashed")

    def restart(self, nid: str) -> None:
        """Start a new core from what the node's storage holds."""
        self.nodes[nid].restarts += 1
        self._start(nid)
        c = self.core(nid)
        self.lines.append(
            f"{nid} restarted term={c.term} vote={c.vote} last=({c.log.last_index()},"
            f"{c.log.last_term()}) commit={c.log.commit}")

    # --- Ready handling -------------------------------------------------------

    def process(self, nid: str) -> Ready | None:
        """Handle one Ready of `nid` with `handle_ready`, the routine the
        runner and the simulator use (node/raft/ready.py)."""
        node = self.nodes[nid]
        c = node.core
        if c is None or not c.has_ready():
            return None
        node.readies += 1
        return handle_ready(c, _HarnessReady(self, node))

    def _check_sendable(self, nid: str, msgs: Sequence[PeerMessage]) -> None:
        """Persist before send (§5.1): what a message promises is on disk.
        A stored higher term also keeps an older term's promise: the node can
        never act in that term again."""
        st = self.nodes[nid].storage.initial_state()
        last = st.snapshot.index + len(st.entries)
        stored_term = st.hard_state.term
        for m in msgs:
            assert m.term <= stored_term or (isinstance(m, RequestVote) and m.prevote) or (
                isinstance(m, RequestVoteResponse) and m.prevote
            ), f"{nid} sent {fmt_msg(m)} before persisting term {m.term}"
            if m.term < stored_term:
                continue
            if isinstance(m, RequestVoteResponse) and m.granted and not m.prevote:
                assert st.hard_state.vote == m.dst, (
                    f"{nid} granted a vote before persisting it: {fmt_msg(m)}, "
                    f"stored {st.hard_state}")
            if isinstance(m, AppendEntriesResponse) and m.success:
                assert m.index <= last, f"{nid} acked {m.index} but stored up to {last}"

    def _apply(self, node: Node, entries: Sequence[Entry]) -> None:
        st = node.storage.initial_state()
        stored = st.snapshot.index + len(st.entries)
        assert entries[-1].index <= stored, (
            f"{node.id} applies {entries[-1].index} before storing it")
        assert entries[0].index == node.applied_index + 1, (
            f"{node.id} applies {entries[0].index} after {node.applied_index}")
        for e in entries:
            # State machine safety (§5.4.3): one entry per index, cluster-wide.
            seen = self._applied_at.setdefault(e.index, (e.term, e.kind, e.data))
            assert seen == (e.term, e.kind, e.data), (
                f"{node.id} applied {e} at {e.index} where another node applied {seen}")
            if e.kind is EntryKind.NORMAL:
                node.applied.append((e.index, e.data))
        node.applied_index = entries[-1].index
        self.lines.append(f"{node.id} apply {_span(entries[0].index, entries[-1].index)}")

    def _serve_reads(self, node: Node) -> None:
        keep: list[ReadState] = []
        for rs in node.reads_waiting:
            if rs.index <= node.applied_index:
                node.reads_served.append(rs)
                self.lines.append(
                    f"{node.id} read_served ctx={_fmt_value(rs.ctx)} index={rs.index}")
            else:
                keep.append(rs)
        node.reads_waiting = keep

    def process_all(self) -> bool:
        """Handle one Ready of every live node; True if any had one."""
        handled = [self.process(nid) for nid in self.live()]
        return any(rd is not None for rd in handled)

    # --- messages -------------------------------------------------------------

    def _lost(self, m: PeerMessage) -> bool:
        if self.nodes[m.dst].core is None:
            return True
        if any(f(m) for f in self._filters):
            return True
        return self.links.lost(m.src, m.dst)

    def deliver(self, only: MsgFilter | None = None, drop_to: Iterable[str] = ()) -> int:
        """Step every queued message (or those matching `only`) into its
        target once; messages sent in response stay queued. Returns how many
        arrived."""
        dropped_to = set(drop_to)
        batch = [m for m in self.queue if only is None or only(m)]
        self.queue = [m for m in self.queue if not (only is None or only(m))]
        arrived = 0
        for m in batch:
            if m.dst in dropped_to or self._lost(m):
                self.dropped.append(m)
                self.lines.append(f"{fmt_msg(m)} (dropped)")
                continue
            self.core(m.dst).step(m)
            arrived += 1
        return arrived

    def take(self, pred: MsgFilter) -> list[PeerMessage]:
        """Remove and return the queued messages matching `pred`."""
        out = [m for m in self.queue if pred(m)]
        self.queue = [m for m in self.queue if not pred(m)]
        return out

    def send(self, *msgs: PeerMessage) -> None:
        """Put `msgs` on the wire and run the network until it is quiet."""
        self.queue.extend(msgs)
        self.stabilize()

    def step(self, nid: str, m: Message) -> None:
        """Step a local or peer message into `nid` and handle its Ready."""
        self.core(nid).step(m)
        self.process(nid)

    def stabilize(self, max_rounds: int = 2000) -> None:
        """Handle Readies and deliver messages until nothing moves."""
        for _ in range(max_rounds):
            busy = self.process_all()
            if self.queue:
                self.deliver()
            elif not busy:
                self._check_quiet()
                return
        raise AssertionError(f"network did not stabilize in {max_rounds} rounds")

    def _check_quiet(self) -> None:
        for nid in self.live():
            c = self.core(nid)
            rd = c.ready()
            assert _ready_is_empty(rd), f"{nid}: has_ready() is False but ready() is {rd}"
            c.advance(rd)

    # --- time -----------------------------------------------------------------

    def tick(self, n: int = 1, nodes: Iterable[str] | None = None) -> None:
        """Tick `nodes` (default all live) `n` times, handling Readies after
        each tick; sent messages stay queued."""
        which = list(nodes) if nodes is not None else None
        for _ in range(n):
            for nid in which if which is not None else self.live():
                self.core(nid).tick()
            self.process_all()

    def run(self, ticks: int = 1) -> None:
        """`ticks` times: tick every live node, then stabilize."""
        for _ in range(ticks):
            self.tick()
            self.stabilize()

    def settle(self) -> None:
        """Stabilize, then run one heartbeat interval: a new commit index
        reaches followers with the next append or heartbeat, not at once."""
        self.stabilize()
        self.run(self.config.heartbeat_ticks)

    def run_until(self, cond: Callable[[], bool], max_ticks: int, what: str) -> int:
        """Run tick by tick until `cond()`; returns the ticks it took."""
        for t in range(max_ticks + 1):
            if cond():
                return t
            self.run()
        raise AssertionError(f"{what}: not reached within {max_ticks} ticks")

    # --- faults ---------------------------------------------------------------

    def drop(self, src: str, dst: str, prob: float = 1.0) -> None:
        """Lose messages from `src` to `dst` with probability `prob`."""
        self.links.set_link(src, dst, prob)

    def cut(self, a: str, b: str) -> None:
        self.links.cut(a, b)

    def drop_where(self, pred: MsgFilter) -> None:
        """Lose every message for which `pred` is true (checked at delivery)."""
        self._filters.append(pred)

    def isolate(self, nid: str) -> None:
        self.links.isolate(nid, self.ids)

    def recover(self) -> None:
        """Heal every link fault and drop filter."""
        self.links.heal()
        self._filters.clear()

    # --- client operations ----------------------------------------------------

    def campaign(self, nid: str) -> None:
        """`nid` starts a (pre-)campaign now; the network runs until quiet."""
        self.step(nid, Hup())
        self.stabilize()

    def elect(self, nid: str) -> None:
        self.campaign(nid)
        assert self.role(nid) is Role.LEADER, f"{nid} did not win: {self.role(nid)}"

    def propose(self, nid: str, data: bytes) -> int:
        index = self.core(nid).propose(data)
        self.process(nid)
        return index

    def change(self, nid: str, cc: ConfChange) -> int:
        """Propose a membership change at `nid` (raises what the core raises)."""
        index = self.core(nid).propose_conf_change(cc)
        self.process(nid)
        return index

    def compact(self, nid: str, index: int) -> SnapshotMeta:
        """Snapshot `nid`'s state machine at `index` (applied) and compact."""
        node = self.nodes[nid]
        c = self.core(nid)
        assert index <= node.applied_index, f"{nid} applied only {node.applied_index}"
        meta = c.snapshot_point(index)
        data = msgspec.msgpack.encode([a for a in node.applied if a[0] <= index])
        node.storage.create_snapshot(meta, data)
        c.compact(meta)
        return meta

    # --- inspection -----------------------------------------------------------

    def role(self, nid: str) -> Role:
        return self.core(nid).role

    def term(self, nid: str) -> int:
        return self.core(nid).term

    def leaders(self) -> list[str]:
        return [i for i in self.live() if self.core(i).role is Role.LEADER]

    def leader(self) -> str:
        """The live leader of the highest term."""
        ls = sorted(self.leaders(), key=lambda i: self.term(i))
        assert ls, "no leader"
        return ls[-1]

    def log(self, nid: str) -> list[Entry]:
        c = self.core(nid)
        return list(c.log.entries)

    def log_terms(self, nid: str) -> list[int]:
        """Terms of the entries after the snapshot point, in index order."""
        return [e.term for e in self.core(nid).log.entries]

    def commit(self, nid: str) -> int:
        return self.core(nid).log.commit

    def applied(self, nid: str) -> list[bytes]:
        return [d for _, d in self.nodes[nid].applied]

    def hard_state(self, nid: str) -> HardState:
        return self.nodes[nid].storage.initial_state().hard_state

    def progress(self, leader: str, peer: str) -> Progress:
        return self.core(leader).progress[peer]

    def sent_where(self, pred: MsgFilter) -> list[PeerMessage]:
        return [m for m in self.sent if pred(m)]

    def status_lines(self) -> list[str]:
        out: list[str] = []
        for nid in self.ids:
            node = self.nodes[nid]
            if node.core is None:
                out.append(f"{nid} crashed")
                continue
            c = node.core
            out.append(
                f"{nid} {c.role.value} term={c.term} vote={c.vote} lead={c.leader} "
                f"last=({c.log.last_index()},{c.log.last_term()}) commit={c.log.commit} "
                f"applied={node.applied_index}")
            if c.role is Role.LEADER:
                for p in c.peers:
                    pr = c.progress[p]
                    out.append(f"  {p} {pr.state.value} match={pr.match} next={pr.next} "
                               f"inflight={len(pr.inflight)}")
        return out

    def log_line(self, nid: str) -> str:
        c = self.core(nid)
        snap = c.log.snapshot
        return (f"{nid} snap=({snap.index},{snap.term}) entries="
                f"{fmt_entries(c.log.entries)} commit={c.log.commit}")


def seeded_storage(terms: Sequence[int], term: int = 0, vote: str | None = None,
                   commit: int = 0) -> MemoryStorage:
    """A storage holding entries 1..len(terms) with those terms."""
    st = MemoryStorage()
    st.append([Entry(t, i + 1, EntryKind.NORMAL, b"") for i, t in enumerate(terms)])
    st.set_hard_state(HardState(max([term, *terms]), vote, commit))
    return st


class _HarnessReady:
    """The harness's side of each step of a Ready: messages queued (after
    checking that what they promise is stored), storage synced at once, the
    list state machine, and every step written to the scenario lines."""

    def __init__(self, net: Network, node: Node) -> None:
        self.net = net
        self.node = node

    def reconfigure(self, conf: ConfState) -> None:
        """Nothing to connect: the harness delivers to any node by its id."""

    def send(self, messages: Sequence[PeerMessage]) -> None:
        self.net._check_sendable(self.node.id, messages)
        for m in messages:
            self.net.lines.append(fmt_msg(m))
        self.net.queue.extend(messages)
        self.net.sent.extend(messages)

    def persist(self, rd: Ready) -> None:
        st = self.node.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        st.sync()

    def install(self, snapshot: Snapshot) -> None:
        self.node.applied = _SM_DECODER.decode(snapshot.data) if snapshot.data else []
        self.node.applied_index = snapshot.meta.index

    def apply(self, entries: Sequence[Entry]) -> None:
        self.net._apply(self.node, entries)

    def finish(self, rd: Ready) -> None:
        net, node = self.net, self.node
        term = node.core.term if node.core is not None else 0
        for name, kw in rd.events:
            node.events.append((name, kw))
            net.lines.append(fmt_event(node.id, term, name, kw))
            if name == "became_leader":
                first = net._leader_of_term.setdefault(term, node.id)
                assert first == node.id, f"election safety: {first} and {node.id} lead term {term}"
        node.reads_waiting.extend(rd.read_states)
        for ctx in rd.dropped_reads:
            node.reads_dropped.append(ctx)
            net.lines.append(f"{node.id} read_dropped ctx={_fmt_value(ctx)}")
        net._serve_reads(node)

    def reached(self, step: Step) -> None:
        """Nothing happens between the steps here."""
