"""The supervisor never loses track of a node process: one launched by a
raftctl killed before it saved the pid is adopted by the next command; a
cluster whose cluster.json was deleted gets no new keys, and its processes
are named and can be stopped; a node that refuses to start says why on the
command line; a failed `up` removes the run directory it made."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
from click.testing import CliRunner, Result

from raftctl.cli import main
from raftctl.cluster import Cluster, ClusterFile, free_ports
from raftctl.clusterfile import ProcessInfo
from tests.procs import TestCluster, make_cluster, start_and_settle, wait_until


def _node_processes(run_dir: Path) -> dict[str, int]:
    """Node id -> pid of every live node process of this run directory."""
    out = {}
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info.get("cmdline") or []
        if p.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        for i in range(len(cmd) - 5):
            if cmd[i:i + 3] == ["-m", "node", "--run-dir"] and Path(cmd[i + 3]) == run_dir \
                    and cmd[i + 4] == "--id":
                out[cmd[i + 5]] = p.pid
    return out


@pytest.fixture
def reaper(tmp_path: Path) -> Iterator[Path]:
    """A run directory; every node process of it is killed at the end."""
    run_dir = (tmp_path / "run").resolve()
    try:
        yield run_dir
    finally:
        for pid in _node_processes(run_dir).values():
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                continue


def _cli(run_dir: Path, *args: str) -> Result:
    r = CliRunner().invoke(main, ["--run-dir", str(run_dir), "-C", "test", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


class _Killed(BaseException):
    """What SIGKILL of raftctl would be at this point."""


def test_a_node_launched_by_a_killed_raftctl_is_adopted(
        reaper: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """raftctl dies after launching n1 but before saving its pid: the next
    command finds n1 running, start does not launch a second one, and
    down stops it."""
    c = Cluster(reaper, "test")
    with make_cluster(reaper.parent, 1):
        pass  # only the run directory: no node started
    saves = Cluster._save

    def save(self: Cluster, cf: ClusterFile) -> None:
        if "n1" in cf.processes:
            raise _Killed
        saves(self, cf)

    monkeypatch.setattr(Cluster, "_save", save)
    with pytest.raises(_Killed):
        c.start("n1")
    monkeypatch.setattr(Cluster, "_save", saves)
    pid = wait_until(lambda: _node_processes(reaper).get("n1"), 5.0, "n1's process")
    fresh = Cluster(reaper, "test")
    assert fresh.process_state("n1") == (pid, "running")
    assert fresh.running_nodes() == ["n1"]
    r = _cli(reaper, "start", "n1")
    assert r.exit_code == 0 and "already running" in r.output, r.output
    assert list(_node_processes(reaper).values()) == [pid], "a second n1 was launched"
    assert _cli(reaper, "down").exit_code == 0
    wait_until(lambda: not _node_processes(reaper), 10.0, "n1 stopped by down")


@pytest.fixture
def c1(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 1) as c:
        start_and_settle(c)
        yield c


def test_without_cluster_json_up_makes_no_new_keys_and_down_stops_the_orphans(
        c1: TestCluster) -> None:
    """Deleting cluster.json left the nodes running and the next `up` made a
    new cluster with new keys over the old data. Now up refuses, naming the
    running processes, and down stops them."""
    run_dir = c1.run_dir.resolve()
    keys = (run_dir / "keys").read_bytes()
    c1.file.unlink()
    r = _cli(run_dir, "up")
    assert r.exit_code == 1, r.output
    assert "cluster.json" in r.output and "n1" in r.output and "keys" in r.output, r.output
    assert (run_dir / "keys").read_bytes() == keys, "new keys were made"
    assert not c1.file.exists()
    assert _node_processes(run_dir), "the node was stopped by up"
    r = _cli(run_dir, "down")
    assert r.exit_code == 0, r.output
    wait_until(lambda: not _node_processes(run_dir), 10.0, "the orphan stopped")


def test_up_refuses_new_keys_over_data_left_without_cluster_json(c1: TestCluster) -> None:
    """No process runs, but the data of a cluster is there: still no new keys."""
    c1.stop("n1")
    c1.file.unlink()
    keys = (c1.run_dir / "keys").read_bytes()
    r = _cli(c1.run_dir, "up")
    assert r.exit_code == 1 and "cluster.json" in r.output, r.output
    assert (c1.run_dir / "keys").read_bytes() == keys


def _lose_data(c: TestCluster, node: str) -> None:
    c.stop(node)
    data = c.run_dir / "nodes" / node / "data"
    for f in data.iterdir():
        f.unlink()


@pytest.fixture
def c3(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 3) as c:
        start_and_settle(c)
        yield c


def _remember(c: TestCluster) -> None:
    for info in c.load().processes.values():
        if (info.pid, info.create_time) not in c.started:
            c.started.append((info.pid, info.create_time))


def test_a_refusal_to_start_is_printed_by_start(c3: TestCluster) -> None:
    """A node that lost its data refuses to start; `start` prints its reason,
    not only a pointer to stdout.log."""
    _lose_data(c3, "n1")
    r = _cli(c3.run_dir, "start", "n1")
    _remember(c3)
    assert r.exit_code == 1, r.output
    assert "has lost its data" in r.output and "--force-rejoin" in r.output, r.output


def test_a_refusal_to_start_is_printed_by_up(c3: TestCluster) -> None:
    """`up` of a cluster where one node refuses: the others elect a leader,
    the status is shown, and the refusal is printed; exit 1."""
    _lose_data(c3, "n1")
    for n in ("n2", "n3"):
        c3.stop(n)
    r = _cli(c3.run_dir, "up")
    _remember(c3)
    assert r.exit_code == 1, r.output
    assert "n1" in r.output and "has lost its data" in r.output, r.output


def _config(ports: list[int]) -> str:
    nodes = ", ".join(
        f"{{id = 'n{i + 1}', peer_port = {ports[3 * i]}, client_port = {ports[3 * i + 1]}, "
        f"control_port = {ports[3 * i + 2]}}}" for i in range(3))
    return f"nodes = [{nodes}]\n"


def test_a_failed_up_removes_the_run_directory_it_made(tmp_path: Path) -> None:
    """`up` of a new cluster that cannot start (a port is taken) leaves no
    half-made run directory behind, and says so."""
    ports = free_ports(9)
    f = tmp_path / "c.toml"
    f.write_text(_config(ports))
    run_dir = tmp_path / "run"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[4]))
        s.listen()
        r = _cli(run_dir, "up", "-c", str(f))
    assert r.exit_code == 1, r.output
    assert "in use" in r.output and "removed" in r.output, r.output
    assert not run_dir.exists()


def test_start_records_its_intent_before_launching(
        reaper: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the run directory cannot be written (a full disk), start launches
    nothing and says why in one sentence, instead of leaving a process no
    file names (exit 70, `internal error`, before)."""
    with make_cluster(reaper.parent, 1):
        pass

    def full(*_a: Any, **_k: Any) -> None:
        raise OSError(28, os.strerror(28), str(reaper / "cluster.json"))

    monkeypatch.setattr("raftctl.cluster.write_private", full)
    r = _cli(reaper, "start", "n1")
    assert r.exit_code == 1, r.output
    assert "No space left on device" in r.output and "nothing was started" in r.output, r.output
    assert not _node_processes(reaper)


class _TestFailed(Exception):
    pass


def test_a_test_cluster_is_reaped_even_when_its_block_fails(tmp_path: Path) -> None:
    """The harness kills every node a test started when the test fails, even
    while the failure's traceback is still held (as pytest holds it)."""
    with pytest.raises(_TestFailed) as failed, make_cluster(tmp_path, 3) as c:
        c.start_all()
        pids = [pid for pid, _ in c.started]
        raise _TestFailed
    assert failed.traceback  # the traceback, and the frames in it, are alive here
    wait_until(lambda: not any(psutil.pid_exists(p) and
                               psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in pids), 10.0, f"nodes {pids} reaped after the failure")


def test_a_process_is_still_ours_when_the_clock_moves_its_start_time(tmp_path: Path) -> None:
    """psutil's start time of a process is the kernel's boot time (whole
    seconds of the wall clock) plus ticks since boot, so a clock adjustment
    moves it by a second: the process is still the one recorded; one that
    started ten seconds apart from the record is not."""
    me = psutil.Process()
    c = Cluster(tmp_path, "test")
    for shift in (-1.0, 1.0):
        assert c._process(ProcessInfo(me.pid, me.create_time() + shift)) is not None, shift
    assert c._process(ProcessInfo(me.pid, me.create_time() + 10.0)) is None


def test_adopting_a_launch_never_undoes_a_start_that_finished_since(tmp_path: Path) -> None:
    """A reader that found a launch in progress (a chaos run's monitor
    reading status while the nemesis restarts nodes) adopts it into the
    file as it is when it takes the lock, not into the copy it read
    before: saving that copy once undid the record of a node started in
    between, and the next start of it found its own node as a stray."""
    with make_cluster(tmp_path, 2) as c:
        cf = c.load()
        cf.launching["n1"] = 1.0
        c._save(cf)
        stale = msgspec.json.decode(c.file.read_bytes(), type=ClusterFile)
        # Meanwhile, start(n1) ends (its launch recorded, the intent cleared)
        # and start(n2) records its node.
        me = psutil.Process()
        with c.edit() as now:
            now.launching.clear()
            now.processes["n2"] = ProcessInfo(me.pid, me.create_time())
        seen = c._adopt_launched(stale)
        kept = msgspec.json.decode(c.file.read_bytes(), type=ClusterFile)
        assert kept.processes.get("n2") == ProcessInfo(me.pid, me.create_time()), kept.processes
        assert seen.processes == kept.processes and not kept.launching
