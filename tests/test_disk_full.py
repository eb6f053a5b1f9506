"""A full disk: the WAL keeps what it could not write and writes it when
there is room; a node stops taking writes (`no_space`) and new entries
while it keeps its place in the cluster (heartbeats, votes, reads); a
follower never acknowledges what it could not store; a write that failed
freezes the log until it goes through; and everything recovers by itself
when space returns, losing no acknowledged write.

The disk is a small tmpfs mounted under the test's directory (root only);
where mounting is not allowed the tests that need it skip, except in CI."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from node.client import ClientError
from node.disk import DISK_OK_FREE_BYTES
from node.raft.core import RaftCore
from node.raft.messages import AppendEntries, AppendEntriesResponse, Entry, Heartbeat
from node.runner import NodeRunner
from node.storage import FileStorage, NoSpace
from raftctl.cli import main
from raftctl.cluster import Cluster, make_config
from tests.procs import TestCluster, make_cluster, start_and_settle, wait_until


def _mount(d: Path, size_mb: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs",
                        str(d)], check=True, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.CalledProcessError) as e:
        if os.environ.get("CI"):
            raise
        detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        pytest.skip(f"cannot mount a tmpfs here ({detail}): a full disk needs root to fake")


def _umount(d: Path) -> None:
    subprocess.run(["umount", "-l", str(d)], check=False, capture_output=True, timeout=10)


def _fill(d: Path) -> Path:
    """Take every free byte of the filesystem of `d`; the file that does."""
    path = d / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\xff" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return path


# --- the WAL alone ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "disk"
    _mount(d, 16)
    try:
        yield d
    finally:
        _umount(d)


def test_the_wal_keeps_what_a_full_disk_refused_and_writes_it_later(small_disk: Path) -> None:
    """Appending until the disk is full: the sync that fails raises NoSpace,
    leaves no part of a record in the file, keeps the records, and writes
    them once there is room; nothing synced is ever lost."""
    st = FileStorage(small_disk / "data")
    filler = _fill(small_disk)
    synced = 0
    index = 0
    with pytest.raises(NoSpace):
        while True:
            batch = [Entry(1, index + i + 1, data=os.urandom(512)) for i in range(64)]
            st.append(batch)
            index += len(batch)
            st.sync()
            synced = index
    assert st.space_error is not None
    with pytest.raises(NoSpace):
        st.sync()  # still full: the same records, again refused
    filler.unlink()
    st.sync()
    st.close()
    again = FileStorage(small_disk / "data")
    try:
        assert again.recovery.truncated_bytes == 0, "a cut-short record was left in the WAL"
        last = again.initial_state().entries[-1].index
        assert last == index > synced, (last, index, synced)
    finally:
        again.close()


# --- the runner, in this process ----------------------------------------------------


class _FullDisk:
    """A FileStorage whose sync() finds the disk full while `full` is set."""

    def __init__(self, inner: FileStorage) -> None:
        self.inner = inner
        self.full = False

    def sync(self) -> None:
        if self.full:
            raise NoSpace("the WAL cannot be written: [Errno 28] No space left on device")
        self.inner.sync()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[tuple[NodeRunner, _FullDisk, list[Any]]]:
    """n1 of a 3-node cluster, in this process, as a follower of n2; what it
    sends is recorded instead."""
    c = Cluster(tmp_path / "run", "t")
    c.create(make_config(3, name="t"))
    r = NodeRunner(c.run_dir, "n1", io.StringIO())
    real = r.storage
    disk = _FullDisk(real)
    r.storage = disk  # type: ignore[assignment]  # a FileStorage in all but sync
    sent: list[Any] = []
    r._ready_io.send = sent.extend  # type: ignore[assignment]  # records instead of sending
    r.core.step(Heartbeat(term=2, src="n2", dst="n1", commit=0, seq=0))
    r._handle_ready()
    sent.clear()
    try:
        yield r, disk, sent
    finally:
        r.storage = real
        r._close()


def _append(index: int) -> AppendEntries:
    return AppendEntries(term=2, src="n2", dst="n1", prev_index=index - 1, prev_term=2 if
                         index > 1 else 0, entries=[Entry(2, index, data=b"x")], commit=0)


def test_a_follower_acknowledges_nothing_it_could_not_store(
        follower: tuple[NodeRunner, _FullDisk, list[Any]]) -> None:
    """The sync of an append fails: no acknowledgement leaves, the log
    freezes (no tick, no step), clients get no_space; once the sync goes
    through, the acknowledgement leaves and everything goes on."""
    r, disk, sent = follower
    disk.full = True
    r.core.step(_append(1))
    r._handle_ready()
    assert r._stalled is not None
    assert not [m for m in sent if isinstance(m, AppendEntriesResponse)], sent
    core = r.core
    assert isinstance(core, RaftCore)
    elapsed = core.election_elapsed
    r._tick(100)
    assert core.election_elapsed == elapsed, "a stalled log ticked"
    assert r._no_space(True) is not None and r._no_space(False) is not None
    r._stall_retry_at = 0.0
    r._handle_ready()
    assert r._stalled is not None, "still full, still stalled"
    disk.full = False
    r._stall_retry_at = 0.0
    r._handle_ready()
    assert r._stalled is None
    acks = [m for m in sent if isinstance(m, AppendEntriesResponse)]
    assert [(a.success, a.index) for a in acks] == [(True, 1)], acks
    assert disk.inner.initial_state().entries[-1].index == 1


def test_a_follower_short_of_space_drops_new_entries_but_answers_heartbeats(
        follower: tuple[NodeRunner, _FullDisk, list[Any]]) -> None:
    """With the disk low, an append carrying entries the follower lacks is
    dropped unanswered (as a lost message), while heartbeats are answered:
    the leader keeps it, and no election comes of it."""
    r, _disk, sent = follower
    r.disk.state = "low"
    r.disk.check = lambda *_a: None  # type: ignore[method-assign]  # held low for the test
    from node import codec

    r.transport.receive = lambda: [  # type: ignore[method-assign]  # a scripted peer
        ("n2", codec.encode(_append(1))),
        ("n2", codec.encode(Heartbeat(term=2, src="n2", dst="n1", commit=0, seq=7)))]
    r._receive_peers()
    r._handle_ready()
    assert r.core.log.last_index() == 0, "the follower took an entry it may not store"
    assert [type(m).__name__ for m in sent] == ["HeartbeatResponse"], sent
    assert r.disk.peer_messages_dropped == 1


# --- whole clusters on a small disk --------------------------------------------------


@pytest.fixture
def shared_disk(tmp_path: Path) -> Iterator[tuple[TestCluster, Path]]:
    """A 3-node cluster whose run directory (data, logs, cluster.json) is on
    one small tmpfs, as nodes on one machine share one disk."""
    d = tmp_path / "disk"
    _mount(d, 3 * DISK_OK_FREE_BYTES // (1 << 20))
    try:
        with make_cluster(d, 3) as c:
            start_and_settle(c)
            yield c, d
    finally:
        _umount(d)


def _cli(c: Cluster, *args: str) -> Any:
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "-C", "test", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def _put_outcome(c: TestCluster, key: str) -> str:
    """`ok`, or the error code a put of `key` ends with."""
    try:
        with c.client(timeout_s=3.0) as cl:
            r = cl.put(key, b"v")
            return "ok" if r.ok else str(r.error)
    except ClientError as e:
        return e.code


def test_a_full_disk_stops_writes_keeps_the_leader_and_loses_nothing(
        shared_disk: tuple[TestCluster, Path]) -> None:
    """Every node's disk fills up under a writer: writes get no_space (the
    CLI says so), reads go on, the leader keeps its term, status shows the
    disk; when space returns, writes resume without a restart; and every
    acknowledged write is there, also after all nodes restart."""
    c, disk = shared_disk
    acked: dict[str, bytes] = {}
    codes: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with c.client(timeout_s=3.0) as cl:
            i = 0
            while not stop.is_set():
                key = f"w{i}"
                try:
                    r = cl.put(key, key.encode() * 50)
                    if r.ok:
                        acked[key] = key.encode() * 50
                    else:
                        codes.append(str(r.error))
                except ClientError as e:
                    codes.append(e.code)
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_until(lambda: len(acked) >= 30, 10.0, "30 writes acknowledged")
        lead = c.leader()
        pids = {n: s["pid"] for n, s in c.statuses().items()}
        term = c.statuses()[lead or ""]["term"]
        filler = _fill(disk)
        wait_until(lambda: all(s["disk"]["state"] != "ok" for s in c.statuses().values()),
                   10.0, "every node sees its disk full")
        wait_until(lambda: _put_outcome(c, "refused") == "no_space", 10.0, "a put gets no_space")
        r = _cli(c, "put", "k", "v")
        assert r.exit_code != 0 and "no_space" in r.output, r.output
        with c.client() as cl:
            first = next(iter(acked))
            assert cl.get(first) == acked[first], "a linearizable read while full"
        st = json.loads(_cli(c, "status", "--json").output)
        assert {row["disk"] for row in st} <= {"low", "full"}, st
        # For a second of full disk (five election timeouts and more): the
        # same leader in the same term on every look; an election would show.
        window = time.monotonic() + 1.0
        while time.monotonic() < window:
            now = c.statuses()
            assert now[lead or ""]["role"] == "leader" and now[lead or ""]["term"] == term, now
            assert {s["pid"] for s in now.values()} == set(pids.values())
        n_full = len(acked)
        filler.unlink()
        wait_until(lambda: len(acked) >= n_full + 30, 15.0, "30 more writes once space is back")
        wait_until(lambda: all(s["disk"]["state"] == "ok" for s in c.statuses().values()),
                   10.0, "every node's disk ok again")
        assert {n: s["pid"] for n, s in c.statuses().items()} == pids, "a node was restarted"
    finally:
        stop.set()
        t.join(30)
    assert "no_space" in codes, set(codes)
    with c.client() as cl:
        lost = [k for k, v in acked.items() if cl.get(k) != v]
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    for n in c.node_ids():
        c.stop(n)
    c.start_all()
    c.wait_for_leader(10.0)
    with c.client() as cl:
        lost = [k for k, v in acked.items() if cl.get(k) != v]
    assert not lost, f"acknowledged writes lost after a restart: {lost[:5]}"


def test_start_on_a_full_disk_says_so_and_leaves_no_process(
        shared_disk: tuple[TestCluster, Path]) -> None:
    """`raftctl start` when the run directory's disk is full: it cannot
    record the launch, so it starts nothing and says why in one line
    (exit 70 and an unrecorded process, before)."""
    c, disk = shared_disk
    victim = next(n for n in c.node_ids() if n != c.leader())
    c.stop(victim)
    filler = _fill(disk)
    r = _cli(c, "start", victim)
    assert r.exit_code == 1, r.output
    assert "No space left on device" in r.output and "nothing was started" in r.output, r.output
    assert c.orphans() == {}
    filler.unlink()
    r = _cli(c, "start", victim)
    assert r.exit_code == 0, r.output
    for info in c.load().processes.values():
        c.started.append((info.pid, info.create_time))


@pytest.fixture
def one_full_follower(tmp_path: Path) -> Iterator[tuple[TestCluster, str, Path]]:
    """A 3-node cluster where only n3's data directory is on a small tmpfs."""
    c = TestCluster(tmp_path / "run")
    c.create(make_config(3, name="test"))
    d = c.run_dir / "nodes" / "n3" / "data"
    _mount(d, 2 * DISK_OK_FREE_BYTES // (1 << 20))
    try:
        start_and_settle(c)
        if c.leader() == "n3":
            c.transfer("n1")
            wait_until(lambda: c.leader() == "n1", 5.0, "n1 leads")
        yield c, "n3", d
    finally:
        c.reap()
        _umount(d)


def test_a_follower_with_a_full_disk_stays_and_catches_up(
        one_full_follower: tuple[TestCluster, str, Path]) -> None:
    """Only a follower's disk is full: the others go on committing, the
    follower stores (and acknowledges) nothing new but stays a follower of
    the same leader, and catches up by itself once space returns."""
    c, n3, disk = one_full_follower
    lead = c.leader()
    term = c.statuses()[n3]["term"]
    filler = _fill(disk)
    wait_until(lambda: c.statuses()[n3]["disk"]["state"] != "ok", 10.0, f"{n3} sees its disk")
    before = c.statuses()[n3]["log_last"]
    with c.client() as cl:
        for i in range(50):
            assert cl.put(f"f{i}", b"x" * 1000).ok
    st = c.statuses()
    assert st[lead or ""]["commit"] >= before + 50
    assert st[n3]["log_last"] == before, "the full follower stored new entries"
    assert (st[n3]["role"], st[n3]["leader"], st[n3]["term"]) == ("follower", lead, term), st[n3]
    filler.unlink()
    commit = c.statuses()[lead or ""]["commit"]
    wait_until(lambda: c.statuses()[n3]["applied"] >= commit, 10.0, f"{n3} caught up")
    assert c.statuses()[n3]["term"] == term
