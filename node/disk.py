"""`DiskWatch`: whether a node's disk can take more writes, from the WAL's
own failures and the filesystem's free space, and what the operator is
told about it. It decides the node's disk state only; the runner acts on
it (docs/STORAGE.md, "A full disk").

- `ok`: writes as usual.
- `low`: the WAL could not reserve room ahead, or the filesystem has less
  than DISK_LOW_FREE_BYTES free. The node takes no new write (`no_space`)
  and no new entry, but keeps its place: heartbeats, votes, reads.
- `full`: a write failed for want of space. The node's log is stalled: it
  neither steps nor ticks its Raft state until the write goes through,
  like a paused process, and answers clients `no_space`.

Both end by themselves once the filesystem has DISK_OK_FREE_BYTES free
(and, for `full`, the stalled write went through).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from node.paxos.messages import Accept, PaxosMessage
from node.raft.messages import AppendEntries, InstallSnapshot, PeerMessage

# Below this much free space the node takes no new writes; at this much
# again it takes them. The gap keeps a disk near the line from flapping.
DISK_LOW_FREE_BYTES = 32 * 1024 * 1024
DISK_OK_FREE_BYTES = 64 * 1024 * 1024
# How often the free space is looked at (one statvfs), and how often a
# stalled write is tried again.
DISK_CHECK_INTERVAL_MS = 250
DISK_RETRY_INTERVAL_MS = 100


class LogTerms(Protocol):
    """Raft's log or a Paxos node's slots, as `needs_space` reads them."""

    def term(self, index: int) -> int | None: ...


class DiskWatch:
    """The disk state of one node's data directory (see the module)."""

    def __init__(self, directory: Path, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._dir = directory
        self._monotonic = monotonic
        self.state = "ok"
        self.since = monotonic()
        self.error = ""
        self.free_bytes = self._free()
        self._checked = self.since
        self.writes_refused = 0
        self.peer_messages_dropped = 0

    def _free(self) -> int:
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return -1
        return st.f_bavail * st.f_frsize

    def check(self, wal_error: OSError | None, stalled: bool) -> tuple[str, str] | None:
        """Look again (at most every DISK_CHECK_INTERVAL_MS). Returns the
        (old, new) states when the state changed, else None."""
        now = self._monotonic()
        urgent = (stalled and self.state != "full") \
            or (wal_error is not None and self.state == "ok")
        if not urgent and now - self._checked < DISK_CHECK_INTERVAL_MS / 1000.0:
            return None
        self._checked = now
        self.free_bytes = self._free()
        known = self.free_bytes >= 0
        if stalled:
            new = "full"
        elif wal_error is not None or (known and self.free_bytes < DISK_LOW_FREE_BYTES):
            new = "low"
        elif self.state != "ok" and known and self.free_bytes < DISK_OK_FREE_BYTES:
            new = "low"  # not yet enough again
        else:
            new = "ok"
        if wal_error is not None:
            self.error = str(wal_error)
        if new == self.state:
            return None
        old, self.state, self.since = self.state, new, now
        if new == "ok":
            self.error = ""
        return old, new

    def room_again(self) -> bool:
        """The filesystem has DISK_OK_FREE_BYTES free: worth trying writes again."""
        return self._free() >= DISK_OK_FREE_BYTES

    def refusal(self, stalled: bool) -> str:
        """The message of a `no_space` answer (`stalled`: a write failed)."""
        free = f"{self.free_bytes // (1024 * 1024)} MiB free" if self.free_bytes >= 0 \
            else "free space unknown"
        why = "a write failed for want of space; its log is stalled until it goes through" \
            if stalled else "it stops taking writes before its disk is full"
        return (f"the node's disk is full ({free}): {why}; it resumes by itself once "
                f"{DISK_OK_FREE_BYTES // (1024 * 1024)} MiB are free")

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "since_s": round(self._monotonic() - self.since, 3),
                "free_bytes": self.free_bytes, "error": self.error,
                "writes_refused": self.writes_refused,
                "peer_messages_dropped": self.peer_messages_dropped}


def needs_space(m: PeerMessage | PaxosMessage, log: LogTerms) -> bool:
    """Would stepping `m` make this node store more than a term or a vote:
    entries its log does not hold (by Log Matching, the last one decides;
    a Paxos acceptor's slots match one by one), or a snapshot? A node short
    of space drops such a message, unanswered, as a lost one: what it
    cannot store it must not acknowledge (§5.1)."""
    if isinstance(m, InstallSnapshot):
        return True
    if isinstance(m, AppendEntries) and m.entries:
        last = m.entries[-1]
        return log.term(last.index) != last.term
    if isinstance(m, Accept):
        return any(log.term(e.index) != e.term for e in m.entries)
    return False
