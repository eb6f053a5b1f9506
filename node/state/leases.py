"""Leases of the replicated state machine (etcd's lease, decided through the
log): each lease's id (the index of its grant entry), granted TTL and the
keys attached to it. Expiry is not decided here: the leader's lessor
(node/lessor.py) proposes it as a command.

Part of the replicated state machine: no clocks, I/O or randomness.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from node.raft.messages import U64
from node.state.mvcc import Span

# Rules of the replicated state: every replica of a cluster uses the same.
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 24 * 3600 * 1000
MAX_LEASES = 10_000
MAX_KEYS_PER_LEASE = 1_000

# Codes in `Result.error`; clients match on them, so they never change.
LEASE_NOT_FOUND = "lease_not_found"
TOO_MANY_LEASES = "too_many_leases"
LEASE_FULL = "lease_full"


class Lease:
    """One lease: its id, granted TTL and attached keys."""

    __slots__ = ("id", "keys", "ttl_ms")

    def __init__(self, lid: int, ttl_ms: int, keys: set[str] | None = None) -> None:
        self.id = lid
        self.ttl_ms = ttl_ms
        self.keys: set[str] = keys if keys is not None else set()


class LeaseImage(msgspec.Struct, frozen=True, array_like=True):
    """A lease as a snapshot image holds it (keys sorted)."""

    id: U64
    ttl_ms: U64
    keys: list[str]


class LeaseTable:
    """The leases of one state machine and which key is attached to which.
    `changes` counts grants and removals, so the lessor can tell cheaply
    whether its deadlines must be brought in line."""

    def __init__(self, *, max_leases: int = MAX_LEASES,
                 max_keys_per_lease: int = MAX_KEYS_PER_LEASE) -> None:
        self.max_leases = max_leases
        self.max_keys_per_lease = max_keys_per_lease
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[str, int] = {}
        self.changes = 0

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lid: int) -> bool:
        return lid in self._leases

    def get(self, lid: int) -> Lease | None:
        return self._leases.get(lid)

    def ids(self) -> list[int]:
        return sorted(self._leases)

    def lease_of(self, key: str) -> int:
        """The lease `key` is attached to (0: none)."""
        return self._key_lease.get(key, 0)

    def grant_problem(self) -> str | None:
        return TOO_MANY_LEASES if len(self._leases) >= self.max_leases else None

    def grant(self, lid: int, ttl_ms: int) -> None:
        self._leases[lid] = Lease(lid, ttl_ms)
        self.changes += 1

    def attach_problem(self, key: str, lid: int) -> str | None:
        """Why `key` cannot be put under lease `lid` (0: no lease), or None."""
        if not lid:
            return None
        lease = self._leases.get(lid)
        if lease is None:
            return LEASE_NOT_FOUND
        if key not in lease.keys and len(lease.keys) >= self.max_keys_per_lease:
            return LEASE_FULL
        return None

    def attach(self, key: str, lid: int) -> None:
        """`key` was put with lease `lid` (0: none, which detaches it)."""
        old = self._key_lease.get(key, 0)
        if old == lid:
            return
        if old:
            self._leases[old].keys.discard(key)
            del self._key_lease[key]
        if lid:
            self._leases[lid].keys.add(key)
            self._key_lease[key] = lid

    def detach(self, key: str) -> None:
        """`key` was deleted."""
        self.attach(key, 0)

    def detach_span(self, span: Span) -> None:
        """The keys of `span` were deleted. Walks the attached keys, not the
        span: far fewer than a range can name."""
        for key in [k for k in self._key_lease if k in span]:
            self.detach(key)

    def remove(self, lid: int) -> list[str]:
        """End lease `lid`; the keys that were attached, sorted (to delete)."""
        lease = self._leases.pop(lid, None)
        if lease is None:
            return []
        self.changes += 1
        for k in lease.keys:
            del self._key_lease[k]
        return sorted(lease.keys)

    def image(self) -> list[LeaseImage]:
        return [LeaseImage(lid, self._leases[lid].ttl_ms, sorted(self._leases[lid].keys))
                for lid in sorted(self._leases)]

    def load(self, images: Iterable[LeaseImage]) -> None:
        """Replace every lease by those of an image."""
        self._leases = {i.id: Lease(i.id, i.ttl_ms, set(i.keys)) for i in images}
        self._key_lease = {k: i.id for i in self._leases.values() for k in i.keys}
        self.changes += 1


def check_lease_images(applied_index: int, leases: list[LeaseImage],
                       live: Iterable[str] | None = None) -> str | None:
    """What is wrong with the leases of an image, or None. `live`, if given,
    holds every live key: an attached key must be one."""
    last = 0
    seen: set[str] = set()
    for lease in leases:
        if not last < lease.id <= applied_index:
            return f"lease {lease.id} is out of order or not an index at or below {applied_index}"
        last = lease.id
        if not MIN_LEASE_TTL_MS <= lease.ttl_ms <= MAX_LEASE_TTL_MS:
            return f"lease {lease.id} has a TTL of {lease.ttl_ms} ms, out of the allowed range"
        if lease.keys != sorted(set(lease.keys)):
            return f"lease {lease.id} holds keys out of order or twice"
        for k in lease.keys:
            if k in seen:
                return f"key {k!r} is attached to two leases"
            seen.add(k)
    if live is not None:
        missing = seen.difference(live)
        if missing:
            return f"key {min(missing)!r} is attached to a lease but not in the store"
    return None
