"""Nemesis runs: carrying out a schedule on a fake cluster, the verdict on
planted violations, and `raftctl chaos run` against real processes (a clean
short run, and a lying client that it must catch)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chaos.checks import ACKED_WRITES, LINEARIZABLE
from chaos.faults import FaultState
from chaos.invariants import APPLIED_STATE
from chaos.nemesis import EventLog, Nemesis
from chaos.record import FINAL_CLIENT, DigestSample, RunRecord
from chaos.report import RECOVERY, judge, timeline
from chaos.schedule import Step, View, parse_mix, plan
from chaos.workload import CAS, CAS_FAILED, ClientFactory, KVClient, OpRecord
from node.client import WriteResult
from raftctl import chaos_cmd
from raftctl.cluster import Cluster
from tests.procs import TestCluster, chaos_run, cluster3, make_cluster

__all__ = ["cluster3"]


# --- carrying out a schedule, on a fake cluster ------------------------------------------


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
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()  # calls that raise

    def node_ids(self) -> list[str]:
        return list(self.ids)

    def _set(self, call: str, n: str, want: str, to: str) -> int:
        self.calls.append((call, n))
        if call in self.fail:
            raise RuntimeError(f"{call} {n} refused")
        assert self.proc[n] == want, f"{n} is {self.proc[n]}, not {want}"
        self.proc[n] = to
        return 1

    def kill(self, n: str) -> int:
        return self._set("kill", n, "running", "down")

    def stop(self, n: str) -> int:
        return self._set("stop", n, "running", "down")

    def start(self, n: str) -> int:
        return self._set("start", n, "down", "running")

    def pause(self, n: str) -> int:
        return self._set("pause", n, "running", "paused")

    def resume(self, n: str) -> int:
        return self._set("resume", n, "paused", "running")

    def compact(self, n: str) -> dict[str, Any]:
        self.calls.append(("compact", n))
        return {"started": True}

    def transfer(self, to: str) -> str:
        self.calls.append(("transfer", to))
        return "n1"

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


def _steps(n: int, mix: str, seed: int, leader: str = "n1") -> list[Step]:
    nodes = [f"n{i + 1}" for i in range(n)]
    return plan(seed, nodes, parse_mix(mix), lambda t: View(leader, "n2"), 60.0)


@pytest.mark.parametrize("n", [3, 5])
def test_every_fault_is_healed_before_the_next(n: int) -> None:
    """Each step's heal brings back its nodes and clears its links, so the
    next fault starts from a whole cluster; no action fails on the way."""
    fake = FakeCluster(n)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    for step in _steps(n, "all", seed=n):
        w = nem.inject(step)
        nem.heal(step, w)
        assert fake.down() == 0, step
        assert fake.faults.is_clear(), step
        assert w.end_s is not None and w.error is None, w
    assert not [e for e in nem.log.events if e.error]


def test_kill_all_kills_every_node_and_its_heal_restarts_them() -> None:
    """kill-all takes the whole cluster down; the heal starts every node."""
    fake = FakeCluster(5)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    step = next(s for s in _steps(5, "kill-all", seed=1))
    w = nem.inject(step)
    assert fake.down() == 5 and w.hit_leader
    nem.heal(step, w)
    assert fake.down() == 0
    assert sorted(n for c, n in fake.calls if c == "start") == fake.ids


def test_snapshot_kill_compacts_then_kills() -> None:
    """The node is asked to compact its log and killed right after."""
    fake = FakeCluster(3)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    step = _steps(3, "snapshot-kill", seed=2)[0]
    nem.inject(step)
    (node,) = step.targets
    assert fake.calls[:2] == [("compact", node), ("kill", node)]


def test_transfer_hands_leadership_to_the_successor() -> None:
    """A transfer aimed at the successor asks the leader to hand over to it."""
    fake = FakeCluster(3)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    step = next(s for s in _steps(3, "transfer", seed=4) if s.spec == "successor")
    w = nem.inject(step)
    assert step.targets == ("n1", "n2") and fake.calls == [("transfer", "n2")]
    assert w.hit_leader


def test_heal_all_brings_back_what_a_failed_heal_left_down() -> None:
    """A restart that fails is recorded; the final heal starts the node."""
    fake = FakeCluster(3)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    step = next(s for s in _steps(3, "kill", seed=5))
    w = nem.inject(step)
    fake.fail = {"start"}
    assert nem.heal(step, w)
    assert fake.down() == len(step.targets)
    fake.fail = set()
    assert nem.heal_all() == []
    assert fake.down() == 0 and fake.faults.is_clear()


class _StillExiting(Exception):
    """What raftctl's kill raises for a node that was signalled but is not
    gone yet (NotYetExited): the duck-typed marks ClusterLike names."""

    still_exiting = True

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node} was sent SIGKILL but has not exited")
        self.node = node


def test_a_killed_node_still_exiting_is_noted_down_and_started_at_the_heal() -> None:
    """A kill whose node is not gone yet fails as an action, but the node
    was signalled: it is noted as down, so the heal starts it again once
    it has gone (before, it stayed down for the rest of the run)."""
    fake = FakeCluster(3)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    step = next(s for s in _steps(3, "kill", seed=5))
    (node,) = step.targets

    def kill(n: str) -> int:
        fake.calls.append(("kill", n))
        fake.proc[n] = "down"  # it goes, after the supervisor gave up waiting
        raise _StillExiting(n)

    fake.kill = kill  # type: ignore[method-assign]
    w = nem.inject(step)
    assert w.error is not None and "has not exited" in w.error
    nem.heal(step, w)
    assert ("start", node) in fake.calls and fake.down() == 0


def test_link_faults_reach_the_cluster_as_one_fault_state() -> None:
    """A partition blocks its links and a netem step sets rates; heals clear both."""
    fake = FakeCluster(5)
    nem = Nemesis(fake, EventLog(lambda: 0.0))
    for kind in ("partition", "netem"):
        step = _steps(5, kind, seed=6)[0]
        w = nem.inject(step)
        if kind == "partition":
            assert fake.faults.blocked_set() == set(step.links) and step.links
        else:
            assert set(fake.faults.netem) == {f"{a}>{b}" for a, b in step.links}
        assert fake.faults.description == [step.label]
        nem.heal(step, w)
        assert fake.faults.is_clear()


# --- the verdict, on planted records ------------------------------------------------------


def _op(client: str, kind: str, key: str, value: str | None, inv: int, comp: int,
        outcome: str = "ok", **kw: Any) -> OpRecord:
    return OpRecord(client=client, kind=kind, key=key, value=value, invoke=inv, complete=comp,
                    invoke_s=inv / 10, complete_s=comp / 10, outcome=outcome, **kw)


def _record(ops: list[OpRecord], digests: list[DigestSample] | None = None,
            recovery_s: float | None = 0.5) -> RunRecord:
    final = {n: DigestSample(t=9.0, node=n, applied=40, digest="same") for n in ("n1", "n2")}
    return RunRecord(seed=1, duration_s=1.0, interval_s=1.0, nemesis={"kill": 1.0}, clients=2,
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
    lost = [x.detail for x in v.violations if x.check == ACKED_WRITES]
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
    assert any("both succeeded" in x.detail for x in v.violations)


def test_judge_reports_differing_digests_at_one_index() -> None:
    """Two nodes with different state at the same applied index is a violation."""
    digests = [DigestSample(t=1.0, node="n1", applied=7, digest="aaa"),
               DigestSample(t=1.2, node="n2", applied=7, digest="bbb"),
               DigestSample(t=1.3, node="n2", applied=8, digest="ccc")]
    v = judge(_record(_clean_ops(), digests))
    assert [x.check for x in v.violations] == [APPLIED_STATE]
    assert "applied index 7" in v.violations[0].detail


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
    code, rep = chaos_run(cluster3, "--duration", "9s", "--interval", "1s", "--nemesis",
                          "kill,pause,partition,netem", "--seed", "3", "--recovery-timeout", "15s")
    assert code == 0, rep["verdict"]
    assert rep["verdict"]["ok"]
    kinds = {e["kind"] for e in rep["events"] if not e.get("error")}
    assert kinds >= {"kill", "pause", "partition", "netem"}, kinds
    assert rep["operations"]["write"]["ok"] > 20
    assert rep["recovery_s"] is not None


@pytest.mark.parametrize("transport", ["udp"])
def test_a_short_run_writes_its_page_and_history(cluster3: TestCluster, tmp_path: Path) -> None:
    """Four seconds against real nodes end in one directory holding the
    record, the verdict, report.html (a lane per node, a band per fault)
    and the history as JSON lines and EDN; `chaos report` judges it alike."""
    out = tmp_path / "out"
    code, rep = chaos_run(cluster3, "--duration", "4s", "--interval", "1s", "--nemesis",
                          "isolate,kill", "--seed", "11", "--out", str(out))
    assert code == 0, rep["verdict"]
    assert rep["out_dir"] == str(out)
    page = (out / "report.html").read_text()
    assert page.count('class="lane"') == 3
    assert page.count('class="fault-band ') == len(rep["fault_windows"]) == 2
    ops = sum(sum(c.values()) for c in rep["operations"].values())
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 * ops + 2 * len(rep["fault_windows"])
    assert len((out / "history.edn").read_text().splitlines()) == len(lines)
    again = CliRunner().invoke(chaos_cmd.chaos, ["report", "--json", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["verdict"] == rep["verdict"]


class _Liar:
    """Acknowledges every put without sending it; everything else is real."""

    def __init__(self, real: KVClient) -> None:
        self.real = real

    def put(self, key: str, value: bytes) -> WriteResult:
        return WriteResult(True, None, 1)

    def get(self, key: str, *, node: str | None = None) -> bytes | None:
        return self.real.get(key, node=node)

    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult:
        return self.real.cas(key, expected, value)

    def close(self) -> None:
        self.real.close()


@pytest.fixture
def zmq3(tmp_path: Path) -> Iterator[TestCluster]:
    """A running 3-node cluster; the planted lie does not depend on the transport."""
    with make_cluster(tmp_path, 3) as c:
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
                          "--keys", "1", "--seed", "5", "--workload", "register")
    assert code == 1
    checks = {v["check"] for v in rep["verdict"]["violations"]}
    assert LINEARIZABLE in checks, rep["verdict"]
