"""A three-node cluster of cores on a lossless in-memory network elects a
leader and replicates proposals to every node."""

from __future__ import annotations

import random

from node.config import CoreConfig
from node.raft.core import RaftCore, Role
from node.raft.messages import PeerMessage
from node.storage import MemoryStorage


def test_three_cores_elect_and_replicate() -> None:
    """Every node applies the same ten proposals in order."""
    ids = ["n1", "n2", "n3"]
    stores = {i: MemoryStorage() for i in ids}
    cores = {
        i: RaftCore(i, [p for p in ids if p != i], stores[i], CoreConfig(), random.Random(n))
        for n, i in enumerate(ids)
    }
    applied: dict[str, list[bytes]] = {i: [] for i in ids}
    queue: list[PeerMessage] = []

    def pump() -> None:
        for i, c in cores.items():
            rd = c.ready()
            stores[i].append(rd.entries)
            if rd.hard_state:
                stores[i].set_hard_state(rd.hard_state)
            queue.extend(rd.messages)
            applied[i].extend(e.data for e in rd.committed_entries if e.data)
            c.advance(rd)

    def run(ticks: int) -> None:
        for _ in range(ticks):
            for c in cores.values():
                c.tick()
            pump()
            while queue:
                m = queue.pop(0)
                cores[m.dst].step(m)
                pump()

    run(100)
    leaders = [c for c in cores.values() if c.role is Role.LEADER]
    assert len(leaders) == 1, f"expected one leader, got {[c.id for c in leaders]}"
    for k in range(10):
        leaders[0].propose(b"v%d" % k)
    run(20)
    want = [b"v%d" % k for k in range(10)]
    assert all(applied[i] == want for i in ids), applied


def test_every_change_of_role_leader_or_term_is_reported() -> None:
    """A node whose peers never answer goes follower -> pre-candidate in the
    same term with no leader: a change of the role alone must still make a
    Ready and be reported in its soft state, as must every later change."""
    store = MemoryStorage()
    core = RaftCore("n1", ["n2", "n3"], store, CoreConfig(), random.Random(1))
    seen: list[str] = []
    for _ in range(200):
        core.tick()
        while core.has_ready():
            rd = core.ready()
            store.append(rd.entries)
            if rd.hard_state:
                store.set_hard_state(rd.hard_state)
            if rd.soft_state is not None:
                seen.append(rd.soft_state.role)
            core.advance(rd)
        assert not core.has_ready()
        # What was reported last is what the node is now.
        assert (seen or ["follower"])[-1] == core.role.value
    assert "pre_candidate" in seen, seen
