"""The replicated log as the core sees it: a snapshot point plus the entries
after it, which of them are on disk, and the commit and apply marks.

Pure bookkeeping: no I/O. The runner persists what `unstable()` returns.
"""

from __future__ import annotations

from node.raft.messages import Entry, SnapshotMeta

# Per-entry overhead counted against byte limits (framing, term, index).
ENTRY_OVERHEAD_BYTES = 16


def entry_size(e: Entry) -> int:
    return len(e.data) + ENTRY_OVERHEAD_BYTES


class RaftLog:
    """Entries `snapshot.index+1 .. last_index()` held in memory."""

    def __init__(
        self,
        snapshot: SnapshotMeta,
        entries: list[Entry],
        commit: int,
        applied: int,
    ) -> None:
        if entries and entries[0].index != snapshot.index + 1:
            raise ValueError(
                f"log entries start at {entries[0].index}, expected {snapshot.index + 1}"
            )
        self.snapshot = snapshot
        self.entries: list[Entry] = list(entries)
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
        return self.snapshot.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted or absent."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot.index - 1].term

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
        out: list[Entry] = []
        size = 0
        base = self.snapshot.index + 1
        for i in range(lo, hi):
            e = self.entries[i - base]
            size += entry_size(e)
            if out and (size > max_bytes or len(out) >= max_count):
                break
            out.append(e)
        return out

    def entries_between(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi-1, all of them (none may be compacted)."""
        base = self.snapshot.index + 1
        if lo < base:
            raise IndexError(f"entry {lo} is compacted (first index {base})")
        return self.entries[lo - base : hi - base]

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
        return self.snapshot.index if self.snapshot.term == term else None

    def unstable(self) -> list[Entry]:
        """Entries not yet on disk."""
        return self.entries[self.stable_index - self.snapshot.index :]

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
        del self.entries[first - self.snapshot.index - 1 :]
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
        dropped = self.entries[:n]
        del self.entries[:n]
        self.snapshot = meta
        self.stable_index = max(self.stable_index, meta.index)
        return dropped

    def restore(self, meta: SnapshotMeta) -> None:
        """Install a snapshot from the leader: keep entries after it only if
        the log agrees at the snapshot's last entry (§7)."""
        if self.match_term(meta.index, meta.term):
            del self.entries[: meta.index - self.snapshot.index]
        else:
            self.entries = []
        self.snapshot = meta
        self.stable_index = max(meta.index, min(self.stable_index, self.last_index()))
        self.commit = max(self.commit, meta.index)
        self.applied = max(self.applied, meta.index)
