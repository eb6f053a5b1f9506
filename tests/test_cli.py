"""The real `raftctl` command line against real node processes: the
operator's day (up, status, put/get, kill, start, pause, resume, down),
`logs -f` during an election, and every error a user can hit."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.procs import wait_until


class Cli:
    """Runs `python -m raftctl` with its own run directory, and remembers
    every node pid the cluster file ever named, to kill them at the end."""

    def __init__(self, tmp: Path) -> None:
        self.run_dir = tmp / "run"
        self.env = {**os.environ, "RAFTCTL_RUN_DIR": str(self.run_dir), "COLUMNS": "200"}
        self.pids: set[tuple[int, float]] = set()

    def __call__(
        self, *args: str, ok: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "raftctl", *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        self._remember()
        if ok and p.returncode != 0:
            pytest.fail(f"raftctl {' '.join(args)} exited {p.returncode}: {p.stderr}{p.stdout}")
        return p

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "raftctl", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _remember(self) -> None:
        f = self.run_dir / "cluster.json"
        if f.exists():
            for info in json.loads(f.read_text())["processes"].values():
                self.pids.add((info["pid"], info["create_time"]))

    def status(self) -> dict[str, dict[str, Any]]:
        """Every node's row; `status` exits 3 while no node leads, which
        tests that wait through an election expect."""
        p = self("status", "--json", ok=False)
        if p.returncode not in (0, 3):
            pytest.fail(f"raftctl status exited {p.returncode}: {p.stderr}{p.stdout}")
        return {r["node"]: r for r in json.loads(p.stdout)}

    def reap(self) -> None:
        self._remember()
        for pid, ctime in self.pids:
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - ctime) < 0.05:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
            except psutil.Error:
                continue

    def alive(self) -> list[int]:
        out = []
        for pid, ctime in self.pids:
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - ctime) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.Error:
                continue
        return out


# Over UDP as a soak (CI runs it): the default suite's UDP clusters are in
# tests/test_udp_cluster.py, tests/test_nemesis.py and tests/test_node_input.py.
@pytest.fixture(params=["zmq", pytest.param("udp", marks=pytest.mark.soak)])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path)
    try:
        yield c
    finally:
        c.reap()


def _leader(st: dict[str, dict[str, Any]]) -> str | None:
    leaders = [n for n, r in st.items() if r["state"] == "leader"]
    return leaders[0] if len(leaders) == 1 else None


def test_operators_day(cli: Cli, transport: str) -> None:
    """up, status, put/get, kill the leader, restart it, pause/resume, down."""
    out = cli("up", "--transport", transport).stdout
    assert "leader" in out and "NODE" in out
    st = cli.status()
    assert sorted(st) == ["n1", "n2", "n3"]
    old = _leader(st)
    assert old is not None, st

    assert "OK put" in cli("put", "colour", "blue").stdout
    assert cli("get", "colour").stdout.strip() == "blue"

    cli("kill", "--leader")
    st = cli.status()
    assert st[old]["state"] == "down"
    new = wait_until(lambda: _leader(cli.status()), 15, "a new leader after killing the leader")
    assert new != old
    cli("put", "colour", "green")

    cli("start", old)
    def caught_up() -> bool:
        s = cli.status()
        return bool(s[old]["state"] == "follower" and s[old]["applied"] == s[new]["commit"])
    wait_until(caught_up, 15, f"{old} rejoined and caught up")
    assert cli("get", "colour", "--stale", "--node", old).stdout.strip() == "green"

    follower = next(n for n in st if n not in (old, new))
    cli("pause", follower)
    assert cli.status()[follower]["state"] == "paused"
    cli("put", "k", "v")  # a majority still commits
    cli("resume", follower)
    wait_until(lambda: cli.status()[follower]["state"] == "follower", 10, f"{follower} resumed")

    cli("down")
    assert cli.alive() == [], "node processes survived `raftctl down`"


# An election over each transport is shown by test_operators_day (kill the
# leader, a new one follows); following it live over UDP too is a soak.
@pytest.mark.parametrize("transport", ["zmq", pytest.param("udp", marks=pytest.mark.soak)])
def test_logs_follow_shows_election(cli: Cli, transport: str) -> None:
    """`logs -f` shows the election that killing the leader causes, from
    every live node, in time order."""
    cli("up", "--transport", transport)
    old = _leader(cli.status())
    follower_ids = [n for n in ("n1", "n2", "n3") if n != old]
    # --since shows the past too, so we can see that the tail is running
    # (it printed the start-up) before we cause the election.
    tail = cli.popen("logs", "-f", "--json", "--since", "5m", "--for", "6")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(tail.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(lambda: lines, 20, "logs -f printed the cluster's start-up")
        killed_at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        cli("kill", old or "n1")
        wait_until(lambda: _leader(cli.status()) not in (None, old), 15, "a new leader")
        tail.wait(30)
        reader.join(5)
    finally:
        tail.kill()
    events = [json.loads(line) for line in lines if line.strip()]
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts), "events are not in time order"
    after = [e for e in events if e["ts"] >= killed_at]
    names = {(e["node"], e["event"]) for e in after}
    assert any(ev == "became_leader" for _, ev in names), names
    for n in follower_ids:
        assert any(node == n for node, _ in names), f"no events from {n}"
    assert any(ev in ("prevote_started", "election_started") for _, ev in names), names


def test_errors_are_one_clear_line(cli: Cli, transport: str) -> None:
    """Cluster not up (3), already up (1), unknown node (2), pausing a down
    node (3): each one sentence with its documented exit code."""
    p = cli("put", "k", "v", ok=False)
    assert p.returncode == 3 and "not set up" in p.stderr and "raftctl up" in p.stderr
    cli("up", "--transport", transport)
    p = cli("up", ok=False)
    assert p.returncode == 1 and "already up" in p.stderr
    p = cli("kill", "n7", ok=False)
    assert p.returncode == 2
    assert "node n7 is not in cluster default (nodes: n1, n2, n3)" in p.stderr
    cli("kill", "n2")
    p = cli("pause", "n2", ok=False)
    assert p.returncode == 3 and "node n2 is down, so it cannot be paused" in p.stderr
    assert "Traceback" not in p.stderr
    cli("down")


def _config(ports: list[int]) -> str:
    lines = ['name = "x"']
    for i in range(3):
        lines += ["[[nodes]]", f'id = "n{i + 1}"', f"peer_port = {ports[3 * i]}",
                  f"client_port = {ports[3 * i + 1]}", f"control_port = {ports[3 * i + 2]}"]
    return "\n".join(lines) + "\n"


def test_malformed_config_names_the_field(cli: Cli, tmp_path: Path) -> None:
    """A config reusing a port is refused with the field and the other user."""
    from raftctl.cluster import free_ports

    ports = free_ports(9)
    ports[6] = ports[3]  # nodes[2].peer_port = nodes[1].peer_port
    f = tmp_path / "bad.toml"
    f.write_text(_config(ports))
    p = cli("up", "-c", str(f), ok=False)
    assert p.returncode == 1
    assert f"nodes[2].peer_port: port {ports[3]} is already used by nodes[1]" in p.stderr
    f.write_text("nodes = [ {id = 'n1', peer_port = 'x' } ]\n")
    p = cli("up", "-c", str(f), ok=False)
    assert p.returncode == 1 and "Expected `int`" in p.stderr


def test_port_taken_is_refused(cli: Cli, tmp_path: Path) -> None:
    """`up` refuses a config whose port another program holds, naming it."""
    from raftctl.cluster import free_ports

    ports = free_ports(9)
    f = tmp_path / "c.toml"
    f.write_text(_config(ports))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[4]))
        s.listen()
        p = cli("up", "-c", str(f), ok=False)
    assert p.returncode == 1
    assert f"port {ports[4]} (n2 client_port)" in p.stderr and "in use" in p.stderr
    assert "was removed" in p.stderr and not cli.run_dir.exists()


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/*.toml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    """Every ready cluster file in configs/ loads and validates."""
    from raftctl.cluster import load_config_file

    cfg = load_config_file(path)
    assert len(cfg.nodes) >= 3 and not cfg.problems()


def test_max_uncommitted_bytes_is_read_and_checked(tmp_path: Path) -> None:
    """The overload limit can be set in a cluster file; it reaches the core,
    and a limit under one byte is refused with its name."""
    from raftctl.cluster import ClusterError, free_ports, load_config_file

    f = tmp_path / "c.toml"
    f.write_text("max_uncommitted_bytes = 4096\n" + _config(free_ports(9)))
    assert load_config_file(f).core_config().max_uncommitted_bytes == 4096
    f.write_text("max_uncommitted_bytes = 0\n" + _config(free_ports(9)))
    with pytest.raises(ClusterError, match="max_uncommitted_bytes: must be at least 1"):
        load_config_file(f)


def test_durability_off_is_said_loudly(cli: Cli) -> None:
    """With fsync = never, up and status warn on stderr every time."""
    p = cli("up", "-n", "1", "--fsync", "never")
    assert "durability is off" in p.stderr
    assert "durability is off" in cli("status").stderr
    assert "durability is off" not in cli("status", "--json").stdout
    log = (cli.run_dir / "nodes" / "n1" / "node.log").read_text()
    assert '"durability_off"' in log, "the node's log does not say it either"
    cli("down")


def test_the_cli_loads_the_heavy_commands_only_when_named() -> None:
    """`raftctl put` should start fast: importing the CLI pulls in neither the
    simulator, the load generator, the chaos runner, rich's live view nor
    the Raft core (each command that needs one imports it)."""
    code = ("import sys, raftctl.cli; heavy = ['chaos.sim', 'raftctl.bench.runs', 'chaos.nemesis', "
            "'rich.live', 'node.raft.core', 'node.storage']; "
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_version_works_without_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """`raftctl --version` from a checkout that was never installed says
    "unknown" instead of failing."""
    import importlib.metadata

    from click.testing import CliRunner

    from raftctl.cli import main

    def missing(_name: str) -> str:
        raise importlib.metadata.PackageNotFoundError("raftctl")

    monkeypatch.setattr(importlib.metadata, "version", missing)
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output == "raftctl, version unknown\n", r.output
