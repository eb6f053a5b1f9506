"""The clock-skew fault kind: named on its own, aimed at one node's host,
undone at its heal, and refused up front where clocks cannot be set apart
(every node on this machine, or hosts that share its kernel)."""

from __future__ import annotations

import pytest

from chaos.nemesis import ChaosError, EventLog, Nemesis
from chaos.run import ChaosOptions, run_chaos
from chaos.schedule import CLOCK, KINDS, Step, View, parse_mix, plan
from chaos.workload import KVClient
from tests.test_nemesis import FakeCluster


class FakeHostsCluster(FakeCluster):
    """A fake cluster whose hosts' clocks can be set: offsets by node."""

    def __init__(self, n: int, why: str | None = None) -> None:
        super().__init__(n)
        self.why = why
        self.clock = dict.fromkeys(self.ids, 0.0)

    def clock_unavailable(self) -> str | None:
        return self.why

    def skew_clock(self, node_id: str, offset_s: float) -> None:
        self.clock[node_id] += offset_s


def _steps(n: int, seed: int = 1) -> list[Step]:
    nodes = [f"n{i + 1}" for i in range(n)]
    return plan(seed, nodes, parse_mix("clock"), lambda t: View("n1", "n2"), 60.0)


def test_clock_is_named_on_its_own_and_skews_one_host_by_seconds() -> None:
    """`all` leaves it out; named, each step moves one node's host clock by
    2 to 30 s either way."""
    assert CLOCK not in parse_mix("all") and CLOCK not in KINDS
    steps = _steps(3)
    assert steps and all(s.kind == CLOCK and len(s.targets) == 1 for s in steps)
    assert all(2.0 <= abs(s.offset_s) <= 30.0 for s in steps)
    assert {s.offset_s > 0 for s in steps} == {True, False}


def test_a_clock_fault_is_set_back_at_its_heal() -> None:
    """Inject skews the target's host; heal moves it back by the same."""
    fake = FakeHostsCluster(3)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    for step in _steps(3)[:4]:
        window = nem.inject(step)
        assert fake.clock[step.targets[0]] == step.offset_s
        assert nem.heal(step, window) == []
        assert set(fake.clock.values()) == {0.0}


@pytest.mark.parametrize("cluster, why", [
    (FakeCluster(3), "it has one clock"),
    (FakeHostsCluster(3, why="the hosts share one boot id"), "share one boot id"),
])
def test_a_run_with_clock_faults_is_refused_where_clocks_cannot_move(
        cluster: FakeCluster, why: str) -> None:
    """Before anything starts, the run says why clock skew is unavailable."""
    def factory() -> KVClient:
        raise AssertionError("no client may be made")

    opts = ChaosOptions(duration_s=1.0, mix=parse_mix("clock"), seed=1)
    with pytest.raises(ChaosError, match=f"clock skew is unavailable: .*{why}"):
        run_chaos(cluster, factory, opts)
