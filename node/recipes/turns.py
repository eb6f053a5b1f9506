"""Waiting for one's turn in a FIFO queue of keys under a prefix, ordered
by create revision (ZooKeeper's lock queue, with the store's revisions in
place of sequence numbers). Shared by the lock and the election; a waiter
watches only the key just ahead of it, so a release wakes one waiter.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from node.api_range import TxnCompare, TxnPut, TxnRange
from node.client import Client, ClientError, Compacted
from node.state.leases import LEASE_NOT_FOUND


class HeldLease(Protocol):
    """What a recipe needs of a lease kept alive (node.client.KeptLease fits)."""

    @property
    def id(self) -> int: ...

    @property
    def lost(self) -> threading.Event: ...


class LeaseLost(ClientError):
    """The lease under a recipe's key ended (expired, revoked, or no
    keep-alive got through for a whole TTL): whatever was held under it is
    gone, and the holder must stop acting on it."""

    def __init__(self, message: str) -> None:
        super().__init__("lease_lost", message)


class WaitTimeout(ClientError):
    """The turn did not come before the deadline; the waiter's key was removed."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


def queue_key(prefix: str, lease: HeldLease) -> str:
    """A waiter's key: one per lease, so a holder that retries a lost
    answer finds its own key again instead of queueing twice."""
    return f"{prefix}{lease.id:016x}"


def enqueue(client: Client, key: str, value: bytes, lease: HeldLease) -> tuple[int, bool]:
    """Create `key` under `lease` unless it exists; its create revision,
    and whether it existed already (a retried enqueue under the same
    lease). Raises LeaseLost if the lease is gone."""
    try:
        got = client.txn([TxnCompare(key, "create", "=", 0)],
                         [TxnPut(key, value, lease=lease.id)], [TxnRange(key)])
    except ClientError as e:
        if e.code == LEASE_NOT_FOUND:
            raise LeaseLost(f"the lease {lease.id} is gone; nothing was queued") from None
        raise
    if got.succeeded:
        return got.revision, False
    return (got.responses[0].kvs or [])[0].create_revision, True


def put_own(client: Client, key: str, create: int, value: bytes, lease: HeldLease) -> int | None:
    """Set `key` to `value` if it is still the key made at `create`; the
    revision, or None if it went (its lease ended)."""
    try:
        got = client.txn([TxnCompare(key, "create", "=", create)],
                         [TxnPut(key, value, lease=lease.id)])
    except ClientError as e:
        # A revoked or expired lease refuses the whole transaction.
        if e.code == LEASE_NOT_FOUND:
            return None
        raise
    return got.revision if got.succeeded else None


def wait_turn(client: Client, prefix: str, key: str, my_rev: int, lease: HeldLease,
              deadline: float | None) -> int:
    """Block until `key` (created at `my_rev`) is the oldest key under
    `prefix`; the revision at which it became so (the delete of the last
    key ahead of it, or `my_rev`). The queue is read as it was at that
    revision, so the answer is exact even when keys ahead went between two
    reads. Raises LeaseLost if `key` went meanwhile, WaitTimeout."""
    at = my_rev
    while (ahead := _ahead(client, prefix, my_rev, at)) is not None:
        at = _wait_delete(client, ahead, at + 1, lease, deadline)
    now = client.range(key, keys_only=True)
    if not now.kvs or now.kvs[0].create_revision != my_rev or lease.lost.is_set():
        raise LeaseLost(f"the key {key} went while it waited (its lease {lease.id} ended)")
    return at


def _ahead(client: Client, prefix: str, my_rev: int, at: int) -> str | None:
    """The newest key ahead of `my_rev` alive at revision `at`, or None."""
    try:
        got = client.range(prefix, prefix=True, keys_only=True, revision=at)
    except Compacted:
        # That history is gone: today's queue is what is left, and the turn's
        # revision is then only known to be no later than this read.
        got = client.range(prefix, prefix=True, keys_only=True)
    earlier = [kv for kv in got.kvs if kv.create_revision < my_rev]
    if not earlier:
        return None
    return max(earlier, key=lambda kv: kv.create_revision).key


def _wait_delete(client: Client, key: str, start: int, lease: HeldLease,
                 deadline: float | None) -> int:
    """The revision of `key`'s delete, at `start` or later. The watch's
    progress events (every half second when idle) are when the lease and
    the deadline are looked at."""
    w = client.watch(key, start_revision=start, progress=True)
    try:
        for ev in w:
            if ev.type == "delete":
                return ev.revision
            if lease.lost.is_set():
                raise LeaseLost(f"the lease {lease.id} ended while waiting for {key} to go")
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out waiting for the turn: {key} is still ahead")
    finally:
        w.close()
    raise ClientError("watch_ended", f"the watch of {key} ended before the key went")
