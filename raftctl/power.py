"""`raftctl up --power-loss` and `raftctl down`: every node's data directory
on a power-loss mount (chaos/powerloss, docs/STORAGE.md), mounted before the
node starts and unmounted once it stopped, each filesystem server ended by
its pid. What survives a power cut lives in `disk/` beside `data/`.
"""

from __future__ import annotations

from pathlib import Path

from chaos.powerloss import PowerLossError, PowerLossMount, unavailable
from chaos.powerloss.mount import is_mounted
from raftctl.cluster import Cluster, ClusterError


def _node_dirs(run_dir: Path) -> list[Path]:
    """Every node directory there is, whether or not cluster.json still names it."""
    nodes = run_dir / "nodes"
    return sorted(p for p in nodes.iterdir() if p.is_dir()) if nodes.is_dir() else []


def mount_data_dirs(c: Cluster) -> list[str]:
    """Put each node's data directory on a power-loss mount (those already
    on one that answers stay); returns the nodes mounted now."""
    why = unavailable()
    if why is not None:
        raise ClusterError(f"--power-loss needs FUSE: {why}")
    mounted: list[str] = []
    for n in c.node_ids():
        m = PowerLossMount.in_node_dir(c.run_dir / "nodes" / n)
        try:
            if is_mounted(m.mountpoint):
                try:
                    m.status()
                    continue
                except PowerLossError:
                    m.unmount()  # a mount whose server died: remove it, then mount again
            m.mount()
        except PowerLossError as e:
            raise ClusterError(f"{n}: {e}") from None
        mounted.append(n)
    return mounted


def unmount_data_dirs(run_dir: Path) -> list[str]:
    """Unmount every node's power-loss mount (a clean unmount writes back
    everything; a dead one is removed); returns the nodes unmounted. The
    nodes must have stopped."""
    done: list[str] = []
    errors: list[str] = []
    for d in _node_dirs(run_dir):
        m = PowerLossMount.in_node_dir(d)
        if not is_mounted(m.mountpoint) and not m.control.exists():
            continue
        try:
            m.unmount()
        except PowerLossError as e:
            errors.append(f"{d.name}: {e}")
            continue
        done.append(d.name)
    if errors:
        raise ClusterError("; ".join(errors))
    return done


def needs_power_loss(c: Cluster) -> list[str]:
    """Nodes whose durable data lives on a power-loss disk that is not
    mounted: started without the mount, they would find no data."""
    out = []
    for n in c.node_ids():
        m = PowerLossMount.in_node_dir(c.run_dir / "nodes" / n)
        if m.backing.is_dir() and any(m.backing.iterdir()) and not is_mounted(m.mountpoint):
            out.append(n)
    return out
