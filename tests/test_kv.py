"""The key-value state machine: command semantics, snapshot images and their
validation, and replicas that agree (sessions: tests/test_sessions.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.config import MAX_KEY_BYTES, MAX_VALUE_BYTES
from node.state.kv import (
    BAD_COMMAND,
    CAS_FAILED,
    VALUE_TOO_LARGE,
    Append,
    Applied,
    Body,
    Cas,
    CloseSession,
    Command,
    CommandError,
    Delete,
    ImageError,
    KVStore,
    Op,
    Put,
    RegisterSession,
    Write,
    decode_command,
    decode_image,
    encode_command,
    encode_image,
    encode_op,
    image_encoder,
)
from node.state.sessions import Result


class _Feeder:
    """Applies commands to a store at consecutive log indexes, stamped with a
    log clock that the test moves (`now_ms`)."""

    def __init__(self, kv: KVStore) -> None:
        self.kv = kv
        self.now_ms = 0
        self.ids: dict[str, int] = {}

    def raw(self, data: bytes) -> Applied | None:
        return self.kv.apply(self.kv.applied_index + 1, data)

    def body(self, body: Body) -> Applied:
        got = self.raw(encode_command(Command(self.now_ms, body)))
        assert got is not None
        return got

    def sid(self, client: str) -> int:
        """The session of `client` (a name in the test), registered on first use."""
        if client not in self.ids:
            self.ids[client] = self.body(RegisterSession()).session
        return self.ids[client]

    def applied(self, client: str, seq: int, op: Op, first: int | None = None) -> Applied:
        raw = encode_op(op)
        return self.body(Write(self.sid(client), seq, seq if first is None else first, raw))

    def __call__(self, client: str, seq: int, op: Op, first: int | None = None) -> Result:
        return self.applied(client, seq, op, first).result


def _state(kv: KVStore) -> bytes:
    """Everything but the applied index, to check that nothing else changed."""
    img = kv.freeze()
    return msgspec.msgpack.encode(
        [sorted(kv for s in img.shards for kv in s.items()), img.clock_ms, list(img.sessions)]
    )


def _contents(kv: KVStore) -> dict[str, bytes | None]:
    names = kv.keys()
    return {k: kv.get(k) for k in names}


# --- command semantics ----------------------------------------------------------


def test_put_answers_previous_value_only_when_asked() -> None:
    """A put stores the value; it reports the value it replaced only with `prev`."""
    f = _Feeder(KVStore())
    assert f("c", 1, Put("k", b"v1")) == Result(ok=True)
    assert f("c", 2, Put("k", b"v2", prev=True)) == Result(ok=True, value=b"v1")
    assert f("c", 3, Put("k", b"v3")) == Result(ok=True)
    assert f.kv.get("k") == b"v3"
    assert len(f.kv) == 1


def test_delete_removes_and_absent_is_ok() -> None:
    """A delete removes the key (reporting what it held with `prev`); deleting nothing succeeds."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"v"))
    assert f("c", 2, Delete("k", prev=True)) == Result(ok=True, value=b"v")
    assert f.kv.get("k") is None
    assert f("c", 3, Delete("k", prev=True)) == Result(ok=True, value=None)
    assert len(f.kv) == 0


def test_cas_with_none_expected_requires_absent_key() -> None:
    """Cas with expected None creates an absent key and fails on a present one."""
    f = _Feeder(KVStore())
    assert f("c", 1, Cas("k", None, b"a")) == Result(ok=True)
    assert f("c", 2, Cas("k", None, b"b")) == Result(ok=False, value=b"a", error=CAS_FAILED)
    assert f.kv.get("k") == b"a"


def test_cas_swaps_only_on_matching_value() -> None:
    """Cas replaces a matching value and reports the current one on a mismatch."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"a"))
    assert f("c", 2, Cas("k", b"x", b"b")) == Result(ok=False, value=b"a", error=CAS_FAILED)
    assert f.kv.get("k") == b"a"
    assert f("c", 3, Cas("k", b"a", b"b")) == Result(ok=True)
    assert f.kv.get("k") == b"b"
    assert f("c", 4, Cas("gone", b"a", b"b")) == Result(ok=False, value=None, error=CAS_FAILED)


def test_append_concatenates_and_refuses_past_the_value_limit() -> None:
    """Append adds to the end (absent is empty); past MAX_VALUE_BYTES it changes nothing."""
    f = _Feeder(KVStore())
    assert f("c", 1, Append("k", b"a,")) == Result(ok=True)
    assert f("c", 2, Append("k", b"b,")) == Result(ok=True)
    assert f.kv.get("k") == b"a,b,"
    f("c", 3, Put("big", b"x" * MAX_VALUE_BYTES))
    assert f("c", 4, Append("big", b"y")) == Result(ok=False, error=VALUE_TOO_LARGE)
    assert f.kv.get("big") == b"x" * MAX_VALUE_BYTES


def test_keys_filters_by_prefix_and_sorts() -> None:
    """keys(prefix) lists exactly the keys with that prefix, in order."""
    f = _Feeder(KVStore())
    for i, k in enumerate(["b/2", "a/1", "b/1", "c", "b"], 1):
        f("c", i, Put(k, b""))
    assert f.kv.keys("b") == ["b", "b/1", "b/2"]
    assert f.kv.keys("b/") == ["b/1", "b/2"]
    assert f.kv.keys() == ["a/1", "b", "b/1", "b/2", "c"]
    assert f.kv.keys("z") == []


def test_empty_entry_is_a_noop_that_advances_the_index() -> None:
    """A no-op entry (no data) changes no data, answers nobody and moves the applied index."""
    kv = KVStore()
    before = _state(kv)
    assert kv.apply(1, b"") is None
    assert kv.applied_index == 1
    assert _state(kv) == before


def test_index_must_strictly_increase() -> None:
    """Applying an index at or below the applied one raises and changes nothing."""
    f = _Feeder(KVStore())
    sid = f.sid("c")
    f.kv.apply(5, encode_command(Command(0, Write(sid, 1, 1, encode_op(Put("k", b"v"))))))
    before = _state(f.kv)
    for index in (5, 4):
        with pytest.raises(ValueError):
            f.kv.apply(index, encode_command(
                Command(0, Write(sid, 2, 2, encode_op(Put("k", b"w"))))))
    assert f.kv.applied_index == 5
    assert _state(f.kv) == before


_BAD_ENTRIES = [
    b"\xc1",
    b"garbage that is not msgpack",
    msgspec.msgpack.encode([0, ["w", 1, 1, 1]]),  # no op
    msgspec.msgpack.encode([-1, ["r"]]),  # negative time
    msgspec.msgpack.encode([0, ["x"]]),  # unknown body
    msgspec.msgpack.encode([0, ["w", -1, 1, 1, ["put", "k", b"v"]]]),
    msgspec.msgpack.encode({"time_ms": 0, "body": ["r"]}),
    msgspec.msgpack.encode(["c", 1, ["put", "k", b"v"]]),  # the format before sessions
]


@pytest.mark.parametrize("data", _BAD_ENTRIES, ids=range(len(_BAD_ENTRIES)))
def test_bad_entry_answers_nobody_and_changes_only_the_index(data: bytes) -> None:
    """A malformed entry never raises and leaves data, sessions and clock as they were."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"v"))
    before = _state(f.kv)
    index = f.kv.applied_index + 1
    assert f.kv.apply(index, data) is None
    assert f.kv.applied_index == index
    assert _state(f.kv) == before


_BAD_OPS = [
    msgspec.msgpack.encode(["put", "", b"v"]),  # empty key
    msgspec.msgpack.encode(["put", "\u00e9" * 513, b"v"]),  # 1026 bytes
    msgspec.msgpack.encode(["put", "k", b"v" * (MAX_VALUE_BYTES + 1)]),
    msgspec.msgpack.encode(["cas", "k", b"v" * (MAX_VALUE_BYTES + 1), b""]),
    msgspec.msgpack.encode(["rename", "k", "j"]),
    b"\x93\xa3put\xa1\xff\xc4\x00",  # key of invalid UTF-8
]


@pytest.mark.parametrize("op", _BAD_OPS, ids=range(len(_BAD_OPS)))
def test_write_of_a_bad_op_answers_bad_command_and_changes_no_data(op: bytes) -> None:
    """A session's write whose op is malformed gets bad_command; the data stays."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"v"))
    data = sorted(_contents(f.kv).items())
    got = f.body(Write(f.sid("c"), 2, 2, msgspec.Raw(op)))
    assert got.result == Result(ok=False, error=BAD_COMMAND)
    assert sorted(_contents(f.kv).items()) == data


def test_key_limit_counts_utf8_bytes() -> None:
    """A key of exactly MAX_KEY_BYTES UTF-8 bytes is accepted, one byte more is not."""
    ok_key = "\u00e9" * (MAX_KEY_BYTES // 2)
    assert Put(ok_key, b"").key == ok_key
    with pytest.raises(ValueError):
        Put(ok_key + "x", b"")
    with pytest.raises(ValueError):
        Delete("")


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_decode_command_raises_only_command_error(data: bytes) -> None:
    """decode_command returns a Command or raises CommandError, nothing else."""
    try:
        cmd = decode_command(data)
    except CommandError:
        return
    assert decode_command(encode_command(cmd)) == cmd


# --- images ---------------------------------------------------------------------


def _populated(n: int = 200) -> _Feeder:
    f = _Feeder(KVStore())
    for i in range(1, n + 1):
        f.now_ms = i
        f(f"c{i % 13}", i, Put(f"key/{i}", bytes([i % 256]) * (i % 50)))
    for i in range(1, n + 1, 3):
        f.now_ms = n + i
        f(f"c{i % 13}", n + i, Delete(f"key/{i}"))
    return f


def test_snapshot_round_trip_preserves_digest_sessions_and_clock() -> None:
    """A store restored from an image has the same digest, data, clock and sessions."""
    src = _populated()
    src.now_ms = 5_000
    first = src.applied("z", 1, Put("key/2", b"new"))
    dst = KVStore()
    dst.restore(encode_image(src.kv.freeze()))
    assert dst.digest() == src.kv.digest()
    assert dst.applied_index == src.kv.applied_index
    assert dst.clock_ms == 5_000
    assert _contents(dst) == _contents(src.kv)
    # The sessions and their answers came along: a retry is answered, not applied.
    retry = encode_command(Command(6_000, Write(src.sid("z"), 1, 1, encode_op(
        Put("key/2", b"new")))))
    again = dst.apply(dst.applied_index + 1, retry)
    assert again is not None and not again.executed and first.executed
    assert (again.result, again.index) == (first.result, first.index)


def test_digest_covers_applied_index() -> None:
    """Stores with equal data but different applied indexes have different digests."""
    a, b = KVStore(), KVStore()
    a.apply(1, b"")
    b.apply(2, b"")
    assert a.digest() != b.digest()


def test_freeze_isolates_image_from_later_writes() -> None:
    """Writes after freeze change the store but not the frozen image."""
    f = _populated(2000)
    before = _contents(f.kv)
    index = f.kv.applied_index
    img = f.kv.freeze()
    for i in range(2000):
        f("w", 2 * i + 1, Put(f"key/{i}", b"overwritten"))
        f("w", 2 * i + 2, Delete(f"key/{(i * 17) % 2000}"))
    f("w", 99_999, Put("brand-new", b"x"))
    assert f.kv.get("brand-new") == b"x"
    copy = KVStore()
    copy.install(decode_image(encode_image(img)))
    assert copy.applied_index == index
    assert _contents(copy) == before
    assert f.sid("w") not in {s.id for s in img.sessions}


def _edit_header(img: bytes, edit: Callable[[list[Any]], None]) -> bytes:
    hlen = struct.unpack_from(">I", img, 4)[0]
    header = msgspec.msgpack.decode(img[8 : 8 + hlen])
    edit(header)
    new = msgspec.msgpack.encode(header)
    return img[:4] + struct.pack(">I", len(new)) + new + img[8 + hlen :]


def _reverse_sessions(header: list[Any]) -> None:
    header[3] = list(reversed(header[3]))


def _session_beyond_index(header: list[Any]) -> None:
    header[3][0][0] = header[1] + 1


def _answer_below_outstanding(header: list[Any]) -> None:
    s = next(s for s in header[3] if s[3])
    s[2] = s[3][0][0] + 1


def _with_chunks(chunks: list[list[list[Any]]], image_format: int) -> bytes:
    """A one-key image whose data is replaced by `chunks`, in `image_format`
    (2: sizes in the header; 4: each chunk framed by its length, an empty
    frame after the data, no history)."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"v"))
    good = encode_image(f.kv.freeze())
    hlen = struct.unpack_from(">I", good, 4)[0]
    header = msgspec.msgpack.decode(good[8 : 8 + hlen])
    encoded = [msgspec.msgpack.encode(c) for c in chunks]
    header[0] = image_format
    if image_format == 2:
        header[4], header[5] = [len(c) for c in encoded], [len(c) for c in chunks]
        header[6:] = [0, 0, [], []]
        data = b"".join(encoded)
    else:
        data = b"".join(struct.pack(">I", len(c)) + c for c in encoded) + struct.pack(">I", 0)
    new = msgspec.msgpack.encode(header)
    return good[:4] + struct.pack(">I", len(new)) + new + data


def _duplicate_key(img: bytes) -> bytes:
    del img
    return _with_chunks([[["k", [b"v", 2, 2, 1]]], [["k", [b"w", 2, 2, 1]]]], 4)


def _duplicate_key_format_2(img: bytes) -> bytes:
    del img
    return _with_chunks([[["k", b"v"], ["k", b"w"]]], 2)


def _empty_framed_chunk(img: bytes) -> bytes:
    return img + struct.pack(">I", 0)


def _break_first_chunk(img: bytes) -> bytes:
    start = 8 + struct.unpack_from(">I", img, 4)[0]
    return img[:start] + b"\xc1" + img[start + 1 :]  # 0xc1 is never valid msgpack


_GARBAGE: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("empty", lambda b: b""),
    ("random", lambda b: bytes(range(256)) * 4),
    ("bad magic", lambda b: b"XXXX" + b[4:]),
    ("truncated header", lambda b: b[:12]),
    ("truncated data", lambda b: b[:-1]),
    ("trailing byte", lambda b: b + b"\x00"),
    ("bad chunk", _break_first_chunk),
    ("huge header length", lambda b: b[:4] + b"\xff\xff\xff\xff" + b[8:]),
    ("sessions out of order", lambda b: _edit_header(b, _reverse_sessions)),
    ("session beyond the index", lambda b: _edit_header(b, _session_beyond_index)),
    ("answer below first outstanding", lambda b: _edit_header(b, _answer_below_outstanding)),
    ("duplicate key", _duplicate_key),
    ("duplicate key, format 2", _duplicate_key_format_2),
    ("empty framed chunk", _empty_framed_chunk),
    ("chunk longer than the image", lambda b: b + struct.pack(">I", 9) + b"\x90"),
]


def test_image_encoded_in_pieces_is_the_image_encoded_at_once() -> None:
    """However small the pieces a loop asks for, they join into the same bytes
    as `encode_image` (replicas at one index must agree byte for byte)."""
    img = _populated(300).kv.freeze()
    for size in (1, 100, 10_000):
        enc = image_encoder(img)
        pieces = []
        while (piece := enc.next_piece(size)) is not None:
            pieces.append(piece)
        assert enc.done
        assert size > 1000 or len(pieces) > 2, "small pieces were asked for"
        assert b"".join(pieces) == encode_image(img), f"pieces of {size} bytes"


def test_an_image_of_format_2_is_still_restored() -> None:
    """Snapshot files written before images were framed (format 2) load as before."""
    old = _with_chunks([[["a", b"1"], ["b", b"2"]], [["c", b"3"]]], 2)
    kv = KVStore()
    kv.restore(old)
    assert [kv.get(k) for k in "abc"] == [b"1", b"2", b"3"]
    assert len(kv) == 3


@pytest.mark.parametrize("name, corrupt", _GARBAGE, ids=[g[0] for g in _GARBAGE])
def test_restore_rejects_garbage_and_keeps_state(
    name: str, corrupt: Callable[[bytes], bytes]
) -> None:
    """restore raises ImageError on a malformed image and leaves the store as it was."""
    src = _populated(50)
    src("c", 10_000, Put("k", b"v"), first=9_999)  # a session holding two answers
    good = encode_image(src.kv.freeze())
    bad = corrupt(good)
    assert bad != good, name
    victim = _populated(10)
    digest = victim.kv.digest()
    with pytest.raises(ImageError):
        victim.kv.restore(bad)
    assert victim.kv.digest() == digest


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_decode_image_raises_only_image_error(data: bytes) -> None:
    """decode_image returns an image or raises ImageError for any bytes."""
    try:
        img = decode_image(b"RKVI" + data)
    except ImageError:
        return
    assert decode_image(encode_image(img)) == img


# --- properties -----------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c", "d/1", "d/2", "\u00e9"])
# Large values too: an answer keeps a small write's bytes, a large one's fingerprint.
_values = st.binary(max_size=8) | st.binary(min_size=300, max_size=302)
_ops: st.SearchStrategy[Op] = st.one_of(
    st.builds(Put, _keys, _values, st.booleans()),
    st.builds(Delete, _keys, st.booleans()),
    st.builds(Cas, _keys, st.none() | _values, _values),
    st.builds(Append, _keys, _values),
)
# Few sessions, small sequence numbers and a slow clock, so that retries,
# stale commands, reused seqs, unknown sessions and expiry all happen.
_bodies = st.one_of(
    st.just(RegisterSession()),
    st.builds(CloseSession, st.integers(1, 8)),
    st.builds(lambda sid, seq, back, op: Write(sid, seq, max(1, seq - back), encode_op(op)),
              st.integers(1, 8), st.integers(1, 6), st.integers(0, 3), _ops),
)
_entries = st.lists(
    st.one_of(
        st.builds(lambda t, b: encode_command(Command(t, b)), st.integers(0, 400), _bodies),
        st.sampled_from([b"", b"\x93garbage"]),
    ),
    max_size=60,
)


def _small() -> KVStore:
    return KVStore(session_timeout_ms=100, max_sessions=3, max_outstanding=4)


@given(_entries, st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_restored_replica_converges(entries: list[bytes], data: st.DataObject) -> None:
    """A store restored from a mid-way image of another answers the same and ends equal."""
    cut = data.draw(st.integers(0, len(entries)), label="cut")
    a = _small()
    for i, e in enumerate(entries[:cut], 1):
        a.apply(i, e)
    b = _small()
    b.restore(encode_image(a.freeze()))
    for i, e in enumerate(entries[cut:], cut + 1):
        ra, rb = a.apply(i, e), b.apply(i, e)
        assert ra == rb
    assert a.digest() == b.digest()
