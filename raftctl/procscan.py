"""Node processes found by their command line (`python -m node --run-dir
DIR --id N`, maybe behind nsenter), whether or not a cluster file names
them: how the supervisor adopts a node launched by a raftctl that died
before recording it, and finds the nodes of a run directory whose
cluster.json is gone. It only reads; it never signals a process."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def node_processes(run_dir: Path | None = None) -> dict[Path, dict[str, psutil.Process]]:
    """Run directory -> node id -> process, for this user's live node
    processes (of `run_dir` only, when given)."""
    uid = os.getuid()
    want = run_dir.resolve() if run_dir is not None else None
    out: dict[Path, dict[str, psutil.Process]] = {}
    for p in psutil.process_iter(["cmdline", "uids", "status"]):
        cmd: list[str] | None = p.info.get("cmdline")
        uids = p.info.get("uids")
        if not cmd or uids is None or uids.real != uid \
                or p.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        for i in range(len(cmd) - 3):
            if cmd[i:i + 3] != ["-m", "node", "--run-dir"]:
                continue
            found = Path(cmd[i + 3]).resolve()
            node = cmd[i + 5] if i + 5 < len(cmd) and cmd[i + 4] == "--id" else "?"
            if want is None or found == want:
                out.setdefault(found, {})[node] = p
            break
    return out


def unrecorded(run_dir: Path, recorded: set[int]) -> dict[str, psutil.Process]:
    """The node processes of `run_dir` whose pid is not in `recorded`."""
    found = node_processes(run_dir).get(run_dir.resolve(), {})
    return {n: p for n, p in found.items() if p.pid not in recorded}


def data_left(run_dir: Path) -> list[str]:
    """What of a cluster's state a run directory still holds (its keys,
    data directories that are not empty, membership marks), as names
    relative to it: a directory holding any is not new."""
    out = []
    if (run_dir / "keys").exists():
        out.append("keys")
    nodes = run_dir / "nodes"
    if nodes.is_dir():
        for d in sorted(nodes.iterdir()):
            data = d / "data"
            if data.is_dir() and any(f.name != "LOCK" for f in data.iterdir()):
                out.append(f"nodes/{d.name}/data")
    members = run_dir / "members"
    if members.is_dir() and any(members.iterdir()):
        out.append("members")
    return out


def output_since(path: Path, offset: int, limit_bytes: int = 4000) -> str:
    """What a node wrote to its stdout.log after `offset`: why it exited,
    when it refused to start (the end of it, at most `limit_bytes`)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read()[-limit_bytes:].decode("utf-8", "replace")
    except OSError:
        return ""
    return text.strip()
