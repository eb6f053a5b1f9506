"""A UDP cluster on a lossy, duplicating network: it keeps electing and
committing, loses no acknowledged write, and a follower far behind catches
up through a multi-megabyte snapshot sent in datagram-sized chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.faults import FaultState, Netem, all_links, with_netem
from node.client import ClientError
from tests.procs import TestCluster, make_cluster, wait_until


def _lossy(c: TestCluster, loss: float, duplicate: float) -> None:
    rates = Netem(loss=loss, duplicate=duplicate)
    c.apply_faults(with_netem(FaultState(), all_links(c.node_ids()), rates, "lossy"))


@pytest.fixture
def udp3(tmp_path: Path) -> Iterator[TestCluster]:
    with make_cluster(tmp_path, 3, transport="udp", snapshot_entries=40, catchup_entries=0) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


def test_ten_percent_loss_keeps_electing_and_committing(udp3: TestCluster) -> None:
    """10% loss and 1% duplication on every link: writes commit, a new
    leader is elected after the old one is killed, and every acknowledged
    write is there afterwards."""
    c = udp3
    _lossy(c, 0.10, 0.01)
    acked: dict[str, bytes] = {}
    with c.client(timeout_s=5.0) as cl:
        for i in range(100):
            try:
                if cl.put(f"a{i}", b"x%d" % i).ok:
                    acked[f"a{i}"] = b"x%d" % i
            except ClientError:
                continue
        assert len(acked) >= 90, f"only {len(acked)} of 100 writes acknowledged"
        old = c.leader()
        assert old is not None
        c.kill(old)
        wait_until(lambda: c.leader() not in (None, old), 15.0, "a new leader under 10% loss")
        for i in range(100, 150):
            try:
                if cl.put(f"a{i}", b"x%d" % i).ok:
                    acked[f"a{i}"] = b"x%d" % i
            except ClientError:
                continue
        assert len(acked) >= 135, "the new leader commits under loss"
        lost = [k for k, v in acked.items() if cl.get(k) != v]
    assert not lost, f"acknowledged writes lost: {lost[:5]}"


def test_far_behind_follower_catches_up_by_snapshot_over_lossy_udp(udp3: TestCluster) -> None:
    """A follower that missed megabytes of writes gets a multi-megabyte
    snapshot in chunks over UDP with 5% loss, installs it and catches up."""
    c = udp3
    lead = c.leader()
    assert lead is not None
    victim = next(n for n in c.node_ids() if n != lead)
    c.kill(victim)
    value = bytes(range(256)) * 160  # 40 KiB, under the UDP entry limit
    with c.client(timeout_s=10.0) as cl:
        for i in range(100):  # 4 MB of state
            assert cl.put(f"big{i}", value[:-2] + i.to_bytes(2, "big")).ok
    wait_until(lambda: (c.statuses().get(lead) or {}).get("snapshot_index", 0) >= 80, 10.0,
               "the leader compacted past what the follower has")
    _lossy(c, 0.05, 0.0)
    c.start(victim)

    def caught_up() -> bool:
        st = c.statuses()
        return victim in st and st[victim]["applied"] >= st[lead]["commit"] > 100

    wait_until(caught_up, 60.0, f"{victim} caught up over lossy UDP")
    installed = [e for e in map(json.loads, c.log_path(victim).read_text().splitlines())
                 if e["event"] == "snapshot_installed"]
    assert installed, "the follower did not install a snapshot"
    assert installed[-1]["bytes"] > 2_000_000, installed[-1]
    sent = c.statuses()[lead]["counters"]["transport"]
    assert sent["dropped_by_filter"] > 0, "the 5% loss never dropped anything"
    assert c.digest(victim) == c.digest(lead)
