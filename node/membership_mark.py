"""The mark a node leaves in its run directory once it has durable state
(a term, a vote, entries): with it, a node whose data directory is empty
knows it lost its data, and refuses to come back as a voter (Raft assumes
durable storage: with an empty log it could vote twice in one term, or help
elect a leader that lacks committed entries)."""

from __future__ import annotations

import os
from pathlib import Path

from node.storage.wal import fsync_dir


class DataLost(Exception):
    """The node was a member before and its data is gone."""


def mark_path(run_dir: Path, node_id: str) -> Path:
    # Outside the node's own directory, so that losing that whole
    # directory (not only data/) is noticed too.
    return run_dir / "members" / node_id


def was_member(run_dir: Path, node_id: str) -> bool:
    return mark_path(run_dir, node_id).exists()


def record_member(run_dir: Path, node_id: str, sync: bool = True) -> None:
    """Leave the mark, durably when `sync` (before the node's first vote or
    acknowledgement leaves)."""
    path = mark_path(run_dir, node_id)
    created = not path.parent.is_dir()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{node_id} has held durable Raft state in this cluster\n".encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if sync:
        fsync_dir(path.parent)
        if created:
            fsync_dir(run_dir)


def data_lost_message(node_id: str, data_dir: Path) -> str:
    return (f"{node_id} has lost its data: {data_dir} holds no log, vote or snapshot, "
            f"but {node_id} was a member of this cluster. Coming back as a voter with an "
            "empty log could let it vote twice in one term or elect a leader that lacks "
            f"committed writes. Replace it by a new member: `raftctl member replace {node_id}` "
            "(docs/MEMBERSHIP.md); or, accepting that risk, start its process with "
            "--force-rejoin")
