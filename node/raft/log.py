"""The replicated log as the core sees it: a snapshot point plus the entries
after it, which of them are on disk, and the commit and apply marks.

Pure bookkeeping: no I/O. The runner persists what `unstable()` returns;
entries evicted from memory are read back through the `fetch` it is given.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

from node.raft.messages import Entry, SnapshotMeta

# Reads entries lo..hi-1 back from storage, at least one, within a byte limit.
Fetch = Callable[[int, int, int], list[Entry]]

# Per-entry overhead counted against byte limits (framing, term, index).
ENTRY_OVERHEAD_BYTES = 16


def entry_size(e: Entry) -> int:
    return len(e.data) + ENTRY_OVERHEAD_BYTES


class RaftLog:
    """Entries `snapshot.index+1 .. last_index()`: an evicted prefix of them
    (applied and stored; only their terms are kept, and `fetch` reads them
    back), then `entries`, held in memory."""

    def __init__(
        self,
        snapshot: SnapshotMeta,
        entries: list[Entry],
        commit: int,
        applied: int,
        fetch: Fetch | None = None,
    ) -> None:
        if entries and entries[0].index != snapshot.index + 1:
            raise ValueError(
                f"log entries start at {entries[0].index}, expected {snapshot.index + 1}"
            )
        self.snapshot = snapshot
        self.entries: list[Entry] = list(entries)
        # Terms of the evicted entries snapshot.index+1 .. mem_base.
        self._evicted_terms: array[int] = array("Q")
        self.mem_base = snapshot.index
        self._fetch = fetch
        # Everything loaded from storage is already stable.
        self.stable_index = self.last_index()
        self.commit = max(commit, snapshot.index)
        self.applied = max(applied, snapshot.index)
        if self.commit > self.last_index():
            raise ValueError(f"commit {commit} is beyond the last log index {self.last_index()}")

    # --- reading -----------------------------------------------------------

    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.mem_base + len(self.entries)

    def last_term(self) -> int:
        if self.entries:
            return self.entries[-1].term
        return self._evicted_terms[-1] if self._evicted_terms else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted or absent."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index():
            return None
        if index <= self.mem_base:
            return self._evicted_terms[index - self.snapshot.index - 1]
        return self.entries[index - self.mem_base - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log is at least as up to date as ours."""
        return last_term > self.last_term() or (
            last_term == self.last_term() and last_index >= self.last_index()
        )

    def slice(self, lo: int, hi: int, max_bytes: int, max_count: int) -> list[Entry]:
        """Entries lo..hi-1, at least one if any, within the limits."""
        if lo < self.first_index():
            raise IndexError(f"entry {lo} is compacted (first index {self.first_index()})")
        hi = min(hi, self.last_index() + 1)
        if lo <= self.mem_base:
            return self._read_back(lo, min(hi, self.mem_base + 1), max_bytes)[:max_count]
        out: list[Entry] = []
        size = 0
        base = self.mem_base + 1
        for i in range(lo, hi):
            e = self.entries[i - base]
            size += entry_size(e)
            if out and (size > max_bytes or len(out) >= max_count):
                break
            out.append(e)
        return out

    def entries_between(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi-1, all of them (none may be compacted)."""
        if lo < self.first_index():
            raise IndexError(f"entry {lo} is compacted (first index {self.first_index()})")
        out: list[Entry] = []
        while lo <= self.mem_base and lo < hi:
            got = self._read_back(lo, min(hi, self.mem_base + 1), 1 << 62)
            out.extend(got)
            lo += len(got)
        base = self.mem_base + 1
        return out + self.entries[max(lo, base) - base : hi - base]

    def _read_back(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if self._fetch is None:
            raise AssertionError(f"entry {lo} was evicted and the log cannot read it back")
        got = self._fetch(lo, hi, max_bytes)
        if not got or got[0].index != lo:
            raise AssertionError(f"storage gave {got[:1]} for evicted entry {lo}")
        return got

    def first_index_of_term(self, index: int) -> int:
        """The first index at or before `index` whose entry has the same term."""
        t = self.term(index)
        while index > self.first_index() and self.term(index - 1) == t:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int | None:
        """The last index holding an entry of `term`, if the log has one."""
        for e in reversed(self.entries):
            if e.term == term:
                return e.index
            if e.term < term:
                return None
        for k in range(len(self._evicted_terms) - 1, -1, -1):
            t = self._evicted_terms[k]
            if t == term:
                return self.snapshot.index + k + 1
            if t < term:
                return None
        return self.snapshot.index if self.snapshot.term == term else None

    def unstable(self) -> list[Entry]:
        """Entries not yet on disk."""
        return self.entries[self.stable_index - self.mem_base :]

    # --- writing -----------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append, truncating any suffix from the first new index (§5.3)."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.commit:
            raise AssertionError(f"refusing to truncate committed entry {first}")
        if first > self.last_index() + 1:
            raise AssertionError(f"gap: appending {first} after {self.last_index()}")
        del self.entries[first - self.mem_base - 1 :]
        self.entries.extend(entries)
        self.stable_index = min(self.stable_index, first - 1)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: list[Entry]
    ) -> int | None:
        """The follower side of AppendEntries: the consistency check, then
        truncate a conflicting suffix and append what is new (§5.3). Returns
        the index of the last entry this message vouches for, or None."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: list[Entry]) -> int:
        """The first index of `entries` that is new or disagrees on term; 0 if none."""
        for e in entries:
            if e.index < self.first_index():
                continue
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def commit_to(self, index: int) -> None:
        if index > self.commit:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.commit = index

    def stable_to(self, index: int) -> None:
        self.stable_index = max(self.stable_index, min(index, self.last_index()))

    def applied_to(self, index: int) -> None:
        if index > self.commit:
            raise AssertionError(f"applied {index} beyond commit {self.commit}")
        self.applied = max(self.applied, index)

    def compact(self, meta: SnapshotMeta) -> list[Entry]:
        """Drop entries up to `meta.index`: a local snapshot now covers them.
        Returns them, so that the caller chooses when they are freed."""
        if meta.index <= self.snapshot.index:
            return []
        if meta.index > self.applied:
            raise AssertionError(f"compacting {meta.index} beyond applied {self.applied}")
        if self.term(meta.index) != meta.term:
            raise AssertionError(f"snapshot term {meta.term} disagrees at {meta.index}")
        n = meta.index - self.snapshot.index
        in_mem = max(0, meta.index - self.mem_base)
        del self._evicted_terms[:n]
        dropped = self.entries[:in_mem]
        del self.entries[:in_mem]
        self.snapshot = meta
        self.mem_base = max(self.mem_base, meta.index)
        self.stable_index = max(self.stable_index, meta.index)
        return dropped

    def evict(self, upto: int) -> list[Entry]:
        """Stop holding the entries up to `upto` (applied and stable, so
        stored: `fetch` reads them back); returns them, to be freed when the
        caller likes."""
        if upto > min(self.applied, self.stable_index):
            raise AssertionError(f"evicting {upto} beyond applied {self.applied} "
                                 f"or stable {self.stable_index}")
        n = upto - self.mem_base
        if n <= 0:
            return []
        dropped = self.entries[:n]
        del self.entries[:n]
        self._evicted_terms.extend(e.term for e in dropped)
        self.mem_base = upto
        return dropped

    def restore(self, meta: SnapshotMeta) -> None:
        """Install a snapshot from the leader: keep entries after it only if
        the log agrees at the snapshot's last entry (§7)."""
        if not self.match_term(meta.index, meta.term):
            self.entries = []
            self._evicted_terms = array("Q")
            self.mem_base = meta.index
        elif meta.index >= self.mem_base:
            del self.entries[: meta.index - self.mem_base]
            self._evicted_terms = array("Q")
            self.mem_base = meta.index
        else:
            del self._evicted_terms[: meta.index - self.snapshot.index]
        self.snapshot = meta
        self.stable_index = max(meta.index, min(self.stable_index, self.last_index()))
        self.commit = max(self.commit, meta.index)
        self.applied = max(self.applied, meta.index)
