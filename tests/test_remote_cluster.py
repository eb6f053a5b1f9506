"""A cluster on three hosts driven over SSH, for real: each host a network
namespace with its own address on a bridge and its own sshd (tests/sshlab.py);
`raftctl up` with the inventory installs the project on each host and must
elect, replicate, survive kill, pause, `partition --kernel` and `chaos run`,
report a host it cannot reach, and `down --purge` must leave nothing.

One cluster serves the whole module (installing on three hosts is the slow
part); the tests run in file order and each leaves it healthy, with every
node running and no fault, for the next."""

from __future__ import annotations

import datetime as dt
import functools
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from node.control import StatusRequest
from raftctl import render
from raftctl.cluster import ClusterUnavailable
from raftctl.remote.cluster import HostCluster
from raftctl.remote.kernel import chain_name
from tests import sshlab
from tests.procs import wait_until
from tests.test_cli import Cli

# One cluster over three hosts takes 1.5 to 3 minutes with its setup: a
# soak, run by its own step of .ci/run (`pytest -m soak`).
pytestmark = [pytest.mark.soak,
              pytest.mark.skipif(sshlab.missing() is not None, reason=sshlab.missing() or "")]


class HostsCli(Cli):
    """The command line on the lab's cluster, and what its hosts run."""

    def __init__(self, tmp: Path, lab: sshlab.Lab) -> None:
        super().__init__(tmp)
        self.lab = lab
        self.inventory = tmp / "cluster.toml"
        self._cluster: HostCluster | None = None

    def cluster(self) -> HostCluster:
        """The supervisor in this process, its SSH connections kept open."""
        if self._cluster is None:
            self._cluster = HostCluster(self.run_dir, "default")
        return self._cluster

    def status(self) -> dict[str, dict[str, Any]]:
        """Every node's row as `status --json` gives it, asked in this
        process: polling through a new raftctl process (and SSH handshakes)
        each time would cost most of the module's time. The command's own
        output is checked where it matters."""
        return {r["node"]: r for r in render.status_rows(self.cluster().status(timeout_s=0.5))}

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.pool.close()

    def host_of(self, node: str) -> sshlab.Host:
        return self.lab.hosts[int(node[1:]) - 1]

    def leader(self) -> str | None:
        st = self.status()
        leaders = [n for n, r in st.items() if r["state"] == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def all_follow(self) -> str | None:
        """The leader, once all three nodes run and follow it."""
        st = self.status()
        lead = self.leader()
        ok = lead is not None and all(r["leader"] == lead and r["state"] in ("leader", "follower")
                                      for r in st.values())
        return lead if ok else None

    def chain_rules(self, node: str) -> list[str]:
        h = self.host_of(node)
        out = subprocess.run(["ip", "netns", "exec", h.namespace, "iptables", "-S"],
                             capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if chain_name(self.run_dir) in line]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsCli]:
    """Three hosts and a cluster up on them. At the end, pass or fail: every
    process left in the namespaces is killed by pid, and namespaces and
    bridge are removed."""
    tmp = tmp_path_factory.mktemp("hosts")
    lab = sshlab.make_lab(tmp / "lab")
    try:
        cli = HostsCli(tmp, lab)
        cli.inventory.write_text(lab.inventory())
        cli("up", "-c", str(cli.inventory), "--wait", "30", timeout=240)
        yield cli
        cli.close()
    finally:
        lab.close()
        for h in lab.hosts:
            ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert h.namespace not in ns, f"namespace {h.namespace} outlived the lab"


def _netns_of(pid: int) -> str:
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                          text=True).stdout.strip()


def test_up_runs_each_node_on_its_host(hosts: HostsCli) -> None:
    """Each node runs in its host's namespace, from the host's own install
    and run directory, started over SSH: nothing of this machine's run
    directory or source tree is open in it, and its config and keys there
    have mode 0600."""
    lead = wait_until(hosts.all_follow, 20, "a leader that every node follows")
    st = {r["node"]: r for r in json.loads(hosts("status", "--json").stdout)}
    assert sorted(st) == ["n1", "n2", "n3"] and st[lead]["state"] == "leader", st
    here = Path.cwd().resolve()
    for node, row in st.items():
        h = hosts.host_of(node)
        pid = row["pid"]
        assert _netns_of(pid) == h.namespace, f"{node} does not run in {h.namespace}"
        p = psutil.Process(pid)
        assert p.cmdline()[:3] == [f"{h.install_path}/venv/bin/python", "-m", "node"], p.cmdline()
        assert p.cwd() == str(h.run_path)
        assert str(h.run_path) in p.cmdline()
        for f in p.open_files():
            assert not f.path.startswith((str(hosts.run_dir), str(here))), f.path
        assert "PYTHONPATH" not in p.environ(), "the host's node inherited this shell's path"
        for name in ("cluster.json", "keys"):
            mode = (h.run_path / name).stat().st_mode & 0o777
            assert mode == 0o600, f"{name} on {h.name} has mode {mode:o}"
        assert (h.run_path / "nodes" / node / "node.log").exists(), f"{node} logs on its host"


def _reads(hosts: HostsCli, node: str, key: str, value: str) -> bool:
    return bool(hosts("get", key, "--stale", "--node", node).stdout.strip() == value)


def test_writes_replicate_to_every_host(hosts: HostsCli) -> None:
    """A write acknowledged by the cluster is read back from each node's
    own copy on its own host."""
    assert "OK put" in hosts("put", "colour", "blue").stdout
    for node in ("n1", "n2", "n3"):
        wait_until(functools.partial(_reads, hosts, node, "colour", "blue"), 10,
                   f"{node} applied the write")


def test_kill_the_leader_over_ssh(hosts: HostsCli) -> None:
    """kill --leader ends the remote process (SIGKILL by pid over SSH), the
    others elect a new leader, and the restarted node catches up."""
    old = wait_until(hosts.all_follow, 20, "a settled cluster")
    pid = hosts.status()[old]["pid"]
    out = json.loads(hosts("kill", "--leader", "--json").stdout)
    assert out["nodes"][0]["result"] == "killed" and out["nodes"][0]["pid"] == pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert hosts.status()[old]["state"] == "down"
    new = wait_until(lambda: hosts.leader(), 15, "a new leader after the kill")
    assert new != old
    hosts("put", "after-kill", "x")
    hosts("start", old)
    wait_until(hosts.all_follow, 20, f"{old} back and following")
    wait_until(lambda: hosts("get", "after-kill", "--stale", "--node", old).stdout.strip()
               == "x", 10, f"{old} caught up")


def test_pause_and_resume_over_ssh(hosts: HostsCli) -> None:
    """pause stops the remote process (state T on its host), resume goes on."""
    lead = wait_until(hosts.all_follow, 20, "a settled cluster")
    follower = next(n for n in ("n1", "n2", "n3") if n != lead)
    hosts("pause", follower)
    pid = hosts.status()[follower]["pid"]
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    assert hosts.status()[follower]["state"] == "paused"
    hosts("put", "while-paused", "y")
    hosts("resume", follower)
    wait_until(lambda: hosts.status()[follower]["state"] == "follower", 10, f"{follower} resumed")


def test_a_process_that_is_not_the_one_started_is_never_signalled(hosts: HostsCli) -> None:
    """A recorded pid whose start time differs (a reused pid) is down to
    raftctl: `kill` reports it down and the process lives on; with the true
    record back, it is the node again."""
    lead = wait_until(hosts.all_follow, 20, "a settled cluster")
    node = next(n for n in ("n1", "n2", "n3") if n != lead)
    path = hosts.run_dir / "remote.json"
    true = path.read_text()
    recs = json.loads(true)
    pid = recs[node]["pid"]
    recs[node]["start_ticks"] += 1
    path.write_text(json.dumps(recs))
    try:
        assert hosts.status()[node]["state"] == "down"
        out = json.loads(hosts("kill", node, "--json").stdout)
        assert out["nodes"][0]["result"] == "already down", out
        with pytest.raises(ClusterUnavailable, match="not running"):
            hosts.cluster().signal(node, signal.SIGSTOP)  # the check on the host itself
        assert psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED)
    finally:
        path.write_text(true)
    assert hosts.status()[node]["pid"] == pid


def test_partition_kernel_cuts_in_the_hosts_iptables(hosts: HostsCli) -> None:
    """partition --kernel --leader puts DROP rules in the old leader's host
    (not in its transport); the others elect and commit; heal removes the
    rules and the old leader follows again."""
    old = wait_until(hosts.all_follow, 20, "a settled cluster")
    out = json.loads(hosts("partition", "--kernel", "--leader", "--json").stdout)
    assert out["kernel_mode"] == "hosts", out
    rules = hosts.chain_rules(old)
    drops = [r for r in rules if r.endswith("-j DROP")]
    assert len(drops) == 2, rules  # from each of the two others, to its peer port
    port = {"n1": 27100, "n2": 27101, "n3": 27102}[old]
    assert all(f"--dport {port}" in r for r in drops), drops
    raw = hosts.cluster().control(old, StatusRequest())
    assert raw is not None and raw.ok and raw.data is not None
    assert raw.data["links"] == {}, "the cut must be the kernel's, not the transport's"

    def other_leads() -> str | None:
        lead = hosts.leader()
        return lead if lead not in (None, old) else None

    new = wait_until(other_leads, 15, "a leader among the two that can talk")
    assert "OK put" in hosts("put", "cut", "z").stdout
    hosts("heal")
    assert hosts.chain_rules(old) == [], "heal left kernel rules behind"
    wait_until(lambda: hosts.status()[old]["leader"] == new, 15, f"{old} follows {new}")


def test_logs_merge_every_host(hosts: HostsCli) -> None:
    """logs brings the remote logs here and merges them: every node's
    start is there, in time order."""
    lines = [json.loads(x) for x in hosts("logs", "--json", "--event", "node_started")
             .stdout.splitlines()]
    assert {ev["node"] for ev in lines} == {"n1", "n2", "n3"}, lines
    stamps = [ev["ts"] for ev in lines]
    assert stamps == sorted(stamps)


def test_logs_follow_shows_a_remote_election(hosts: HostsCli) -> None:
    """logs -f streams the remote logs: once it shows the past, killing the
    leader shows another node's became_leader while following."""
    old = wait_until(hosts.all_follow, 20, "a settled cluster")
    # --since shows the past too: once it printed, the tail runs.
    tail = hosts.popen("logs", "-f", "--json", "--event", "became_leader", "--since", "1h",
                       "--for", "15")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(tail.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(lambda: lines, 20, "logs -f printed the past elections")
        killed_at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        hosts("kill", old)
        wait_until(lambda: any(json.loads(x)["ts"] >= killed_at for x in list(lines)), 20,
                   "logs -f showed an election after the kill")
    finally:
        tail.kill()
        tail.wait(5)
        reader.join(5)
        hosts("start", old)
    after = [ev for ev in (json.loads(x) for x in lines) if ev["ts"] >= killed_at]
    assert after and all(ev["node"] != old for ev in after), after
    wait_until(hosts.all_follow, 20, f"{old} back")


def test_chaos_run_against_hosts(hosts: HostsCli) -> None:
    """chaos run, unchanged, against the cluster on hosts: faults happen
    (kills and pauses over SSH), and the verdict is clean."""
    wait_until(hosts.all_follow, 20, "a settled cluster")
    p = hosts("chaos", "run", "--duration", "8s", "--interval", "1s", "--seed", "7",
              "--nemesis", "kill,pause,partition", "--json", timeout=90)
    out = json.loads(p.stdout)
    assert out["verdict"]["ok"], out["verdict"]
    kinds = {ev["kind"] for ev in out["events"] if not ev.get("error")}
    assert {"kill", "pause"} & kinds, kinds
    assert not [ev for ev in out["events"] if ev.get("error")], out["events"]
    wait_until(hosts.all_follow, 20, "every node back after the run")


def test_clock_skew_is_unavailable_on_hosts_sharing_this_kernel(hosts: HostsCli) -> None:
    """These hosts are namespaces of this machine: one kernel, one clock. A
    clock fault is refused (exit 3) saying so, and no clock was touched."""
    before = hosts.cluster().clock_unavailable()
    assert before is not None and "this machine's kernel" in before, before
    p = hosts("chaos", "run", "--nemesis", "clock", "--duration", "2s", ok=False)
    assert p.returncode == 3, p.stderr
    assert "clock skew is unavailable" in p.stderr and "same boot id" in p.stderr, p.stderr
    assert not (hosts.run_dir / "clock.json").exists()


def test_a_host_that_cannot_be_reached_is_named(hosts: HostsCli) -> None:
    """With n2's sshd refusing connections: status shows n2 unreachable,
    `kill` of all three kills n1 and n3 and names n2's host with the SSH
    error (exit 3), `down --purge` keeps the run directory (n2 may still
    run); once reachable again, n2 is still the node it was."""
    wait_until(hosts.all_follow, 20, "a settled cluster")
    h = hosts.host_of("n2")
    block = ["-p", "tcp", "--dport", str(sshlab.SSH_PORT), "-j", "REJECT",
             "--reject-with", "tcp-reset"]
    pid2 = hosts.status()["n2"]["pid"]
    subprocess.run(["ip", "netns", "exec", h.namespace, "iptables", "-I", "INPUT", *block],
                   check=True)
    try:
        st = {r["node"]: r for r in json.loads(hosts("status", "--json", ok=False).stdout)}
        assert st["n2"]["state"] == "unreachable", st["n2"]
        p = hosts("kill", "n1", "n2", "n3", "--json", ok=False)
        assert p.returncode == 3, p.stderr
        res = {r["node"]: r for r in json.loads(p.stdout)["nodes"]}
        assert res["n1"]["result"] == res["n3"]["result"] == "killed", res
        assert not res["n2"]["ok"]
        assert f"{h.address}:{sshlab.SSH_PORT}" in res["n2"]["error"], res["n2"]
        assert "refused" in res["n2"]["error"].lower(), res["n2"]
        p = hosts("down", "--purge", ok=False)
        assert p.returncode == 3 and "n2" in p.stderr and "may still run" in p.stderr, p.stderr
        assert (hosts.run_dir / "cluster.json").exists(), "purged while n2 may still run"
    finally:
        subprocess.run(["ip", "netns", "exec", h.namespace, "iptables", "-D", "INPUT", *block],
                       check=True)
    st = wait_until(lambda: (s := hosts.status())["n2"]["state"] != "unreachable" and s, 10,
                    "n2 reachable again")
    assert st["n2"]["pid"] == pid2 and st["n2"]["state"] != "down", \
        ("n2's process was touched while unreachable", st["n2"])
    hosts("start")
    wait_until(hosts.all_follow, 20, "all three back")


def test_down_purge_leaves_nothing_on_any_host(hosts: HostsCli) -> None:
    """down --purge stops every node over SSH, removes kernel rules, each
    host's run directory and this machine's; nothing but sshd is left
    running in any namespace. (Last: it ends the module's cluster.)"""
    hosts("partition", "--kernel", "--isolate", "n3")
    assert hosts.chain_rules("n3")
    out = json.loads(hosts("down", "--purge", "--json").stdout)
    assert sorted(out["stopped"]) == ["n1", "n2", "n3"] and out["purged"]
    assert hosts.lab.left_running() == {}, "processes left in the hosts' namespaces"
    for node in ("n1", "n2", "n3"):
        h = hosts.host_of(node)
        assert not h.run_path.exists(), f"{h.name} kept its run directory"
        assert hosts.chain_rules(node) == [], f"{h.name} kept kernel rules"
    assert not hosts.run_dir.exists()

