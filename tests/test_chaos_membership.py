"""The membership nemesis of `chaos run`: the schedule makes remove, replace
and grow faults (named on their own, never in `all`), the nemesis undoes
each at its heal, and a real run with kills and partitions around them
stays linearizable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.nemesis import EventLog, Nemesis
from chaos.schedule import KINDS, MEMBERSHIP, MEMBERSHIP_CHANGES, Step, View, parse_mix, plan
from tests.procs import TestCluster, chaos_run, make_cluster, start_and_settle
from tests.test_nemesis import FakeCluster


def _steps(n: int, mix: str, seed: int = 1) -> list[Step]:
    nodes = [f"n{i + 1}" for i in range(n)]
    return plan(seed, nodes, parse_mix(mix), lambda t: View("n1", "n2"), 60.0)


def test_membership_is_named_on_its_own() -> None:
    """`all` leaves it out; named, it is taken, and needs three nodes."""
    assert MEMBERSHIP not in parse_mix("all") and MEMBERSHIP not in KINDS
    assert parse_mix("all,membership:2")[MEMBERSHIP] == 2.0
    steps = _steps(3, "membership")
    assert {s.change for s in steps} == set(MEMBERSHIP_CHANGES)
    for s in steps:
        assert s.kind == MEMBERSHIP
        assert (s.targets == ()) == (s.change == "grow"), s
    with pytest.raises(ValueError, match="needs at least 3 nodes"):
        _steps(2, "membership")


class FakeMembers:
    """Members as sets; every call recorded."""

    def __init__(self, voters: list[str]) -> None:
        self.voters = set(voters)
        self.learners: set[str] = set()
        self.calls: list[str] = []
        self._next = len(voters) + 1

    def add(self, name: str | None = None) -> str:
        node = name or f"n{self._next}"
        self._next += name is None
        self.learners.add(node)
        self.calls.append(f"add {node}")
        return node

    def promote(self, node: str, wait_s: float) -> None:
        self.learners.remove(node)
        self.voters.add(node)
        self.calls.append(f"promote {node}")

    def remove(self, node: str) -> None:
        self.voters.discard(node)
        self.calls.append(f"remove {node}")

    def replace(self, node: str, by: str | None = None) -> str:
        new = by or f"n{self._next}"
        self._next += by is None
        self.voters = (self.voters - {node}) | {new}
        self.calls.append(f"replace {node} by {new}")
        return new


@pytest.mark.parametrize("change", MEMBERSHIP_CHANGES)
def test_each_membership_fault_is_undone_at_its_heal(change: str) -> None:
    """Remove comes back, replace swaps back, grow shrinks again: the next
    fault starts from the same voters."""
    fake, members = FakeCluster(3), FakeMembers(["n1", "n2", "n3"])
    nem = Nemesis(fake, EventLog(lambda: 0.0), members=members)
    step = next(s for s in _steps(3, "membership", seed=4) if s.change == change)
    w = nem.inject(step)
    assert w.error is None and members.voters != {"n1", "n2", "n3"}
    nem.heal(step, w)
    assert members.voters == {"n1", "n2", "n3"} and not members.learners, members.calls


def test_an_unhealed_membership_fault_is_undone_by_the_final_heal() -> None:
    """A run cut short still leaves the cluster's voters as they were."""
    fake, members = FakeCluster(3), FakeMembers(["n1", "n2", "n3"])
    nem = Nemesis(fake, EventLog(lambda: 0.0), members=members)
    for s in [s for s in _steps(3, "membership", seed=4)][:3]:
        nem.inject(s)
    assert nem.heal_all() == []
    assert members.voters == {"n1", "n2", "n3"}, members.calls


def test_without_the_supervisor_a_membership_fault_fails_visibly() -> None:
    """A cluster handed without membership changes records the fault as failed."""
    nem = Nemesis(FakeCluster(3), EventLog(lambda: 0.0))
    w = nem.inject(_steps(3, "membership")[0])
    assert w.error is not None and "chaos run" in w.error


@pytest.fixture
def zmq3(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 3) as c:
        start_and_settle(c)
        yield c


def test_membership_kill_and_partition_stay_linearizable(zmq3: TestCluster) -> None:
    """`chaos run --nemesis membership,kill,partition`: members removed,
    replaced and added among kills and partitions, and the verdict is clean
    (linearizable, no acknowledged write lost, replicas converge)."""
    code, rep = chaos_run(zmq3, "--duration", "10s", "--interval", "1.5s", "--nemesis",
                          "membership:2,kill,partition", "--seed", "5",
                          "--recovery-timeout", "15s")
    assert code == 0, rep["verdict"]
    changes = [e for e in rep["events"] if e["kind"] == MEMBERSHIP]
    assert changes and not [e for e in changes if e.get("error")], changes
    assert sorted(zmq3.node_ids()) == ["n1", "n2", "n3"]
    assert rep["operations"]["write"]["ok"] > 50
