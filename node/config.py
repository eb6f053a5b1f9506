"""Constants and defaults of a node, with their units in their names.

Nothing here does I/O; the runner and the CLI read these values.
"""

from __future__ import annotations

import msgspec

# Protocol timing, in ticks of the core's logical clock.
TICK_MS = 10
HEARTBEAT_TICKS = 2
ELECTION_TICKS = 15

# Replication flow control.
MAX_APPEND_ENTRIES = 512
MAX_APPEND_BYTES = 1024 * 1024
MAX_INFLIGHT_APPENDS = 64
SNAPSHOT_CHUNK_BYTES = 256 * 1024
MAX_APPLY_BYTES = 4 * 1024 * 1024

# The largest wire message a node accepts; anything bigger is a bad message.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class CoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of one `RaftCore`: timing in ticks, flow control, features."""

    election_ticks: int = ELECTION_TICKS
    heartbeat_ticks: int = HEARTBEAT_TICKS
    max_append_entries: int = MAX_APPEND_ENTRIES
    max_append_bytes: int = MAX_APPEND_BYTES
    max_inflight_appends: int = MAX_INFLIGHT_APPENDS
    snapshot_chunk_bytes: int = SNAPSHOT_CHUNK_BYTES
    max_apply_bytes: int = MAX_APPLY_BYTES
    prevote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1:
            raise ValueError("heartbeat_ticks must be at least 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        if self.max_append_entries < 1 or self.max_append_bytes < 1:
            raise ValueError("append limits must be positive")
        if self.max_inflight_appends < 1:
            raise ValueError("max_inflight_appends must be at least 1")
        if self.snapshot_chunk_bytes < 1:
            raise ValueError("snapshot_chunk_bytes must be positive")
