"""Nemesis runs: the schedule's rules on a fake cluster, the verdict on
planted violations, and `raftctl chaos run` against real processes (a clean
short run, and a lying client that it must catch)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chaos.faults import FaultState
from chaos.nemesis import EventLog, Nemesis, parse_kinds
from chaos.report import (
    ACKED_WRITES,
    FINAL_CLIENT,
    LINEARIZABLE,
    RECOVERY,
    REPLICAS,
    DigestSample,
    RunRecord,
    judge,
    timeline,
)
from chaos.workload import CAS, CAS_FAILED, ClientFactory, KVClient, OpRecord
from node.client import WriteResult
from raftctl import chaos_cmd
from raftctl.cluster import Cluster
from tests.procs import TestCluster, chaos_run, cluster3, make_cluster

__all__ = ["cluster3"]


# --- the schedule, on a fake cluster ---------------------------------------------------


@dataclass
class _State:
    id: str
    process: str
    status: dict[str, Any] | None


class FakeCluster:
    """Processes as a dict; every call recorded."""

    def __init__(self, n: int) -> None:
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.proc = dict.fromkeys(self.ids, "running")
        self.faults = FaultState()

    def node_ids(self) -> list[str]:
        return list(self.ids)

    def _set(self, n: str, want: str, to: str) -> int:
        assert self.proc[n] == want, f"{n} is {self.proc[n]}, not {want}"
        self.proc[n] = to
        return 1

    def kill(self, n: str) -> int:
        return self._set(n, "running", "down")

    def start(self, n: str) -> int:
        return self._set(n, "down", "running")

    def pause(self, n: str) -> int:
        return self._set(n, "running", "paused")

    def resume(self, n: str) -> int:
        return self._set(n, "paused", "running")

    def apply_faults(self, state: FaultState) -> list[str]:
        self.faults = state
        return []

    def status(self, timeout_s: float = 1.0) -> list[_State]:
        return [_State(n, p, {"role": "follower", "term": 1, "applied": 0, "commit": 0}
                       if p == "running" else None) for n, p in self.proc.items()]

    def digest(self, node_id: str) -> dict[str, Any] | None:
        return {"applied": 0, "digest": "d"}

    def down(self) -> int:
        return sum(1 for p in self.proc.values() if p != "running")


def _nemesis(fake: FakeCluster, kinds: str, seed: int) -> tuple[Nemesis, EventLog]:
    log = EventLog(lambda: 0.0)
    return Nemesis(fake, parse_kinds(kinds), random.Random(seed), log), log


@pytest.mark.parametrize("n", [3, 5])
def test_nemesis_never_takes_down_a_majority(n: int) -> None:
    """Without the majority kind, killed plus paused nodes stay a minority."""
    fake = FakeCluster(n)
    nem, log = _nemesis(fake, "kill,pause,partition,netem", seed=n)
    worst = 0
    for i in range(400):
        nem.step(leader=fake.ids[i % n])
        worst = max(worst, fake.down())
    assert worst == (n - 1) // 2
    assert not [e for e in log.events if e.error]


def test_majority_nemesis_kills_a_majority_then_restarts_it() -> None:
    """The majority kind kills more than half the nodes, and its repair restarts them."""
    fake = FakeCluster(5)
    nem, _ = _nemesis(fake, "majority", seed=1)
    nem.step(leader="n2")
    assert fake.down() == 3 and fake.proc["n2"] == "down"
    nem.step(leader=None)
    assert fake.down() == 0


def test_same_seed_gives_the_same_schedule() -> None:
    """A seed replays the same faults on the same targets."""
    runs = []
    for _ in range(2):
        fake = FakeCluster(5)
        nem, log = _nemesis(fake, "all", seed=42)
        for i in range(60):
            nem.step(leader=f"n{i % 5 + 1}")
        runs.append([e.detail for e in log.events])
    assert runs[0] == runs[1]
    assert any("killed" in d for d in runs[0]) and any("paused" in d for d in runs[0])


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


def test_clock_nemesis_skews_one_host_and_sets_it_back() -> None:
    """The clock kind moves one host's clock by 2-30 s, the next clock step
    sets it back, and heal leaves every clock where it was."""
    fake = FakeHostsCluster(3)
    nem, log = _nemesis(fake, "clock", seed=5)
    nem.step(leader="n1")
    skewed = [n for n, off in fake.clock.items() if off]
    assert len(skewed) == 1 and 2.0 <= abs(fake.clock[skewed[0]]) <= 30.0, fake.clock
    nem.step(leader="n1")
    assert all(off == 0.0 for off in fake.clock.values()), fake.clock
    nem.step(leader="n2")
    assert nem.heal() == []
    assert all(abs(off) < 1e-9 for off in fake.clock.values()), fake.clock
    assert [e.kind for e in log.events] == ["clock", "clock-reset", "clock", "heal",
                                            "clock-reset"]


def test_clock_nemesis_is_refused_where_clocks_cannot_differ() -> None:
    """A cluster on one machine, or on hosts that share a kernel, gets no
    clock fault: the run stops before it starts, saying why; `all` never
    includes clock."""
    from chaos.nemesis import ChaosError, ChaosOptions, run_chaos

    assert "clock" not in parse_kinds("all")
    shared = FakeHostsCluster(3, why="hosts share one kernel")
    for cluster, why in ((FakeCluster(3), "run on this machine"), (shared, "share one kernel")):
        with pytest.raises(ChaosError, match=f"clock skew is unavailable: .*{why}"):
            run_chaos(cluster, _no_client, ChaosOptions(kinds=("clock",), duration_s=1))
    assert all(off == 0.0 for off in shared.clock.values())


def _no_client() -> KVClient:
    raise AssertionError("a refused run makes no client")


def test_heal_leaves_every_node_running_and_every_link_up() -> None:
    """After any schedule, heal resumes, restarts and clears everything."""
    fake = FakeCluster(3)
    nem, _ = _nemesis(fake, "all", seed=7)
    for i in range(25):
        nem.step(leader=f"n{i % 3 + 1}")
    assert nem.heal() == []
    assert fake.down() == 0
    assert fake.faults.is_clear()


def test_unknown_nemesis_is_refused() -> None:
    """`--nemesis` names only known kinds."""
    with pytest.raises(ValueError, match="unknown nemesis fire"):
        parse_kinds("kill,fire")


# --- the verdict, on planted records ------------------------------------------------------


def _op(client: str, kind: str, key: str, value: str | None, inv: int, comp: int,
        outcome: str = "ok", **kw: Any) -> OpRecord:
    return OpRecord(client=client, kind=kind, key=key, value=value, invoke=inv, complete=comp,
                    invoke_s=inv / 10, complete_s=comp / 10, outcome=outcome, **kw)


def _record(ops: list[OpRecord], digests: list[DigestSample] | None = None,
            recovery_s: float | None = 0.5) -> RunRecord:
    final = {n: DigestSample(t=9.0, node=n, applied=40, digest="same") for n in ("n1", "n2")}
    return RunRecord(seed=1, duration_s=1.0, interval_s=1.0, nemeses=["kill"], clients=2,
                     keys=["k"], nodes=["n1", "n2"], recovery_bound_s=2.0, ops=ops,
                     digests=digests or [], final_digests=final, converged=True,
                     recovery_s=recovery_s)


def _clean_ops() -> list[OpRecord]:
    return [
        _op("c1", "write", "k", "a", 1, 2),
        _op("c2", "write", "k", "b", 3, 6),
        _op("c1", "read", "k", "b", 4, 7),
        _op("c2", CAS, "k", "c", 8, 9, expected="b"),
        _op("c1", "write", "k", "d", 10, 20, outcome="unknown", error="unknown"),
        _op("c2", CAS, "k", "e", 11, 12, outcome="fail", expected="b", found="c",
            error=CAS_FAILED),
        _op(FINAL_CLIENT, "read", "k", "d", 30, 31),
    ]


def test_judge_accepts_a_clean_record() -> None:
    """A history with an unknown write that took effect late is fine."""
    v = judge(_record(_clean_ops()))
    assert v.ok, v.violations


def test_judge_reports_a_lost_acknowledged_write() -> None:
    """An acknowledged write that the final read does not reflect is a violation."""
    ops = [_op("c1", "write", "k", "a", 1, 2), _op("c2", "write", "k", "b", 3, 4),
           _op(FINAL_CLIENT, "read", "k", "a", 5, 6)]
    v = judge(_record(ops))
    assert not v.ok
    lost = [x.message for x in v.violations if x.check == ACKED_WRITES]
    assert lost and "'b'" in lost[0] and "lost" in lost[0]
    assert any(x.check == LINEARIZABLE for x in v.violations)


def test_judge_reports_a_stale_read() -> None:
    """A read that returns an overwritten value after the overwrite is not linearizable."""
    ops = [*_clean_ops()[:3], _op("c2", "read", "k", "a", 7, 8)]
    ops.append(_op(FINAL_CLIENT, "read", "k", "b", 30, 31))
    v = judge(_record(ops))
    assert [x.check for x in v.violations] == [LINEARIZABLE]


def test_judge_reports_two_cas_from_the_same_value() -> None:
    """Two compare-and-sets cannot both succeed from one value of a key."""
    ops = [_op("c1", "write", "k", "a", 1, 2),
           _op("c1", CAS, "k", "b", 3, 4, expected="a"),
           _op("c2", CAS, "k", "c", 5, 6, expected="a"),
           _op(FINAL_CLIENT, "read", "k", "c", 7, 8)]
    v = judge(_record(ops))
    assert any("both succeeded" in x.message for x in v.violations)


def test_judge_reports_differing_digests_at_one_index() -> None:
    """Two nodes with different state at the same applied index is a violation."""
    digests = [DigestSample(t=1.0, node="n1", applied=7, digest="aaa"),
               DigestSample(t=1.2, node="n2", applied=7, digest="bbb"),
               DigestSample(t=1.3, node="n2", applied=8, digest="ccc")]
    v = judge(_record(_clean_ops(), digests))
    assert [x.check for x in v.violations] == [REPLICAS]
    assert "applied index 7" in v.violations[0].message


def test_judge_reports_slow_recovery() -> None:
    """No write acknowledged within the bound after healing is a violation."""
    v = judge(_record(_clean_ops(), recovery_s=None))
    assert [x.check for x in v.violations] == [RECOVERY]


def test_timeline_counts_outcomes_per_second() -> None:
    """Each second counts the operations completed in it; a cas mismatch was answered."""
    rows = timeline(_record(_clean_ops()))
    assert [(r.ok, r.fail, r.unknown) for r in rows] == [(4, 0, 0), (1, 0, 0), (0, 0, 1),
                                                         (1, 0, 0)]


def test_chaos_run_needs_a_running_cluster(tmp_path: Path) -> None:
    """Against a cluster that is not up, `chaos run` fails with one clear
    line and exit 3, cluster unavailable (raftctl/exits.py)."""
    r = CliRunner().invoke(chaos_cmd.chaos, ["run", "--duration", "1s"],
                           obj=Cluster(tmp_path / "run", "test"))
    assert r.exit_code == 3
    assert "not up" in r.output and len(r.output.strip().splitlines()) == 1


# --- real runs ------------------------------------------------------------------------------


# ZeroMQ in transport mode has its 60 s run in tests/test_chaos_long.py.
@pytest.mark.parametrize("transport", ["udp"])
def test_short_chaos_run_with_every_nemesis_is_clean(cluster3: TestCluster) -> None:
    """Nine seconds of every nemesis on three nodes over UDP with the faults
    in the transport: faults happen, clients get answers, the verdict is clean."""
    code, rep = chaos_run(cluster3, "--duration", "9s", "--interval", "1s", "--nemesis", "all",
                       "--seed", "3", "--recovery-timeout", "15s")
    assert code == 0, rep["verdict"]
    assert rep["verdict"]["ok"]
    kinds = {e["kind"] for e in rep["events"] if not e.get("error")}
    assert len(kinds & {"kill", "pause", "partition", "netem"}) >= 2, kinds
    assert rep["operations"]["write"]["ok"] > 20
    assert rep["recovery_s"] is not None


class _Liar:
    """Acknowledges every put without sending it; everything else is real."""

    def __init__(self, real: KVClient) -> None:
        self.real = real

    def put(self, key: str, value: bytes) -> WriteResult:
        return WriteResult(True, None, 1)

    def get(self, key: str) -> bytes | None:
        return self.real.get(key)

    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult:
        return self.real.cas(key, expected, value)

    def close(self) -> None:
        self.real.close()


@pytest.fixture
def zmq3(tmp_path: Path) -> Iterator[TestCluster]:
    """A running 3-node cluster; the planted lie does not depend on the transport."""
    for c in make_cluster(tmp_path, 3):
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


def test_a_client_that_acknowledges_unsent_writes_is_caught(
        zmq3: TestCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost acknowledged write, planted by a lying client, fails the run with exit code 1."""
    real = chaos_cmd.client_factory
    made: list[int] = []

    def lying_factory(c: Any) -> ClientFactory:
        make = real(c)

        def one() -> KVClient:
            made.append(1)
            return _Liar(make()) if len(made) == 1 else make()
        return one

    monkeypatch.setattr(chaos_cmd, "client_factory", lying_factory)
    code, rep = chaos_run(zmq3, "--duration", "3s", "--interval", "10s", "--clients", "2",
                       "--keys", "1", "--seed", "5")
    assert code == 1
    checks = {v["check"] for v in rep["verdict"]["violations"]}
    assert LINEARIZABLE in checks, rep["verdict"]
