"""The simulator's nodes: each Ready carried out on the virtual network and
disk with a crash where the nemesis chose (`_SimReady`), the real state
machine applied, reads served, the invariants observed after every change,
starts, crashes and compaction. A mixin of `Simulation` (sim.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from chaos.invariants import RevisionView
from chaos.invariants_base import RANGE_READS, Violation
from chaos.linearizability import FAIL, OK, UNKNOWN, WRITE
from chaos.sim_base import SimState, _Client, _Crashed, _Node, _reading, _Stop
from chaos.sim_network import WireMessage, describe
from node.errors import NotLeader, ProposalDropped
from node.raft.messages import ConfState, Entry, EntryKind, Snapshot
from node.raft.ready import ReadState, Ready, Step, handle_ready
from node.state.kv import SESSION_EXPIRED, CompactHistory, KVStore, encode_image
from node.state.mvcc import RangeResult, Span

# The fewest newly applied entries worth a snapshot (sim.py says how often
# a node tries).
_COMPACT_MIN_ENTRIES = 3
# A core still asking for a Ready after this many rounds in one step is stuck.
_READY_LOOP_LIMIT = 200


class SimNodes(SimState):
    """The nodes' part of `Simulation`."""

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
        if self._watches is not None:
            diverged = self._watches.applied(n, self.now)
            if diverged:
                self._violations.extend(diverged)
                raise _Stop
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
                if n.core is not None and n.core.leader != n.id:
                    self._stats["follower_reads"] += 1
                if waiter[0].ranged:
                    self._serve_range(n, waiter[0])
                else:
                    value = n.kv.get(waiter[0].key)
                    self._complete(waiter[0], OK, None if value is None else value.decode())
        n.read_states = keep

    def _serve_range(self, n: _Node, c: _Client) -> None:
        """A range read of every key, at `n` once it applied the read index:
        each key's value goes into the history as a read of that key (the
        linearizability check), and a read of the same range at a past
        revision must equal another live replica's read at that revision
        (the history and compaction, node/state/mvcc.py)."""
        mv = n.kv.mvcc
        span = Span(min(self._keys), max(self._keys) + "\0", one=False)
        values = {k: r.value.decode() for k, r in mv.read(span).kvs if k in self._keys}
        self._stats["range_reads"] += 1
        if mv.revision > mv.compacted:
            self._check_past_range(n, span, self._ranges_rng.randrange(mv.compacted,
                                                                     mv.revision + 1))
        self._complete(c, OK, values.get(c.key),
                       {k: values.get(k) for k in self._keys if k != c.key})

    def _check_past_range(self, n: _Node, span: Span, rev: int) -> None:
        mine = _shown(n.kv.mvcc.read(span, rev))
        for other in self._ids:
            m = self._nodes[other]
            if other == n.id or m.core is None:
                continue
            mv = m.kv.mvcc
            if not mv.compacted <= rev <= mv.revision:
                continue
            theirs = _shown(mv.read(span, rev))
            self._stats["range_reads_compared"] += 1
            if mine != theirs:
                self._violations.append(Violation(
                    check=RANGE_READS, tick=self.now,
                    detail=f"{n.id} and {other} read the keys at revision {rev} differently: "
                           f"{mine} vs {theirs}"))
                raise _Stop
            return

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
        if self._watches is not None:
            self._watches.node_down(n.id)
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

    def __init__(self, sim: SimNodes, n: _Node) -> None:
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


def _shown(got: RangeResult) -> list[tuple[str, bytes, int, int, int]]:
    return [(k, r.value, r.create, r.mod, r.version) for k, r in got.kvs]
