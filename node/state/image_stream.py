"""Framed chunks: how an image (node/state/image.py, format 4) is written
as it is encoded. After its header, each chunk is a u32 length and that many
bytes; a frame of length 0 ends one section of chunks (the data) and starts
the next (the history). An encoder hands out the bytes a piece at a time,
so the caller decides how much of an image one turn of its loop encodes;
the chunks do not depend on the pieces asked for, so replicas at one index
still encode byte-identical images. No I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

_LEN = struct.Struct(">I")
# A chunk of no bytes: the end of a section.
SECTION_END = b""


class ImageEncoder:
    """An image's bytes, piece by piece: `head` first, then each chunk of
    `chunks` framed by its length (`SECTION_END` as an empty frame). The
    chunks are made as they are asked for, from a frozen image that must not
    change meanwhile (a frozen one does not)."""

    def __init__(self, head: bytes, chunks: Iterator[bytes]) -> None:
        self._head: bytes | None = head
        self._chunks: Iterator[bytes] | None = chunks

    @property
    def done(self) -> bool:
        return self._head is None and self._chunks is None

    def next_piece(self, max_bytes: int) -> bytes | None:
        """The next bytes of the image, about `max_bytes` or less unless a
        single chunk is larger; None once everything was returned."""
        if self._head is not None:
            head, self._head = self._head, None
            return head
        if self._chunks is None:
            return None
        parts: list[bytes] = []
        size = 0
        while size < max_bytes:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._chunks = None  # lets go of the frozen image
                break
            parts.append(_LEN.pack(len(chunk)))
            parts.append(chunk)
            size += len(chunk) + _LEN.size
        return b"".join(parts) if parts else None

    def encode_all(self) -> bytes:
        """The rest of the image at once."""
        pieces = []
        while (p := self.next_piece(1 << 30)) is not None:
            pieces.append(p)
        return b"".join(pieces)


def framed_sections(buf: memoryview, pos: int, sections: int) -> list[list[memoryview]]:
    """The chunk payloads of `buf` from `pos` to its end, in `sections`
    sections (each ended by an empty frame but the last); ValueError if a
    chunk is cut short or the sections do not fit."""
    out: list[list[memoryview]] = [[]]
    end = len(buf)
    while pos < end:
        if pos + _LEN.size > end:
            raise ValueError(f"a chunk length is cut short at byte {pos}")
        (n,) = _LEN.unpack_from(buf, pos)
        pos += _LEN.size
        if pos + n > end:
            raise ValueError(f"a chunk of {n} bytes at byte {pos} does not fit the image")
        if n == 0:
            if len(out) == sections:
                raise ValueError(f"more than {sections} sections of chunks")
            out.append([])
            continue
        out[-1].append(buf[pos : pos + n])
        pos += n
    if len(out) != sections:
        raise ValueError(f"{len(out)} sections of chunks where {sections} belong")
    return out
