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
