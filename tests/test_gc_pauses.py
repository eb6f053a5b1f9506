"""The loop's garbage-collection policy (node/gc_pauses.py): collections are
timed and counted; what survives the young generations is frozen at most
every GC_FREEZE_INTERVAL_MS; and, what freezing relies on, a node under
writes, reads and short-lived sessions makes no reference cycles (a cycle
frozen while alive would never be reclaimed)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from node.gc_pauses import GC_FREEZE_INTERVAL_MS, GcPauses
from tests.procs import TestCluster, cluster3
from tests.test_bench import _json

__all__ = ["cluster3"]


@pytest.fixture
def pauses() -> Iterator[GcPauses]:
    p = GcPauses()
    try:
        yield p
    finally:
        p.close()
        gc.unfreeze()


def test_collections_are_timed_counted_and_reset_when_read(pauses: GcPauses) -> None:
    before = list(pauses.collections)
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    gc.collect(0)
    gc.collect(2)
    st = pauses.status()
    assert st["gc_collections"][0] == before[0] + 1 and st["gc_collections"][2] == before[2] + 1
    assert st["gc_collected"] >= 1, "the cycle was found unreachable"
    assert st["gc_max_ms"] >= 0
    assert pauses.status()["gc_max_ms"] == 0.0, "the longest pause resets once read"


def test_survivors_are_frozen_at_most_once_an_interval(pauses: GcPauses) -> None:
    gc.unfreeze()
    kept = [[i] for i in range(1_000)]
    pauses.maybe_freeze(100.0)
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept) and pauses.freezes == 1
    more = [[i] for i in range(1_000)]
    pauses.maybe_freeze(100.0 + GC_FREEZE_INTERVAL_MS / 2000)
    assert gc.get_freeze_count() == frozen and pauses.freezes == 1, "too soon to freeze again"
    pauses.maybe_freeze(100.0 + GC_FREEZE_INTERVAL_MS / 1000)
    assert gc.get_freeze_count() >= frozen + len(more) and pauses.freezes == 2
    assert pauses.status()["gc_freezes"] == 2


def test_a_loaded_node_makes_no_reference_cycles(cluster3: TestCluster) -> None:
    """Writes, linearizable reads at every node, and a session opened and
    closed per client: the collector never finds garbage in a cycle, so
    freezing the survivors leaks nothing. (Start-up may leave a few, once.)"""
    before = {n: st["gc_collected"] for n, st in cluster3.statuses().items()}
    _json(cluster3, "write", "--clients", "8", "--duration", "1", "--read-ratio", "0.3")
    _json(cluster3, "write", "--shape", "per-connection", "--clients", "4", "--duration", "0.5",
          "--read-ratio", "0.3")
    _json(cluster3, "read", "--clients", "6", "--duration", "0.5", "--keys", "50")
    for n, st in cluster3.statuses().items():
        assert st["gc_freezes"] > 0, f"{n} never froze its survivors"
        made = st["gc_collected"] - before[n]
        assert made == 0, (
            f"{n}'s collector found {made} objects in reference cycles under load: some "
            "request path makes cycles, which freezing can keep forever")
