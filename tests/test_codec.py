"""The wire codec under fuzzing: whatever bytes arrive, `decode` returns a valid
peer message or raises `DecodeError`, and every valid message round-trips."""

from __future__ import annotations

import array
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from node.codec import DecodeError, decode, encode
from node.config import MAX_MESSAGE_BYTES
from node.raft.messages import (
    PEER_MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    PeerMessage,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)

_FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- strategies for valid messages --------------------------------------------

_u64 = st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([0, 1, 2**63 - 1]))
_node_id = st.text(min_size=1, max_size=64)
_data = st.binary(max_size=64)
_meta = st.builds(SnapshotMeta, _u64, _u64)
_entry = st.builds(Entry, _u64, _u64, st.sampled_from(EntryKind), _data)


def _peer(cls: type[Any], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[PeerMessage]:
    return st.builds(cls, term=_u64, src=_node_id, dst=_node_id, **fields)


_BY_TYPE: dict[type[Any], st.SearchStrategy[PeerMessage]] = {
    RequestVote: _peer(
        RequestVote, last_index=_u64, last_term=_u64, prevote=st.booleans(),
        transfer=st.booleans(),
    ),
    RequestVoteResponse: _peer(RequestVoteResponse, granted=st.booleans(), prevote=st.booleans()),
    AppendEntries: _peer(
        AppendEntries, prev_index=_u64, prev_term=_u64, entries=st.lists(_entry, max_size=5),
        commit=_u64,
    ),
    AppendEntriesResponse: _peer(
        AppendEntriesResponse, success=st.booleans(), index=_u64, last_index=_u64,
        conflict_term=_u64, conflict_index=_u64,
    ),
    Heartbeat: _peer(Heartbeat, commit=_u64, seq=_u64),
    HeartbeatResponse: _peer(HeartbeatResponse, seq=_u64),
    InstallSnapshot: _peer(
        InstallSnapshot, meta=_meta, offset=_u64, data=_data, done=st.booleans(), size=_u64
    ),
    InstallSnapshotResponse: _peer(InstallSnapshotResponse, meta=_meta, next_offset=_u64),
    TimeoutNow: _peer(TimeoutNow),
    ReadIndex: _peer(ReadIndex, ctx=_data),
    ReadIndexResponse: _peer(ReadIndexResponse, ctx=_data, ok=st.booleans(), index=_u64),
}
_messages = st.one_of(*_BY_TYPE.values())

# Arbitrary msgpack-encodable values: the shapes a confused or hostile peer sends.
_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    _ints,
    st.floats(allow_nan=True),
    st.text(max_size=70),
    st.binary(max_size=16),
    st.sampled_from(["rv", "rvr", "ae", "aer", "hb", "hbr", "is", "isr", "tn", "ri", "rir",
                     "t"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), _ints), inner, max_size=3),
    ),
    max_leaves=12,
)


def _check_decodes_or_rejects(data: bytes | memoryview, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """The fuzz oracle: DecodeError, or a peer message that survives re-encoding."""
    try:
        msg = decode(data, max_bytes)
    except DecodeError:
        return
    assert isinstance(msg, PEER_MESSAGE_TYPES)
    assert decode(encode(msg)) == msg


# --- round trips --------------------------------------------------------------


def test_every_peer_message_type_has_a_strategy() -> None:
    """The round-trip strategies cover every type in PEER_MESSAGE_TYPES."""
    assert set(_BY_TYPE) == set(PEER_MESSAGE_TYPES)


@pytest.mark.parametrize("cls", PEER_MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_valid_message_round_trips(cls: type[Any], data: st.DataObject) -> None:
    """decode(encode(m)) == m for every valid message of every peer type."""
    msg = data.draw(_BY_TYPE[cls])
    assert type(msg) is cls
    out = decode(encode(msg))
    assert type(out) is cls
    assert out == msg


@given(_messages)
@settings(max_examples=50, deadline=None)
def test_round_trip_through_memoryview(msg: PeerMessage) -> None:
    """A message arriving as a memoryview of the received buffer decodes the same."""
    assert decode(memoryview(bytearray(encode(msg)))) == msg


# --- fuzzing ------------------------------------------------------------------


@given(st.binary(max_size=512))
@_FUZZ
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    """Random bytes decode to a valid message or raise DecodeError."""
    _check_decodes_or_rejects(data)


@given(_messages, st.data())
@_FUZZ
def test_bit_flips_raise_only_decode_error(msg: PeerMessage, data: st.DataObject) -> None:
    """A valid encoding with some bits flipped never lets another exception escape."""
    buf = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        bit = data.draw(st.integers(0, len(buf) * 8 - 1), label="bit")
        buf[bit // 8] ^= 1 << (bit % 8)
    _check_decodes_or_rejects(bytes(buf))


@given(_messages, st.data())
@_FUZZ
def test_truncations_raise_only_decode_error(msg: PeerMessage, data: st.DataObject) -> None:
    """Every proper prefix of a valid encoding is rejected with DecodeError."""
    enc = encode(msg)
    cut = data.draw(st.integers(0, len(enc) - 1), label="cut")
    with pytest.raises(DecodeError):
        decode(enc[:cut])


@given(_messages, st.data())
@_FUZZ
def test_insertions_and_deletions_raise_only_decode_error(
    msg: PeerMessage, data: st.DataObject
) -> None:
    """Bytes inserted into or cut out of a valid encoding never let another exception out."""
    enc = encode(msg)
    at = data.draw(st.integers(0, len(enc)), label="at")
    drop = data.draw(st.integers(0, len(enc) - at), label="drop")
    junk = data.draw(st.binary(max_size=16), label="junk")
    mutated = enc[:at] + junk + enc[at + drop :]
    assume(mutated != enc)
    _check_decodes_or_rejects(mutated)


@given(_values)
@_FUZZ
def test_arbitrary_msgpack_values_raise_only_decode_error(value: Any) -> None:
    """Well-formed msgpack of the wrong shape is rejected with DecodeError."""
    _check_decodes_or_rejects(msgspec.msgpack.encode(value))


@given(st.sampled_from(["rv", "rvr", "ae", "aer", "hb", "hbr", "is", "isr", "tn"]),
       st.lists(st.one_of(_scalars, _values), max_size=10))
@_FUZZ
def test_known_tag_with_confused_fields_raises_only_decode_error(
    tag: str, fields: list[Any]
) -> None:
    """A real message tag followed by fields of random types never lets another exception out."""
    _check_decodes_or_rejects(msgspec.msgpack.encode([tag, *fields]))


@given(_messages, st.data())
@_FUZZ
def test_field_swapped_for_random_value_raises_only_decode_error(
    msg: PeerMessage, data: st.DataObject
) -> None:
    """A valid message with one field replaced by a random value is decoded or rejected."""
    fields = msgspec.msgpack.decode(encode(msg))
    i = data.draw(st.integers(0, len(fields) - 1), label="field")
    fields[i] = data.draw(_values, label="value")
    _check_decodes_or_rejects(msgspec.msgpack.encode(fields))


def test_invalid_utf8_string_raises_decode_error() -> None:
    """Invalid UTF-8 in a tag or a node id (msgspec raises UnicodeDecodeError, not its
    own DecodeError) becomes DecodeError."""
    with pytest.raises(DecodeError):
        decode(b"\x91\xa2\xff\xfe")
    enc = encode(HeartbeatResponse(term=1, src="Z", dst="b"))
    assert enc.count(b"\xa1Z") == 1
    with pytest.raises(DecodeError):
        decode(enc.replace(b"\xa1Z", b"\xa1\xff"))


def test_out_of_range_integers_are_rejected() -> None:
    """Negative terms and terms beyond 2**63-1 are not valid on the wire."""
    good = msgspec.msgpack.decode(encode(HeartbeatResponse(term=1, src="a", dst="b")))
    for bad in (-1, 2**63, 2**64 - 1):
        fields = list(good)
        fields[1] = bad
        with pytest.raises(DecodeError):
            decode(msgspec.msgpack.encode(fields))


def test_deep_nesting_raises_only_decode_error() -> None:
    """A deeply nested array (a stack-exhaustion attempt) is rejected with DecodeError."""
    depth = 100_000
    with pytest.raises(DecodeError):
        decode(b"\x91" * depth + b"\xc0")
    with pytest.raises(DecodeError):
        decode(b"\x92\xa2ae" + b"\x91" * depth + b"\xc0")


# --- size limit ---------------------------------------------------------------


@given(_messages, st.integers(1, 64))
@settings(max_examples=100, deadline=None)
def test_message_over_limit_is_rejected(msg: PeerMessage, short: int) -> None:
    """A valid message longer than max_bytes is rejected before it is parsed."""
    enc = encode(msg)
    assume(len(enc) > short)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(enc, max_bytes=len(enc) - short)
    assert decode(enc, max_bytes=len(enc)) == msg


def test_default_limit_rejects_one_byte_more() -> None:
    """With the default limit, MAX_MESSAGE_BYTES + 1 bytes are rejected unparsed."""
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(b"\x00" * (MAX_MESSAGE_BYTES + 1))


def test_oversized_valid_message_is_rejected() -> None:
    """A well-formed AppendEntries bigger than the limit is rejected, not decoded."""
    big = AppendEntries(
        term=1, src="a", dst="b", prev_index=0, prev_term=0, commit=0,
        entries=[Entry(1, 1, EntryKind.NORMAL, b"x" * MAX_MESSAGE_BYTES)],
    )
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(encode(big))


def test_limit_counts_bytes_of_a_wide_memoryview() -> None:
    """A memoryview of 8-byte items is measured in bytes: it cannot pass 8x the limit."""
    pad = 0
    while True:
        msg = InstallSnapshot(
            term=1, src="a", dst="b", meta=SnapshotMeta(1, 1), offset=0, data=b"x" * pad,
            done=True,
        )
        enc = encode(msg)
        if len(enc) % 8 == 0:
            break
        pad += 1
    wide = memoryview(array.array("Q", enc))
    assert wide.nbytes == len(enc) and len(wide) == len(enc) // 8
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(wide, max_bytes=len(enc) - 1)
    assert decode(wide, max_bytes=len(enc)) == msg


# --- client batch frames (node/api.py) --------------------------------------------


_ITEM_VALUES = st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=20)


@given(st.lists(st.dictionaries(st.text(max_size=5), _ITEM_VALUES, max_size=3), max_size=40))
def test_a_batch_frame_is_the_msgpack_array_of_its_items(items: list[dict[str, Any]]) -> None:
    """join_batch of encoded items is exactly their MessagePack array and
    is recognised as a batch."""
    from node.batches import is_batch, join_batch

    encoded = [msgspec.msgpack.encode(i) for i in items]
    frame = join_batch(encoded)
    assert is_batch(frame)
    assert msgspec.msgpack.decode(frame) == items


_REQUESTS = st.lists(st.fixed_dictionaries({
    "op": st.sampled_from(["ping", "get", "explode"]), "id": st.integers(0, 2**63 - 1),
    "key": st.text(min_size=1, max_size=5)}), min_size=1, max_size=40)


@given(_REQUESTS)
def test_split_batch_gives_each_request_back(items: list[dict[str, Any]]) -> None:
    """split_batch of a batch of requests gives them back in order: decoded
    when all are valid, else as the bytes of each, to be refused one by one."""
    from node.api import GetRequest
    from node.batches import join_batch, split_batch

    items = [{k: v for k, v in i.items() if k != "key" or i["op"] == "get"} for i in items]
    encoded = [msgspec.msgpack.encode(i) for i in items]
    got = split_batch(join_batch(encoded))
    assert len(got) == len(items)
    if any(i["op"] == "explode" for i in items):
        assert got == encoded
    else:
        assert [r.id for r in got if not isinstance(r, bytes)] == [i["id"] for i in items]
        assert [r.key for r in got if isinstance(r, GetRequest)] == \
            [i["key"] for i in items if i["op"] == "get"]


def test_a_single_request_is_not_a_batch_and_a_torn_batch_is_refused() -> None:
    """A map is one request, not a batch; an array cut short raises ValueError."""
    from node.batches import is_batch, split_batch

    assert not is_batch(msgspec.msgpack.encode({"op": "ping", "id": 1}))
    assert not is_batch(b"")
    with pytest.raises(ValueError, match="bad batch frame"):
        split_batch(b"\x93\x01")


def test_log_entries_are_not_tracked_by_the_garbage_collector() -> None:
    """Entries, hard states and snapshot metas hold no container and so are
    in no cycle: made or decoded, the collector must not walk them (a full
    collection over a log of them stalled the loop past an election timeout)."""
    import gc

    from node.raft.messages import Entry, EntryKind, HardState, SnapshotMeta

    made = [Entry(1, 1, EntryKind.NORMAL, b"x"), HardState(1, "n1", 1), SnapshotMeta(1, 1)]
    sent = AppendEntries(term=1, src="a", dst="b", prev_index=0, prev_term=0,
                         entries=[Entry(1, 1, EntryKind.NORMAL, b"x")], commit=0)
    got = decode(encode(sent))
    assert isinstance(got, AppendEntries)
    assert not any(gc.is_tracked(o) for o in [*made, *got.entries])


@given(st.lists(st.integers(0, 3000), max_size=60), st.integers(1, 5000))
def test_batches_stay_under_the_frame_limit(sizes: list[int], limit: int) -> None:
    """batch_bounds covers every item once, in order, and no batch of more
    than one item exceeds the limit (a node drops a frame over its limit)."""
    from node.batches import batch_bounds

    bounds = batch_bounds(sizes, limit)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(len(sizes)))
    assert all(b - a == 1 or sum(sizes[a:b]) <= limit for a, b in bounds)
