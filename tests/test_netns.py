"""Kernel mode: the cut made by iptables, not by the nodes' transports; in
bridge mode (root) each node has its own network namespace, in sandbox mode
(any user with user namespaces) they share one. CI runs as root with
iproute2, iptables and util-linux installed, so neither mode is skipped there."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from chaos.faults import FaultState, isolate, with_blocks
from node.client import Client, ClientError
from node.config import IPC_PATH_MAX_BYTES
from node.control import StatusRequest
from raftctl import netns
from raftctl.cluster import Cluster, ClusterError, make_config
from tests.procs import TestCluster, make_kernel_cluster, wait_until
from tests.test_cli import Cli


@pytest.fixture(params=netns.MODES)
def kernel_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    why = netns.unavailable(mode)
    if why is not None:
        pytest.skip(why)
    return mode


@pytest.fixture
def kernel_cluster(tmp_path: Path, transport: str, kernel_mode: str) -> Iterator[TestCluster]:
    yield from make_kernel_cluster(tmp_path, kernel_mode, transport=transport)


def test_kernel_cut_isolates_the_leader(kernel_cluster: TestCluster) -> None:
    """With the leader cut off by iptables: the majority elects a new leader
    and commits, a write sent to the old leader is never acknowledged, and
    after healing the old leader follows and nothing acknowledged is lost."""
    c = kernel_cluster
    nodes = c.node_ids()
    with c.client() as cl:
        for i in range(20):
            assert cl.put(f"before{i}", b"v").ok
    old = c.leader()
    assert old is not None
    c.apply_faults(with_blocks(FaultState(), isolate(old, nodes), f"{old} isolated"))
    assert len(c.kernel().rules()[old]) == 2, "two DROP rules for the old leader's way in"
    r = c.control(old, StatusRequest())
    assert r is not None and r.ok and r.data is not None
    assert r.data["links"] == {}, "the transport must not be the one cutting"

    new = wait_until(lambda: next((s.id for s in c.status(timeout_s=0.5)
                                   if s.status and s.status["role"] == "leader"
                                   and s.id != old), None), 10.0, "a leader in the majority")
    with c.client() as cl:
        for i in range(20):
            assert cl.put(f"after{i}", b"w").ok
    lone = Client({old: c.client_addrs()[old]}, c.keys(), timeout_s=1.0,
                  attempt_timeout_s=0.5)
    with lone:
        try:
            res = lone.put("lost", b"never")
            assert not res.ok, f"the isolated old leader acknowledged a write: {res}"
        except ClientError:
            pass  # not_leader once it steps down, or no answer: both are right

    c.apply_faults(FaultState())
    wait_until(lambda: (c.statuses().get(old) or {}).get("leader") == new, 10.0,
               f"{old} follows {new} after the heal")
    with c.client() as cl:
        for i in range(20):
            assert cl.get(f"before{i}") == b"v" and cl.get(f"after{i}") == b"w"
        assert cl.get("lost") is None


# --- sandbox mode through the command line --------------------------------------------


@pytest.fixture
def sandbox_cli(tmp_path: Path) -> Iterator[Cli]:
    """The `raftctl` command line on a fresh run directory; at the end, pass
    or fail, every node it started and the sandbox holder are killed by pid."""
    why = netns.unavailable("sandbox")
    if why is not None:
        pytest.skip(why)
    c = Cli(tmp_path)
    try:
        yield c
    finally:
        c.reap()
        netns.Sandbox(c.run_dir, []).teardown()  # the holder, by its recorded pid


def _holder_alive(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return bool(abs(p.create_time() - create_time) < 0.05
                    and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _sole_leader(st: dict[str, dict[str, Any]], other_than: str = "") -> str | None:
    leaders = [n for n, r in st.items() if r["state"] == "leader" and n != other_than]
    return leaders[0] if len(leaders) == 1 else None


def test_cli_sandbox_mode(sandbox_cli: Cli) -> None:
    """`up --netns=sandbox` runs the nodes in one namespace, `partition` cuts
    there, clients work through Unix sockets, and `down` ends holder and nodes."""
    cli = sandbox_cli
    up = cli("up", "--netns=sandbox", "-n", "3", "--transport", "zmq", "--json")
    st = {r["node"]: r for r in json.loads(up.stdout)}
    assert sorted(st) == ["n1", "n2", "n3"]
    holder = json.loads((cli.run_dir / netns.SANDBOX_FILE).read_text())
    hpid, hctime = int(holder["pid"]), float(holder["create_time"])
    assert _holder_alive(hpid, hctime), "the sandbox holder is not running after `up`"
    sandbox_ns = os.readlink(f"/proc/{hpid}/ns/net")
    assert sandbox_ns != os.readlink("/proc/self/ns/net")
    for n, row in st.items():
        assert os.readlink(f"/proc/{row['pid']}/ns/net") == sandbox_ns, f"{n} is not sandboxed"
    old = _sole_leader(st)
    assert old is not None, st

    out = cli("partition", "--leader").stdout
    assert f"faults now: {old} isolated" in out
    assert "kernel mode sandbox" in out and "shared sandbox namespace" in out, out

    def majority_leads() -> dict[str, dict[str, Any]] | None:
        s = cli.status()
        return s if _sole_leader(s, other_than=old) is not None else None

    st = wait_until(majority_leads, 15, "a leader in the majority after the cut")
    others = sorted(n for n in st if n != old)
    assert sorted(st[old]["faults"]) == others, st[old]
    assert all(st[old]["faults"][p]["block_out"] and st[old]["faults"][p]["block_in"]
               for p in others), st[old]
    for p in others:
        assert sorted(st[p]["faults"]) == [old], st[p]
        assert st[p]["faults"][old]["block_out"] and st[p]["faults"][old]["block_in"], st[p]

    assert "OK put" in cli("put", "colour", "blue").stdout
    assert cli("get", "colour").stdout.strip() == "blue"
    for n in st:
        for kind in ("client", "control"):
            sock = cli.run_dir / "sock" / f"{n}.{kind}"
            assert stat.S_ISSOCK(sock.stat().st_mode), f"{sock.name} is not a Unix socket"

    assert cli("down").returncode == 0
    assert not _holder_alive(hpid, hctime), "the sandbox holder outlived `raftctl down`"
    assert not (cli.run_dir / netns.SANDBOX_FILE).exists()
    assert cli.alive() == [], "node processes survived `raftctl down`"


# --- which kernel modes can run -------------------------------------------------------


def test_bridge_refused_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: bridge mode is refused, and the message points to sandbox."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    why = netns.unavailable("bridge")
    assert why is not None and "root" in why and "sandbox" in why, why


def test_unknown_mode_refused() -> None:
    """A mode that is neither bridge nor sandbox is refused, naming both."""
    why = netns.unavailable("tunnel")
    assert why is not None and "'tunnel'" in why, why
    assert all(m in why for m in netns.MODES), why


@pytest.mark.parametrize(("euid", "mode"), [(0, "bridge"), (1000, "sandbox")])
def test_auto_mode_follows_euid(monkeypatch: pytest.MonkeyPatch, euid: int, mode: str) -> None:
    """A bare --netns picks bridge as root and sandbox otherwise."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert netns.auto_mode() == mode


# --- sandbox addresses ----------------------------------------------------------------


def test_sandbox_socket_path_too_long(tmp_path: Path) -> None:
    """A run directory too long for a Unix socket path is refused, naming ipc_dir."""
    run_dir = tmp_path / ("d" * (IPC_PATH_MAX_BYTES + 1)) / "run"
    c = Cluster(run_dir, "test")
    with pytest.raises(ClusterError, match=r"nodes\[0\]\.ipc_dir") as e:
        c.with_netns_addresses(make_config(3, name="test"), "sandbox")
    assert f"{IPC_PATH_MAX_BYTES} bytes" in str(e.value)
    assert not run_dir.exists(), "a refused config must leave nothing behind"


def test_sandbox_addresses(tmp_path: Path) -> None:
    """In sandbox mode each node gets its own 127.1.0.x host and an ipc:// client
    address in the run directory."""
    c = Cluster(tmp_path / "run", "test")
    cfg = c.with_netns_addresses(make_config(3, name="test"), "sandbox")
    assert cfg.netns == "sandbox" and cfg.problems() == []
    hosts = [n.host for n in cfg.nodes]
    assert len(set(hosts)) == 3 and all(h.startswith("127.1.0.") for h in hosts), hosts
    clients = [n.client_addr() for n in cfg.nodes]
    assert len(set(clients)) == 3, clients
    sock_dir = (tmp_path / "run" / "sock").resolve()
    assert all(a.startswith(f"ipc://{sock_dir}/") for a in clients), clients


# --- the netns setting in config files and older run directories ------------------------


def test_run_directories_from_before_the_sandbox_mode_still_load() -> None:
    """An older cluster.json holds netns as a bool: false reads as off, true
    as the bridge mode it meant then."""
    from node.config import ClusterConfig

    base = msgspec.to_builtins(make_config(3, name="test"))
    for old, mode in ((False, ""), (True, "bridge")):
        cfg = msgspec.json.decode(msgspec.json.encode({**base, "netns": old}), type=ClusterConfig)
        assert cfg.netns == cfg.kernel_mode() == mode


def test_kernel_mode_is_not_set_in_a_config_file(tmp_path: Path) -> None:
    """A cluster file may not choose kernel mode (up --netns also sets the
    addresses), and a sandbox config without them is refused."""
    from raftctl.cluster import load_config_file

    path = tmp_path / "c.toml"
    path.write_text('netns = "sandbox"\n[[nodes]]\nid = "n1"\npeer_port = 27100\n'
                    'client_port = 27200\ncontrol_port = 27300\n')
    with pytest.raises(ClusterError, match="raftctl up --netns"):
        load_config_file(path)
    cfg = msgspec.structs.replace(make_config(3, name="test"), netns="sandbox")
    assert any("netns" in p for p in cfg.problems())
