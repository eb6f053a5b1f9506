"""A node whose data directory is not empty but lost part of what it held
refuses to start, saying what is missing, instead of coming back with less:
its WAL deleted beside its snapshot, or the end of its WAL zeroed. (A data
directory emptied altogether is tests/test_exactly_once.py's.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.membership_mark import mark_path
from node.storage.wal_format import Replay, scan
from tests.procs import TestCluster, make_cluster, start_and_settle, wait_until


@pytest.fixture
def c3(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 3, snapshot_entries=40) as c:
        start_and_settle(c)
        yield c


def _write(c: TestCluster, n: int, prefix: str) -> None:
    with c.client() as cl:
        for i in range(n):
            assert cl.put(f"{prefix}{i}", b"v" * 100).ok


def _follower(c: TestCluster) -> str:
    lead = c.leader()
    return next(n for n in c.node_ids() if n != lead)


def _refusal(c: TestCluster, node: str) -> str:
    """Start `node`, which must exit at once; what it said."""
    stdout = c.run_dir / "nodes" / node / "stdout.log"
    start = stdout.stat().st_size
    c.start(node)
    wait_until(lambda: c.process_state(node)[1] == "down", 10.0, f"{node} exited")
    return stdout.read_bytes()[start:].decode()


def test_a_deleted_wal_beside_a_snapshot_is_refused_and_the_snapshot_kept(
        c3: TestCluster) -> None:
    """The WAL deleted, the snapshot left: the node once started from
    nothing and deleted the snapshot as stale. It now refuses, naming the
    missing WAL, and the snapshot is still there."""
    _write(c3, 60, "a")
    victim = _follower(c3)
    data = c3.run_dir / "nodes" / victim / "data"
    wait_until(lambda: list(data.glob("snap-*.snap")), 10.0, f"a snapshot on {victim}")
    c3.stop(victim)
    snaps = sorted(data.glob("snap-*.snap"))
    for seg in data.glob("wal-*.log"):
        seg.unlink()
    said = _refusal(c3, victim)
    assert "WAL" in said and "missing" in said and snaps[-1].name in said, said
    assert sorted(data.glob("snap-*.snap")) == snaps, "the snapshot was deleted"


def test_a_zeroed_end_of_the_wal_is_refused(c3: TestCluster) -> None:
    """The last records of the WAL zeroed (as a disk losing blocks would):
    the node once started at a lower index, silently, as if the zeros were
    reserved space. The floor it recorded says what it had: it refuses."""
    _write(c3, 30, "b")
    victim = _follower(c3)
    commit = c3.statuses()[victim]["commit"]
    mark = mark_path(c3.run_dir, victim)
    wait_until(lambda: json.loads(mark.read_text()).get("index", 0) >= commit, 5.0,
               f"{victim}'s mark records index {commit}")
    c3.stop(victim)
    # Entries appended after `commit` was read (a session closing, say) may
    # have raised the floor further: the refusal names the one recorded.
    floor = json.loads(mark.read_text())["index"]
    data = c3.run_dir / "nodes" / victim / "data"
    seg = sorted(data.glob("wal-*.log"))[-1]
    raw = seg.read_bytes()
    replay = Replay()
    scan(raw, seg, True, replay)
    cut = next(off for rec, off in zip(replay.records, replay.offsets, strict=True)
               if getattr(rec, "index", -1) == commit - 10 and hasattr(rec, "data"))
    seg.write_bytes(raw[:cut] + bytes(len(raw) - cut))
    said = _refusal(c3, victim)
    assert "lost the end of its log" in said and f"index {floor} " in said, said
    assert "--force-rejoin" in said, said
