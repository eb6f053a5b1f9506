"""Leader election (etcd's concurrency.Election): candidates queue by
create revision under the election's prefix, each under a kept lease; the
oldest key is the leader and its value is what the leader proclaims.
Observers follow the leader with one prefix watch from the revision they
read it at, so they miss no change.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from node.api_range import TxnCompare, TxnDelete
from node.client import Client, ClientError
from node.recipes.turns import (
    HeldLease,
    LeaseLost,
    WaitTimeout,
    enqueue,
    put_own,
    queue_key,
    wait_turn,
)

# Where the candidates' keys live: ELECTION_PREFIX + name + "/" + lease.
ELECTION_PREFIX = "_election/"

__all__ = ["ELECTION_PREFIX", "Election", "Leader", "LeaseLost", "NotLeader", "WaitTimeout",
           "leader_of", "observe", "stand"]


class NotLeader(ClientError):
    """This candidate does not lead (any more): its key is gone or was never first."""

    def __init__(self, message: str) -> None:
        super().__init__("not_elected", message)


@dataclass(frozen=True)
class Leader:
    """Who leads: the leader's key and value, the revision its key was
    created at, and the store's revision this was true at."""

    key: str
    value: bytes
    create_revision: int
    revision: int


def _prefix(name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"an election name is a non-empty word without '/', not {name!r}")
    return f"{ELECTION_PREFIX}{name}/"


class Election:
    """One candidate in election `name`, under `lease`. As a context
    manager it resigns on exit."""

    def __init__(self, client: Client, name: str, lease: HeldLease) -> None:
        self.client = client
        self.name = name
        self.lease = lease
        self.prefix = _prefix(name)
        self.key = queue_key(self.prefix, lease)
        self._create: int | None = None
        # The revision at which this candidate became leader (None: not leading).
        self.leader_revision: int | None = None

    def campaign(self, value: bytes, timeout_s: float | None = None) -> int:
        """Stand with `value` and block until leader; the revision at which
        it became leader. Raises WaitTimeout (the candidacy is withdrawn)
        or LeaseLost."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._create, existed = enqueue(self.client, self.key, value, self.lease)
        if existed:
            # Standing already under this lease: keep the place, take the value.
            self.proclaim_unchecked(value)
        try:
            self.leader_revision = wait_turn(self.client, self.prefix, self.key, self._create,
                                             self.lease, deadline)
        except ClientError:
            with contextlib.suppress(ClientError):
                self.client.delete(self.key)
            self._create = None
            raise
        return self.leader_revision

    def proclaim(self, value: bytes) -> int:
        """Change the leader's value, only while this candidate leads; the
        revision of the change. Raises NotLeader."""
        if self.leader_revision is None:
            raise NotLeader(f"not the leader of {self.name}; campaign first")
        return self.proclaim_unchecked(value)

    def proclaim_unchecked(self, value: bytes) -> int:
        """Set this candidate's value if its key is still the one it made."""
        rev = put_own(self.client, self.key, self._create or 0, value, self.lease)
        if rev is None:
            self.leader_revision = None
            raise NotLeader(f"the key {self.key} is gone (its lease ended): no longer a "
                            f"candidate in {self.name}")
        return rev

    def resign(self) -> int | None:
        """Step down (delete the key, if still ours); the revision of the
        delete, or None if there was nothing to delete."""
        if self._create is None:
            return None
        got = self.client.txn([TxnCompare(self.key, "create", "=", self._create)],
                              [TxnDelete(self.key)])
        self._create = self.leader_revision = None
        return got.revision if got.succeeded else None

    def __enter__(self) -> Election:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ClientError):
            self.resign()


@contextlib.contextmanager
def stand(client: Client, name: str, ttl_s: float) -> Iterator[Election]:
    """A candidate in `name` under a lease of its own kept alive for the
    block; it resigns on exit, and the cluster removes it `ttl_s` after
    the process dies. `election.lease.lost` says it must stop leading."""
    with client.kept_lease(ttl_s) as lease, Election(client, name, lease) as e:
        yield e


def leader_of(client: Client, name: str) -> Leader | None:
    """The leader of `name` now (linearizable), or None."""
    got = client.range(_prefix(name), prefix=True)
    return _oldest({kv.key: (kv.create_revision, kv.value or b"") for kv in got.kvs},
                   got.revision)


def _oldest(keys: dict[str, tuple[int, bytes]], revision: int) -> Leader | None:
    if not keys:
        return None
    key, (create, value) = min(keys.items(), key=lambda kv: kv[1][0])
    return Leader(key, value, create, revision)


def observe(client: Client, name: str,
            stop: threading.Event | None = None) -> Iterator[Leader | None]:
    """The leader of `name` now, then again at every change of leader or of
    its value (None while nobody leads), until `stop` is set. One watch of
    the prefix from the revision of the first read: no change is missed."""
    prefix = _prefix(name)
    got = client.range(prefix, prefix=True)
    keys = {kv.key: (kv.create_revision, kv.value or b"") for kv in got.kvs}
    last = _oldest(keys, got.revision)
    yield last
    w = client.watch(prefix, prefix=True, start_revision=got.revision + 1, progress=True)
    try:
        for ev in w:
            if stop is not None and stop.is_set():
                return
            if ev.type == "put":
                keys[ev.key] = (ev.create_revision, ev.value or b"")
            elif ev.type == "delete":
                keys.pop(ev.key, None)
            else:
                continue
            now = _oldest(keys, ev.revision)
            if (now is None) != (last is None) or (
                    now is not None and last is not None
                    and (now.key, now.value) != (last.key, last.value)):
                last = now
                yield now
    finally:
        w.close()
