"""The data part of a key-value image as a stream of framed chunks (image
format 3, docs/STORAGE.md): one chunk per non-empty shard, each a u32
length and a MessagePack array of `[key, value]` pairs. A frozen image is
encoded a piece at a time, so the caller decides how much of it one turn of
its loop encodes; no piece depends on when it was asked for, so replicas
at one index still encode byte-identical images. No I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import msgspec

_LEN = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()


class ImageEncoder:
    """An image's bytes, piece by piece: `head` first, then the data
    chunks of `shards` in order. Shares the shards with the image they came
    from, which must not change while this runs (a frozen image does not),
    and lets go of each once encoded: the copies a store made since are
    then the only ones, and the frozen ones are freed a piece at a time
    rather than all at once when the encoder goes."""

    def __init__(self, head: bytes, shards: tuple[dict[str, bytes], ...]) -> None:
        self._head: bytes | None = head
        self._shards: list[dict[str, bytes] | None] = list(shards)
        self._next = 0

    @property
    def done(self) -> bool:
        return self._head is None and self._next >= len(self._shards)

    def next_piece(self, max_bytes: int) -> bytes | None:
        """The next bytes of the image, about `max_bytes` or less unless a
        single chunk is larger; None once everything was returned."""
        if self._head is not None:
            head, self._head = self._head, None
            return head
        parts: list[bytes] = []
        size = 0
        shards = self._shards
        i = self._next
        while i < len(shards) and size < max_bytes:
            shard = shards[i]
            shards[i] = None
            i += 1
            if not shard:
                continue
            chunk = _encoder.encode(list(shard.items()))
            parts.append(_LEN.pack(len(chunk)))
            parts.append(chunk)
            size += len(chunk) + _LEN.size
        self._next = i
        if not parts:
            return None
        return b"".join(parts)

    def encode_all(self) -> bytes:
        """The rest of the image at once."""
        pieces = []
        while (p := self.next_piece(1 << 30)) is not None:
            pieces.append(p)
        return b"".join(pieces)


def framed_chunks(buf: memoryview, pos: int) -> Iterator[memoryview]:
    """The chunk payloads of `buf` from `pos` to its end; ValueError if a
    chunk is cut short or empty."""
    end = len(buf)
    while pos < end:
        if pos + _LEN.size > end:
            raise ValueError(f"a chunk length is cut short at byte {pos}")
        (n,) = _LEN.unpack_from(buf, pos)
        pos += _LEN.size
        if n == 0 or pos + n > end:
            raise ValueError(f"a chunk of {n} bytes at byte {pos} does not fit the image")
        yield buf[pos : pos + n]
        pos += n
