"""Finding clusters on this machine for `raftctl ls`: the run directories
under a home, and those of this user's running node processes wherever they
are. It only reads (no file is written, no node is changed) and never prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raftctl.cluster import ClusterError, leader_of
from raftctl.procscan import node_processes
from raftctl.remote import open_cluster

# A cluster's nodes get this long to answer `ls`'s status request.
LS_STATUS_TIMEOUT_S = 0.3


@dataclass
class FoundCluster:
    """One line of `raftctl ls` (and its `--json` item)."""

    name: str
    run_dir: str
    nodes: int
    up: int
    leader: str | None
    current: bool  # the cluster this command line would act on
    problem: str | None = None


def run_dirs_in(home: Path) -> set[Path]:
    """The run directories directly under `home`."""
    try:
        return {d.resolve() for d in home.iterdir() if (d / "cluster.json").is_file()}
    except OSError:  # no home yet, or not readable: nothing there
        return set()


def running_run_dirs() -> set[Path]:
    """Run directories of this user's node processes, found by their command
    line (`python -m node --run-dir DIR --id N`, maybe behind nsenter)."""
    return set(node_processes())


def describe(run_dir: Path, current: Path) -> FoundCluster | None:
    """What `ls` shows of one run directory (None if it holds no cluster)."""
    c = open_cluster(run_dir)
    try:
        cfg = c.config()
    except ClusterError as e:
        if not c.file.exists():
            return None
        return FoundCluster("?", str(run_dir), 0, 0, None, run_dir == current, problem=str(e))
    c.name = cfg.name
    try:
        states = c.status(timeout_s=LS_STATUS_TIMEOUT_S)
    except ClusterError as e:
        return FoundCluster(cfg.name, str(run_dir), len(c.node_ids()), 0, None,
                            run_dir == current, problem=str(e))
    up = sum(1 for s in states if s.process == "running")
    return FoundCluster(cfg.name, str(run_dir), len(states), up, leader_of(states),
                        run_dir == current)


def find_clusters(home: Path, current: Path) -> list[FoundCluster]:
    """Every cluster under `home`, every running cluster of this user
    anywhere, and `current` if it exists; by name, then run directory."""
    dirs = run_dirs_in(home) | running_run_dirs()
    if (current / "cluster.json").is_file():
        dirs.add(current)
    found = [f for f in (describe(d, current) for d in dirs) if f is not None]
    return sorted(found, key=lambda f: (f.name, f.run_dir))
