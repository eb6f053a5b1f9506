"""The requests of the key-value store and its sessions (docs/PROTOCOL.md,
"Requests"), as MessagePack maps decoded by msgspec: schema only, no
behaviour (node/api.py answers them).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from node.config import MAX_KEY_BYTES, MAX_VALUE_BYTES

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES)]
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]
ReqId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
SessionId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class _Req(msgspec.Struct, frozen=True, kw_only=True, tag_field="op",
           forbid_unknown_fields=True):
    """A request holds its op's fields and no other: msgspec then never
    descends into a value the schema does not expect, so a request's nesting
    is the schema's (one map of scalars; a txn's lists of such maps)
    whatever the frame holds."""

    id: ReqId = 0


class _WriteReq(_Req, frozen=True, kw_only=True):
    """A session's write number `seq`; the client no longer needs the
    answer of any seq below `first_outstanding` (default: `seq`)."""

    session: SessionId
    seq: Seq
    first_outstanding: Seq | None = None


class PutRequest(_WriteReq, tag="put", frozen=True, kw_only=True):
    """Set `key`, attached to `lease` (0: to none, which detaches it)."""

    key: Key
    value: Value
    prev: bool = False
    lease: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class DeleteRequest(_WriteReq, tag="delete", frozen=True, kw_only=True):
    key: Key
    prev: bool = False


class CasRequest(_WriteReq, tag="cas", frozen=True, kw_only=True):
    key: Key
    expected: Value | None
    value: Value


class AppendRequest(_WriteReq, tag="append", frozen=True, kw_only=True):
    key: Key
    value: Value


class RegisterRequest(_Req, tag="register", frozen=True, kw_only=True):
    """Open a session; answered with its id once the registration commits."""


class CloseSessionRequest(_Req, tag="close_session", frozen=True, kw_only=True):
    session: SessionId


class GetRequest(_Req, tag="get", frozen=True, kw_only=True):
    key: Key
    stale: bool = False


class PingRequest(_Req, tag="ping", frozen=True, kw_only=True):
    """Who leads? Answered by any node without touching the log."""
