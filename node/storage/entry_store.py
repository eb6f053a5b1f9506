"""The entries after a storage's snapshot point: the newest held in memory,
older ones (evicted once applied and sent, node/raft/log.py) read back from
their WAL records by the segment and offset the WAL reported. Bookkeeping
and reads only; the WAL writes (node/storage/wal.py)."""

from __future__ import annotations

import os
import zlib
from array import array
from itertools import groupby
from pathlib import Path

import msgspec

from node.raft.log import entry_size
from node.raft.messages import Entry
from node.storage.wal import HEADER_BYTES, RecordKind, corruption, segment_name

_entry_decoder = msgspec.msgpack.Decoder(Entry)


def read_entries(directory: Path, seq: int, offsets: list[int]) -> list[Entry]:
    """The entry records at `offsets` (ascending) of segment `seq`, read in
    one span and each checked against its CRC."""
    path = directory / segment_name(seq)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise corruption(path, offsets[0], "WAL segment holding a log entry is missing") from None
    try:
        last = os.pread(fd, HEADER_BYTES, offsets[-1])
        if len(last) < HEADER_BYTES:
            raise corruption(path, offsets[-1], "entry record cut short")
        end = offsets[-1] + HEADER_BYTES + int.from_bytes(last[:4], "little")
        span = os.pread(fd, end - offsets[0], offsets[0])
    finally:
        os.close(fd)
    view = memoryview(span)
    out = []
    for off in offsets:
        p = off - offsets[0]
        if p + HEADER_BYTES > len(span):
            raise corruption(path, off, "entry record cut short")
        length = int.from_bytes(span[p : p + 4], "little")
        crc = int.from_bytes(span[p + 4 : p + 8], "little")
        body = view[p + HEADER_BYTES : p + HEADER_BYTES + length]
        if len(body) != length or zlib.crc32(body) != crc or body[0] != RecordKind.ENTRY:
            raise corruption(path, off, "entry record read back fails its CRC")
        try:
            out.append(_entry_decoder.decode(body[1:]))
        except msgspec.DecodeError as e:
            raise corruption(path, off, f"entry record does not decode ({e})") from None
    return out


class EntryStore:
    """Entries `base+1 .. last_index()`: the first `len(terms)` of them
    evicted (their terms kept, 8 bytes each), the rest in `mem`. The WAL
    position (segment seq, offset) of every entry written and synced is
    kept from `base+1` on, and only such entries are evicted."""

    def __init__(self, directory: Path, base: int, entries: list[Entry]) -> None:
        self._directory = directory
        self.base = base
        self._terms: array[int] = array("Q")
        self._seq: array[int] = array("Q")
        self._off: array[int] = array("Q")
        self._mem = entries

    # --- reading --------------------------------------------------------------

    def last_index(self) -> int:
        return self.base + len(self._terms) + len(self._mem)

    def mem_first(self) -> int:
        """The first index held in memory."""
        return self.base + len(self._terms) + 1

    def term(self, index: int) -> int | None:
        """The term of the entry at `index` (None outside base+1..last)."""
        k = index - self.base - 1
        if k < 0 or index > self.last_index():
            return None
        if k < len(self._terms):
            return self._terms[k]
        return self._mem[k - len(self._terms)].term

    def get(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries lo..hi-1 (at least one if any) within `max_bytes`; the
        evicted ones from the WAL."""
        hi = min(hi, self.last_index() + 1)
        if lo <= self.base or lo >= hi:
            if lo <= self.base:
                raise IndexError(f"entry {lo} is at or below the snapshot at {self.base}")
            return []
        out: list[Entry] = []
        size = 0
        split = min(hi, self.mem_first())
        if lo < split:
            ks = range(lo - self.base - 1, split - self.base - 1)
            for seq, group in groupby(ks, key=self._seq.__getitem__):
                for e in read_entries(self._directory, seq, [self._off[k] for k in group]):
                    size += entry_size(e)
                    if out and max_bytes is not None and size > max_bytes:
                        return out
                    out.append(e)
        for e in self._mem[max(lo, split) - self.mem_first() : hi - self.mem_first()]:
            size += entry_size(e)
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(e)
        return out

    # --- writing --------------------------------------------------------------

    def truncate(self, first: int) -> None:
        """Drop entries from `first` on (never an evicted one)."""
        if first < self.mem_first():
            raise AssertionError(f"truncating at {first}, below the memory at {self.mem_first()}")
        del self._mem[first - self.mem_first() :]
        del self._seq[first - self.base - 1 :]
        del self._off[first - self.base - 1 :]

    def extend(self, entries: list[Entry]) -> None:
        self._mem.extend(entries)

    def written(self, index: array[int], seq: array[int], off: array[int]) -> None:
        """Where the WAL wrote entries (`Wal.take_written`), in order: a
        later record for an index replaces the earlier one and what follows."""
        positions, base = self._seq, self.base
        n = len(index)
        if n and index[0] - base - 1 == len(positions) and index[-1] - index[0] == n - 1:
            # The common case, one run of the next entries: records come in
            # runs of consecutive indexes, each starting at most one past the
            # last, so only a single run spans n - 1.
            positions.extend(seq)
            self._off.extend(off)
            return
        for i, sq, of in zip(index, seq, off, strict=True):
            k = i - base - 1
            if k < 0 or k > len(positions):
                continue  # at or below the snapshot, or after an unknown one
            del self._seq[k:]
            del self._off[k:]
            self._seq.append(sq)
            self._off.append(of)

    def evict(self, upto: int) -> list[Entry]:
        """Forget the entries up to `upto` whose WAL records are known;
        returns them, for the caller to free when it likes."""
        n = min(upto, self.base + len(self._seq)) - self.mem_first() + 1
        if n <= 0:
            return []
        dropped = self._mem[:n]
        del self._mem[:n]
        self._terms.extend(e.term for e in dropped)
        return dropped

    def drop_through(self, index: int) -> None:
        """A snapshot at `index` covers what is up to it: it becomes the base."""
        n = index - self.base
        if n <= 0:
            return
        in_mem = n - len(self._terms)
        del self._terms[:n]
        if in_mem > 0:
            del self._mem[:in_mem]
        del self._seq[:n]
        del self._off[:n]
        self.base = index

    def reset(self, base: int) -> None:
        """An empty log after `base` (a leader's snapshot replaced it)."""
        self.base = base
        self._terms, self._seq, self._off = array("Q"), array("Q"), array("Q")
        self._mem = []
