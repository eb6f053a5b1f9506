"""The slots as one node holds them: what its acceptor accepted in each
(value and ballot), which of them its learner knows chosen (every slot up
to `commit`), which are applied, and which are on disk.

The acceptor's durable state rides on the storage interface as a log
(docs/PAXOS_VS_RAFT.md, "Storage"): slot s is the entry at index s, its
term the ballot the value was accepted in, and a slot the acceptor holds
nothing for is a `HOLE` (term 0, which no ballot is). Unlike a Raft log,
a slot may be overwritten in the middle (a higher ballot), and the slots
after it stay: `put` marks everything from there on for rewriting, which
`unstable()` hands to storage (whose `append` truncates and rewrites).
Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from node.raft.log import entry_size
from node.raft.messages import Entry, EntryKind, SnapshotMeta

__all__ = ["SlotLog", "entry_size", "hole", "is_hole"]


def hole(slot: int) -> Entry:
    """A slot the acceptor accepted nothing for (yet)."""
    return Entry(0, slot, EntryKind.NOOP)


def is_hole(e: Entry) -> bool:
    return e.term == 0


class SlotLog:
    """Slots `snapshot.index+1 .. last_index()` held in memory; those up to
    `snapshot.index` are compacted (chosen, applied, in a snapshot). The last
    slot is never a hole."""

    def __init__(self, snapshot: SnapshotMeta, entries: list[Entry], commit: int) -> None:
        if entries and entries[0].index != snapshot.index + 1:
            raise ValueError(f"slots start at {entries[0].index}, expected {snapshot.index + 1}")
        self.snapshot = snapshot
        self.entries: list[Entry] = list(entries)
        while self.entries and is_hole(self.entries[-1]):
            self.entries.pop()
        # Everything loaded from storage is on disk as it is.
        self.stable_index = self.last_index()
        self.commit = max(commit, snapshot.index)
        self.applied = snapshot.index
        if self.commit > self.last_index():
            raise ValueError(f"commit {commit} is beyond the last slot {self.last_index()}")

    # --- reading -----------------------------------------------------------

    @property
    def mem_base(self) -> int:
        """Slots are all held in memory from the snapshot on (nothing evicted)."""
        return self.snapshot.index

    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def term(self, index: int) -> int | None:
        """The ballot slot `index` was accepted in (0: nothing accepted), or
        None if compacted or beyond the last slot; the compaction point's
        own slot answers with the snapshot's ballot."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot.index - 1].term

    def at(self, index: int) -> Entry | None:
        """The entry of slot `index` (a hole too), or None outside the log."""
        if index <= self.snapshot.index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot.index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int, max_count: int) -> list[Entry]:
        """Slots lo..hi-1, at least one if any, within the limits."""
        if lo < self.first_index():
            raise IndexError(f"slot {lo} is compacted (first slot {self.first_index()})")
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

    def between(self, lo: int, hi: int) -> list[Entry]:
        """Slots lo..hi-1, all of them (none may be compacted)."""
        base = self.snapshot.index + 1
        if lo < base:
            raise IndexError(f"slot {lo} is compacted (first slot {base})")
        return self.entries[lo - base : hi - base]

    def unstable(self) -> list[Entry]:
        """Slots not on disk as they are now, to the end of the log."""
        return self.entries[self.stable_index - self.snapshot.index :]

    # --- writing -----------------------------------------------------------

    def put(self, e: Entry) -> bool:
        """Hold `e` in slot `e.index` (holes fill any gap before it); False
        if the slot already held exactly that. A known chosen or compacted
        slot never changes."""
        slot = e.index
        if slot <= self.commit:
            raise AssertionError(f"refusing to change slot {slot}, known chosen "
                                 f"(commit {self.commit})")
        last = self.last_index()
        if slot <= last:
            pos = slot - self.snapshot.index - 1
            if self.entries[pos] == e:
                return False
            self.entries[pos] = e
        else:
            self.entries.extend(hole(i) for i in range(last + 1, slot))
            self.entries.append(e)
        self.stable_index = min(self.stable_index, slot - 1)
        return True

    def commit_to(self, index: int) -> None:
        if index > self.commit:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond the last slot {self.last_index()}")
            self.commit = index

    def stable_to(self, index: int) -> None:
        self.stable_index = max(self.stable_index, min(index, self.last_index()))

    def applied_to(self, index: int) -> None:
        if index > self.commit:
            raise AssertionError(f"applied {index} beyond commit {self.commit}")
        self.applied = max(self.applied, index)

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop slots up to `meta.index`: a local snapshot now covers them."""
        if meta.index <= self.snapshot.index:
            return
        if meta.index > self.applied:
            raise AssertionError(f"compacting {meta.index} beyond applied {self.applied}")
        if self.term(meta.index) != meta.term:
            raise AssertionError(f"snapshot ballot {meta.term} disagrees at slot {meta.index}")
        del self.entries[: meta.index - self.snapshot.index]
        self.snapshot = meta
        self.stable_index = max(self.stable_index, meta.index)

    def restore(self, meta: SnapshotMeta) -> None:
        """Install a leader's snapshot of the chosen slots up to `meta.index`.
        Unlike Raft (§7), the slots after it stay whatever they hold: they
        are this acceptor's accepted values, which it must not forget. All
        of them are to be written again after the snapshot (storage keeps a
        log's tail across a snapshot only when the ballots agree there)."""
        keep = self.entries[max(0, meta.index - self.snapshot.index) :]
        self.snapshot = meta
        self.entries = keep
        self.stable_index = meta.index
        self.commit = max(self.commit, meta.index)
        self.applied = max(self.applied, meta.index)
