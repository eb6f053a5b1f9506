"""The client protocol on the wire (docs/PROTOCOL.md): the requests a node
takes, its responses, and their MessagePack codec with the limits checked
before anything is decoded. Schema and codec only: node/api.py answers.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from node.api_lease import (
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseReadRequest,
    LeaseRevokeRequest,
    LeaseTtlRequest,
)
from node.api_range import (
    CompactRequest,
    DeleteRangeRequest,
    RangeRequest,
    TxnRequest,
    WatchCancelRequest,
    WatchEvent,
    WatchRequest,
)
from node.api_requests import (
    AppendRequest,
    CasRequest,
    CloseSessionRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    RegisterRequest,
    ReqId,
)
from node.config import MAX_KEY_BYTES, MAX_MESSAGE_BYTES, MAX_REQUEST_FIELDS
from node.frames import map_len
from node.state.sessions import KV, OpResult

ClientRequest = (PutRequest | DeleteRequest | CasRequest | AppendRequest | GetRequest
                 | PingRequest | RegisterRequest | CloseSessionRequest | RangeRequest
                 | DeleteRangeRequest | TxnRequest | CompactRequest | WatchRequest
                 | WatchCancelRequest | LeaseGrantRequest | LeaseRevokeRequest
                 | LeaseKeepAliveRequest | LeaseTtlRequest | LeaseListRequest)
WriteRequest = (PutRequest | DeleteRequest | CasRequest | AppendRequest | DeleteRangeRequest
                | TxnRequest | LeaseGrantRequest | LeaseRevokeRequest)
ReadRequest = GetRequest | RangeRequest | LeaseReadRequest


class ClientResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`ok` false always comes with an `error` code (docs/PROTOCOL.md)."""

    id: int = 0
    ok: bool
    value: bytes | None = None
    error: str | None = None
    message: str | None = None
    leader: str | None = None
    leader_addr: str | None = None
    index: int | None = None
    node: str | None = None
    session: int | None = None
    # The revisioned store (docs/PROTOCOL.md, "Revisions"): the store's
    # revision when the request was served or applied, the oldest revision
    # kept (with `compacted`), a range read's keys, how many in the range
    # and whether a limit left some out, a range delete's count, and a
    # transaction's outcome and what each of its operations answered.
    revision: int | None = None
    compacted: int | None = None
    kvs: list[KV] | None = None
    count: int | None = None
    more: bool | None = None
    deleted: int | None = None
    succeeded: bool | None = None
    responses: list[OpResult] | None = None
    # Watches (docs/PROTOCOL.md, "Watches"): the watch opened, its events,
    # and its end.
    created: bool | None = None
    events: list[WatchEvent] | None = None
    canceled: bool | None = None
    # Leases (docs/PROTOCOL.md, "Leases"): a lease's id, its TTL left (or
    # granted, in a grant's answer), its granted TTL, its keys; every id.
    lease: int | None = None
    ttl_ms: int | None = None
    granted_ttl_ms: int | None = None
    keys: list[str] | None = None
    leases: list[int] | None = None


_req_decoder: msgspec.msgpack.Decoder[ClientRequest] = msgspec.msgpack.Decoder(ClientRequest)
_resp_encoder = msgspec.msgpack.Encoder()

Route = list[bytes]  # the ROUTER envelope to send the reply back along
ReplyFn = Callable[[Route, bytes], None]


class RequestRefused(ValueError):
    """A frame or request the node does not handle; `code` is the answer's
    error (`bad_request` or `too_large`), the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_request(data: bytes) -> ClientRequest:
    """Parse one request; raises RequestRefused with a message for the
    client. Size and field count are checked before anything is decoded."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise RequestRefused("too_large", f"a frame of {len(data)} bytes exceeds the limit "
                             f"of {MAX_MESSAGE_BYTES}")
    fields = map_len(data)
    if fields is None:
        raise RequestRefused("bad_request", "a request must be a MessagePack map")
    if fields > MAX_REQUEST_FIELDS:
        raise RequestRefused("bad_request", f"a request of {fields} fields: a request has at "
                             f"most {MAX_REQUEST_FIELDS}")
    try:
        return _req_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise RequestRefused("bad_request", str(e)) from None
    except Exception as e:  # any other parse failure is still the client's bad input
        raise RequestRefused("bad_request", f"{type(e).__name__}: {e}") from None


def encode_response(resp: ClientResponse) -> bytes:
    return _resp_encoder.encode(resp)


_resp_decoder: msgspec.msgpack.Decoder[ClientResponse | list[ClientResponse]] = \
    msgspec.msgpack.Decoder(ClientResponse | list[ClientResponse])


def decode_responses(frame: bytes) -> list[ClientResponse]:
    """The responses a frame holds: one, or a batch frame's array. Raises
    msgspec.DecodeError (ValidationError is one) for anything else."""
    got = _resp_decoder.decode(frame)
    return got if isinstance(got, list) else [got]


class _IdOnly(msgspec.Struct, frozen=True):
    id: ReqId = 0


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def request_id(data: bytes) -> int:
    """Best effort: the `id` of a request we could not parse, to echo it.
    Only a map within the limits is looked at, and nothing is built of it
    but the id (the rest is skipped by msgspec)."""
    fields = map_len(data)
    if fields is None or fields > MAX_REQUEST_FIELDS or len(data) > MAX_MESSAGE_BYTES:
        return 0
    try:
        return _id_decoder.decode(data).id
    except Exception:  # garbage, or a nesting too deep to skip: no id to echo
        return 0


def key_problem(key: str) -> str | None:
    """Why `key` is not a key (the schema counts characters, a key is
    limited in bytes of UTF-8), or None."""
    # 4 bytes is the longest UTF-8 character: shorter keys need no encoding.
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES:
        return f"a key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8"
    return None
