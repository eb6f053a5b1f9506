"""Encode and decode peer messages; anything malformed raises `DecodeError`.

Bad bytes never reach the core: the size limit is checked before parsing and
every parsing failure becomes one exception type. A Raft node decodes Raft's
messages (`decode`), a Paxos node Paxos's (`decode_paxos`): neither takes
the other's.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from node.config import MAX_MESSAGE_BYTES
from node.paxos.messages import PaxosMessage
from node.raft.messages import PeerMessage

T = TypeVar("T")


class DecodeError(Exception):
    """The bytes are not one valid peer message."""


_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[PeerMessage] = msgspec.msgpack.Decoder(PeerMessage)
_paxos_decoder: msgspec.msgpack.Decoder[PaxosMessage] = msgspec.msgpack.Decoder(PaxosMessage)


def encode(msg: PeerMessage | PaxosMessage) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes | memoryview, max_bytes: int = MAX_MESSAGE_BYTES) -> PeerMessage:
    return _decode(_decoder, data, max_bytes)


def decode_paxos(data: bytes | memoryview, max_bytes: int = MAX_MESSAGE_BYTES) -> PaxosMessage:
    return _decode(_paxos_decoder, data, max_bytes)


def _decode(decoder: msgspec.msgpack.Decoder[T], data: bytes | memoryview, max_bytes: int) -> T:
    # len() of a memoryview counts items, not bytes: a view of 8-byte items
    # would pass eight times the limit.
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_bytes:
        raise DecodeError(f"message of {size} bytes exceeds the limit of {max_bytes}")
    try:
        msg = decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise DecodeError(str(e)) from None
    except Exception as e:  # the contract: only DecodeError escapes
        raise DecodeError(f"{type(e).__name__}: {e}") from None
    return msg
