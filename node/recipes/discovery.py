"""Service discovery: each instance of a service registers its address
under a kept lease, so it vanishes by itself a TTL after the instance
dies; clients list a service's addresses with one range read and follow
it with a prefix watch from that read's revision (no gap, no duplicate).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.api_range import TxnPut
from node.client import Client

if TYPE_CHECKING:
    from node.client import KeptLease

# Where registrations live: SERVICE_PREFIX + service + "/" + address.
SERVICE_PREFIX = "_service/"

ADDED = "added"
REMOVED = "removed"


@dataclass(frozen=True)
class Endpoints:
    """A service's addresses, sorted, as of the store's `revision`."""

    service: str
    addrs: list[str]
    revision: int


@dataclass(frozen=True)
class Change:
    """An address that was `added` or `removed` at `revision`."""

    type: str
    addr: str
    revision: int


def service_prefix(service: str) -> str:
    if not service or "/" in service:
        raise ValueError(f"a service name is a non-empty word without '/', not {service!r}")
    return f"{SERVICE_PREFIX}{service}/"


def register(client: Client, service: str, addr: str, lease_id: int) -> int:
    """Put `addr` under `service`, attached to lease `lease_id`; the revision."""
    if not addr:
        raise ValueError("an address cannot be empty")
    return client.txn([], [TxnPut(service_prefix(service) + addr, addr.encode(),
                               lease=lease_id)]).revision


@contextlib.contextmanager
def registered(client: Client, service: str, addr: str, ttl_s: float) -> Iterator[KeptLease]:
    """Keep `addr` registered under `service` for the block (under a lease
    of its own: gone on exit, or `ttl_s` after this process dies)."""
    with client.kept_lease(ttl_s) as lease:
        register(client, service, addr, lease.id)
        yield lease


def discover(client: Client, service: str) -> Endpoints:
    """The addresses registered under `service` now (a linearizable read)."""
    prefix = service_prefix(service)
    got = client.range(prefix, prefix=True, keys_only=True)
    return Endpoints(service, sorted(kv.key[len(prefix):] for kv in got.kvs), got.revision)


def follow(client: Client, service: str, since: Endpoints,
           stop: threading.Event | None = None) -> Iterator[Change]:
    """Every change of `service`'s addresses after `since` (what `discover`
    read), until `stop` is set: the watch starts at the revision after the
    read, so nothing between them is lost and nothing is told twice."""
    prefix = service_prefix(service)
    present = set(since.addrs)
    w = client.watch(prefix, prefix=True, start_revision=since.revision + 1,
                     progress=stop is not None)
    try:
        for ev in w:
            if stop is not None and stop.is_set():
                return
            addr = ev.key[len(prefix):]
            if ev.type == "put" and addr not in present:
                present.add(addr)
                yield Change(ADDED, addr, ev.revision)
            elif ev.type == "delete" and addr in present:
                present.discard(addr)
                yield Change(REMOVED, addr, ev.revision)
    finally:
        w.close()
