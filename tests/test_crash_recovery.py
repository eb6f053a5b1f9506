"""A real node process killed with SIGKILL in the middle of a stream of writes
comes back with every write it acknowledged (fsync = always)."""

from __future__ import annotations

import functools
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.client import ClientError
from node.config import WAL_SEGMENT_BYTES
from node.storage.wal import HEADER_BYTES, Wal
from tests.procs import TestCluster, at_least, make_cluster, wait_until

# Kill-and-restart rounds: a few in the default suite, many as a soak.
ROUNDS = 3
SOAK_ROUNDS = 40


@pytest.fixture
def single(tmp_path: Path) -> Iterator[TestCluster]:
    # One node: an acknowledged write is exactly one this node made durable.
    with make_cluster(tmp_path, 1, snapshot_entries=200) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


@pytest.mark.parametrize("rounds", [ROUNDS, pytest.param(SOAK_ROUNDS, marks=pytest.mark.soak)])
def test_sigkill_mid_stream_loses_no_acknowledged_write(single: TestCluster, rounds: int) -> None:
    """`rounds` times: write, SIGKILL at a random moment, restart, read back
    every acknowledged write (some rounds cross a snapshot and WAL compaction)."""
    rng = random.Random(20261128)
    acked: dict[str, bytes] = {}
    # Writes whose outcome is unknown (cut short by the kill) may or may not
    # have been applied: after them, either value is correct.
    maybe: dict[str, set[bytes]] = {}
    seq = 0
    for rnd in range(rounds):
        stop = threading.Event()
        this_round: list[str] = []

        def writer(stop: threading.Event, this_round: list[str], round_no: int) -> None:
            nonlocal seq
            with single.client(timeout_s=0.6, attempt_timeout_s=0.3) as cl:
                while not stop.is_set():
                    seq += 1
                    key, val = f"k{seq % 100}", f"r{round_no}-{seq}".encode()
                    try:
                        if cl.put(key, val).ok:
                            acked[key] = val
                            maybe.pop(key, None)
                            this_round.append(key)
                    except ClientError:
                        # Not acknowledged (the node died under us, or it was
                        # slow): it may or may not have been applied.
                        maybe.setdefault(key, set()).add(val)

        t = threading.Thread(target=writer, args=(stop, this_round, rnd))
        t.start()
        target = rng.randint(1, 80)
        try:
            wait_until(at_least(this_round, target), 20.0,
                       f"round {rnd}: {target} writes acknowledged")
            single.kill("n1")
        finally:
            stop.set()
            t.join(10)
        single.start("n1")
        single.wait_for_leader(10.0)
        with single.client() as cl:
            lost = {k: v for k, v in acked.items()
                    if cl.get(k) not in {v, *maybe.get(k, set())}}
        assert not lost, f"round {rnd}: acknowledged writes lost after SIGKILL: {list(lost)[:5]}"


def test_torn_tail_is_cut_and_logged_by_the_node(tmp_path: Path) -> None:
    """A node whose WAL ends in a torn record starts, cuts it, keeps every
    whole record, and logs `wal_tail_truncated` with the byte count."""
    with make_cluster(tmp_path, 1) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        with c.client() as cl:
            for i in range(20):
                assert cl.put(f"k{i}", b"v").ok
        c.stop("n1")
        data_dir = c.run_dir / "nodes" / "n1" / "data"
        wal, replay = Wal.open(data_dir, sync=False, segment_bytes=WAL_SEGMENT_BYTES)
        wal.abandon()
        path, off = replay.where(len(replay.records) - 1)
        raw = path.read_bytes()
        end = off + HEADER_BYTES + int.from_bytes(raw[off : off + 4], "little")  # u32 length
        with open(path, "r+b") as f:  # over the preallocated zeros after the last record
            f.seek(end)
            f.write(b"\x40\x00\x00\x00torn")  # a length promising more than follows
        c.start("n1")
        c.wait_for_leader(10.0)
        with c.client() as cl:
            assert all(cl.get(f"k{i}") == b"v" for i in range(20))
        lines = [json.loads(x) for x in c.log_path("n1").read_text().splitlines()]
        cut = [e for e in lines if e["event"] == "wal_tail_truncated"]
        assert cut and cut[0]["bytes"] == 8, cut


def test_compaction_triggers_on_bytes_as_well_as_entries(tmp_path: Path) -> None:
    """A node compacts once the commands applied since its last snapshot
    pass `snapshot_bytes`, even far below `snapshot_entries`."""
    with make_cluster(tmp_path, 1, snapshot_entries=1_000_000, snapshot_bytes=50_000) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        with c.client() as cl:
            for i in range(60):
                assert cl.put(f"k{i}", b"x" * 1000).ok
        wait_until(functools.partial(_snapshotted, c, "n1"), 10.0,
                   "a snapshot after 60 KB of commands")


def _snapshotted(c: TestCluster, node: str) -> bool:
    return bool((c.statuses().get(node) or {}).get("snapshot_index", 0) > 0)
