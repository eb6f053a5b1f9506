"""A recorded nemesis run made by hand (no processes): ten seconds of three
nodes with a killed leader, a partition and netem, two clients on one key,
and on request a stale read planted in the history."""

from __future__ import annotations

from chaos.record import (
    FINAL_CLIENT,
    RECOVERY_CLIENT,
    DigestSample,
    FaultWindow,
    NodeSample,
    RunRecord,
    StatusSample,
)
from chaos.workload import OpRecord

NODES = ["n1", "n2", "n3"]
KEY = "k"


def _node(t: float, node: str) -> NodeSample:
    """n1 leads term 1 until it is killed at 4 s; n2 campaigns and leads
    term 2 from 4.5 s; n1 comes back as a follower (a new process) at 5 s."""
    commit = int(t * 10)
    if node == "n1":
        if t < 4.0:
            return NodeSample(process="running", role="leader", term=1, commit=commit,
                              commit_term=1, last_index=commit + 1, applied=commit, pid=101)
        if t < 5.0:
            return NodeSample(process="down")
        return NodeSample(process="running", role="follower", term=2, commit=commit,
                          commit_term=2, last_index=commit, applied=commit, pid=201)
    if node == "n2" and 4.0 <= t < 4.5:
        return NodeSample(process="running", role="candidate", term=2, commit=39,
                          commit_term=1, last_index=40, applied=39, pid=102)
    if node == "n2" and t >= 4.5:
        return NodeSample(process="running", role="leader", term=2, commit=commit,
                          commit_term=2, last_index=commit + 1, applied=commit, pid=102)
    term = 1 if t < 4.0 else 2
    c = commit if t < 4.0 else max(39, commit)
    return NodeSample(process="running", role="follower", term=term, commit=c,
                      commit_term=1 if c < 45 else 2, last_index=c,
                      applied=c, pid=102 if node == "n2" else 103)


def _ops(planted: bool) -> list[OpRecord]:
    """c1 writes k every 0.2 s, c2 reads it between; one write times out
    during the kill and one read is refused; the final read sees the last
    write. With `planted`, a read at 6.5 s returns an overwritten value."""
    ops: list[OpRecord] = []
    pos = 0

    def add(client: str, kind: str, value: str | None, t0: float, t1: float,
            outcome: str = "ok", error: str | None = None, key: str = KEY) -> None:
        nonlocal pos
        ops.append(OpRecord(client=client, kind=kind, key=key, value=value, invoke=pos + 1,
                            complete=pos + 2, invoke_s=round(t0, 4), complete_s=round(t1, 4),
                            outcome=outcome, error=error,
                            index=pos // 2 + 1 if kind == "write" and outcome == "ok" else None))
        pos += 2

    last = None
    for i in range(45):
        t = 0.2 + i * 0.2
        if 4.0 <= t < 5.0:
            if i == 20:
                add("c1", "write", f"c1-{i}", t, t + 0.9, "unknown", "timeout")
            else:
                add("c2", "read", None, t, t + 0.05, "fail", "unavailable")
            continue
        add("c1", "write", f"c1-{i}", t, t + 0.01)
        stale = planted and abs(t - 6.6) < 1e-6
        add("c2", "read", last if stale else f"c1-{i}", t + 0.05, t + 0.06)
        last = f"c1-{i}"
    add(RECOVERY_CLIENT, "write", "recovery-1", 9.4, 9.41, key="recovery")
    add(FINAL_CLIENT, "read", f"c1-{44}", 9.5, 9.51)
    return ops


def recorded_run(planted: bool = False) -> RunRecord:
    samples = [StatusSample(t=round(k * 0.25, 3),
                            nodes={n: _node(round(k * 0.25, 3), n) for n in NODES})
               for k in range(40)]
    final = {n: DigestSample(t=9.8, node=n, applied=99, digest="f" * 16) for n in NODES}
    return RunRecord(
        seed=5, duration_s=9.0, interval_s=1.0,
        nemesis={"kill": 1.0, "partition": 1.0, "netem": 1.0}, clients=2, keys=[KEY],
        nodes=list(NODES), recovery_bound_s=10.0,
        notes=["ring skipped: it needs at least 5 nodes"],
        faults=[
            FaultWindow(kind="kill", label="n1 killed", targets=["n1"], spec="leader",
                        start_s=4.0, end_s=5.0, leader="n1", hit_leader=True),
            FaultWindow(kind="partition", label="partition n3 | n1,n2", targets=["n3"],
                        spec="one", start_s=6.0, end_s=7.0, leader="n2"),
            FaultWindow(kind="netem", label="netem on the links of n2: delay 20±10ms",
                        targets=["n2"], spec="leader", start_s=8.0, end_s=9.0, leader="n2",
                        hit_leader=True),
        ],
        samples=samples,
        digests=[DigestSample(t=2.0, node="n2", applied=20, digest="a" * 16),
                 DigestSample(t=2.1, node="n3", applied=20, digest="a" * 16)],
        final_digests=final, ops=_ops(planted), healed_s=9.0, recovery_s=0.4,
        converged=True)
