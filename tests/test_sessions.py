"""Client sessions (thesis §6.3): registration through the log, cached answers
for every outstanding seq, expiry by the log's clock, eviction in log order,
and a write of an unknown or expired session never applied."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.state.kv import (
    _KEEP_OP_BYTES,
    SEQUENCE_REUSED,
    SESSION_EXPIRED,
    STALE_SEQUENCE,
    TOO_MANY_OUTSTANDING,
    UNSAFE_APPLY_UNKNOWN_SESSIONS,
    Append,
    Applied,
    Body,
    CloseSession,
    Command,
    KVStore,
    Op,
    Put,
    RegisterSession,
    Write,
    decode_image,
    encode_command,
    encode_image,
    encode_op,
    parse_unsafe_bugs,
)
from node.state.sessions import Answer, KeptAnswer, Result, fingerprint


class _Log:
    """Feeds a store entries at consecutive indexes, stamped with `now_ms`."""

    def __init__(self, kv: KVStore) -> None:
        self.kv = kv
        self.now_ms = 0

    def body(self, body: Body) -> Applied:
        got = self.kv.apply(self.kv.applied_index + 1, encode_command(Command(self.now_ms, body)))
        assert got is not None
        return got

    def register(self) -> int:
        return self.body(RegisterSession()).session

    def write(self, sid: int, seq: int, op: Op, first: int | None = None) -> Applied:
        return self.body(Write(sid, seq, seq if first is None else first, encode_op(op)))


def test_registration_answers_the_index_of_its_entry() -> None:
    """A session's id is the log index of its registration entry."""
    log = _Log(KVStore())
    log.kv.apply(1, b"")
    got = log.body(RegisterSession())
    assert got == Applied(2, 0, Result(ok=True), 2)
    assert log.kv.sessions.get(2) is not None


def test_retry_gets_the_first_answer_and_index_and_is_not_applied_again() -> None:
    """A retried put answers as the first time, with its index, and overwrites nothing."""
    log = _Log(KVStore())
    a, b = log.register(), log.register()
    first = log.write(a, 1, Put("k", b"mine"))
    log.write(b, 1, Put("k", b"theirs"))
    again = log.write(a, 1, Put("k", b"mine"))
    assert first.executed and not again.executed
    assert (again.result, again.index) == (first.result, first.index)
    assert again.index < log.kv.applied_index
    assert log.kv.get("k") == b"theirs"


def test_a_pipelining_client_gets_any_outstanding_answer_back() -> None:
    """With seqs 1-5 outstanding, a resent seq 2 gets its answer, not stale_sequence."""
    log = _Log(KVStore())
    sid = log.register()
    answers = [log.write(sid, q, Append("k", b"%d," % q), first=1) for q in range(1, 6)]
    again = log.write(sid, 2, Append("k", b"2,"), first=1)
    assert (again.result, again.index, again.executed) == (answers[1].result, answers[1].index,
                                                           False)
    assert log.kv.get("k") == b"1,2,3,4,5,"


def test_released_answers_are_dropped_and_their_retries_refused() -> None:
    """Once first_outstanding passes a seq, its retry is stale_sequence and not applied."""
    log = _Log(KVStore())
    sid = log.register()
    for q in range(1, 4):
        log.write(sid, q, Append("k", b"%d," % q), first=1)
    log.write(sid, 4, Append("k", b"4,"), first=3)
    sess = log.kv.sessions.get(sid)
    assert sess is not None and sorted(sess.answers) == [3, 4]
    assert log.write(sid, 2, Append("k", b"2,"), first=3).result.error == STALE_SEQUENCE
    assert log.kv.get("k") == b"1,2,3,4,"


def test_same_seq_with_another_op_is_refused_and_changes_nothing() -> None:
    """A different write under a used seq gets sequence_reused; the first one stands."""
    log = _Log(KVStore())
    sid = log.register()
    log.write(sid, 1, Put("k", b"a"))
    got = log.write(sid, 1, Put("k", b"b"))
    assert got.result == Result(ok=False, error=SEQUENCE_REUSED)
    assert log.kv.get("k") == b"a"


def _value_for_op_of(size: int) -> bytes:
    """A value whose put of key "k" encodes to an operation of `size` bytes."""
    for n in range(size):
        if len(encode_op(Put("k", b"a" * n))) == size:
            return b"a" * n
    raise AssertionError(f"no put encodes to {size} bytes")


@pytest.mark.parametrize("op_bytes", [_KEEP_OP_BYTES, _KEEP_OP_BYTES + 1, 1000],
                         ids=["at-bound", "past-bound", "large"])
@pytest.mark.parametrize("restored", [False, True], ids=["applied", "restored"])
def test_a_retry_is_told_from_another_write_however_its_answer_is_kept(
        op_bytes: int, restored: bool) -> None:
    """An answer keeps a small write's bytes and a large one's fingerprint,
    and an image holds fingerprints only, as four-field answers: every way,
    the retry gets its answer back and another write under its seq is
    refused."""
    value = _value_for_op_of(op_bytes)
    log = _Log(KVStore())
    sid = log.register()
    first = log.write(sid, 1, Put("k", value))
    sess = log.kv.sessions.get(sid)
    assert sess is not None
    assert isinstance(sess.answers[1], KeptAnswer) == (op_bytes <= _KEEP_OP_BYTES)
    image = encode_image(log.kv.freeze())
    (kept,) = decode_image(image).sessions[0].answers
    assert type(kept) is Answer and kept.fingerprint == fingerprint(encode_op(Put("k", value)))
    # The image's answer is the array it always was: seq, index, fingerprint, result.
    assert msgspec.msgpack.encode(kept) == msgspec.msgpack.encode(
        [kept.seq, kept.index, kept.fingerprint, kept.result])
    assert msgspec.msgpack.encode(kept) in image
    if restored:
        log.kv = KVStore()
        log.kv.restore(image)
        assert encode_image(log.kv.freeze()) == image
    again = log.write(sid, 1, Put("k", value))
    assert not again.executed and (again.result, again.index) == (first.result, first.index)
    other = log.write(sid, 1, Put("k", value + b"b"))
    assert not other.executed and other.result == Result(ok=False, error=SEQUENCE_REUSED)
    assert log.kv.get("k") == value


def test_moving_on_by_one_releases_the_last_answer() -> None:
    """A client that moves on by one (first = the new seq) has released its
    last answer: resending that write is refused, never applied again."""
    log = _Log(KVStore())
    sid = log.register()
    log.write(sid, 1, Append("k", b"1,"))
    log.write(sid, 2, Append("k", b"2,"), first=2)
    sess = log.kv.sessions.get(sid)
    assert sess is not None and sess.first_outstanding == 2 and sorted(sess.answers) == [2]
    got = log.write(sid, 1, Append("k", b"1,"), first=1)
    assert not got.executed and got.result == Result(ok=False, error=STALE_SEQUENCE)
    assert log.kv.get("k") == b"1,2,"


def test_moving_on_by_several_keeps_the_answer_it_still_needs() -> None:
    """A client that moves on past several seqs at once keeps the answer of
    the write it moved on to: its retry gets that answer, not a second apply."""
    log = _Log(KVStore())
    sid = log.register()
    log.write(sid, 1, Append("k", b"1,"))
    first = log.write(sid, 4, Append("k", b"4,"), first=4)
    again = log.write(sid, 4, Append("k", b"4,"), first=4)
    assert first.executed and not again.executed and again.result == first.result
    assert log.kv.get("k") == b"1,4,"


def test_write_of_an_unknown_session_is_never_applied() -> None:
    """A session that was never registered gets session_expired; no data changes."""
    log = _Log(KVStore())
    log.register()
    got = log.write(99, 1, Put("k", b"v"))
    assert got.result == Result(ok=False, error=SESSION_EXPIRED)
    assert log.kv.get("k") is None


def test_sessions_expire_by_the_log_clock_only() -> None:
    """A session idle past the timeout by the leader's stamps expires; an active one lives."""
    log = _Log(KVStore(session_timeout_ms=1_000))
    idle, busy = log.register(), log.register()
    for t in range(0, 3_000, 500):
        log.now_ms = t
        log.write(busy, t + 1, Put("b", b"%d" % t))
    assert log.kv.sessions.get(idle) is None
    assert log.kv.sessions.get(busy) is not None
    got = log.write(idle, 1, Put("k", b"late"))
    assert got.result.error == SESSION_EXPIRED
    assert log.kv.get("k") is None


def test_the_log_clock_never_runs_back() -> None:
    """An entry stamped earlier than the clock (a lagging new leader) moves nothing back."""
    log = _Log(KVStore(session_timeout_ms=1_000))
    log.now_ms = 5_000
    sid = log.register()
    log.now_ms = 10
    log.write(sid, 1, Put("k", b"v"))
    assert log.kv.clock_ms == 5_000
    assert log.kv.sessions.get(sid) is not None


def test_eviction_is_in_log_order_and_an_evicted_retry_is_not_reapplied() -> None:
    """Past max_sessions the least recently active session goes, and its retry is refused.

    The bug this guards against: an LRU table evicted a live client's session
    and applied its retry a second time."""
    log = _Log(KVStore(max_sessions=2))
    a, b = log.register(), log.register()
    log.write(a, 1, Append("k", b"a1,"))
    log.write(b, 1, Append("k", b"b1,"))
    log.write(a, 2, Append("k", b"a2,"))  # a is now more recent than b
    c = log.register()  # evicts b
    assert [s.id for s in log.kv.freeze().sessions] == [a, c]
    assert log.write(b, 1, Append("k", b"b1,")).result.error == SESSION_EXPIRED
    assert log.kv.get("k") == b"a1,b1,a2,"


def test_the_unsafe_switch_puts_back_the_eviction_bug() -> None:
    """With the test-only switch apply_unknown_sessions, the evicted session's
    retry above is applied again (the element appears twice), every replica
    alike, and the image stays valid; `chaos run` must catch exactly this."""
    log = _Log(KVStore(max_sessions=2, unsafe_bugs=frozenset({UNSAFE_APPLY_UNKNOWN_SESSIONS})))
    a, b = log.register(), log.register()
    log.write(a, 1, Append("k", b"a1,"))
    log.write(b, 1, Append("k", b"b1,"))
    log.write(a, 2, Append("k", b"a2,"))
    log.register()  # evicts b
    assert log.write(b, 1, Append("k", b"b1,")).result.ok
    assert log.kv.get("k") == b"a1,b1,a2,b1,"
    KVStore().restore(encode_image(log.kv.freeze()))  # no ImageError
    assert log.write(99, 1, Put("k", b"v")).result.error == SESSION_EXPIRED  # never registered


def test_unsafe_bug_names_are_checked() -> None:
    """Only known bug names are accepted; a typo is refused, naming the known ones."""
    assert parse_unsafe_bugs("") == frozenset()
    assert parse_unsafe_bugs(" apply_unknown_sessions ,") == {UNSAFE_APPLY_UNKNOWN_SESSIONS}
    with pytest.raises(ValueError, match=r"unknown bug apply_unknown_session;.*apply_unknown_"):
        parse_unsafe_bugs("apply_unknown_session")


def test_closed_session_refuses_later_writes() -> None:
    """After close_session the session's writes and retries are never applied."""
    log = _Log(KVStore())
    sid = log.register()
    log.write(sid, 1, Put("k", b"v"))
    assert log.body(CloseSession(sid)) == Applied(sid, 0, Result(ok=True), sid + 2)
    assert log.write(sid, 1, Put("k", b"v")).result.error == SESSION_EXPIRED
    assert log.write(sid, 2, Put("k", b"w")).result.error == SESSION_EXPIRED
    assert log.kv.get("k") == b"v"


def test_too_many_outstanding_writes_are_refused() -> None:
    """A seq at or past first_outstanding + max_outstanding is refused, not applied."""
    log = _Log(KVStore(max_outstanding=3))
    sid = log.register()
    assert log.write(sid, 3, Put("k", b"3"), first=1).result.ok
    got = log.write(sid, 4, Put("k", b"4"), first=1)
    assert got.result == Result(ok=False, error=TOO_MANY_OUTSTANDING)
    assert log.kv.get("k") == b"3"


def test_first_outstanding_above_seq_keeps_the_answer() -> None:
    """A write whose first_outstanding exceeds its seq still keeps its own answer."""
    log = _Log(KVStore())
    sid = log.register()
    first = log.write(sid, 2, Put("k", b"v"), first=9)
    assert log.write(sid, 2, Put("k", b"v"), first=9).index == first.index
    KVStore().restore(encode_image(log.kv.freeze()))  # the image is valid: no ImageError


# --- the property: every write is applied at most once ---------------------------

# Each write appends a token naming its (session, seq); a token twice in a
# value means a write applied twice. Tokens are unique per (session, seq), so
# only a retry (same session, seq, op) can repeat one. Writes name the k-th
# registered session (or one never registered), so that most hit a live one.


@st.composite
def _entry(draw: st.DrawFn) -> tuple[str, int, int, int, int, str]:
    """(what, time step, which session, seq, first_outstanding back-off, key)."""
    what = draw(st.sampled_from(["write"] * 6 + ["register", "close", "snapshot"]))
    return (what, draw(st.integers(0, 30)), draw(st.integers(0, 4)), draw(st.integers(1, 6)),
            draw(st.integers(0, 4)), draw(st.sampled_from(["x", "y"])))


def _fresh() -> KVStore:
    return KVStore(session_timeout_ms=60, max_sessions=3, max_outstanding=4)


@given(st.lists(_entry(), max_size=150))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_write_is_ever_applied_twice(entries: list[tuple[str, int, int, int, int, str]]) -> None:
    """Whatever retries, expiry, eviction, closing and restores happen, no
    (session, seq) changes the data twice."""
    kv = _fresh()
    clock = index = 0
    registered: list[int] = []
    for what, step, who, seq, back, key in entries:
        if what == "snapshot":
            fresh = _fresh()
            fresh.restore(encode_image(kv.freeze()))
            kv = fresh
            continue
        clock += step
        index += 1
        sid = registered[who] if who < len(registered) else 10_000
        body: Body
        if what == "register":
            registered.append(index)
            body = RegisterSession()
        elif what == "close":
            body = CloseSession(sid)
        else:
            token = b"%d.%d," % (sid, seq)
            body = Write(sid, seq, max(1, seq - back), encode_op(Append(key, token)))
        kv.apply(index, msgspec.msgpack.encode(Command(clock, body)))
        tokens = ((kv.get("x") or b"") + (kv.get("y") or b"")).split(b",")[:-1]
        assert len(tokens) == len(set(tokens)), f"a write applied twice: {tokens}"
