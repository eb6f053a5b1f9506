"""Power loss as a nemesis fault: the nodes' power-loss mounts, found from
their directories; a cut (SIGKILL, then whatever each target's disk had not
synced is gone: `chaos.powerloss.power_cut`); and the restart that heals it,
which notes a node that did not survive from its own disk. Handed a
cluster-like object; it never imports the CLI or the supervisor.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from chaos.powerloss import CacheStatus, PowerLossError, PowerLossMount, power_cut
from chaos.powerloss.mount import is_mounted

# A node restarted after a cut has this long to answer its status (it reads
# its log back through the mount) before it is taken to have refused.
POWER_RESTART_TIMEOUT_S = 20.0
_POLL_S = 0.1


class NodeLike(Protocol):
    @property
    def process(self) -> str: ...  # running | paused | down
    @property
    def status(self) -> dict[str, Any] | None: ...


class PowerCluster(Protocol):
    """What a power cut and its repair need of a cluster (raftctl's Cluster fits)."""

    def kill(self, node_id: str) -> int: ...
    def start(self, node_id: str, force_rejoin: bool = ...) -> int: ...
    def node_status(self, node_id: str, timeout_s: float = ...) -> NodeLike: ...


def find_mounts(node_dirs: Mapping[str, Path]) -> dict[str, PowerLossMount] | str:
    """Each node's power-loss mount (its `data/`, served from `disk/` beside
    it), or a sentence saying why there is none for some node."""
    if not sys.platform.startswith("linux"):
        return "power-loss mounts need Linux (FUSE)"
    mounts: dict[str, PowerLossMount] = {}
    for node, d in node_dirs.items():
        m = PowerLossMount.in_node_dir(d)
        if not is_mounted(m.mountpoint):
            return (f"{node}'s data directory is not a power-loss mount (`raftctl up "
                    "--power-loss` mounts every node's)")
        try:
            m.status()
        except PowerLossError as e:
            return f"{node}'s power-loss mount does not answer: {e}"
        mounts[node] = m
    return mounts


def describe_dropped(dropped: Mapping[str, CacheStatus]) -> str:
    """`n1: 12 pages of 3 files, 2 names` for each node whose cut dropped something."""
    parts = [f"{n}: {d.pages_dirty} pages of {d.files_dirty} files, {d.entries_dirty} names"
             for n, d in dropped.items() if d.pages_dirty or d.files_dirty or d.entries_dirty]
    return "; ".join(parts) or "nothing was unsynced"


class PowerLoss:
    """Cuts the power of nodes whose data directories are on `mounts`, and
    brings them back."""

    def __init__(self, cluster: PowerCluster, mounts: Mapping[str, PowerLossMount]) -> None:
        self.cluster = cluster
        self.mounts = dict(mounts)

    def cut(self, nodes: Sequence[str]) -> dict[str, CacheStatus]:
        """SIGKILL every one of `nodes`, then drop what their mounts had not
        synced, as one power failure of them all; they stay down."""
        return power_cut(self.cluster, self.mounts, list(nodes), restart=False)

    def restore(self, nodes: Sequence[str]) -> dict[str, str | None]:
        """Start `nodes` from what their disks kept, all at once, and wait for
        each. One that will not come back (a node whose log, vote and
        snapshot are gone refuses to rejoin as a voter) is started with
        force_rejoin, so the run goes on and shows what that costs; its
        sentence says so. None: it came back from its disk."""
        for n in nodes:
            self.cluster.start(n)
        out: dict[str, str | None] = {}
        for n in nodes:
            if self._came_back(n):
                out[n] = None
                continue
            self.cluster.start(n, force_rejoin=True)
            if not self._came_back(n):
                raise PowerLossError(f"{n} does not start after its power cut, not even with "
                                     "--force-rejoin; see its log")
            out[n] = (f"{n} did not come back from its disk after the power cut (it exited "
                      "at start: a node whose log, vote and snapshot are gone refuses to "
                      "rejoin); restarted with --force-rejoin")
        return out

    def _came_back(self, node: str) -> bool:
        """Wait until `node` answers its status (True) or its process is gone
        (False); raise if it runs without answering for too long."""
        deadline = time.monotonic() + POWER_RESTART_TIMEOUT_S
        while time.monotonic() < deadline:
            s = self.cluster.node_status(node, timeout_s=0.5)
            if s.process == "down":
                return False
            if s.status is not None:
                return True
            time.sleep(_POLL_S)  # polling cadence; the condition is the answer
        raise PowerLossError(f"{node} runs but has not answered for "
                             f"{POWER_RESTART_TIMEOUT_S:g}s after its power cut; see its log")
