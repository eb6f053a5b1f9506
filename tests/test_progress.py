"""Unit tests of `Progress`, the leader's view of one follower: match and
next index, probe / replicate / snapshot flow states, the in-flight bound."""

from __future__ import annotations

from node.raft.messages import SnapshotMeta
from node.raft.progress import FlowState, Progress


def replicating(match: int, max_inflight: int = 3) -> Progress:
    pr = Progress(match + 1, max_inflight)
    pr.maybe_update(match)
    pr.become_replicate()
    return pr


def test_new_progress_probes_from_the_given_next_index() -> None:
    """A new leader knows nothing of a follower: match 0, probing at next."""
    pr = Progress(7, 4)
    assert (pr.state, pr.match, pr.next, pr.is_paused()) == (FlowState.PROBE, 0, 7, False)


def test_probe_sends_one_append_at_a_time() -> None:
    """In probe state one append is outstanding; an ack that raises match
    unpauses it."""
    pr = Progress(5, 4)
    pr.sent(6)
    assert pr.is_paused() and pr.next == 5
    assert pr.maybe_update(6)
    assert (pr.match, pr.next, pr.is_paused()) == (6, 7, False)


def test_update_never_lowers_match_or_next() -> None:
    """A stale ack changes nothing and reports no progress."""
    pr = replicating(5)
    assert not pr.maybe_update(3)
    assert (pr.match, pr.next) == (5, 6)


def test_become_replicate_resumes_right_after_match() -> None:
    """Replication restarts at match+1 with an empty pipeline."""
    pr = Progress(9, 4)
    pr.maybe_update(4)
    pr.become_replicate()
    assert (pr.state, pr.next, len(pr.inflight)) == (FlowState.REPLICATE, 5, 0)


def test_replicate_pauses_when_the_pipeline_is_full() -> None:
    """At most max_inflight appends are unacknowledged; next moves optimistically."""
    pr = replicating(0, max_inflight=2)
    pr.sent(3)
    assert not pr.is_paused()
    pr.sent(5)
    assert pr.is_paused() and pr.next == 6 and list(pr.inflight) == [3, 5]


def test_ack_frees_every_append_it_covers() -> None:
    """An ack up to index i frees the slots of all appends ending at or before i."""
    pr = replicating(0, max_inflight=3)
    for last in (2, 4, 6):
        pr.sent(last)
    pr.maybe_update(4)
    pr.free_to(4)
    assert list(pr.inflight) == [6] and not pr.is_paused()


def test_append_without_entries_takes_no_pipeline_slot() -> None:
    """An append that carries only the commit index neither moves next nor
    takes a slot: its ack could not free one."""
    pr = replicating(5, max_inflight=1)
    pr.sent(5)
    assert (pr.next, len(pr.inflight), pr.is_paused()) == (6, 0, False)


def test_rejection_in_replicate_falls_back_to_match() -> None:
    """A rejection above match sends replication back to match+1."""
    pr = replicating(4)
    pr.sent(8)
    assert pr.maybe_decrease(8, 2)
    assert pr.next == 5


def test_stale_rejection_in_replicate_is_ignored() -> None:
    """A rejection at or below match is a leftover of an older append."""
    pr = replicating(4)
    assert not pr.maybe_decrease(3, 1)
    assert pr.next == 5


def test_rejection_in_probe_uses_the_hint_but_not_below_match() -> None:
    """A probe rejection moves next to the follower's hint, but never to or
    below match, and never above the rejected index."""
    pr = Progress(11, 4)
    pr.sent(10)
    assert pr.maybe_decrease(10, 4)
    assert (pr.next, pr.is_paused()) == (4, False)
    pr = Progress(11, 4)
    pr.maybe_update(6)
    pr.next = 11
    assert pr.maybe_decrease(10, 2)
    assert pr.next == 7
    pr = Progress(11, 4)
    assert pr.maybe_decrease(10, 50)
    assert pr.next == 10


def test_probe_ignores_rejection_of_an_older_probe() -> None:
    """Only a rejection of the append just sent (at next-1) moves next."""
    pr = Progress(11, 4)
    pr.sent(10)
    assert not pr.maybe_decrease(7, 1)
    assert (pr.next, pr.is_paused()) == (11, True)


def test_snapshot_state_pauses_appends_and_resumes_after_it() -> None:
    """While a snapshot is sent no appends go out; back in probe, next starts
    after the snapshot point (or after match if that is later)."""
    pr = replicating(2)
    pr.become_snapshot(SnapshotMeta(20, 3))
    assert pr.state is FlowState.SNAPSHOT and pr.is_paused()
    assert (pr.snap_meta, pr.snap_offset) == (SnapshotMeta(20, 3), 0)
    pr.become_probe()
    assert (pr.state, pr.next, pr.snap_meta) == (FlowState.PROBE, 21, None)


def test_become_probe_from_replicate_restarts_after_match() -> None:
    """A replicating follower that needs probing is probed right after match."""
    pr = replicating(4)
    pr.sent(9)
    pr.become_probe()
    assert (pr.state, pr.next, len(pr.inflight), pr.is_paused()) == (
        FlowState.PROBE, 5, 0, False)
