"""The client side of leases (docs/PROTOCOL.md, "Leases"): the lease methods
of node/client.py's Client, and `KeptLease`, which keeps a lease alive from
a thread of its own until the block it guards ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.api import ClientRequest, ClientResponse, WriteRequest
from node.api_lease import (
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseRevokeRequest,
    LeaseTtlRequest,
)
from node.errors import ClientError
from node.state.leases import (
    LEASE_FULL,
    LEASE_NOT_FOUND,
    MAX_KEYS_PER_LEASE,
    MAX_LEASES,
    TOO_MANY_LEASES,
)

if TYPE_CHECKING:
    from node.client import Client

# A kept lease is renewed this many times per TTL: two renewals can be lost
# before the lease is at risk (etcd's clients renew at a third too).
KEEPALIVES_PER_TTL = 3


@dataclass(frozen=True)
class Lease:
    """A granted lease: its id and granted TTL."""

    id: int
    ttl_ms: int


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as the leader sees it: the TTL left, the TTL granted, and
    (when asked for) the keys attached, sorted."""

    id: int
    ttl_ms: int
    granted_ttl_ms: int
    keys: list[str]


class LeaseNotFound(ClientError):
    """The lease does not exist: revoked, expired, or never granted."""

    def __init__(self, message: str) -> None:
        super().__init__(LEASE_NOT_FOUND, message)


# What the state machine's codes mean (its answers carry no message).
_SENTENCES = {
    TOO_MANY_LEASES: f"the cluster holds {MAX_LEASES:,} leases, the most it may; revoke "
                     "some first",
    LEASE_FULL: f"the lease holds {MAX_KEYS_PER_LEASE:,} keys, the most one may; attach "
                "the key to another lease",
}


def _raise_failed(resp: ClientResponse) -> None:
    if resp.ok:
        return
    message = resp.message or _SENTENCES.get(resp.error or "") or resp.error or "failed"
    if resp.error == LEASE_NOT_FOUND:
        raise LeaseNotFound(message)
    raise ClientError(resp.error or "failed", message)


class LeaseMethods:
    """The lease operations of a Client (mixed into node/client.py's)."""

    if TYPE_CHECKING:
        def _write_resp(self, make: Callable[[int, int], WriteRequest]) -> ClientResponse: ...

        def _request(self, req: ClientRequest, *, write: bool) -> ClientResponse: ...

        def _twin(self, timeout_s: float) -> Client: ...

    def lease_grant(self, ttl_s: float) -> Lease:
        """Grant a lease of `ttl_s` seconds (exactly once, as a write)."""
        resp = self._write_resp(lambda s, q: LeaseGrantRequest(
            session=s, seq=q, ttl_ms=round(ttl_s * 1000)))
        _raise_failed(resp)
        return Lease(resp.lease or 0, resp.ttl_ms or 0)

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease for its whole TTL; that TTL in ms. LeaseNotFound
        if it is gone (expired or revoked)."""
        resp = self._request(LeaseKeepAliveRequest(lease=lease_id), write=False)
        _raise_failed(resp)
        return resp.ttl_ms or 0

    def lease_revoke(self, lease_id: int) -> None:
        """End the lease; its keys go at one revision. LeaseNotFound if gone."""
        resp = self._write_resp(lambda s, q: LeaseRevokeRequest(session=s, seq=q, lease=lease_id))
        _raise_failed(resp)

    def lease_ttl(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        """What is left of the lease (by the leader's clock) and, with
        `keys`, the keys attached to it."""
        resp = self._request(LeaseTtlRequest(lease=lease_id, keys=keys), write=False)
        _raise_failed(resp)
        return LeaseInfo(lease_id, resp.ttl_ms or 0, resp.granted_ttl_ms or 0, resp.keys or [])

    def lease_list(self) -> list[int]:
        """Every lease's id, in order."""
        resp = self._request(LeaseListRequest(), write=False)
        _raise_failed(resp)
        return resp.leases or []

    def kept_lease(self, ttl_s: float) -> KeptLease:
        """A lease granted now and kept alive from a thread until the `with`
        block ends, then revoked. Check `lost` before acting on what it
        guards: once set, the holder must assume it holds nothing."""
        return KeptLease(self, ttl_s)


class KeptLease:
    """A lease kept alive by a daemon thread with its own Client (zmq sockets
    are not thread-safe) every TTL/KEEPALIVES_PER_TTL. `lost` is set when a
    keep-alive answers that the lease is gone, or when none succeeded for a
    whole TTL since the last acknowledged one was sent. `renewed_at` is
    when (time.monotonic()) that one was sent."""

    def __init__(self, owner: LeaseMethods, ttl_s: float) -> None:
        self._owner = owner
        self._ttl_s = ttl_s
        self.id = 0
        self.ttl_ms = 0
        self.lost = threading.Event()
        self.renewed_at = 0.0
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> KeptLease:
        sent = time.monotonic()
        lease = self._owner.lease_grant(self._ttl_s)
        self.id, self.ttl_ms, self.renewed_at = lease.id, lease.ttl_ms, sent
        self._thread = threading.Thread(target=self._keep, name=f"lease-{self.id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost.is_set():
            # Gone already, or unreachable: then it expires by itself.
            with contextlib.suppress(ClientError):
                self._owner.lease_revoke(self.id)

    def _keep(self) -> None:
        ttl_s = self.ttl_ms / 1000.0
        every_s = ttl_s / KEEPALIVES_PER_TTL
        client = self._owner._twin(timeout_s=every_s)
        try:
            while not self._stop.wait(max(0.0, self.renewed_at + every_s - time.monotonic())):
                sent = time.monotonic()
                try:
                    client.lease_keepalive(self.id)
                except LeaseNotFound:
                    self.lost.set()
                    return
                except ClientError:
                    if time.monotonic() - self.renewed_at >= ttl_s:
                        self.lost.set()
                        return
                    # Try again soon, not a whole period later.
                    self._stop.wait(min(every_s / 4, 0.2))
                    continue
                self.renewed_at = sent
                self.renewals += 1
        finally:
            client.close()
