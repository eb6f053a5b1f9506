"""A distributed lock with fencing tokens (etcd's concurrency.Mutex, the
ZooKeeper lock recipe): waiters queue by create revision under the lock's
prefix, each held under a kept lease.

Why a token: a holder can be paused (a GC, a swapped-out page, a stopped
VM) past its lease's TTL, wake up still believing it holds the lock, and
write after another holder took over; no lock service can stop that by
itself (Kleppmann, "How to do distributed locking", 2016). So the holder
gets a token, the create revision of its lock key, which grows with every
new holder, and each write it makes to the protected resource carries it.
`guarded_put` is the store's own way to honour it: a transaction that
writes only if the holder's key still exists with that create revision,
so the paused holder's late write is refused. A resource outside the store
does the same by refusing any token lower than the highest it has seen.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from node.api_range import TxnCompare, TxnPut
from node.client import Client, ClientError
from node.recipes.turns import (
    HeldLease,
    LeaseLost,
    WaitTimeout,
    enqueue,
    queue_key,
    wait_turn,
)

# Where the lock keys live: LOCK_PREFIX + name + "/" + the holder's lease.
LOCK_PREFIX = "_lock/"

__all__ = ["LOCK_PREFIX", "FencedWrite", "LeaseLost", "Lock", "WaitTimeout", "hold"]


@dataclass(frozen=True)
class FencedWrite:
    """Whether a guarded write was applied, and the store's revision after it."""

    accepted: bool
    revision: int


class Lock:
    """One holder's handle on lock `name`, queued under `lease`. Usable as
    a context manager (acquire on enter, release on exit)."""

    def __init__(self, client: Client, name: str, lease: HeldLease) -> None:
        if not name or "/" in name:
            raise ValueError(f"a lock name is a non-empty word without '/', not {name!r}")
        self.client = client
        self.name = name
        self.lease = lease
        self.prefix = f"{LOCK_PREFIX}{name}/"
        self.key = queue_key(self.prefix, lease)
        # The fencing token while held: the create revision of `key`.
        self.token: int | None = None
        # The revision at which the store made this holder the owner.
        self.granted_revision: int | None = None

    def acquire(self, timeout_s: float | None = None) -> int:
        """Queue and wait for the lock; the fencing token. Raises
        WaitTimeout (the place in the queue is given up) or LeaseLost."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        my_rev, _ = enqueue(self.client, self.key, b"", self.lease)
        try:
            self.granted_revision = wait_turn(self.client, self.prefix, self.key, my_rev,
                                              self.lease, deadline)
        except ClientError as e:
            with contextlib.suppress(ClientError):
                self.client.delete(self.key)
            if isinstance(e, WaitTimeout):
                raise WaitTimeout(f"lock {self.name} was still held by another after "
                                  f"{timeout_s:g}s of waiting; wait longer or try later"
                                  ) from None
            raise
        self.token = my_rev
        return my_rev

    @property
    def held(self) -> bool:
        """Acquired, not released, and the lease not known to be lost."""
        return self.token is not None and not self.lease.lost.is_set()

    def guarded_put(self, key: str, value: bytes) -> FencedWrite:
        """Write `key` only if this holder still owns the lock: its key
        still exists with the create revision of its token."""
        if self.token is None:
            raise ClientError("not_held", f"lock {self.name} is not held; acquire it first")
        got = self.client.txn([TxnCompare(self.key, "create", "=", self.token)],
                              [TxnPut(key, value)])
        return FencedWrite(got.succeeded, got.revision)

    def release(self) -> None:
        """Give the lock up (delete the key; the next waiter's watch fires)."""
        self.token = None
        self.client.delete(self.key)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ClientError):
            self.release()


@contextlib.contextmanager
def hold(client: Client, name: str, ttl_s: float,
         timeout_s: float | None = None) -> Iterator[Lock]:
    """Hold lock `name` under a lease of its own kept alive for the block:
    released on exit, and by the cluster `ttl_s` after the holder dies.
    `lock.lease.lost` says the holder must stop (the lock may be another's)."""
    with client.kept_lease(ttl_s) as lease:
        lock = Lock(client, name, lease)
        lock.acquire(timeout_s)
        try:
            yield lock
        finally:
            with contextlib.suppress(ClientError):
                lock.release()
