"""How the leader's messages are sized to fit one UDP datagram: every
batch RaftLog.slice cuts under udp_core_limits, sealed with the widest
integers and longest ids, fits; so does every other message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import codec
from node.config import (
    UDP_MAX_DATAGRAM_BYTES,
    UDP_MAX_IPV4_DATAGRAM_BYTES,
    UDP_MAX_NODE_ID_BYTES,
    UDP_MIN_DATAGRAM_BYTES,
    UDP_SMALL_PATH_DATAGRAM_BYTES,
)
from node.raft.log import ENTRY_OVERHEAD_BYTES, RaftLog
from node.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
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
from node.transport.udp import (
    DATAGRAM_OVERHEAD_MAX_BYTES,
    seal_datagram,
    udp_core_limits,
)

# --- sizing the leader's messages ---------------------------------------------------

_U64_MAX = 2**63 - 1
_BASE = 2**62  # indexes and terms of 9 bytes of msgpack, as in a long-lived cluster
_ID = "x" * UDP_MAX_NODE_ID_BYTES


def _sealed_bytes(msg: PeerMessage) -> int:
    return len(seal_datagram(bytes(32), msg.src, msg.dst, codec.encode(msg)))


def _batch(
    max_datagram: int, max_entries: int, sizes: list[int], kinds: list[bool]
) -> AppendEntries:
    """The AppendEntries a leader sends from a log whose entries cycle through
    `sizes` (capped at the largest command allowed), cut by RaftLog.slice."""
    limits = udp_core_limits(max_datagram, max_entries)
    entries: list[Entry] = []
    total = 0
    i = 0
    # Enough entries to fill a batch by count or by bytes, and one more.
    while len(entries) <= max_entries and total <= limits.max_append_bytes + ENTRY_OVERHEAD_BYTES:
        size = min(sizes[i % len(sizes)], limits.max_entry_data_bytes)
        kind = EntryKind.NOOP if kinds[i % len(kinds)] else EntryKind.NORMAL
        entries.append(Entry(_BASE, _BASE + 1 + i, kind, b"\xff" * size))
        total += size + ENTRY_OVERHEAD_BYTES
        i += 1
    log = RaftLog(SnapshotMeta(_BASE, _BASE), entries, _BASE, _BASE)
    batch = log.slice(_BASE + 1, log.last_index() + 1, limits.max_append_bytes, max_entries)
    return AppendEntries(term=_U64_MAX, src=_ID, dst=_ID, prev_index=_U64_MAX,
                         prev_term=_U64_MAX, entries=batch, commit=_U64_MAX)


@given(
    max_datagram=st.integers(UDP_MIN_DATAGRAM_BYTES, UDP_MAX_IPV4_DATAGRAM_BYTES),
    max_entries=st.integers(1, 2048),
    sizes=st.lists(st.integers(0, UDP_MAX_IPV4_DATAGRAM_BYTES), min_size=1, max_size=6),
    kinds=st.lists(st.booleans(), min_size=1, max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_every_append_batch_under_the_limits_fits_a_datagram(
    max_datagram: int, max_entries: int, sizes: list[int], kinds: list[bool]
) -> None:
    """An AppendEntries cut by RaftLog.slice under udp_core_limits, with the
    widest integers and longest ids, sealed, is never over the datagram limit."""
    msg = _batch(max_datagram, max_entries, sizes, kinds)
    assert msg.entries
    assert _sealed_bytes(msg) <= max_datagram


@pytest.mark.parametrize("max_datagram", [UDP_MIN_DATAGRAM_BYTES, UDP_SMALL_PATH_DATAGRAM_BYTES,
                                          UDP_MAX_DATAGRAM_BYTES, UDP_MAX_IPV4_DATAGRAM_BYTES])
@pytest.mark.parametrize("max_entries", [1, 16, 512, 4096])
def test_the_costliest_append_batch_fits_a_datagram(max_datagram: int, max_entries: int) -> None:
    """The batch msgpack spends most on beyond the leader's count (as many
    entries as allowed, each with a 3-byte data header) still fits."""
    limits = udp_core_limits(max_datagram, max_entries)
    n = max(1, min(max_entries, limits.max_append_bytes // ENTRY_OVERHEAD_BYTES))
    size = limits.max_append_bytes // n - ENTRY_OVERHEAD_BYTES
    msg = _batch(max_datagram, max_entries, [size], [False])
    assert len(msg.entries) == n
    assert _sealed_bytes(msg) <= max_datagram


@given(max_datagram=st.integers(UDP_MIN_DATAGRAM_BYTES, UDP_MAX_IPV4_DATAGRAM_BYTES))
@settings(max_examples=60, deadline=None)
def test_a_snapshot_chunk_under_the_limit_fits_exactly(max_datagram: int) -> None:
    """A full snapshot chunk at the widest offsets and longest ids fills the
    datagram to at most its limit, wasting no more than a length header."""
    chunk = udp_core_limits(max_datagram).snapshot_chunk_bytes
    msg = InstallSnapshot(term=_U64_MAX, src=_ID, dst=_ID, meta=SnapshotMeta(_U64_MAX, _U64_MAX),
                          offset=_U64_MAX, data=bytes(chunk), done=False, size=_U64_MAX)
    assert max_datagram - 2 <= _sealed_bytes(msg) <= max_datagram


def test_every_other_message_fits_the_smallest_datagram() -> None:
    """Votes, heartbeats, responses and TimeoutNow at their widest fit the
    smallest datagram limit: only batches and chunks need sizing."""
    m, meta = _U64_MAX, SnapshotMeta(_U64_MAX, _U64_MAX)
    small: list[PeerMessage] = [
        RequestVote(term=m, src=_ID, dst=_ID, last_index=m, last_term=m, prevote=True,
                    transfer=True),
        RequestVoteResponse(term=m, src=_ID, dst=_ID, granted=True, prevote=True),
        AppendEntriesResponse(term=m, src=_ID, dst=_ID, success=False, index=m, last_index=m,
                              conflict_term=m, conflict_index=m),
        Heartbeat(term=m, src=_ID, dst=_ID, commit=m, seq=m),
        HeartbeatResponse(term=m, src=_ID, dst=_ID, seq=m),
        InstallSnapshotResponse(term=m, src=_ID, dst=_ID, meta=meta, next_offset=m),
        TimeoutNow(term=m, src=_ID, dst=_ID),
    ]
    for msg in small:
        assert _sealed_bytes(msg) <= UDP_MIN_DATAGRAM_BYTES, type(msg).__name__
    assert len(seal_datagram(bytes(32), _ID, _ID, b"")) == DATAGRAM_OVERHEAD_MAX_BYTES
