"""Watches in the simulator (chaos/sim_watches.py): watchers served by each
node's own WatchHub, moving between nodes as they crash, are checked frame
by frame against the changes the replicas applied. Each check is shown to
catch the bug it is there for."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from chaos.sim import SIM_FAULT_TICKS, Simulation, run_seed
from chaos.sim_nemesis import FAULT_KINDS
from chaos.sim_watches import WATCH_HISTORY, WATCH_STREAM
from node.api_range import WatchEvent, WatchRequest
from node.state.mvcc import Mvcc, Rec
from node.watch import WatchHub

ALL = frozenset(FAULT_KINDS)


def _caught(seeds: range) -> list[str]:
    return [r.violations[0][0] for r in
            (run_seed(s, nodes=5, faults=ALL, ticks=SIM_FAULT_TICKS) for s in seeds)
            if r.violations]


def test_watchers_follow_every_change_across_crashes_and_moves() -> None:
    """With every fault: no violation, and the watchers got events, progress
    notifications, moved to other nodes and met connections that took
    nothing for a turn."""
    seen: dict[str, int] = {}
    for seed in range(12):
        r = Simulation(seed, nodes=5).run()
        assert r.violations == [], (seed, r.violations)
        for k, v in r.stats.items():
            seen[k] = seen.get(k, 0) + v
    for what in ("watch_events", "watch_progress", "watch_moves", "watch_stalls"):
        assert seen.get(what, 0) > 0, f"no run exercised {what}"
    assert seen.get("watch_unrecorded", 0) == 0


def test_a_hub_that_loses_an_event_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that leaves out the last event of a frame of several is caught."""
    collect = WatchHub._collect

    def lossy(self: WatchHub, w: Any) -> tuple[list[WatchEvent], int]:
        events, upto = collect(self, w)
        return events[:-1] if len(events) > 1 else events, upto

    monkeypatch.setattr(WatchHub, "_collect", lossy)
    caught = _caught(range(8))
    assert caught and set(caught) == {WATCH_STREAM}, caught


def test_a_watch_resumed_one_revision_late_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watcher that moves to another node resumes from the revision it was
    owed; a hub that starts it one later skips a revision, and that is caught."""
    start: Callable[..., Any] = WatchHub.start

    def late(self: WatchHub, route: list[bytes], req: WatchRequest) -> Any:
        if req.start_revision:
            req = WatchRequest(id=req.id, key=req.key, range_end=req.range_end,
                               prefix=req.prefix, start_revision=req.start_revision + 1,
                               progress_ms=req.progress_ms)
        return start(self, route, req)

    monkeypatch.setattr(WatchHub, "start", late)
    caught = _caught(range(8))
    assert caught and set(caught) == {WATCH_STREAM}, caught


def test_replicas_that_apply_different_values_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One put in a hundred, on whichever replica applies it, stores another
    value: the revision's changes then differ between replicas, which the
    watch history check sees as soon as the second replica applies it."""
    put = Mvcc.put
    count = itertools.count()

    def corrupting(self: Mvcc, key: str, value: bytes) -> Rec | None:
        return put(self, key, value + b"!" if next(count) % 100 == 99 else value)

    monkeypatch.setattr(Mvcc, "put", corrupting)
    caught = _caught(range(6))
    assert WATCH_HISTORY in caught, caught
