"""What the first bytes of a MessagePack frame say before any of it is
decoded: the element count of the map or array it starts with. Checking
counts here, against limits, is what keeps a frame from costing work in
proportion to what it claims (docs/SECURITY.md, "Limits on input")."""

from __future__ import annotations


def _count(data: bytes, fix: int, b16: int, b32: int) -> int | None:
    if not data:
        return None
    b = data[0]
    if fix <= b <= fix + 0x0F:
        return b - fix
    if b == b16 and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if b == b32 and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    return None


def map_len(data: bytes) -> int | None:
    """The number of pairs of the map `data` starts with (None: not a map)."""
    return _count(data, 0x80, 0xDE, 0xDF)


def array_len(data: bytes) -> int | None:
    """The number of items of the array `data` starts with (None: not an array)."""
    return _count(data, 0x90, 0xDC, 0xDD)
