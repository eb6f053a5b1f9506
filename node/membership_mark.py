"""The mark a node leaves in its run directory once it has durable state
(a term, a vote, entries): with it, a node whose data directory is empty
knows it lost its data, and refuses to come back as a voter (Raft assumes
durable storage: with an empty log it could vote twice in one term, or help
elect a leader that lacks committed entries).

The mark also holds a floor: an index this node's log durably reached and
the term it had then, updated at most every MEMBER_MARK_INTERVAL_MS. Both
only grow (the index is at most the commit index, and committed entries are
never truncated), so a data directory that recovers to less has lost the
end of its log, and the node refuses to start from it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from node.private_files import private_dir, write_private
from node.storage import InitialState
from node.storage.wal import fsync_dir

# How often, at most, a node records its durable floor: each update is a
# small file written and fsynced off the loop. A loss of the last entries
# written since the last update is not seen here (the leader sees it when
# the node answers: `follower_lost_data`).
MEMBER_MARK_INTERVAL_MS = 1_000


class DataLost(Exception):
    """The node was a member before and its data is gone, all or part."""


class Floor(msgspec.Struct, frozen=True):
    """The mark's contents: the node, and the floor its log reached."""

    node: str
    index: int = 0
    term: int = 0
    recorded: str = ""


def mark_path(run_dir: Path, node_id: str) -> Path:
    # Outside the node's own directory, so that losing that whole
    # directory (not only data/) is noticed too.
    return run_dir / "members" / node_id


def was_member(run_dir: Path, node_id: str) -> bool:
    return mark_path(run_dir, node_id).exists()


def record_member(run_dir: Path, node_id: str, sync: bool = True,
                  index: int = 0, term: int = 0) -> None:
    """Leave the mark, with the floor (`index`, `term`), durably when `sync`
    (before the node's first vote or acknowledgement leaves)."""
    path = mark_path(run_dir, node_id)
    created = not path.parent.is_dir()
    private_dir(path.parent)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    write_private(path, msgspec.json.encode(Floor(node_id, index, term, now)) + b"\n",
                  sync=sync)
    if sync and created:
        fsync_dir(run_dir)


def durable_floor(run_dir: Path, node_id: str) -> Floor | None:
    """The floor the mark records; None without a mark or with one from a
    version that recorded none."""
    try:
        return msgspec.json.decode(mark_path(run_dir, node_id).read_bytes(), type=Floor)
    except (OSError, msgspec.DecodeError):
        return None


def data_lost_message(node_id: str, data_dir: Path) -> str:
    return (f"{node_id} has lost its data: {data_dir} holds no log, vote or snapshot, "
            f"but {node_id} was a member of this cluster. Coming back as a voter with an "
            "empty log could let it vote twice in one term or elect a leader that lacks "
            f"committed writes. Replace it by a new member: `raftctl member replace {node_id}` "
            "(docs/MEMBERSHIP.md); or, accepting that risk, start its process with "
            "--force-rejoin")



def tail_lost_message(node_id: str, data_dir: Path, last: int, term: int, floor: Floor) -> str:
    return (f"{node_id} has lost the end of its log: {data_dir} recovers to index {last} "
            f"in term {term}, but {node_id} had durably stored index {floor.index} in term "
            f"{floor.term} (recorded {floor.recorded} in {os.path.join('members', node_id)}). "
            "Its WAL was cut or zeroed after it was written; the entries it acknowledged "
            "are gone, and as a voter it could help elect a leader without them. Move the "
            "data directory away and replace it by a new member: `raftctl member replace "
            f"{node_id}` (docs/MEMBERSHIP.md); or, accepting that risk, start its process "
            "with --force-rejoin")


def check_on_start(run_dir: Path, node_id: str, data_dir: Path, init: InitialState, *,
                   force_rejoin: bool, sync: bool) -> tuple[bool, str | None]:
    """What a node's mark says of the state its storage recovered: raises
    DataLost if the state is gone (empty) or less than the floor, unless
    `force_rejoin`; then returns the detail of the `rejoined_without_data`
    warning. Marks a node that has durable state and no mark. Returns
    whether the node is marked now, and that detail (None if not forced)."""
    last = max(init.snapshot.index, init.entries[-1].index if init.entries else 0)
    term = init.hard_state.term
    empty = term == 0 and last == 0
    floor = durable_floor(run_dir, node_id)
    if empty and was_member(run_dir, node_id):
        if not force_rejoin:
            raise DataLost(data_lost_message(node_id, data_dir))
        return False, ("started as a voter with an empty log although it was a member: "
                       "it may vote twice in a term")
    if not empty and floor is not None and (last < floor.index or term < floor.term):
        if not force_rejoin:
            raise DataLost(tail_lost_message(node_id, data_dir, last, term, floor))
        record_member(run_dir, node_id, sync=sync, index=min(last, init.hard_state.commit),
                      term=term)
        return True, (f"started with its log cut back to {last} in term {term} although it "
                      f"had stored {floor.index} in term {floor.term}: it may vote against "
                      "what it acknowledged")
    if not empty and not was_member(run_dir, node_id):
        record_member(run_dir, node_id, sync=sync, index=min(last, init.hard_state.commit),
                      term=term)
    return not empty, None


class FloorRecorder:
    """Records a node's durable floor in its mark, at most every
    MEMBER_MARK_INTERVAL_MS and only when it moved, through `submit` (a
    worker thread: the write fsyncs). A write that fails (a full disk) is
    tried again with a later floor."""

    def __init__(self, run_dir: Path, node_id: str,
                 submit: Callable[[Callable[[], None]], object]) -> None:
        self._run_dir = run_dir
        self._node = node_id
        self._submit = submit
        start = durable_floor(run_dir, node_id)
        self._recorded = (start.index, start.term) if start is not None else (0, 0)
        self._due = 0.0

    def maybe_record(self, floor: tuple[int, int]) -> None:
        """`floor` is durable now: record it, if it is time and it moved."""
        now = time.monotonic()
        if now < self._due or floor == self._recorded:
            return
        self._due = now + MEMBER_MARK_INTERVAL_MS / 1000.0
        self._recorded = floor
        run_dir, node = self._run_dir, self._node

        def write() -> None:
            with contextlib.suppress(OSError):  # retried with the next floor
                record_member(run_dir, node, sync=True, index=floor[0], term=floor[1])

        self._submit(write)
