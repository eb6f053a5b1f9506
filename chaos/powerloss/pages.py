"""One file's content as a power-loss mount shows it: the disk's copy, overlaid
with the pages written since the last fsync, cut at the current size.
Knows nothing of names, directories or where the disk's copy lies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

# The cache's unit: a write dirties whole pages, a write-back writes them.
PAGE_BYTES = 4096

# Reads `n` bytes of the disk's copy from an offset (fewer past its end).
DiskReader = Callable[[int, int], bytes]


@dataclass(eq=False)
class Pages:
    """Unsynced writes and size changes of one file over its disk copy."""

    size: int = 0
    durable_size: int = 0  # the disk's copy is this long
    clean_bytes: int = 0  # the disk's bytes below this still read through (a truncate lowers it)
    pages: dict[int, bytearray] = field(default_factory=dict)  # page number -> unsynced page

    @classmethod
    def on_disk(cls, size: int) -> Pages:
        """A file whose disk copy of `size` bytes is all there is."""
        return cls(size, size, size)

    def dirty(self) -> bool:
        return bool(self.pages) or not self.size == self.durable_size == self.clean_bytes

    def read(self, offset: int, n: int, disk: DiskReader) -> bytes:
        end = min(offset + n, self.size)
        if offset >= end:
            return b""
        buf = bytearray(end - offset)
        disk_end = min(end, self.clean_bytes)
        if offset < disk_end:
            data = disk(offset, disk_end - offset)
            buf[: len(data)] = data
        first, last = offset // PAGE_BYTES, (end - 1) // PAGE_BYTES
        if last - first < len(self.pages):
            nums = [p for p in range(first, last + 1) if p in self.pages]
        else:
            nums = [p for p in self.pages if first <= p <= last]
        for p in nums:
            base = p * PAGE_BYTES
            lo, hi = max(base, offset), min(base + PAGE_BYTES, end)
            buf[lo - offset : hi - offset] = self.pages[p][lo - base : hi - base]
        return bytes(buf)

    def write(self, offset: int, data: bytes, disk: DiskReader) -> None:
        end = offset + len(data)
        pos = offset
        while pos < end:
            p, o = divmod(pos, PAGE_BYTES)
            n = min(PAGE_BYTES - o, end - pos)
            page = self.pages.get(p)
            if page is None:
                page = bytearray(PAGE_BYTES)
                base = p * PAGE_BYTES
                # A page written in part keeps what the rest of it held.
                if n < PAGE_BYTES and base < self.clean_bytes:
                    old = disk(base, min(PAGE_BYTES, self.clean_bytes - base))
                    page[: len(old)] = old
                self.pages[p] = page
            page[o : o + n] = data[pos - offset : pos - offset + n]
            pos += n
        self.size = max(self.size, end)

    def truncate(self, length: int) -> None:
        if length < self.size:
            for p in [p for p in self.pages if p * PAGE_BYTES >= length]:
                del self.pages[p]
            p, o = divmod(length, PAGE_BYTES)
            if o and p in self.pages:
                self.pages[p][o:] = bytes(PAGE_BYTES - o)
            self.clean_bytes = min(self.clean_bytes, length)
        self.size = length

    def write_back(self, fd: int) -> None:
        """Write the pages and the size to the disk's copy open on `fd` and
        fdatasync it; then nothing is unsynced."""
        # Bytes a truncate cut off must read as zeros if the file grows again.
        if self.clean_bytes < self.durable_size:
            os.ftruncate(fd, self.clean_bytes)
        run: list[bytes | bytearray | memoryview] = []
        start = prev = -2
        for p in sorted(self.pages):
            if p != prev + 1:
                if run:
                    os.pwritev(fd, run, start * PAGE_BYTES)
                run, start = [], p
            run.append(memoryview(self.pages[p])[: self.size - p * PAGE_BYTES])
            prev = p
        if run:
            os.pwritev(fd, run, start * PAGE_BYTES)
        os.ftruncate(fd, self.size)
        os.fdatasync(fd)
        self.pages.clear()
        self.durable_size = self.clean_bytes = self.size
