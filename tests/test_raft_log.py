"""Unit tests of `RaftLog`: reading, the follower's append (§5.3), commit and
apply marks, stability, compaction and snapshot restore (§7), and a property
test against a plain list."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.raft.log import ENTRY_OVERHEAD_BYTES, RaftLog
from node.raft.messages import Entry, SnapshotMeta


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i) for i, t in enumerate(terms)]


def log_of(*terms: int, snap: SnapshotMeta | None = None, commit: int = 0) -> RaftLog:
    meta = snap or SnapshotMeta()
    return RaftLog(meta, ents(*terms, start=meta.index + 1), commit, 0)


def terms(log: RaftLog) -> list[int]:
    return [e.term for e in log.entries]


# --- reading ------------------------------------------------------------------


def test_empty_log_has_index_and_term_zero() -> None:
    """A new log's last entry is the sentinel (0, 0)."""
    log = log_of()
    assert (log.first_index(), log.last_index(), log.last_term(), log.term(0)) == (1, 0, 0, 0)


def test_term_is_known_from_the_snapshot_point_to_the_last_index() -> None:
    """term() answers for the snapshot point and every entry after it, and
    None for compacted or missing indexes."""
    log = log_of(2, 3, snap=SnapshotMeta(5, 2))
    assert [log.term(i) for i in range(4, 9)] == [None, 2, 2, 3, None]
    assert (log.first_index(), log.last_index(), log.last_term()) == (6, 7, 3)


def test_log_rejects_entries_not_starting_after_the_snapshot() -> None:
    """Entries must start right after the snapshot point."""
    with pytest.raises(ValueError):
        RaftLog(SnapshotMeta(5, 1), ents(1, start=7), 0, 0)


def test_commit_beyond_the_log_is_rejected_on_load() -> None:
    """A stored commit index beyond the stored log is corrupt state."""
    with pytest.raises(ValueError):
        RaftLog(SnapshotMeta(), ents(1), 2, 0)


@pytest.mark.parametrize(
    ("last", "up_to_date"),
    [((3, 2), True), ((4, 2), True), ((2, 2), False), ((1, 3), True), ((9, 1), False)],
)
def test_is_up_to_date_compares_last_term_then_length(
    last: tuple[int, int], up_to_date: bool
) -> None:
    """§5.4.1: the later last term wins; with equal last terms the longer log."""
    log = log_of(1, 2, 2)
    assert log.is_up_to_date(*last) is up_to_date


def test_slice_respects_count_and_byte_limits_but_returns_at_least_one() -> None:
    """A slice stops at max_count entries or before max_bytes, and holds at
    least one entry even if that one alone is bigger."""
    log = RaftLog(SnapshotMeta(), [Entry(1, i, data=b"x" * 10) for i in range(1, 6)], 0, 0)
    size = 10 + ENTRY_OVERHEAD_BYTES
    assert [e.index for e in log.slice(1, 6, 1 << 20, 2)] == [1, 2]
    assert [e.index for e in log.slice(2, 6, 3 * size, 100)] == [2, 3, 4]
    assert [e.index for e in log.slice(2, 6, 3 * size - 1, 100)] == [2, 3]
    assert [e.index for e in log.slice(3, 6, 1, 100)] == [3]
    assert [e.index for e in log.slice(4, 99, 1 << 20, 100)] == [4, 5]


def test_slice_of_compacted_entries_raises() -> None:
    """Compacted entries cannot be read; the caller must send a snapshot."""
    log = log_of(1, 1, snap=SnapshotMeta(3, 1))
    with pytest.raises(IndexError):
        log.slice(3, 5, 1 << 20, 10)


def test_first_and_last_index_of_term() -> None:
    """Term boundaries used for fast back-tracking (§5.3)."""
    log = log_of(1, 2, 2, 2, 4)
    assert [log.first_index_of_term(i) for i in range(1, 6)] == [1, 2, 2, 2, 5]
    assert [log.last_index_of_term(t) for t in range(1, 6)] == [1, 4, None, 5, None]


def test_term_boundaries_stop_at_the_snapshot() -> None:
    """first_index_of_term never looks below the first entry; the snapshot's
    own term counts for last_index_of_term."""
    log = log_of(2, 2, 3, snap=SnapshotMeta(4, 2))
    assert log.first_index_of_term(6) == 5
    assert log.last_index_of_term(2) == 6
    assert log_of(snap=SnapshotMeta(4, 2)).last_index_of_term(2) == 4


# --- the follower's append (§5.3) ---------------------------------------------------


def test_maybe_append_refuses_when_previous_entry_does_not_match() -> None:
    """The consistency check fails: nothing changes and None is returned."""
    log = log_of(1, 2)
    assert log.maybe_append(2, 3, 2, ents(3, start=3)) is None
    assert log.maybe_append(3, 2, 2, ents(3, start=4)) is None
    assert (terms(log), log.commit) == ([1, 2], 0)


def test_maybe_append_truncates_from_the_first_conflict() -> None:
    """A conflicting entry and all after it are replaced by the new ones."""
    log = log_of(1, 2, 2, 2)
    assert log.maybe_append(1, 1, 0, ents(2, 3, start=2)) == 3
    assert terms(log) == [1, 2, 3]


def test_maybe_append_keeps_entries_after_a_stale_prefix() -> None:
    """Entries already present cause no truncation, even if the log is longer."""
    log = log_of(1, 1, 1)
    assert log.maybe_append(0, 0, 0, ents(1, 1)) == 2
    assert terms(log) == [1, 1, 1]


def test_maybe_append_commits_up_to_last_new_entry_only() -> None:
    """commit = min(leaderCommit, index of last new entry) (§5.3)."""
    log = log_of(1, 1, 1, 1)
    log.maybe_append(0, 0, 9, ents(1, 1))
    assert log.commit == 2


def test_maybe_append_never_lowers_commit() -> None:
    """A delayed append with a smaller commit index leaves commit alone."""
    log = log_of(1, 1, 1, commit=3)
    log.maybe_append(0, 0, 1, ents(1))
    assert log.commit == 3


def test_append_refuses_to_truncate_committed_entries() -> None:
    """A committed entry is never overwritten (§5.4 Leader Completeness)."""
    log = log_of(1, 1, 1, commit=2)
    with pytest.raises(AssertionError):
        log.append(ents(2, start=2))
    assert terms(log) == [1, 1, 1]


def test_append_refuses_a_gap() -> None:
    """Entries must continue the log without a gap."""
    log = log_of(1)
    with pytest.raises(AssertionError):
        log.append(ents(1, start=3))


# --- stability, commit, apply ------------------------------------------------------


def test_loaded_entries_are_stable_and_new_ones_unstable() -> None:
    """What came from storage is stable; appended entries wait in unstable()
    until stable_to()."""
    log = log_of(1, 1)
    assert log.unstable() == []
    log.append(ents(2, 2, start=3))
    assert [e.index for e in log.unstable()] == [3, 4]
    log.stable_to(4)
    assert log.unstable() == []


def test_truncation_makes_the_replacement_unstable() -> None:
    """Truncating below the stable mark makes the new entries unstable again."""
    log = log_of(1, 1, 1)
    log.append(ents(2, start=2))
    assert [(e.index, e.term) for e in log.unstable()] == [(2, 2)]


def test_commit_and_apply_only_move_forward_within_bounds() -> None:
    """commit_to never passes the last index; applied never passes commit."""
    log = log_of(1, 1, 1)
    log.commit_to(2)
    log.commit_to(1)
    assert log.commit == 2
    with pytest.raises(AssertionError):
        log.commit_to(4)
    log.applied_to(2)
    with pytest.raises(AssertionError):
        log.applied_to(3)
    assert log.applied == 2


# --- compaction and restore (§7) --------------------------------------------------


def test_compact_drops_entries_up_to_the_snapshot() -> None:
    """Compaction forgets the covered entries and keeps the rest readable."""
    log = log_of(1, 1, 2, 2, commit=4)
    log.applied_to(3)
    dropped = log.compact(SnapshotMeta(3, 2))
    assert (log.first_index(), log.last_index(), log.term(3), log.term(4)) == (4, 4, 2, 2)
    assert [e.index for e in dropped] == [1, 2, 3], "returned for the caller to free"


def test_compact_beyond_applied_or_with_wrong_term_is_refused() -> None:
    """Only applied entries can be compacted, and the term must agree."""
    log = log_of(1, 1, 2, commit=3)
    log.applied_to(2)
    with pytest.raises(AssertionError):
        log.compact(SnapshotMeta(3, 2))
    with pytest.raises(AssertionError):
        log.compact(SnapshotMeta(2, 2))


def test_compact_to_an_older_point_is_a_no_op() -> None:
    """A snapshot older than the current one changes nothing."""
    log = log_of(2, snap=SnapshotMeta(5, 1), commit=6)
    log.compact(SnapshotMeta(3, 1))
    assert (log.snapshot, terms(log)) == (SnapshotMeta(5, 1), [2])


def test_restore_keeps_entries_after_a_matching_snapshot_point() -> None:
    """A snapshot whose last entry the log has keeps the entries after it (§7)."""
    log = log_of(1, 1, 2, 2)
    log.restore(SnapshotMeta(2, 1))
    assert (log.first_index(), terms(log), log.commit, log.applied) == (3, [2, 2], 2, 2)


def test_restore_discards_the_log_if_the_snapshot_point_does_not_match() -> None:
    """A snapshot that disagrees with the log (or is beyond it) replaces it
    entirely (§7)."""
    for meta in (SnapshotMeta(2, 3), SnapshotMeta(9, 3)):
        log = log_of(1, 1, 2, 2)
        log.restore(meta)
        assert (log.last_index(), log.last_term(), log.entries) == (meta.index, 3, [])
        assert log.commit == log.applied == meta.index


# --- property: RaftLog behaves like a plain list -------------------------------------


@dataclass
class ListModel:
    """The whole log as a list of terms (index i at position i-1), with the
    compaction point and the stable, commit and apply marks."""

    terms: list[int] = field(default_factory=list)
    snap: int = 0
    stable: int = 0
    commit: int = 0
    applied: int = 0

    def term(self, i: int) -> int | None:
        if i < self.snap or i > len(self.terms):
            return None
        return self.terms[i - 1] if i > 0 else 0

    def maybe_append(self, prev: int, prev_term: int, commit: int, new: list[int]) -> int | None:
        if self.term(prev) != prev_term:
            return None
        for k, t in enumerate(new):
            i = prev + 1 + k
            if i <= self.snap or self.term(i) == t:
                continue
            if i <= self.commit:
                raise AssertionError("would truncate a committed entry")
            self.terms[i - 1 :] = new[k:]
            self.stable = min(self.stable, i - 1)
            break
        last_new = prev + len(new)
        self.commit = max(self.commit, min(commit, last_new))
        return last_new


@dataclass(frozen=True)
class Op:
    kind: str
    a: int = 0
    b: int = 0
    c: int = 0
    bumps: tuple[int, ...] = ()


_back = st.integers(0, 3)
ops = st.one_of(
    st.builds(Op, kind=st.just("leader_append"), a=st.integers(0, 3), b=st.integers(1, 4)),
    # a: how far before last+1 prevIndex lies, b: 0..3 take prevTerm from the
    # log, 4 makes one up; c: leaderCommit back from the last new entry;
    # bumps: term increments of the new entries
    st.builds(Op, kind=st.just("maybe_append"), a=st.integers(0, 8), b=st.integers(0, 4),
              c=_back, bumps=st.lists(st.integers(0, 2), max_size=5).map(tuple)),
    # a: how far back from the largest allowed index
    st.builds(Op, kind=st.sampled_from(["commit", "apply", "compact", "persist"]), a=_back),
    st.builds(Op, kind=st.sampled_from(["commit", "apply", "compact"]), a=_back),
)


def _apply_op(log: RaftLog, model: ListModel, o: Op) -> None:
    last = len(model.terms)
    if o.kind == "leader_append":
        t = (model.terms[-1] if model.terms else 0) + o.a
        log.append(ents(*[t] * o.b, start=last + 1))
        model.terms += [t] * o.b
    elif o.kind == "maybe_append":
        prev = max(0, last + 1 - o.a)
        known = model.term(prev)
        prev_term = known if known is not None and o.b < 4 else o.b
        new: list[int] = []
        for bump in o.bumps:  # a real leader's entries never go below prevTerm
            new.append((new[-1] if new else prev_term) + bump)
        commit = max(0, prev + len(new) - o.c)
        try:
            want = model.maybe_append(prev, prev_term, commit, new)
        except AssertionError:
            with pytest.raises(AssertionError):
                log.maybe_append(prev, prev_term, commit, ents(*new, start=prev + 1))
            return
        assert log.maybe_append(prev, prev_term, commit, ents(*new, start=prev + 1)) == want
    elif o.kind == "commit":
        i = max(0, last - o.a)
        log.commit_to(i)
        model.commit = max(model.commit, i)
    elif o.kind == "apply":
        i = max(0, model.commit - o.a)
        log.applied_to(i)
        model.applied = max(model.applied, i)
    elif o.kind == "compact":
        i = max(0, model.applied - o.a)
        at = model.term(i)
        if i > model.snap and at is not None:
            log.compact(SnapshotMeta(i, at))
            model.snap = i
            model.stable = max(model.stable, i)
    else:
        log.stable_to(log.last_index())
        model.stable = last


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, min_size=10, max_size=40))
def test_raft_log_matches_a_list_model(script: list[Op]) -> None:
    """Any sequence of leader appends, follower appends, commits, applies,
    compactions and persists leaves RaftLog agreeing with a plain list."""
    log = RaftLog(SnapshotMeta(), [], 0, 0)
    model = ListModel()
    for o in script:
        _apply_op(log, model, o)
        last = len(model.terms)
        assert (log.first_index(), log.last_index()) == (model.snap + 1, last), o
        assert (log.commit, log.applied) == (model.commit, model.applied), o
        assert [log.term(i) for i in range(last + 2)] == [
            model.term(i) for i in range(last + 2)], o
        assert [e.index for e in log.unstable()] == list(range(model.stable + 1, last + 1)), o
