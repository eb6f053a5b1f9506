"""Revisions of the key-value data, as etcd v3 keeps them: one cluster-wide
revision that every changing command moves on by one, per key its create
revision, mod revision and version, the changes back to a compaction point
(reads at a past revision, watches from one), and the ordered key index that
range reads walk.

Part of the replicated state machine: no I/O, clocks or randomness. Every
replica applying the same commands holds the same revisions and history.
"""

from __future__ import annotations

import bisect
import itertools
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from node.state.index import SortedKeys, prefix_end

# Error codes of reads at a revision; clients match on them.
COMPACTED = "compacted"
FUTURE_REVISION = "future_revision"

# What one retained change costs in memory besides the key and the value it
# replaced (which history alone keeps alive): the Change and the new Rec
# (48 bytes each), its revision's int and the list slot. Measured with
# tracemalloc over 100,000 puts (tests/test_mvcc.py checks the bound).
CHANGE_OVERHEAD_BYTES = 160


class Rec(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A live key: its value, the revision that created it (in this life:
    a delete ends it), the revision of its last change, and its version
    (1 when created, one more with every change since). A key last written
    before revisions began (a data directory of an earlier version) holds
    zeros here; it reads as created at revision 1 (`Mvcc.shown`)."""

    value: bytes
    create: int
    mod: int
    version: int


class Change(msgspec.Struct, frozen=True, gc=False):
    """One key's change at revision `rev`: what it became (None: deleted) and
    what it was (None: absent). Changes are never altered once made."""

    rev: int
    key: str
    after: Rec | None
    before: Rec | None


def change_bytes(c: Change) -> int:
    """What a retained change counts against the history's byte bound."""
    return len(c.key) + (len(c.before.value) if c.before is not None else 0) \
        + CHANGE_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class Span:
    """Keys to read, delete or watch: `start` alone (`one`), or every key k
    with start <= k < end (`end` None: no upper bound)."""

    start: str
    end: str | None = None
    one: bool = True

    @classmethod
    def prefix(cls, prefix: str) -> Span:
        return cls(prefix, prefix_end(prefix), one=False)

    def __contains__(self, key: str) -> bool:
        if self.one:
            return key == self.start
        return self.start <= key and (self.end is None or key < self.end)


# --- the live map, copy-on-write in shards --------------------------------------

# The keys are spread over this many dicts by a hash that is the same in every
# process (str hashes are salted per process). After a freeze, one batch of
# writes to random keys touches most shards and copies each: with 256 shards
# and 300k keys that was the whole store (~150 ms on the loop thread, past an
# election timeout under load); with 4096, a batch of a few hundred writes
# copies a tenth of it.
SHARDS = 4096

# Never written: a store's shards start as this one dict, copied on first write.
_EMPTY: dict[str, Rec] = {}


def shard_of(key: str) -> int:
    # Valid keys hold no surrogates; "surrogatepass" only spares a read an error.
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % SHARDS


class CowMap:
    """A str -> Rec map whose `freeze` is O(shards), not O(keys): a frozen
    shard is shared with the image and copied on its first write after that
    (about keys/SHARDS entries), so no single call on the loop thread pays
    for copying the whole store."""

    def __init__(self, shards: tuple[dict[str, Rec], ...] | None = None) -> None:
        if shards is not None and len(shards) != SHARDS:
            raise ValueError(f"an image has {SHARDS} shards, not {len(shards)}")
        if shards is None:
            shards = (_EMPTY,) * SHARDS
        self._shards = list(shards)
        # True where the shard dict is also referenced by an image (or is _EMPTY).
        self._shared = [True] * SHARDS
        self.len = sum(map(len, self._shards))

    def get(self, key: str) -> Rec | None:
        return self._shards[shard_of(key)].get(key)

    def writable(self, key: str) -> dict[str, Rec]:
        """The shard of `key`, to write in (keep `len` right)."""
        i = zlib.crc32(key.encode("utf-8", "surrogatepass")) % SHARDS  # shard_of(key)
        if self._shared[i]:
            self._shards[i] = self._shards[i].copy()
            self._shared[i] = False
        return self._shards[i]

    def items(self) -> Iterable[tuple[str, Rec]]:
        return itertools.chain.from_iterable(s.items() for s in self._shards)

    def freeze(self) -> tuple[dict[str, Rec], ...]:
        self._shared = [True] * SHARDS
        return tuple(self._shards)


# --- the retained changes ---------------------------------------------------------

_LOG_CHUNK = 1024
# Retention compacts when a bound is passed by 1/_RETAIN_STEPS of it (Mvcc.retain).
_RETAIN_STEPS = 16
_rev_of = attrgetter("rev")


@dataclass(frozen=True, slots=True)
class LogView:
    """The changes of a frozen store: its chunks as they were, the first
    one read from `head`, the last one up to `tail_len` (the store goes on
    appending to it; nothing before is ever changed)."""

    chunks: tuple[list[Change], ...]
    head: int
    tail_len: int

    def __iter__(self) -> Iterator[Change]:
        last = len(self.chunks) - 1
        for i, c in enumerate(self.chunks):
            yield from c[self.head if i == 0 else 0:self.tail_len if i == last else len(c)]


class ChangeLog:
    """The retained changes, oldest first, in chunks: appended at the end,
    dropped from the front, never changed in place, so that a frozen view
    (`LogView`) stays valid while the store goes on."""

    def __init__(self, changes: Iterable[Change] = ()) -> None:
        self._chunks: list[list[Change]] = []
        self._firsts: list[int] = []  # the revision of each chunk's first retained change
        self._head = 0  # changes already dropped from the front of the first chunk
        self.len = 0
        self.bytes = 0
        for c in changes:
            self.append(c)

    def append(self, c: Change) -> None:
        chunks = self._chunks
        if not chunks or len(chunks[-1]) >= _LOG_CHUNK:
            chunks.append([])
            self._firsts.append(c.rev)
        chunks[-1].append(c)
        self.len += 1
        self.bytes += len(c.key) + (len(c.before.value) if c.before is not None else 0) \
            + CHANGE_OVERHEAD_BYTES

    def first_rev(self) -> int | None:
        return self._chunks[0][self._head].rev if self.len else None

    def freeze(self) -> LogView:
        tail = len(self._chunks[-1]) if self._chunks else 0
        return LogView(tuple(self._chunks), self._head, tail)

    def _position(self, rev: int) -> tuple[int, int]:
        """(chunk, offset) of the first change at revision `rev` or later."""
        i = bisect.bisect_left(self._firsts, rev)
        if i > 0:
            c = self._chunks[i - 1]
            j = bisect.bisect_left(c, rev, self._head if i == 1 else 0, key=_rev_of)
            if j < len(c):
                return i - 1, j
        # Before the first retained change: from the first one kept.
        return i, self._head if i == 0 else 0

    def since(self, rev: int) -> Iterator[Change]:
        """The changes at revision `rev` and later, oldest first."""
        i, j = self._position(rev)
        for c in self._chunks[i:]:
            yield from c[j:]
            j = 0

    def newer_first(self, rev: int) -> Iterator[Change]:
        """The changes after revision `rev`, newest first."""
        i, j = self._position(rev + 1)
        chunks = self._chunks
        for k in range(len(chunks) - 1, i - 1, -1):
            c = chunks[k]
            for x in range(len(c) - 1, (j if k == i else 0) - 1, -1):
                yield c[x]

    def drop_below(self, rev: int) -> None:
        """Forget every change before revision `rev`."""
        chunks = self._chunks
        while chunks:
            c = chunks[0]
            end = bisect.bisect_left(c, rev, self._head, key=_rev_of)
            for x in c[self._head:end]:
                self.bytes -= change_bytes(x)
            self.len -= end - self._head
            if end < len(c):
                self._head = end
                self._firsts[0] = c[end].rev
                return
            del chunks[0], self._firsts[0]
            self._head = 0


# --- reads ------------------------------------------------------------------------


class RevisionError(Exception):
    """A read at a revision this store cannot serve: `code` is `compacted`
    (older than `compacted`, the oldest kept) or `future_revision`."""

    def __init__(self, code: str, message: str, compacted: int) -> None:
        super().__init__(message)
        self.code = code
        self.compacted = compacted


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The keys of a span at `read_at`, in key order, as many as the limits
    allowed (`more`: there are others), and how many there are in all."""

    kvs: list[tuple[str, Rec]]
    count: int
    more: bool
    read_at: int


# --- the store ----------------------------------------------------------------------


class Mvcc:
    """The key-value data with its revisions. Writes come in commands
    (`begin` starts one): the first change of a command takes the next
    revision and every other change of it the same one.

    Until revisions begin (`revision` 0: a store restored from an image of
    an earlier version, or a new one before its first command) the data is
    kept without revisions or history, the same way on every replica
    (node/state/kv.py says when they begin).

    `history_revisions` and `history_max_bytes` bound the history: past
    either, the oldest revisions are compacted away. Rules of the replicated
    state: every replica of a cluster must use the same.
    """

    def __init__(self, *, history_revisions: int, history_max_bytes: int) -> None:
        if history_revisions < 1 or history_max_bytes < 1:
            raise ValueError("history bounds must be positive")
        self.history_revisions = history_revisions
        self.history_max_bytes = history_max_bytes
        self.data = CowMap()
        self.index = SortedKeys()
        self.log = ChangeLog()
        self.revision = 0
        # The oldest revision that can be read at or watched from.
        self.compacted = 0
        self._opened = False

    def load(self, data: CowMap, index: SortedKeys, log: ChangeLog, revision: int,
             compacted: int) -> None:
        self.data, self.index, self.log = data, index, log
        self.revision, self.compacted = revision, compacted

    def __len__(self) -> int:
        return self.data.len

    # --- writes ----------------------------------------------------------------

    def start_revisions(self) -> None:
        """Revisions begin: this state is revision 1, nothing older is kept."""
        if not self.revision:
            self.revision = self.compacted = 1

    def begin(self) -> None:
        """A command starts: its first change takes the next revision."""
        self._opened = False

    def _rev(self) -> int:
        if not self._opened:
            self._opened = True
            if self.revision:
                self.revision += 1
        return self.revision

    def put(self, key: str, value: bytes) -> Rec | None:
        """Set `key`; the record it replaced."""
        shard = self.data.writable(key)
        prev = shard.get(key)
        rev = self._rev()
        if not rev:
            rec = Rec(value, 0, 0, 0)
        elif prev is None:
            rec = Rec(value, rev, rev, 1)
        elif prev.create:
            rec = Rec(value, prev.create, rev, prev.version + 1)
        else:
            rec = Rec(value, 1, rev, 2)
        shard[key] = rec
        if prev is None:
            self.data.len += 1
            self.index.add(key)
        if rev:
            self.log.append(Change(rev, key, rec, prev))
        return prev

    def put_alone(self, key: str, value: bytes) -> Rec | None:
        """A command whose one change is to set `key`: `begin`, `put` and
        `retain` in one call (the common write, applied on every replica,
        so `put` and `_rev` are inlined here)."""
        self._opened = True
        rev = self.revision
        if rev:
            rev = self.revision = rev + 1
        shard = self.data.writable(key)
        prev = shard.get(key)
        if prev is None:
            rec = Rec(value, rev, rev, 1) if rev else Rec(value, 0, 0, 0)
            shard[key] = rec
            self.data.len += 1
            self.index.add(key)
        else:
            rec = (Rec(value, prev.create, rev, prev.version + 1) if prev.create
                   else Rec(value, 1, rev, 2)) if rev else Rec(value, 0, 0, 0)
            shard[key] = rec
        if rev:
            log = self.log
            log.append(Change(rev, key, rec, prev))
            keep = self.history_revisions
            if rev - self.compacted >= keep + keep // _RETAIN_STEPS \
                    or log.bytes > self.history_max_bytes:
                self.retain()
        return prev

    def delete(self, key: str) -> Rec | None:
        """Remove `key`; the record it had (None: absent, nothing changed)."""
        if self.data.get(key) is None:
            return None
        prev = self.data.writable(key).pop(key)
        self.data.len -= 1
        self.index.remove(key)
        rev = self._rev()
        if rev:
            self.log.append(Change(rev, key, None, prev))
        return prev

    def delete_span(self, span: Span) -> int:
        """Remove every key of `span`, in key order, all at one revision; how many."""
        if span.one:
            return int(self.delete(span.start) is not None)
        keys = list(self.index.irange(span.start, span.end))
        for k in keys:
            self.delete(k)
        return len(keys)

    def retain(self) -> None:
        """Compact what the history bounds no longer allow (after each command).
        In steps of a sixteenth of each bound, not a revision per command: a
        compaction per write cost 6% of a leader's time at 64 clients. Each
        step is a rule of the replicated state, the same on every replica."""
        keep = self.history_revisions
        if self.revision - self.compacted >= keep + keep // _RETAIN_STEPS:
            self.compact(self.revision - keep + 1)
        if self.log.bytes > self.history_max_bytes:
            goal = self.history_max_bytes - self.history_max_bytes // _RETAIN_STEPS
            while self.log.bytes > goal:
                first = self.log.first_rev()
                if first is None or first >= self.revision:
                    break  # the latest revision's changes stay, whatever they weigh
                self.compact(first + 1)

    def compact(self, rev: int) -> int:
        """Forget the history before revision `rev` (at most the current
        one); the oldest revision kept from now on."""
        rev = min(rev, self.revision)
        if rev > self.compacted:
            self.log.drop_below(rev)
            self.compacted = rev
        return self.compacted

    # --- reads -----------------------------------------------------------------

    def get(self, key: str) -> Rec | None:
        return self.data.get(key)

    def shown(self, rec: Rec) -> Rec:
        """`rec` as clients see it: a key from before revisions began reads
        as created at revision 1."""
        if rec.create or not self.revision:
            return rec
        return Rec(rec.value, 1, 1, 1)

    def check_revision(self, rev: int) -> int:
        """The revision a read at `rev` is served at (0: the current one);
        raises RevisionError for one this store cannot serve."""
        if rev <= 0:
            return self.revision
        if rev > self.revision:
            raise RevisionError(FUTURE_REVISION, f"revision {rev} is ahead of this node's "
                                f"{self.revision}", self.compacted)
        if rev < self.compacted:
            raise RevisionError(COMPACTED, f"revision {rev} was compacted: the oldest kept "
                                f"is {self.compacted}", self.compacted)
        return rev

    def _past(self, span: Span, rev: int) -> dict[str, Rec | None]:
        """What the keys of `span` changed since `rev` held at `rev`."""
        was: dict[str, Rec | None] = {}
        for c in self.log.newer_first(rev):
            if c.key in span:
                was[c.key] = c.before  # newest first: the earliest one wins
        return was

    def read(self, span: Span, rev: int = 0, *, limit: int = 0, max_bytes: int = 0,
             keys_only: bool = False, count_only: bool = False) -> RangeResult:
        """The keys of `span` at revision `rev` (0: now), in order: at most
        `limit` (0: no limit) and, past the first, at most `max_bytes` of
        keys and values (keys alone with `keys_only`); none but their count
        with `count_only`. Raises RevisionError."""
        at = self.check_revision(rev)
        was = self._past(span, at) if at < self.revision else {}
        data = self.data
        kvs: list[tuple[str, Rec]] = []
        if span.one:
            r = was[span.start] if span.start in was else data.get(span.start)
            n = int(r is not None)
            if r is not None and not count_only:
                kvs.append((span.start, self.shown(r)))
            return RangeResult(kvs, n, False, at)
        live = self.index.irange(span.start, span.end)
        keys: Iterator[str] = live
        count = self.index.count(span.start, span.end)
        if was:
            gone = sorted(k for k in was if data.get(k) is None)
            keys = _merge(live, gone)
            count += sum(1 for k, r in was.items() if r is not None) \
                - sum(1 for k in was if data.get(k) is not None)
        size = 0
        more = False
        if count_only:
            return RangeResult(kvs, count, False, at)
        for k in keys:
            r = was[k] if k in was else data.get(k)
            if r is None:
                continue
            if (limit and len(kvs) >= limit) or (max_bytes and kvs and size >= max_bytes):
                more = True
                break
            kvs.append((k, self.shown(r)))
            size += len(k) if keys_only else len(k) + len(r.value)
        return RangeResult(kvs, count, more, at)


def _merge(a: Iterator[str], b: list[str]) -> Iterator[str]:
    """Two sorted runs of distinct keys, merged."""
    bi = iter(b)
    nb = next(bi, None)
    for k in a:
        while nb is not None and nb < k:
            yield nb
            nb = next(bi, None)
        yield k
    if nb is not None:
        yield nb
        yield from bi
