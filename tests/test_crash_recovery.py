"""A real node process killed with SIGKILL in the middle of a stream of writes
comes back with every write it acknowledged (fsync = always)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.client import ClientError
from tests.procs import TestCluster, make_cluster, wait_until

ROUNDS = 20


@pytest.fixture
def single(tmp_path: Path) -> Iterator[TestCluster]:
    # One node: an acknowledged write is exactly one this node made durable.
    for c in make_cluster(tmp_path, 1, snapshot_entries=200):
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


def test_sigkill_mid_stream_loses_no_acknowledged_write(single: TestCluster) -> None:
    """20 times: write, SIGKILL at a random moment, restart, read back every
    acknowledged write (some rounds cross a snapshot and WAL compaction)."""
    rng = random.Random(20261128)
    acked: dict[str, bytes] = {}
    # Writes whose outcome is unknown (cut short by the kill) may or may not
    # have been applied: after them, either value is correct.
    maybe: dict[str, set[bytes]] = {}
    seq = 0
    for rnd in range(ROUNDS):
        stop = threading.Event()
        this_round: list[str] = []

        def writer(round_no: int = rnd) -> None:
            nonlocal seq
            with single.client(timeout_s=2.0, attempt_timeout_s=0.5) as cl:
                while not stop.is_set():
                    seq += 1
                    key, val = f"k{seq % 100}", f"r{round_no}-{seq}".encode()
                    try:
                        if cl.put(key, val).ok:
                            acked[key] = val
                            maybe.pop(key, None)
                            this_round.append(key)
                    except ClientError:
                        maybe.setdefault(key, set()).add(val)
                        return  # the node died under us: not acknowledged

        t = threading.Thread(target=writer)
        t.start()
        target = rng.randint(1, 80)
        try:
            wait_until(lambda n=target: len(this_round) >= n, 20.0,
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
