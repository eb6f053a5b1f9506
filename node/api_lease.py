"""The client requests of leases (docs/PROTOCOL.md, "Leases"): grant and
revoke, session writes through the log; keep-alive, ttl and list, answered
by a leader whose leadership a quorum confirmed for them (the read path).
Schema and answers only: no sockets, no core.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from node.api_range import _Req, _WriteReq
from node.lessor import Lessor
from node.state.leases import LEASE_NOT_FOUND, LeaseTable

LeaseId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
TtlMs = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class LeaseGrantRequest(_WriteReq, tag="lease_grant", frozen=True, kw_only=True):
    """Grant a lease of `ttl_ms`; answered with its id and granted TTL."""

    ttl_ms: TtlMs


class LeaseRevokeRequest(_WriteReq, tag="lease_revoke", frozen=True, kw_only=True):
    """End a lease and delete its keys, at one revision."""

    lease: LeaseId


class LeaseKeepAliveRequest(_Req, tag="lease_keepalive", frozen=True, kw_only=True):
    """Renew a lease for its full TTL from now (leader only)."""

    lease: LeaseId


class LeaseTtlRequest(_Req, tag="lease_ttl", frozen=True, kw_only=True):
    """What is left of a lease, its granted TTL and, with `keys`, its keys."""

    lease: LeaseId
    keys: bool = False


class LeaseListRequest(_Req, tag="lease_list", frozen=True, kw_only=True):
    """Every lease's id."""


LeaseReadRequest = LeaseKeepAliveRequest | LeaseTtlRequest | LeaseListRequest


def answer_lease_read(table: LeaseTable, lessor: Lessor, req: LeaseReadRequest,
                      now_ms: float) -> dict[str, Any]:
    """The fields of the answer to `req`, once a quorum confirmed this node
    leads and it applied the log up to the read's index."""
    if not lessor.leading:
        # Confirmed, then deposed before its turn came: the next leader answers.
        return {"ok": False, "error": "not_leader", "message": None}
    if isinstance(req, LeaseListRequest):
        return {"ok": True, "leases": table.ids()}
    if isinstance(req, LeaseKeepAliveRequest):
        ttl = lessor.renew(req.lease, now_ms)
        if ttl is None:
            return _not_found(req.lease)
        return {"ok": True, "lease": req.lease, "ttl_ms": ttl}
    lease = table.get(req.lease)
    left = lessor.remaining_ms(req.lease, now_ms)
    if lease is None or left is None:
        return _not_found(req.lease)
    return {"ok": True, "lease": req.lease, "ttl_ms": left, "granted_ttl_ms": lease.ttl_ms,
            "keys": sorted(lease.keys) if req.keys else None}


def _not_found(lid: int) -> dict[str, Any]:
    return {"ok": False, "error": LEASE_NOT_FOUND,
            "message": f"lease {lid} does not exist (revoked, expired or never granted)"}
