"""The ordered index of the live keys: a sorted list of strings cut into
chunks (the design of the "sorted containers" library, in a few dozen
lines), whose chunks are copy-on-write so that a snapshot freezes it in
O(chunks). Part of the replicated state machine: no I/O, clocks or randomness.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

# A chunk holds up to 2 * _LOAD keys and is cut in two past that. Measured at
# 1M keys: an insert costs a bisect over the chunks' last keys plus a move of
# at most 1,024 pointers within one chunk; after a snapshot froze the index,
# the first write to a chunk copies it (1,024 pointers, a few microseconds).
_LOAD = 512
# A chunk that shrinks below this is merged into its neighbour, so that many
# deletes do not leave a long list of nearly empty chunks.
_MIN = _LOAD // 4


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`
    (None: there is none, every string from `prefix` on starts with it)."""
    p = prefix.rstrip("\U0010ffff")
    if not p:
        return None
    # A code point past the last one of the prefix; a surrogate is fine here:
    # it is only compared, never encoded.
    return p[:-1] + chr(ord(p[-1]) + 1)


class SortedKeys:
    """A set of strings kept in order. `add` takes a key not present and
    `remove` one that is: the store knows which (its map says so), and the
    index then does no lookup of its own to find out."""

    def __init__(self, chunks: Iterable[list[str]] = (), shared: bool = True) -> None:
        # `chunks` come sorted, each non-empty, all keys in ascending order,
        # from a frozen index or a decoded image; `shared`: also held by an
        # image, so copied before a write.
        self._chunks = [c for c in chunks if c]
        self._maxes = [c[-1] for c in self._chunks]
        self._shared = [shared] * len(self._chunks)
        self._len = sum(map(len, self._chunks))

    @classmethod
    def from_sorted(cls, keys: list[str]) -> SortedKeys:
        """An index of `keys`, which are sorted and distinct."""
        return cls((keys[i:i + _LOAD] for i in range(0, len(keys), _LOAD)), shared=False)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for c in self._chunks:
            yield from c

    def freeze(self) -> tuple[list[str], ...]:
        """The chunks, shared with the caller until the next write to each."""
        self._shared = [True] * len(self._chunks)
        return tuple(self._chunks)

    def _writable(self, i: int) -> list[str]:
        if self._shared[i]:
            self._chunks[i] = self._chunks[i].copy()
            self._shared[i] = False
        return self._chunks[i]

    def add(self, key: str) -> None:
        maxes = self._maxes
        self._len += 1
        if not maxes:
            self._chunks.append([key])
            maxes.append(key)
            self._shared.append(False)
            return
        i = bisect.bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            chunk = self._writable(i)
            chunk.append(key)
            maxes[i] = key
        else:
            chunk = self._writable(i)
            chunk.insert(bisect.bisect_left(chunk, key), key)
        if len(chunk) > 2 * _LOAD:
            self._chunks[i:i + 1] = [chunk[:_LOAD], chunk[_LOAD:]]
            maxes[i:i + 1] = [chunk[_LOAD - 1], chunk[-1]]
            self._shared[i:i + 1] = [False, False]

    def remove(self, key: str) -> None:
        i = bisect.bisect_left(self._maxes, key)
        chunk = self._writable(i)
        j = bisect.bisect_left(chunk, key)
        if j == len(chunk) or chunk[j] != key:
            raise KeyError(key)
        del chunk[j]
        self._len -= 1
        if not chunk:
            del self._chunks[i], self._maxes[i], self._shared[i]
            return
        self._maxes[i] = chunk[-1]
        if len(chunk) < _MIN and len(self._chunks) > 1:
            # Merged into a neighbour (a new list, so nothing shared is
            # written), and cut again if that made it too long.
            k = i - 1 if i > 0 else i
            merged = self._chunks[k] + self._chunks[k + 1]
            parts = [merged] if len(merged) <= 2 * _LOAD else [merged[:_LOAD], merged[_LOAD:]]
            self._chunks[k:k + 2] = parts
            self._maxes[k:k + 2] = [p[-1] for p in parts]
            self._shared[k:k + 2] = [False] * len(parts)

    def _locate(self, key: str) -> tuple[int, int]:
        """(chunk, position) of the first key at or after `key`."""
        i = bisect.bisect_left(self._maxes, key)
        if i == len(self._maxes):
            return i, 0
        return i, bisect.bisect_left(self._chunks[i], key)

    def irange(self, start: str, end: str | None = None) -> Iterator[str]:
        """The keys k with start <= k < end (no upper bound: `end` None), in order."""
        i, j = self._locate(start)
        chunks = self._chunks
        while i < len(chunks):
            c = chunks[i]
            if end is not None and c[-1] >= end:
                yield from c[j:bisect.bisect_left(c, end, j)]
                return
            yield from c[j:]
            i, j = i + 1, 0

    def _rank(self, key: str) -> int:
        """How many keys are below `key`."""
        i, j = self._locate(key)
        return sum(map(len, self._chunks[:i])) + j

    def count(self, start: str, end: str | None = None) -> int:
        """How many keys k with start <= k < end: O(chunks), not O(keys)."""
        hi = self._len if end is None else self._rank(end)
        return max(0, hi - self._rank(start))
