"""The chaos controller's acceptance run: `raftctl chaos run` for 60 s with
every nemesis ends with a clean verdict, once with the faults enforced by the
nodes' transports (ZeroMQ) and once by the kernel (UDP, in the kernel mode
this machine allows: bridge as root, else the user-namespace sandbox)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from raftctl import netns
from tests.procs import TestCluster, chaos_run, make_cluster, make_kernel_cluster

RUN_S = 60
KINDS = {"kill", "pause", "partition", "netem"}


@pytest.fixture(params=["transport-zmq", "kernel-udp"])
def long_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestCluster]:
    if request.param == "transport-zmq":
        for c in make_cluster(tmp_path, 3, transport="zmq"):
            c.start_all()
            c.wait_for_leader(10.0)
            yield c
        return
    mode = netns.auto_mode()
    if netns.unavailable(mode) is not None and mode == "bridge":
        mode = "sandbox"
    if (why := netns.unavailable(mode)) is not None:
        pytest.skip(why)
    yield from make_kernel_cluster(tmp_path, mode, transport="udp")


def test_a_minute_of_every_nemesis_is_clean(long_cluster: TestCluster) -> None:
    """60 s of kills, pauses, partitions and netem under load: every kind of
    fault happens, clients keep getting answers, and the verdict is clean
    (no acknowledged write lost, replicas equal, linearizable, recovered)."""
    code, rep = chaos_run(long_cluster, "--duration", f"{RUN_S}s", "--interval", "3s",
                          "--nemesis", "all", "--seed", "7", "--recovery-timeout", "20s")
    assert code == 0, rep["verdict"]
    assert rep["verdict"]["ok"]
    done = {e["kind"] for e in rep["events"] if not e.get("error")}
    assert done >= KINDS, f"nemeses that never acted: {KINDS - done}"
    assert rep["operations"]["write"]["ok"] > 200, rep["operations"]
    assert rep["recovery_s"] is not None
