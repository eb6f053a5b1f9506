"""The leader's half of leases (etcd's lessor): a deadline per lease on this
node's own clock, renewed by keep-alives, and the expiries it proposes when
one passes. Only a leader keeps deadlines; followers never decide expiry.
No I/O: the caller passes the time and proposes what `due` returns.
"""

from __future__ import annotations

import math

from node.state.leases import LeaseTable

# Leases one expiry entry ends at most: with one entry in flight at a time,
# this bounds the rate at which a leader deletes leases' keys.
MAX_EXPIRE_BATCH = 256


class Lessor:
    """Deadlines of the leases of `table` while this node leads.

    On becoming leader every lease gets now + TTL + `extension_ms` (the
    longest election timeout): a keep-alive the old leader acknowledged just
    before it was deposed is honoured in full, so no lease expires early
    through a leader change. Leases granted in an earlier term and applied
    here after that get the same; those granted while leading, now + TTL.
    """

    def __init__(self, table: LeaseTable, *, extension_ms: int) -> None:
        self.table = table
        self.extension_ms = extension_ms
        self.leading = False
        self._deadline_ms: dict[int, float] = {}
        self._seen_changes = -1
        # Leases with ids (grant indexes) up to this were granted before
        # this node's term: they get the extension too.
        self._leader_from_index = 0
        # The expiry entry in flight: its index and the leases it ends.
        self._in_flight: tuple[int, frozenset[int]] | None = None
        # No deadline is earlier than this: `due` runs every turn of the
        # loop and scans the deadlines only once it has passed.
        self._next_due_ms = math.inf

    def became_leader(self, now_ms: float, last_index: int) -> None:
        self.leading = True
        self._leader_from_index = last_index
        self._deadline_ms = {}
        self._in_flight = None
        self._seen_changes = -1
        self._sync(now_ms)

    def lost_leadership(self) -> None:
        self.leading = False
        self._deadline_ms = {}
        self._in_flight = None

    def _sync(self, now_ms: float) -> None:
        """Bring the deadlines in line with the leases that exist."""
        if self.table.changes == self._seen_changes:
            return
        self._seen_changes = self.table.changes
        ids = self.table.ids()
        old = self._deadline_ms
        new: dict[int, float] = {}
        for lid in ids:
            d = old.get(lid)
            if d is None:
                lease = self.table.get(lid)
                assert lease is not None
                d = now_ms + lease.ttl_ms
                if lid <= self._leader_from_index:
                    d += self.extension_ms
            new[lid] = d
        self._deadline_ms = new
        self._next_due_ms = min(new.values(), default=math.inf)

    def _expiring(self, lid: int, now_ms: float) -> bool:
        if self._in_flight is not None and lid in self._in_flight[1]:
            return True
        return self._deadline_ms.get(lid, now_ms) <= now_ms

    def renew(self, lid: int, now_ms: float) -> int | None:
        """A keep-alive, confirmed by a quorum as this leader's: the lease's
        TTL in ms, or None if it is gone or its expiry is decided."""
        if not self.leading:
            return None
        self._sync(now_ms)
        lease = self.table.get(lid)
        if lease is None or self._expiring(lid, now_ms):
            return None
        self._deadline_ms[lid] = max(self._deadline_ms[lid], now_ms + lease.ttl_ms)
        return lease.ttl_ms

    def remaining_ms(self, lid: int, now_ms: float) -> int | None:
        """What is left of the lease's TTL by this leader's deadline (0 once
        its expiry is decided), or None if there is no such lease."""
        if not self.leading or lid not in self.table:
            return None
        self._sync(now_ms)
        if self._expiring(lid, now_ms):
            return 0
        return max(0, int(self._deadline_ms[lid] - now_ms))

    def due(self, now_ms: float) -> list[int]:
        """The leases to expire now (at most MAX_EXPIRE_BATCH, lowest id
        first); none while an expiry is in flight."""
        if not self.leading or self._in_flight is not None:
            return []
        self._sync(now_ms)
        if now_ms < self._next_due_ms:
            return []
        due = sorted(lid for lid, d in self._deadline_ms.items() if d <= now_ms)
        if not due:
            # Renewals moved the earliest deadline on.
            self._next_due_ms = min(self._deadline_ms.values(), default=math.inf)
        return due[:MAX_EXPIRE_BATCH]

    def proposed(self, index: int, ids: list[int]) -> None:
        """The expiry of `ids` was proposed at `index`."""
        self._in_flight = (index, frozenset(ids))

    def applied(self, index: int) -> None:
        """The entry at `index` was applied: an expiry up to it is done."""
        if self._in_flight is not None and index >= self._in_flight[0]:
            self._in_flight = None
