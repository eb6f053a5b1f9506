"""Batch frames: several client requests, or responses, in one ZeroMQ frame
(docs/PROTOCOL.md, "Batch frames"): telling one, splitting it with its
limits checked before anything is decoded, and cutting and joining them.
Bytes and schema only.
"""

from __future__ import annotations

import msgspec

from node.api import ClientRequest, RequestRefused
from node.api_range import TxnCompare, TxnItem
from node.config import BATCH_FRAME_MAX_BYTES, MAX_BATCH_REQUESTS
from node.frames import array_len

# A DEALER client may send an array of requests in one frame, and a node
# answers the requests of one connection that finish together in one frame,
# an array of responses (docs/PROTOCOL.md). One ZeroMQ message instead of
# one per request is what lets a pipelined client and the leader keep up.


class _AnyFields(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every field any request has, with its type but not its limits: a
    batch whose items all decode as this has the shape of a batch of
    requests (an array of maps of scalars, a transaction's lists of maps of
    scalars), so splitting it cannot recurse deeper than the schema, and
    each item is then decoded, and refused, on its own."""

    op: str = ""
    id: int = 0
    session: int = 0
    seq: int = 0
    first_outstanding: int | None = None
    key: str = ""
    value: bytes = b""
    expected: bytes | None = None
    prev: bool = False
    stale: bool = False
    range_end: str | None = None
    prefix: bool = False
    revision: int = 0
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False
    compare: list[TxnCompare] = []
    success: list[TxnItem] = []
    failure: list[TxnItem] = []
    start_revision: int = 0
    once: bool = False
    progress_ms: int = 0
    watch: int = 0


_batch_decoder: msgspec.msgpack.Decoder[list[ClientRequest]] = \
    msgspec.msgpack.Decoder(list[ClientRequest])
_shape_decoder = msgspec.msgpack.Decoder(list[_AnyFields])
_items_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])


def is_batch(frame: bytes) -> bool:
    """Whether a frame holds a MessagePack array (fixarray, array 16, array 32)."""
    return bool(frame) and (0x90 <= frame[0] <= 0x9F or frame[0] in (0xDC, 0xDD))


def split_batch(frame: bytes) -> list[ClientRequest | bytes]:
    """The requests of a batch frame: decoded when every one is valid (one
    pass), else each item's bytes, to be decoded and answered one by one.
    Raises RequestRefused for a frame over the limits or not shaped as a
    batch of requests; size and count are checked before decoding."""
    if len(frame) > BATCH_FRAME_MAX_BYTES:
        raise RequestRefused("too_large", f"a batch frame of {len(frame)} bytes exceeds the "
                             f"limit of {BATCH_FRAME_MAX_BYTES}; send it in several")
    count = array_len(frame)
    if count is None:
        raise RequestRefused("bad_request", "bad batch frame: its array header is cut short")
    if count == 0:
        raise RequestRefused("bad_request", "an empty batch frame holds no request")
    if count > MAX_BATCH_REQUESTS:
        raise RequestRefused("too_large", f"a batch frame of {count} requests exceeds the "
                             f"limit of {MAX_BATCH_REQUESTS}; send it in several")
    try:
        return list(_batch_decoder.decode(frame))
    except Exception:  # some item is not a valid request: find out below
        pass
    try:
        _shape_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise RequestRefused("bad_request", f"bad batch frame: {e}") from None
    except Exception as e:  # any other parse failure is still the client's bad input
        raise RequestRefused("bad_request", f"bad batch frame: {type(e).__name__}") from None
    return [bytes(raw) for raw in _items_decoder.decode(frame)]


def batch_bounds(sizes: list[int], limit: int,
                 max_items: int = MAX_BATCH_REQUESTS) -> list[tuple[int, int]]:
    """Cut a run of items of these sizes into [start, end) batches of at
    most `limit` bytes and `max_items` items each (an item larger than
    `limit` goes alone)."""
    out: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, n in enumerate(sizes):
        if i > start and (size + n > limit or i - start >= max_items):
            out.append((start, i))
            start, size = i, 0
        size += n
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


def join_batch(items: list[bytes]) -> bytes:
    """One frame holding `items` (each an encoded request or response) as a
    MessagePack array: a header, then the items as they are."""
    n = len(items)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big") if n < 65536 \
        else b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(items)
