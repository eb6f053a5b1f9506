"""The runner's side of its disk: persisting each Ready (persist before
send, §5.1) and what a full disk changes (docs/STORAGE.md, "A full disk"):
writes refused while the disk is low, and a Ready whose persist found it
full kept, retried and carried out once durable, the log frozen meanwhile.
A Ready that brings a leader's snapshot waits the same way while the
snapshot is written and decoded off the loop (node/runner_snap.py).
A mixin of `NodeRunner` (node/runner.py); it opens no file of its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.control import ControlError
from node.disk import DISK_RETRY_INTERVAL_MS, DiskWatch
from node.membership_mark import FloorRecorder, record_member
from node.raft.messages import Snapshot
from node.raft.ready import Ready, ReadyHandler, complete_ready, handle_ready
from node.storage import FileStorage, NoSpace
from node.storage.wal import FULL_ERRNOS

if TYPE_CHECKING:
    import structlog

    from node.config import ClusterConfig
    from node.consensus import ConsensusCore
    from node.logs import LogFile

# The Ready handling of one loop turn stops after this long (a tick is 10 ms,
# an election timeout 150 ms or more): what is left waits one turn.
_READY_BUDGET_S = 0.010


class _Stalled(Exception):
    """The persist of a Ready found the disk full, or waits for a leader's
    snapshot to be stored: it waits in `_stalled`, and `handle_ready` is
    left where it was."""


class DiskHandling:
    """Persisting Readys, and a full disk (see the module)."""

    if TYPE_CHECKING:
        # Set up by NodeRunner.__init__ (node/runner.py).
        core: ConsensusCore[Any]
        storage: FileStorage
        disk: DiskWatch
        cfg: ClusterConfig
        log: structlog.typing.FilteringBoundLogger
        run_dir: Path
        id: str
        _ready_io: ReadyHandler[Any]
        _floor: FloorRecorder

        def _received_ready(self, snap: Snapshot) -> bool: ...

        _log_file: LogFile | None
        _member_marked: bool
        _reservation_logged: bool
        # A Ready whose persist found the disk full (or waits for a leader's
        # snapshot: `_stalled_on_snapshot`), the steps of its persist already
        # done, and when to try it again.
        _stalled: Ready[Any] | None
        _stalled_on_snapshot: bool
        _persisted: set[str]
        _stall_retry_at: float
        # The longest write + fdatasync of the WAL since status last read it.
        _sync_max_s: float

    def _tick(self, n: int) -> None:
        if self._stalled is None:  # a stalled log is frozen, as a paused process is
            for _ in range(n):
                self.core.tick()

    def _no_space(self, needs_log: bool) -> str | None:
        """Why a client request cannot be taken for want of disk space
        (node/disk.py): a write whenever the disk is low or full, a
        linearizable read only while the log is stalled."""
        stalled = self._disk_stalled()
        if not stalled and (self.disk.state == "ok" or not needs_log):
            return None
        self.disk.writes_refused += needs_log
        return self.disk.refusal(stalled)

    def _disk_stalled(self) -> bool:
        return self._stalled is not None and not self._stalled_on_snapshot

    def _refuse_if_stalled(self) -> None:
        if self._disk_stalled():
            raise ControlError("no_space", self.disk.refusal(stalled=True))

    def _watch_disk(self) -> None:
        """The disk's state, and an event when it changes. A reservation
        the WAL was refused is tried again once there is room."""
        if self.disk.state != "ok" and self.storage.space_error is not None \
                and self.disk.room_again():
            self.storage.forget_space_error()
        change = self.disk.check(self.storage.space_error, self._disk_stalled())
        if change is None:
            return
        old, new = change
        if new == "low":
            self.log.warning("disk_low", free_bytes=self.disk.free_bytes, error=self.disk.error)
        elif new == "full":
            self.log.error("disk_full", free_bytes=self.disk.free_bytes, error=self.disk.error)
        else:
            self.log.info("disk_space_recovered", was=old, free_bytes=self.disk.free_bytes,
                          log_lines_dropped=self._log_lines_dropped())

    def _log_lines_dropped(self) -> int:
        return self._log_file.dropped if self._log_file is not None else 0

    def _record_floor(self) -> None:
        """Between Readys: what the log durably holds, for the mark."""
        if self._member_marked and self.cfg.fsync == "always":
            self._floor.maybe_record(self.storage.durable_floor(self.core.log.commit))

    def _handle_ready(self) -> None:
        if self._stalled is not None and not self._retry_stalled():
            return
        # Bounded like the client drain; what is left waits one turn.
        until = time.monotonic() + _READY_BUDGET_S
        while self.core.has_ready():
            if time.monotonic() >= until:
                return
            try:
                handle_ready(self.core, self._ready_io)
            except _Stalled:
                return

    def _retry_stalled(self) -> bool:
        """Persist the stalled Ready again (every DISK_RETRY_INTERVAL_MS);
        once it is durable, carry it out and unfreeze. True if unfrozen."""
        now = time.monotonic()
        if now < self._stall_retry_at and not self._stalled_on_snapshot:
            return False
        self._stall_retry_at = now + DISK_RETRY_INTERVAL_MS / 1000.0
        rd = self._stalled
        assert rd is not None
        try:
            self._persist(rd)
        except _Stalled:
            return False
        self._stalled = None
        self._stalled_on_snapshot = False
        complete_ready(self.core, self._ready_io, rd)
        return True

    def _persist(self, rd: Ready[Any]) -> None:
        # Persist before send (§5.1): one sync covers the whole batch. Each
        # step is done once: after a full disk, the same Ready is persisted
        # again from where it stopped (what was staged stays in the WAL's
        # buffer; node/storage/wal.py).
        done = self._persisted
        try:
            if rd.snapshot is not None and "snapshot" not in done:
                if not self._received_ready(rd.snapshot):
                    self._stalled, self._stalled_on_snapshot = rd, True
                    raise _Stalled
                done.add("snapshot")
            if rd.entries and "entries" not in done:
                self.storage.append(rd.entries)
                done.add("entries")
            if rd.hard_state is not None and "hard_state" not in done:
                self.storage.set_hard_state(rd.hard_state)
                done.add("hard_state")
            if rd.must_sync():
                began = time.monotonic()
                self.storage.sync()
                took = time.monotonic() - began
                if took > self._sync_max_s:
                    self._sync_max_s = took
                if not self._member_marked and self.core.term > 0:
                    # Before the vote or acknowledgement this sync was for leaves.
                    index, term = self.storage.durable_floor(self.core.log.commit)
                    record_member(self.run_dir, self.id, sync=self.cfg.fsync == "always",
                                  index=index, term=term)
                    self._member_marked = True
        except NoSpace:
            self._stalled = rd
            raise _Stalled from None
        except OSError as e:
            if e.errno not in FULL_ERRNOS:
                raise
            self._stalled = rd
            raise _Stalled from None
        done.clear()
        if self.storage.reservation_error is not None and not self._reservation_logged:
            self._reservation_logged = True
            self.log.warning("wal_reservation_off", error=str(self.storage.reservation_error))
