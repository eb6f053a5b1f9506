"""What a node must not forget: hard state, log entries and snapshots.

`Storage` is the small interface the Raft core reads through; `MemoryStorage`
keeps it in memory (tests, the simulator), `FileStorage` in a write-ahead log
and snapshot files (`wal.py`, docs/STORAGE.md). Imports nothing of the core,
the state machine or the transports.
"""

from node.storage.files import (
    FileStorage,
    InitialState,
    MemoryStorage,
    NoSpace,
    Storage,
    StorageError,
    entries_after_local_snapshot,
)

__all__ = ["FileStorage", "InitialState", "MemoryStorage", "NoSpace", "Storage", "StorageError",
           "entries_after_local_snapshot"]
