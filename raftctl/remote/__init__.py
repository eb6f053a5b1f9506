"""Clusters across hosts, driven over SSH (docs/DEPLOY.md). `open_cluster`
is the one door: a run directory with an inventory gets the SSH-backed
supervisor, any other the local one, and then nothing of SSH is imported."""

from __future__ import annotations

from pathlib import Path

from raftctl.cluster import DEFAULT_CLUSTER, Cluster

# The inventory in a run directory (raftctl/remote/inventory.py).
HOSTS_FILE = "hosts.json"


def has_hosts(run_dir: Path) -> bool:
    """Whether the cluster in `run_dir` has nodes on other hosts."""
    return (run_dir / HOSTS_FILE).exists()


def open_cluster(run_dir: Path, name: str = DEFAULT_CLUSTER) -> Cluster:
    """The supervisor of the cluster in `run_dir`."""
    if has_hosts(run_dir):
        # Only here: asyncssh costs every other command's start.
        from raftctl.remote.cluster import HostCluster

        return HostCluster(run_dir, name)
    return Cluster(run_dir, name)
