"""The cluster settings of linearizable reads (docs/PROTOCOL.md, "Reads"):
what a cluster file may say, what it may not, and what reaches the core."""

from __future__ import annotations

from typing import Any

from node.config import ClusterConfig, NodeSpec


def _cfg(**kw: Any) -> ClusterConfig:
    node = NodeSpec(id="n1", peer_port=20001, client_port=20002, control_port=20003)
    return ClusterConfig(nodes=[node], **kw)


def test_read_settings_reach_the_core() -> None:
    """read_mode, lease_drift_ticks and follower_reads go to the core's config."""
    core = _cfg(read_mode="lease", lease_drift_ticks=5, follower_reads=False).core_config()
    assert (core.read_mode, core.lease_drift_ticks, core.follower_reads) == ("lease", 5, False)


def test_defaults_are_read_index_and_follower_reads() -> None:
    """By default reads need no clock and followers serve them."""
    core = _cfg().core_config()
    assert core.read_mode == "index" and core.follower_reads


def test_unknown_read_mode_is_refused() -> None:
    """A read mode that does not exist is named with the ones that do."""
    assert any(p.startswith("read_mode:") and "index, lease" in p
               for p in _cfg(read_mode="fast").problems())


def test_lease_reads_are_refused_for_paxos() -> None:
    """A Paxos cluster has no lease reads; its config says so in one sentence."""
    assert any(p.startswith("read_mode:") and "paxos" in p
               for p in _cfg(read_mode="lease", algorithm="paxos").problems())


def test_drift_margin_must_leave_a_lease() -> None:
    """A drift margin as long as the election timeout leaves no lease at all."""
    assert any(p.startswith("lease_drift_ticks:")
               for p in _cfg(lease_drift_ticks=15, election_ticks=15).problems())
