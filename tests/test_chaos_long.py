"""The chaos controller's acceptance run: `raftctl chaos run` for 60 s with
the default mix (every nemesis kind) ends with a clean verdict, once with
the faults enforced by the nodes' transports (ZeroMQ) and once by the kernel
(UDP, in the kernel mode this machine allows: bridge as root, else the
user-namespace sandbox)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.schedule import KINDS
from raftctl import netns
from tests.procs import TestCluster, chaos_run, make_cluster, make_kernel_cluster

# Two 60 s runs: a soak, run by its own step of .ci/run (`pytest -m soak`).
pytestmark = pytest.mark.soak

RUN_S = 60
# A majorities ring needs 5 nodes; these clusters have 3, and no power-loss mounts.
EXPECTED = set(KINDS) - {"ring", "power-loss"}


@pytest.fixture(params=["transport-zmq", "kernel-udp"])
def long_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestCluster]:
    if request.param == "transport-zmq":
        with make_cluster(tmp_path, 3, transport="zmq") as c:
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
    """60 s of the default mix under load: every kind of fault that 3 nodes
    allow happens, the leader is hit, clients keep getting answers, and the
    verdict is clean (linearizable, no acknowledged write lost, the Raft
    invariants held, replicas equal, recovered)."""
    code, rep = chaos_run(long_cluster, "--duration", f"{RUN_S}s", "--seed", "7",
                          "--recovery-timeout", "20s")
    assert code == 0, rep["verdict"]
    assert rep["verdict"]["ok"]
    done = {k for k, c in rep["faults"].items() if c["injected"] > c["failed"]}
    assert done >= EXPECTED, f"nemeses that never acted: {EXPECTED - done}"
    assert rep["leader_targeted"] >= 1, rep["faults"]
    assert rep["operations"]["write"]["ok"] > 200, rep["operations"]
    assert rep["recovery_s"] is not None
