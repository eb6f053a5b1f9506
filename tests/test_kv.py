"""The key-value state machine: command semantics, exactly-once sessions,
deterministic eviction, snapshot images and their validation."""

from __future__ import annotations

import struct
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from node.config import MAX_KEY_BYTES, MAX_VALUE_BYTES
from node.kv import (
    BAD_COMMAND,
    CAS_FAILED,
    STALE_SEQUENCE,
    Cas,
    Command,
    CommandError,
    Delete,
    ImageError,
    KVStore,
    Op,
    Put,
    Result,
    decode_command,
    decode_image,
    encode_command,
    encode_image,
)


class _Feeder:
    """Applies commands to a store at consecutive log indexes."""

    def __init__(self, kv: KVStore) -> None:
        self.kv = kv

    def raw(self, data: bytes) -> Result:
        return self.kv.apply(self.kv.applied_index + 1, data)[1]

    def __call__(self, client: str, seq: int, op: Op) -> Result:
        return self.raw(encode_command(Command(client, seq, op)))


def _state(kv: KVStore) -> bytes:
    """Everything but the applied index, to check that nothing else changed."""
    img = kv.freeze()
    return msgspec.msgpack.encode(
        [sorted(kv for s in img.shards for kv in s.items()), list(img.sessions)]
    )


def _contents(kv: KVStore) -> dict[str, bytes | None]:
    names = kv.keys()
    return {k: kv.get(k) for k in names}


# --- command semantics ----------------------------------------------------------


def test_put_returns_previous_value_and_get_sees_new() -> None:
    """A put stores the value and reports the value it replaced."""
    f = _Feeder(KVStore())
    assert f("c", 1, Put("k", b"v1")) == Result(ok=True, value=None)
    assert f("c", 2, Put("k", b"v2")) == Result(ok=True, value=b"v1")
    assert f.kv.get("k") == b"v2"
    assert len(f.kv) == 1


def test_delete_returns_previous_value_and_absent_is_ok() -> None:
    """A delete removes the key and reports what it held; deleting nothing succeeds."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"v"))
    assert f("c", 2, Delete("k")) == Result(ok=True, value=b"v")
    assert f.kv.get("k") is None
    assert f("c", 3, Delete("k")) == Result(ok=True, value=None)
    assert len(f.kv) == 0


def test_cas_with_none_expected_requires_absent_key() -> None:
    """Cas with expected None creates an absent key and fails on a present one."""
    f = _Feeder(KVStore())
    assert f("c", 1, Cas("k", None, b"a")) == Result(ok=True, value=None)
    assert f("c", 2, Cas("k", None, b"b")) == Result(ok=False, value=b"a", error=CAS_FAILED)
    assert f.kv.get("k") == b"a"


def test_cas_swaps_only_on_matching_value() -> None:
    """Cas replaces a matching value and reports the current one on a mismatch."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"a"))
    assert f("c", 2, Cas("k", b"x", b"b")) == Result(ok=False, value=b"a", error=CAS_FAILED)
    assert f.kv.get("k") == b"a"
    assert f("c", 3, Cas("k", b"a", b"b")) == Result(ok=True, value=b"a")
    assert f.kv.get("k") == b"b"
    assert f("c", 4, Cas("gone", b"a", b"b")) == Result(ok=False, value=None, error=CAS_FAILED)


def test_keys_filters_by_prefix_and_sorts() -> None:
    """keys(prefix) lists exactly the keys with that prefix, in order."""
    f = _Feeder(KVStore())
    for i, k in enumerate(["b/2", "a/1", "b/1", "c", "b"]):
        f("c", i, Put(k, b""))
    assert f.kv.keys("b") == ["b", "b/1", "b/2"]
    assert f.kv.keys("b/") == ["b/1", "b/2"]
    assert f.kv.keys() == ["a/1", "b", "b/1", "b/2", "c"]
    assert f.kv.keys("z") == []


def test_empty_entry_is_a_noop_that_advances_the_index() -> None:
    """A no-op entry (no data) succeeds, changes no data and moves the applied index."""
    kv = KVStore()
    before = _state(kv)
    assert kv.apply(1, b"") == (None, Result(ok=True))
    assert kv.applied_index == 1
    assert _state(kv) == before


def test_index_must_strictly_increase() -> None:
    """Applying an index at or below the applied one raises and changes nothing."""
    f = _Feeder(KVStore())
    f.kv.apply(5, encode_command(Command("c", 1, Put("k", b"v"))))
    before = _state(f.kv)
    for index in (5, 4):
        with pytest.raises(ValueError):
            f.kv.apply(index, encode_command(Command("c", 2, Put("k", b"w"))))
    assert f.kv.applied_index == 5
    assert _state(f.kv) == before


_BAD_ENTRIES = [
    b"\xc1",
    b"garbage that is not msgpack",
    msgspec.msgpack.encode(["c", 1, ["put", "", b"v"]]),  # empty key
    msgspec.msgpack.encode(["c", 1, ["put", "\u00e9" * 513, b"v"]]),  # 1026 bytes
    msgspec.msgpack.encode(["c", 1, ["put", "k", b"v" * (MAX_VALUE_BYTES + 1)]]),
    msgspec.msgpack.encode(["c", 1, ["cas", "k", b"v" * (MAX_VALUE_BYTES + 1), b""]]),
    msgspec.msgpack.encode(["c", -1, ["put", "k", b"v"]]),
    msgspec.msgpack.encode(["", 1, ["put", "k", b"v"]]),
    msgspec.msgpack.encode(["c", 1, ["rename", "k", "j"]]),
    msgspec.msgpack.encode({"client": "c", "seq": 1}),
    b"\x93\xa1c\x01\x93\xa3put\xa1\xff\xc4\x00",  # key of invalid UTF-8
]


@pytest.mark.parametrize("data", _BAD_ENTRIES, ids=range(len(_BAD_ENTRIES)))
def test_bad_entry_yields_bad_command_and_changes_only_the_index(data: bytes) -> None:
    """A malformed entry returns bad_command, never raises, and leaves data and sessions."""
    f = _Feeder(KVStore())
    f("c", 1, Put("k", b"v"))
    before = _state(f.kv)
    assert f.kv.apply(2, data) == (None, Result(ok=False, error=BAD_COMMAND))
    assert f.kv.applied_index == 2
    assert _state(f.kv) == before


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


# --- sessions -------------------------------------------------------------------


def test_retried_cas_gets_cached_result_and_is_not_reapplied() -> None:
    """A cas retried after it succeeded returns the same success and changes nothing."""
    f = _Feeder(KVStore())
    first = f("a", 7, Cas("k", None, b"mine"))
    assert first.ok
    f("b", 1, Put("k", b"theirs"))
    assert f("a", 7, Cas("k", None, b"mine")) == first
    assert f.kv.get("k") == b"theirs"


def test_retried_put_is_applied_once() -> None:
    """A duplicate put returns the first result and does not overwrite later writes."""
    f = _Feeder(KVStore())
    f("a", 1, Put("k", b"old"))
    first = f("a", 2, Put("k", b"new"))
    f("b", 1, Put("k", b"later"))
    assert f("a", 2, Put("k", b"new")) == first == Result(ok=True, value=b"old")
    assert f.kv.get("k") == b"later"


def test_lower_sequence_is_stale_and_changes_nothing() -> None:
    """A command older than the session's last is refused with stale_sequence."""
    f = _Feeder(KVStore())
    f("a", 5, Put("k", b"v5"))
    before = _state(f.kv)
    assert f("a", 4, Put("k", b"v4")) == Result(ok=False, error=STALE_SEQUENCE)
    assert f.kv.get("k") == b"v5"
    assert _state(f.kv) == before


def test_sequence_numbers_may_skip() -> None:
    """A session accepts any higher sequence number, not only the next one."""
    f = _Feeder(KVStore())
    f("a", 1, Put("k", b"1"))
    assert f("a", 10, Put("k", b"10")).ok
    assert f.kv.get("k") == b"10"


def test_eviction_drops_least_recently_applied_session() -> None:
    """Beyond max_sessions, the session with the oldest last-applied index goes."""
    f = _Feeder(KVStore(max_sessions=2))
    f("a", 1, Put("x", b"a1"))
    f("b", 1, Put("y", b"b1"))
    f("a", 2, Put("x", b"a2"))  # a is now more recent than b
    f("c", 1, Put("z", b"c1"))  # evicts b
    assert [s.client for s in f.kv.freeze().sessions] == ["a", "c"]
    # a's session survives: its retry is deduplicated.
    assert f("a", 2, Put("x", b"again")) == Result(ok=True, value=b"a1")
    # b's session is gone: its retry is applied as a new command.
    assert f("b", 1, Put("y", b"b1-again")) == Result(ok=True, value=b"b1")


def test_eviction_is_deterministic_across_stores() -> None:
    """Two stores fed the same entries, with eviction, end with equal digests."""
    stores = [_Feeder(KVStore(max_sessions=3)) for _ in range(2)]
    for f in stores:
        for i in range(50):
            f(f"client-{(i * 7) % 11}", i, Put(f"k{i % 5}", b"%d" % i))
    assert len(stores[0].kv.freeze().sessions) == 3
    assert stores[0].kv.digest() == stores[1].kv.digest()


# --- images ---------------------------------------------------------------------


def _populated(n: int = 200) -> _Feeder:
    f = _Feeder(KVStore())
    for i in range(n):
        f(f"c{i % 13}", i, Put(f"key/{i}", bytes([i % 256]) * (i % 50)))
    for i in range(0, n, 3):
        f(f"c{i % 13}", n + i, Delete(f"key/{i}"))
    return f


def test_snapshot_round_trip_preserves_digest_and_sessions() -> None:
    """A store restored from an image has the same digest, data and sessions."""
    src = _populated()
    dst = KVStore()
    dst.restore(encode_image(src.kv.freeze()))
    assert dst.digest() == src.kv.digest()
    assert dst.applied_index == src.kv.applied_index
    assert len(dst) == len(src.kv)
    assert dst.keys() == src.kv.keys()
    assert _contents(dst) == _contents(src.kv)
    # The sessions came along: a retry of a command before the image is deduplicated.
    assert src("z", 1, Put("key/1", b"new")) == Result(ok=True, value=b"\x01")
    dst = KVStore()
    dst.restore(encode_image(src.kv.freeze()))
    retry = encode_command(Command("z", 1, Put("key/1", b"new")))
    assert dst.apply(dst.applied_index + 1, retry)[1] == Result(ok=True, value=b"\x01")


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
        f("w", 2 * i, Put(f"key/{i}", b"overwritten"))
        f("w", 2 * i + 1, Delete(f"key/{(i * 17) % 2000}"))
    f("w", 99_999, Put("brand-new", b"x"))
    assert f.kv.get("brand-new") == b"x"
    copy = KVStore()
    copy.install(decode_image(encode_image(img)))
    assert copy.applied_index == index
    assert _contents(copy) == before
    assert "w" not in {s.client for s in img.sessions}


def test_restore_evicts_down_to_max_sessions() -> None:
    """A store with fewer max_sessions keeps only the most recent ones of an image."""
    src = _Feeder(KVStore())
    for i in range(5):
        src(f"c{i}", 1, Put("k", b"%d" % i))
    dst = KVStore(max_sessions=2)
    dst.restore(encode_image(src.kv.freeze()))
    assert [s.client for s in dst.freeze().sessions] == ["c3", "c4"]


def _corrupt_sessions_order(img: bytes) -> bytes:
    hlen = struct.unpack_from(">I", img, 4)[0]
    header = msgspec.msgpack.decode(img[8 : 8 + hlen])
    header[2] = list(reversed(header[2]))
    new = msgspec.msgpack.encode(header)
    return img[:4] + struct.pack(">I", len(new)) + new + img[8 + hlen :]


def _duplicate_key(img: bytes) -> bytes:
    del img
    kv = KVStore()
    kv.apply(1, encode_command(Command("c", 1, Put("k", b"v"))))
    good = encode_image(kv.freeze())
    hlen = struct.unpack_from(">I", good, 4)[0]
    header = msgspec.msgpack.decode(good[8 : 8 + hlen])
    chunk = msgspec.msgpack.encode([["k", b"v"], ["k", b"w"]])
    header[3], header[4] = [len(chunk)], [2]
    new = msgspec.msgpack.encode(header)
    return good[:4] + struct.pack(">I", len(new)) + new + chunk


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
    ("sessions out of order", _corrupt_sessions_order),
    ("duplicate key", _duplicate_key),
]


@pytest.mark.parametrize("name, corrupt", _GARBAGE, ids=[g[0] for g in _GARBAGE])
def test_restore_rejects_garbage_and_keeps_state(
    name: str, corrupt: Callable[[bytes], bytes]
) -> None:
    """restore raises ImageError on a malformed image and leaves the store as it was."""
    src = _populated(50)
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
_values = st.binary(max_size=8)
_ops: st.SearchStrategy[Op] = st.one_of(
    st.builds(Put, _keys, _values),
    st.builds(Delete, _keys),
    st.builds(Cas, _keys, st.none() | _values, _values),
)
# Few clients and small sequence numbers, so that retries and stale commands happen.
_entries = st.lists(
    st.one_of(
        st.builds(
            lambda c, s, op: encode_command(Command(c, s, op)),
            st.sampled_from(["c1", "c2", "c3", "c4", "c5"]),
            st.integers(0, 6),
            _ops,
        ),
        st.sampled_from([b"", b"\x93garbage"]),
    ),
    max_size=60,
)


@given(_entries, st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_restored_replica_converges(entries: list[bytes], data: st.DataObject) -> None:
    """A store restored from a mid-way image of another ends with the same digest."""
    cut = data.draw(st.integers(0, len(entries)), label="cut")
    a = KVStore(max_sessions=3)
    for i, e in enumerate(entries[:cut], 1):
        a.apply(i, e)
    b = KVStore(max_sessions=3)
    b.restore(encode_image(a.freeze()))
    for i, e in enumerate(entries[cut:], cut + 1):
        ra, rb = a.apply(i, e), b.apply(i, e)
        assert ra == rb
    assert a.digest() == b.digest()


class KVModel(RuleBasedStateMachine):
    """KVStore against a plain dict plus a table of each client's last seq and result."""

    @initialize()
    def setup(self) -> None:
        self.kv = KVStore()
        self.data: dict[str, bytes] = {}
        self.sessions: dict[str, tuple[int, Result]] = {}
        self.index = 0

    def _model(self, client: str, seq: int, op: Op) -> Result:
        last = self.sessions.get(client)
        if last is not None and seq == last[0]:
            return last[1]
        if last is not None and seq < last[0]:
            return Result(ok=False, error=STALE_SEQUENCE)
        prev = self.data.get(op.key)
        if isinstance(op, Put):
            self.data[op.key] = op.value
            res = Result(ok=True, value=prev)
        elif isinstance(op, Delete):
            self.data.pop(op.key, None)
            res = Result(ok=True, value=prev)
        elif prev != op.expected:
            res = Result(ok=False, value=prev, error=CAS_FAILED)
        else:
            self.data[op.key] = op.value
            res = Result(ok=True, value=prev)
        self.sessions[client] = (seq, res)
        return res

    @rule(client=st.sampled_from(["x", "y"]), bump=st.integers(-2, 2), op=_ops)
    def command(self, client: str, bump: int, op: Op) -> None:
        seq = max(0, self.sessions.get(client, (0, None))[0] + bump)
        self.index += 1
        cmd = Command(client, seq, op)
        got = self.kv.apply(self.index, encode_command(cmd))
        assert got == (cmd, self._model(client, seq, op))

    @rule()
    def snapshot_and_restore(self) -> None:
        fresh = KVStore()
        fresh.restore(encode_image(self.kv.freeze()))
        assert fresh.digest() == self.kv.digest()
        self.kv = fresh

    @invariant()
    def same_contents(self) -> None:
        assert len(self.kv) == len(self.data)
        assert _contents(self.kv) == self.data


KVModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_kv_matches_dict_model = KVModel.TestCase
