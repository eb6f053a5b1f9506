"""The values a chaos workload writes: a unique name (`c3-17`) padded to a
size drawn from a size mix, with filler that is a function of the name, so a
read tells which write it saw and whether its bytes came back intact. The
history keeps the name and the size, never the padding. Pure functions.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from node.config import MAX_VALUE_BYTES

# What a value holds before its padding: the name, then this byte.
_SEP = b"|"
# A read whose padding is not the writer's reads as this suffix on the name:
# a value nobody wrote, which the linearizability check reports.
CORRUPT = "|corrupt"
# Values up to 32 KiB by default: a UDP cluster takes about 56 KB per entry
# (docs/PROTOCOL.md, too_large), and most writes stay small so the run is about
# ordering, not bandwidth.
DEFAULT_SIZES = "32:85,4KiB:12,32KiB:3"

_UNITS = {"": 1, "b": 1, "kib": 1024, "kb": 1000, "mib": 1024 * 1024, "mb": 1000 * 1000}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """`100`, `4KiB`, `1MiB` (also kB, MB) -> bytes, at most one value's limit."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (like 100, 4KiB or 1MiB)")
    n = int(float(m.group(1)) * _UNITS[unit])
    if not 1 <= n <= MAX_VALUE_BYTES:
        raise ValueError(f"a value size must be 1 B to 1 MiB ({MAX_VALUE_BYTES} bytes), "
                         f"not {text}")
    return n


@dataclass(frozen=True)
class SizeMix:
    """Value sizes with weights; `draw` picks one."""

    sizes: tuple[int, ...]
    weights: tuple[float, ...]

    def draw(self, rng: random.Random) -> int:
        if len(self.sizes) == 1:
            return self.sizes[0]
        return rng.choices(self.sizes, self.weights)[0]

    def describe(self) -> str:
        total = sum(self.weights)
        return ", ".join(f"{_human(s)} {w / total:.0%}" for s, w in
                         zip(self.sizes, self.weights, strict=True))


def parse_sizes(text: str) -> SizeMix:
    """`4KiB` or `32:85,4KiB:12,1MiB:3` (size:weight, comma-separated)."""
    sizes: list[int] = []
    weights: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        size, sep, w = part.partition(":")
        try:
            weight = float(w) if sep else 1.0
        except ValueError:
            raise ValueError(f"weight {w!r} of size {size} is not a number") from None
        if not weight > 0:
            raise ValueError(f"weight of size {size} must be above 0, not {w}")
        sizes.append(parse_size(size))
        weights.append(weight)
    if not sizes:
        raise ValueError("no value size given (like 100, 4KiB, or 32:9,1MiB:1)")
    return SizeMix(tuple(sizes), tuple(weights))


def _human(n: int) -> str:
    for unit, k in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= k and n % k == 0:
            return f"{n // k}{unit}"
    return f"{n}B"


def _filler(name: bytes, n: int) -> bytes:
    block = hashlib.sha256(name).hexdigest().encode()
    return (block * (n // len(block) + 1))[:n]


def encode_value(name: str, size: int) -> bytes:
    """`name` padded to `size` bytes (never shorter than the name itself)."""
    raw = name.encode()
    pad = size - len(raw) - len(_SEP)
    if pad <= 0:
        return raw
    return raw + _SEP + _filler(raw, pad)


def decode_value(raw: bytes | None) -> str | None:
    """The name a stored value carries; with CORRUPT appended when its
    padding is not what its writer wrote."""
    if raw is None:
        return None
    name, sep, pad = raw.partition(_SEP)
    text = name.decode("utf-8", errors="replace")
    if sep and pad != _filler(name, len(pad)):
        return text + CORRUPT
    return text
