"""structlog set-up for a node: one JSON object a line in the node's log file.

Every line has `ts` (UTC, microseconds), `level`, `node`, `term`, `role` and
`event`; event names are the fixed vocabulary listed in docs/LOGS.md.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import time
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, TextIO

import structlog

# The fixed vocabulary (docs/LOGS.md lists and explains each).
EVENTS = frozenset(
    {
        "node_started", "node_stopping", "node_stopped", "durability_off", "unsafe_bugs_enabled",
        "election_started", "prevote_started", "vote_granted", "vote_rejected",
        "vote_ignored", "became_leader", "became_follower", "stepped_down",
        "append_rejected", "snapshot_sent", "snapshot_installed", "snapshot_created",
        "transfer_started", "transfer_aborted", "leadership_transferred",
        "timeout_now_received", "link_faults_set", "bad_message", "auth_rejected",
        "bad_request", "commit_progress", "wal_tail_truncated", "wal_reservation_off",
        "snapshot_failed",
        "bad_datagram", "message_oversize", "follower_lost_data", "rejoined_without_data",
        "membership_changed", "peer_added", "peer_removed", "peer_unknown",
        "disk_low", "disk_full", "disk_space_recovered",
        "lease_expiry_proposed",
        # A Paxos node's own (node/paxos/).
        "pre_prepare_sent", "prepare_sent", "promised", "preempted", "campaign_abandoned",
        "accept_sent", "accepted", "chosen",
    }
)

# Events that can repeat many times a second (a follower rejecting every
# append of a leader, a client with the wrong key): logged at most once per
# interval per source, with the number left out since the last line.
RATE_LIMITED_EVENTS = {"append_rejected": "leader", "vote_ignored": "candidate",
                       "auth_rejected": "address", "bad_message": "source",
                       "bad_request": None, "bad_datagram": "reason",
                       "message_oversize": "to", "snapshot_failed": None}
RATE_LIMIT_INTERVAL_S = 1.0


class RateLimiter:
    """Admits one line per key per interval and counts the rest."""

    def __init__(self, interval_s: float = RATE_LIMIT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        # key -> (when its last line was written, lines left out since)
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def admit(self, key: Hashable) -> int | None:
        """None to leave this line out; otherwise how many were left out
        before it (0 for the first)."""
        now = self._clock()
        last, dropped = self._seen.get(key, (-self._interval_s, 0))
        if now - last < self._interval_s:
            self._seen[key] = (last, dropped + 1)
            return None
        if len(self._seen) >= 4096:
            # Bounded memory against a flood of distinct sources.
            self._seen.clear()
        self._seen[key] = (now, 0)
        return dropped


class LogFile(io.TextIOBase):
    """A node's log file: each line one write() straight to the file. A
    line the disk cannot take (full) is dropped and counted, never raised:
    the log shares the disk of the node it reports on and must not stop it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.dropped = 0
        self.error: OSError | None = None

    def write(self, s: str) -> int:
        data = s.encode()
        try:
            n = os.write(self._fd, data)
            if n != len(data):
                # Part of the line: the disk filled up under it. End the line
                # so the next one stays whole.
                self.dropped += 1
                os.write(self._fd, b"\n")
        except OSError as e:
            self.dropped += 1
            self.error = e
        return len(s)

    def flush(self) -> None:
        """Nothing is buffered."""

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _utc_ts(_: Any, __: str, ev: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ev["ts"] = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return ev


def make_logger(
    stream: TextIO, node_id: str, state: Callable[[], tuple[int, str]]
) -> structlog.typing.FilteringBoundLogger:
    """A logger writing JSON lines to `stream`; `state()` gives (term, role)
    at the moment of each event."""

    def add_state(_: Any, __: str, ev: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        term, role = state()
        ev.setdefault("term", term)
        ev.setdefault("role", role)
        return ev

    def order(_: Any, __: str, ev: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        head = {k: ev.pop(k) for k in ("ts", "level", "node", "term", "role", "event") if k in ev}
        head.update(ev)
        return head

    return structlog.wrap_logger(  # type: ignore[no-any-return]  # wrap_logger is untyped
        structlog.WriteLogger(stream),
        processors=[
            structlog.processors.add_log_level,
            _utc_ts,
            add_state,
            order,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind(node=node_id)
