"""Revisions of the key-value state machine (node/state/mvcc.py, txn.py,
index.py, image.py): what each change does to the revision and to a key's
create/mod revision and version, range reads now and at a past revision,
compaction, transactions, and the image that carries all of it."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.state.image import decode_image, encode_image
from node.state.index import SortedKeys, prefix_end
from node.state.kv import Command, CompactHistory, KVStore, RegisterSession, Write, encode_command
from node.state.kv import encode_op as kv_encode_op
from node.state.mvcc import COMPACTED, FUTURE_REVISION, Mvcc, RevisionError, Span
from node.state.ops import (
    Cas,
    Compare,
    Delete,
    DeleteRange,
    Op,
    Put,
    Range,
    Txn,
)
from node.state.sessions import KV, OpResult, Result
from node.state.txn import CAS_FAILED, execute


def _mvcc(revisions: int = 1000, max_bytes: int = 1 << 30) -> Mvcc:
    mv = Mvcc(history_revisions=revisions, history_max_bytes=max_bytes)
    mv.start_revisions()
    return mv


def _kvs(mv: Mvcc, span: Span, rev: int = 0, **kw: int | bool) -> list[tuple[str, bytes, int,
                                                                            int, int]]:
    got = mv.read(span, rev, **kw)  # type: ignore[arg-type]  # the keywords are read()'s
    return [(k, r.value, r.create, r.mod, r.version) for k, r in got.kvs]


# --- revisions of single changes -------------------------------------------------


def test_every_change_moves_the_revision_and_the_keys_revisions() -> None:
    """A put creates at the next revision with version 1; each change after
    moves mod and version; a delete ends the key's life, and a put after it
    starts a new one (etcd v3 semantics)."""
    mv = _mvcc()
    assert mv.revision == 1
    execute(mv, Put("a", b"1"))
    execute(mv, Put("a", b"2"))
    assert _kvs(mv, Span("a")) == [("a", b"2", 2, 3, 2)]
    execute(mv, Delete("a"))
    assert mv.revision == 4 and mv.get("a") is None
    execute(mv, Put("a", b"3"))
    assert _kvs(mv, Span("a")) == [("a", b"3", 5, 5, 1)]


def test_a_command_that_changes_nothing_keeps_the_revision() -> None:
    """Deleting an absent key, a failed cas and a read-only transaction take no revision."""
    mv = _mvcc()
    execute(mv, Delete("nothing"))
    assert execute(mv, Cas("k", b"x", b"y")).error == CAS_FAILED
    execute(mv, Txn([], [Range("", prefix=True)]))
    assert mv.revision == 1 and not list(mv.log.since(0))


def test_a_transaction_makes_all_its_changes_at_one_revision() -> None:
    """Every change of one transaction carries the same revision, one past the last."""
    mv = _mvcc()
    execute(mv, Put("gone", b"x"))
    got = execute(mv, Txn([], [Put("a", b"1"), Put("b", b"2"), Delete("gone")]))
    assert got.revision == 3 == mv.revision
    assert sorted((c.key, c.rev) for c in mv.log.since(3)) == [("a", 3), ("b", 3), ("gone", 3)]


def test_range_delete_removes_the_prefix_at_one_revision() -> None:
    """A prefix delete removes every key of the prefix and no other, and answers how many."""
    mv = _mvcc()
    for k in ("a", "p/1", "p/2", "p0", "q"):
        execute(mv, Put(k, b"v"))
    got = execute(mv, DeleteRange("p/", prefix=True))
    assert got == Result(ok=True, deleted=2, revision=7)
    assert [k for k, *_ in _kvs(mv, Span("", None, one=False))] == ["a", "p0", "q"]


# --- range reads ------------------------------------------------------------------


def test_range_read_honours_limit_keys_only_and_count_only() -> None:
    """A limit cuts the keys in order and says there are more; count counts
    the whole range; keys-only leaves the values out of the byte budget."""
    mv = _mvcc()
    for i in range(5):
        execute(mv, Put(f"k{i}", b"v" * 10))
    got = mv.read(Span.prefix("k"), limit=2)
    assert [k for k, _ in got.kvs] == ["k0", "k1"] and got.more and got.count == 5
    assert mv.read(Span.prefix("k"), count_only=True).kvs == []
    assert mv.read(Span.prefix("k"), count_only=True).count == 5
    assert len(mv.read(Span.prefix("k"), max_bytes=20).kvs) == 2
    assert len(mv.read(Span.prefix("k"), max_bytes=20, keys_only=True).kvs) == 5
    assert mv.read(Span("k1", "k3", one=False)).count == 2


def test_reading_at_a_compacted_or_future_revision_is_refused() -> None:
    """A read before the compaction point names the oldest revision kept; one
    past the store's revision is refused as ahead."""
    mv = _mvcc()
    for i in range(6):
        execute(mv, Put("k", str(i).encode()))
    assert mv.compact(4) == 4
    with pytest.raises(RevisionError) as e:
        mv.read(Span("k"), 3)
    assert e.value.code == COMPACTED and e.value.compacted == 4 and "4" in str(e.value)
    with pytest.raises(RevisionError) as e:
        mv.read(Span("k"), 8)
    assert e.value.code == FUTURE_REVISION
    assert _kvs(mv, Span("k"), 4) == [("k", b"2", 2, 4, 3)]


def test_history_is_bounded_by_revisions_and_by_bytes() -> None:
    """Past `history_revisions` revisions, or `history_max_bytes` of changes,
    the oldest are compacted away by the store itself."""
    mv = _mvcc(revisions=10)
    for i in range(50):
        execute(mv, Put("k", str(i).encode()))
    assert mv.revision == 51 and mv.compacted == 42 and mv.log.len == 10
    small = _mvcc(max_bytes=10_000)
    for _ in range(200):
        execute(small, Put("k", b"x" * 1000))
    assert small.log.bytes <= 10_000 and small.compacted > 150


def test_retention_compacts_in_steps_keeping_at_least_the_bound() -> None:
    """Retention keeps at least `history_revisions` revisions and at most a
    sixteenth more, compacting in steps rather than at every command; past
    `history_max_bytes` it trims to fifteen sixteenths of it."""
    mv = _mvcc(revisions=160)
    points = set()
    for i in range(1000):
        execute(mv, Put("k", str(i).encode()))
        kept = mv.revision - mv.compacted + 1
        assert kept >= 160 or mv.compacted == 1, (mv.revision, mv.compacted)
        assert kept <= 160 + 10, (mv.revision, mv.compacted)
        points.add(mv.compacted)
    assert 1 < len(points) <= 1000 // 10 + 1, len(points)
    small = _mvcc(max_bytes=16_000)
    for _ in range(200):
        execute(small, Put("k", b"x" * 1000))
        assert small.log.bytes <= 16_000
    assert small.log.bytes <= 16_000 - 16_000 // 16 + 1160


def test_history_memory_stays_within_what_it_counts() -> None:
    """What the history counts against `history_max_bytes` covers what it
    holds in memory (CHANGE_OVERHEAD_BYTES per change plus the key and the
    replaced value), measured with tracemalloc."""
    mv = _mvcc(revisions=10**9)
    keys = [f"key{i:05d}" for i in range(2000)]
    for k in keys:
        execute(mv, Put(k, b"first"))
    mv.compact(mv.revision)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        execute(mv, Put(keys[i % len(keys)], b"v%08d" % i))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # The live values (2,000 keys) are the data's, not the history's.
    recs = [mv.get(k) for k in keys]
    live = sum(len(r.value) + 50 for r in recs if r is not None)
    assert 0.5 * mv.log.bytes < used - live <= mv.log.bytes, (used, live, mv.log.bytes)


_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcde"), st.binary(max_size=3)),
    st.tuples(st.just("del"), st.sampled_from("abcde"), st.just(b"")),
    st.tuples(st.just("delp"), st.sampled_from(["", "a", "b", "c"]), st.just(b"")),
    st.tuples(st.just("compact"), st.integers(0, 40).map(str), st.just(b"")),
), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_reads_at_every_retained_revision_match_a_model(ops: list[tuple[str, str, bytes]]) -> None:
    """Whatever the changes and compactions, a read of any range at any
    retained revision answers what the store held then (kept per revision
    by a plain model), and so does a store restored from its image."""
    mv = _mvcc(revisions=12)
    model: dict[int, dict[str, tuple[bytes, int, int, int]]] = {1: {}}
    cur: dict[str, tuple[bytes, int, int, int]] = {}
    for kind, key, value in ops:
        if kind == "compact":
            mv.compact(int(key))
            continue
        rev = mv.revision + 1
        if kind == "put":
            old = cur.get(key)
            cur[key] = (value, old[1] if old else rev, rev, old[3] + 1 if old else 1)
            execute(mv, Put(key, value))
        else:
            gone = [k for k in cur if (k == key if kind == "del" else k.startswith(key))]
            for k in gone:
                del cur[k]
            execute(mv, Delete(key) if kind == "del" else DeleteRange(key, prefix=True))
        if mv.revision == rev:
            model[rev] = dict(cur)
    kv = KVStore(history_revisions=12)
    kv.mvcc = mv
    copy = KVStore(history_revisions=12)
    copy.restore(encode_image(kv.freeze()))
    for store in (mv, copy.mvcc):
        assert store.revision == max(model)
        for rev in range(store.compacted, store.revision + 1):
            at = max(r for r in model if r <= rev)
            for prefix in ("", "a", "c", "z"):
                want = sorted((k, *v) for k, v in model[at].items() if k.startswith(prefix))
                assert _kvs(store, Span.prefix(prefix), rev) == want, (rev, prefix)
                assert store.read(Span.prefix(prefix), rev).count == len(want)


# --- transactions -----------------------------------------------------------------


def test_transaction_compares_every_target_with_every_operator() -> None:
    """value, version, create and mod compare with =, !=, < and >; an absent
    key has value nil (below every value) and revisions 0."""
    mv = _mvcc()
    execute(mv, Put("k", b"b"))
    execute(mv, Put("k", b"b"))  # create 2, mod 3, version 2

    def holds(c: Compare) -> bool:
        return bool(execute(mv, Txn([c])).succeeded)

    assert holds(Compare("k", "value", "=", b"b")) and holds(Compare("k", "value", ">", b"a"))
    assert holds(Compare("k", "value", "<", b"c")) and holds(Compare("k", "value", "!=", None))
    assert holds(Compare("k", "version", "=", 2)) and holds(Compare("k", "create", "<", 3))
    assert holds(Compare("k", "mod", ">", 2)) and not holds(Compare("k", "mod", "!=", 3))
    assert not holds(Compare("k", "version", "<", 2)) and not holds(Compare("k", "mod", ">", 3))
    assert not holds(Compare("k", "value", "<", b"b"))
    assert holds(Compare("none", "value", "=", None)) and holds(Compare("none", "value", "<", b""))
    assert holds(Compare("none", "version", "=", 0)) and holds(Compare("none", "create", "=", 0))


def test_transaction_runs_one_branch_and_its_reads_see_its_writes() -> None:
    """Compares that hold run `success`, in order; otherwise `failure`."""
    mv = _mvcc()
    txn = Txn([Compare("k", "version", "=", 0)],
              [Put("k", b"new"), Range("k")], [Range("k")])
    first = execute(mv, txn)
    assert first.succeeded and first.responses == [
        OpResult("put"), OpResult("range", kvs=[KV("k", 2, 2, 1, b"new")], count=1, more=False)]
    second = execute(mv, txn)
    assert second.succeeded is False and mv.revision == 2
    assert second.responses == [
        OpResult("range", kvs=[KV("k", 2, 2, 1, b"new")], count=1, more=False)]


def test_a_branch_may_not_write_a_key_twice() -> None:
    """As in etcd: two puts of one key, or a put inside a range the branch deletes, are refused."""
    with pytest.raises(ValueError, match="twice"):
        Txn([], [Put("k", b"1"), Put("k", b"2")])
    with pytest.raises(ValueError, match="both puts and deletes"):
        Txn([], [DeleteRange("k", prefix=True), Put("k/1", b"2")])
    with pytest.raises(ValueError, match="needs a number"):
        Compare("k", "version", "=", b"1")


def test_cas_answers_as_before_as_a_transaction() -> None:
    """cas is a transaction underneath; its answers are unchanged."""
    mv = _mvcc()
    assert execute(mv, Cas("k", None, b"a")) == Result(ok=True)
    assert execute(mv, Cas("k", b"x", b"b")) == Result(ok=False, value=b"a", error=CAS_FAILED)
    assert execute(mv, Cas("k", b"a", b"b")) == Result(ok=True)
    assert _kvs(mv, Span("k")) == [("k", b"b", 2, 3, 2)]


# --- the log, compaction by command, images ----------------------------------------


def _feed(kv: KVStore, ops: list[Op]) -> None:
    kv.apply(kv.applied_index + 1, encode_command(Command(0, RegisterSession())))
    session = kv.applied_index
    for seq, op in enumerate(ops, 1):
        kv.apply(kv.applied_index + 1, encode_command(
            Command(0, Write(session, seq, seq, kv_encode_op(op)))))


def test_revisions_begin_with_the_first_command_of_this_version() -> None:
    """A new store's first command starts revisions at 1, so the first put is revision 2."""
    kv = KVStore()
    assert kv.revision == 0
    _feed(kv, [Put("a", b"1")])
    assert kv.revision == 2 and kv.compacted == 1


def test_compact_command_moves_the_compaction_point_on_every_replica() -> None:
    """A CompactHistory entry forgets history before its revision, never past the current one."""
    kv = KVStore()
    _feed(kv, [Put("k", str(i).encode()) for i in range(5)])
    done = kv.apply(kv.applied_index + 1, encode_command(Command(0, CompactHistory(4))))
    assert done is not None and done.result == Result(ok=True, revision=6)
    assert kv.compacted == 4
    kv.apply(kv.applied_index + 1, encode_command(Command(0, CompactHistory(99))))
    assert kv.compacted == 6


def test_image_keeps_revisions_and_history_and_refuses_a_tampered_history() -> None:
    """An image restores the same digest and past reads; a history that does
    not lead to the data it holds is refused."""
    kv = KVStore()
    _feed(kv, [Put("a", b"1"), Put("b", b"2"), Put("a", b"3"), Delete("b")])
    data = encode_image(kv.freeze())
    copy = KVStore()
    copy.restore(data)
    assert copy.digest() == kv.digest() and copy.revision == 5
    assert [k for k, _ in copy.mvcc.read(Span.prefix(""), 3).kvs] == ["a", "b"]
    img = decode_image(data)
    bad = img.__class__(img.applied_index, img.shards, img.clock_ms, img.sessions, img.keys,
                        img.revision, img.compacted,
                        img.changes.__class__(img.changes.chunks, img.changes.head,
                                              img.changes.tail_len - 1))
    with pytest.raises(Exception, match="does not leave it as the image holds it"):
        decode_image(encode_image(bad))


# --- the ordered index --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=3000),
       st.integers(0, 3000), st.integers(0, 3000))
def test_sorted_keys_match_a_sorted_set(ops: list[tuple[bool, int]], lo: int, hi: int) -> None:
    """Adds and removes (with chunk splits and merges, and a freeze between)
    leave the index equal to a sorted set in order, ranges and counts, and
    the frozen chunks unchanged."""
    idx = SortedKeys()
    model: set[str] = set()
    frozen: tuple[list[str], ...] = ()
    frozen_model: list[str] = []
    for n, (add, x) in enumerate(ops):
        k = f"{x:05d}"
        if add and k not in model:
            idx.add(k)
            model.add(k)
        elif not add and k in model:
            idx.remove(k)
            model.discard(k)
        if n == len(ops) // 2:
            frozen, frozen_model = idx.freeze(), sorted(model)
    assert list(idx) == sorted(model) and len(idx) == len(model)
    assert [k for c in frozen for k in c] == frozen_model
    start, end = f"{min(lo, hi):05d}", f"{max(lo, hi):05d}"
    want = [k for k in sorted(model) if start <= k < end]
    assert list(idx.irange(start, end)) == want and idx.count(start, end) == len(want)


def test_prefix_end_is_the_first_string_past_the_prefix() -> None:
    """prefix_end bounds exactly the strings that start with the prefix."""
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("") is None and prefix_end("\U0010ffff") is None


def test_changes_since_a_compacted_revision_start_at_the_oldest_kept() -> None:
    """Asked for changes from before the compaction point, the history gives
    those it keeps, never one it dropped (what a watch from revision 0 reads)."""
    mv = _mvcc(revisions=10**6)
    for i in range(3000):
        execute(mv, Put(f"k{i % 7}", b"v"))
    for point in (5, 1500, 2050, 3001):
        mv.compact(point)
        got = [c.rev for c in mv.log.since(0)]
        assert got == list(range(point, 3002)) == [c.rev for c in mv.log.since(point)]
        assert got[-3:] == [c.rev for c in mv.log.since(2999)][-3:]


def test_data_of_an_earlier_version_gains_revisions_with_the_first_new_command() -> None:
    """A format 2 image (no revisions) and entries without an era load as
    they are; the first command of this version starts revisions, and the
    old keys read as created at revision 1."""
    import struct

    import msgspec

    pairs = msgspec.msgpack.encode([["old", b"v"]])
    header = msgspec.msgpack.encode([2, 7, 0, [], [len(pairs)], [1]])
    kv = KVStore()
    kv.restore(struct.pack(">4sI", b"RKVI", len(header)) + header + pairs)
    assert kv.get("old") == b"v" and kv.revision == 0
    old_command = msgspec.msgpack.encode([0, ["r"]])  # [time_ms, body], as before eras
    kv.apply(8, old_command)
    assert kv.revision == 0 and len(kv.sessions) == 1
    kv.apply(9, encode_command(Command(0, Write(8, 1, 1, kv_encode_op(Put("new", b"n"))))))
    assert kv.revision == 2
    assert _kvs(kv.mvcc, Span.prefix("")) == [("new", b"n", 2, 2, 1), ("old", b"v", 1, 1, 1)]
    kv.apply(10, encode_command(Command(0, Write(8, 2, 2, kv_encode_op(Put("old", b"w"))))))
    assert _kvs(kv.mvcc, Span("old")) == [("old", b"w", 1, 3, 2)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "start"]),
                          st.sampled_from(["a", "b", "c", "d"]), st.binary(max_size=6)),
                max_size=60),
       st.sampled_from([3, 17]), st.sampled_from([400, 1 << 20]))
def test_put_alone_is_begin_put_retain(ops: list[tuple[str, str, bytes]], revisions: int,
                                       max_bytes: int) -> None:
    """The common write's one call (`put_alone`, inlined for speed) leaves
    the store as `begin`, `put` and `retain` would: data, revisions and
    versions, the key index, the history and its bounds, before and after
    revisions begin (small bounds, so retention runs by either)."""
    fast = Mvcc(history_revisions=revisions, history_max_bytes=max_bytes)
    slow = Mvcc(history_revisions=revisions, history_max_bytes=max_bytes)
    for kind, key, value in ops:
        if kind == "start":
            fast.start_revisions()
            slow.start_revisions()
            continue
        if kind == "delete":
            for mv in (fast, slow):
                mv.begin()
                mv.delete(key)
                mv.retain()
            continue
        got = fast.put_alone(key, value)
        slow.begin()
        want = slow.put(key, value)
        slow.retain()
        assert got == want
        assert (fast.revision, fast.compacted, len(fast)) == \
            (slow.revision, slow.compacted, len(slow))
    assert dict(fast.data.items()) == dict(slow.data.items())
    assert list(fast.index) == list(slow.index)
    assert list(fast.log.since(0)) == list(slow.log.since(0))
    assert fast.log.bytes == slow.log.bytes
