"""The two rules that decide when a Ready's messages may leave: what must be
durable first, and which messages may go before it is (node/raft/ready.py)."""

from __future__ import annotations

from typing import Any

import pytest

from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    PeerMessage,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from node.raft.ready import Ready, may_send_early

_H: dict[str, Any] = {"term": 3, "src": "n1", "dst": "n2"}

PROMISES: list[PeerMessage] = [
    RequestVote(**_H, last_index=1, last_term=1),
    RequestVote(**_H, last_index=1, last_term=1, prevote=True),
    RequestVoteResponse(**_H, granted=True),
    AppendEntriesResponse(**_H, success=True, index=4),
    HeartbeatResponse(**_H, seq=2),
    InstallSnapshotResponse(**_H, meta=SnapshotMeta(4, 2), next_offset=10),
    TimeoutNow(**_H),
]
REPLICATION: list[PeerMessage] = [
    AppendEntries(**_H, prev_index=1, prev_term=1, entries=[Entry(3, 2)], commit=1),
    Heartbeat(**_H, commit=1, seq=1),
    InstallSnapshot(**_H, meta=SnapshotMeta(4, 2), offset=0, data=b"x", done=True),
]


@pytest.mark.parametrize("m", PROMISES, ids=lambda m: type(m).__name__)
def test_votes_and_acknowledgements_wait_for_the_persist(m: PeerMessage) -> None:
    """A vote, a request for votes, an acknowledgement or TimeoutNow promises
    state that must be on disk first (§5.1): never sent early."""
    assert not may_send_early(m)


@pytest.mark.parametrize("m", REPLICATION, ids=lambda m: type(m).__name__)
def test_leader_replication_may_leave_before_the_persist(m: PeerMessage) -> None:
    """A leader's appends, heartbeats and snapshot chunks promise nothing
    about its own disk (thesis §10.2.1)."""
    assert may_send_early(m)


def test_commit_index_alone_needs_no_sync() -> None:
    """A hard state whose term and vote are unchanged is written, not synced."""
    rd = Ready(hard_state=HardState(3, "n1", 7), term_or_vote_changed=False)
    assert not rd.must_sync()


def test_term_or_vote_change_and_entries_need_a_sync() -> None:
    """A new term or vote, entries or a snapshot must be durable before the
    messages that follow them leave (§5.1)."""
    assert Ready(hard_state=HardState(4, None, 7), term_or_vote_changed=True).must_sync()
    assert Ready(entries=[Entry(3, 8)]).must_sync()
