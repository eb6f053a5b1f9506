"""Leases in the state machine (node/state/leases.py, node/state/txn.py),
their snapshot images, and the leader's lessor (node/lessor.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from node.api import ClientResponse
from node.client import ClientError, LeaseNotFound
from node.client_lease import _raise_failed
from node.lessor import MAX_EXPIRE_BATCH, Lessor
from node.state.kv import (
    Applied,
    Body,
    Command,
    Delete,
    DeleteRange,
    ExpireLeases,
    ImageError,
    KVStore,
    Op,
    Put,
    RegisterSession,
    Txn,
    Write,
    encode_command,
    encode_image,
    encode_op,
)
from node.state.leases import (
    LEASE_FULL,
    LEASE_NOT_FOUND,
    MIN_LEASE_TTL_MS,
    TOO_MANY_LEASES,
    LeaseImage,
    LeaseTable,
    check_lease_images,
)
from node.state.ops import LeaseGrant, LeaseRevoke
from node.state.sessions import Result


class _Store:
    """A store fed one session's writes at consecutive indexes."""

    def __init__(self, kv: KVStore | None = None) -> None:
        self.kv = kv or KVStore()
        self.seq = 0
        self.session = self._body(RegisterSession()).session

    def _body(self, body: Body) -> Applied:
        got = self.kv.apply(self.kv.applied_index + 1, encode_command(Command(0, body)))
        assert got is not None
        return got

    def __call__(self, op: Op) -> Result:
        self.seq += 1
        return self._body(Write(self.session, self.seq, self.seq, encode_op(op))).result

    def grant(self, ttl_ms: int = 5_000) -> int:
        got = self(LeaseGrant(ttl_ms))
        assert got.ok and got.lease == self.kv.applied_index and got.ttl_ms == ttl_ms
        return got.lease

    def expire(self, *ids: int) -> Result:
        return self._body(ExpireLeases(list(ids))).result


# --- the table --------------------------------------------------------------------


def test_table_moves_a_key_between_leases_and_detaches() -> None:
    """A key is attached to one lease at a time: attaching it elsewhere moves
    it, lease 0 detaches it, and removing a lease answers its keys sorted."""
    t = LeaseTable()
    t.grant(3, 5_000)
    t.grant(7, 5_000)
    t.attach("b", 3)
    t.attach("a", 3)
    t.attach("b", 7)
    assert t.lease_of("b") == 7 and t.image() == [LeaseImage(3, 5_000, ["a"]),
                                                  LeaseImage(7, 5_000, ["b"])]
    t.attach("a", 0)
    assert t.lease_of("a") == 0
    t.attach("c", 7)
    assert t.remove(7) == ["b", "c"] and t.lease_of("c") == 0 and 7 not in t


def test_table_limits_leases_and_keys() -> None:
    """Past the limits a grant or an attachment is refused with its code; a
    key already attached to a full lease may be put again."""
    t = LeaseTable(max_leases=1, max_keys_per_lease=1)
    assert t.grant_problem() is None
    t.grant(1, 5_000)
    assert t.grant_problem() == TOO_MANY_LEASES
    t.attach("k", 1)
    assert t.attach_problem("k", 1) is None
    assert t.attach_problem("other", 1) == LEASE_FULL
    assert t.attach_problem("other", 2) == LEASE_NOT_FOUND


_BAD_IMAGES: list[tuple[str, list[LeaseImage], list[str]]] = [
    ("out of order", [LeaseImage(5, 5_000, []), LeaseImage(4, 5_000, [])], []),
    ("beyond the index", [LeaseImage(11, 5_000, [])], []),
    ("ttl too short", [LeaseImage(4, MIN_LEASE_TTL_MS - 1, [])], []),
    ("keys unsorted", [LeaseImage(4, 5_000, ["b", "a"])], ["a", "b"]),
    ("key on two leases", [LeaseImage(4, 5_000, ["a"]), LeaseImage(5, 5_000, ["a"])], ["a"]),
    ("key not in the store", [LeaseImage(4, 5_000, ["a"])], []),
]


@pytest.mark.parametrize("name, leases, live", _BAD_IMAGES, ids=[b[0] for b in _BAD_IMAGES])
def test_lease_image_checks_refuse(name: str, leases: list[LeaseImage], live: list[str]) -> None:
    """Each way an image's leases can be impossible is named."""
    assert check_lease_images(10, leases, live) is not None, name


def test_lease_image_checks_pass_a_good_one() -> None:
    assert check_lease_images(10, [LeaseImage(4, 5_000, ["a", "b"])], ["a", "b", "c"]) is None


# --- the state machine ----------------------------------------------------------


def test_revoke_deletes_every_key_of_the_lease_at_one_revision() -> None:
    """Revoking a lease deletes all its keys at one revision, and only them."""
    s = _Store()
    lid = s.grant()
    for k in ("a", "b", "c"):
        assert s(Put(k, b"v", lease=lid)).ok
    s(Put("free", b"v"))
    before = s.kv.revision
    got = s(LeaseRevoke(lid))
    assert got.ok and got.revision == before + 1 == s.kv.revision
    assert s.kv.keys() == ["free"] and lid not in s.kv.leases
    changes = [c for c in s.kv.mvcc.log.since(0) if c.rev == s.kv.revision]
    assert sorted(c.key for c in changes) == ["a", "b", "c"]
    assert s(LeaseRevoke(lid)).error == LEASE_NOT_FOUND


def test_expiry_deletes_the_keys_of_its_leases_at_one_revision() -> None:
    """An expiry entry ends the leases it names that exist, their keys gone
    at one revision; naming an ended lease changes nothing."""
    s = _Store()
    one, two = s.grant(), s.grant()
    s(Put("a", b"v", lease=one))
    s(Put("b", b"v", lease=two))
    before = s.kv.revision
    got = s.expire(one, two, 999)
    assert got.revision == before + 1 and s.kv.keys() == [] and len(s.kv.leases) == 0
    s.expire(one)
    assert s.kv.revision == before + 1


def test_put_without_lease_or_delete_detaches() -> None:
    """A put without a lease, a delete and a range delete detach their keys,
    so revoking the lease later leaves those keys alone."""
    s = _Store()
    lid = s.grant()
    for k in ("a", "b", "r/1", "r/2"):
        s(Put(k, b"v", lease=lid))
    s(Put("a", b"w"))
    s(Delete("b"))
    s(DeleteRange("r/", prefix=True))
    assert s.kv.leases.image() == [LeaseImage(lid, 5_000, [])]
    s(Put("b", b"again"))
    s(Put("r/1", b"again"))
    s(LeaseRevoke(lid))
    assert s.kv.keys() == ["a", "b", "r/1"]


def test_unknown_or_full_lease_refuses_the_whole_write() -> None:
    """A put or a transaction naming a lease that does not exist (or is
    full) changes nothing and answers why."""
    s = _Store(KVStore())
    s.kv.leases.max_keys_per_lease = 1
    lid = s.grant()
    rev = s.kv.revision
    assert s(Put("k", b"v", lease=lid + 1)).error == LEASE_NOT_FOUND
    assert s(Txn([], [Put("x", b"v"), Put("y", b"v", lease=lid + 1)])).error == LEASE_NOT_FOUND
    assert s(Txn([], [Put("x", b"v", lease=lid), Put("y", b"v", lease=lid)])).error == LEASE_FULL
    assert s.kv.revision == rev and s.kv.keys() == []
    got = s(Txn([], [Put("x", b"v", lease=lid)]))
    assert got.ok and s.kv.leases.lease_of("x") == lid


def test_grant_is_exactly_once() -> None:
    """A retried grant (same session and seq) answers the first lease's id
    and grants no second one."""
    s = _Store()
    raw = encode_op(LeaseGrant(5_000))
    first = s.kv.apply(s.kv.applied_index + 1, encode_command(Command(0, Write(
        s.session, 1, 1, raw))))
    again = s.kv.apply(s.kv.applied_index + 1, encode_command(Command(0, Write(
        s.session, 1, 1, raw))))
    assert first is not None and again is not None
    assert first.result.lease == again.result.lease and len(s.kv.leases) == 1


def test_grant_refuses_a_ttl_out_of_range() -> None:
    with pytest.raises(ValueError, match="TTL must be"):
        LeaseGrant(MIN_LEASE_TTL_MS - 1)


# --- images ----------------------------------------------------------------------


def _leased() -> _Store:
    s = _Store()
    lid = s.grant(2_000)
    s(Put("a", b"1", lease=lid))
    s(Put("b", b"2", lease=lid))
    s(Put("c", b"3"))
    s.grant(9_000)
    return s


def test_leases_survive_an_image() -> None:
    """An image holds the leases and their keys; a store restored from it
    has the same digest and revokes as the original would."""
    src = _leased()
    dst = KVStore()
    dst.restore(encode_image(src.kv.freeze()))
    assert dst.digest() == src.kv.digest()
    assert dst.leases.image() == src.kv.leases.image()
    lid = dst.leases.ids()[0]
    assert sorted(dst.leases.get(lid).keys) == ["a", "b"]  # type: ignore[union-attr]


def _edit_header(img: bytes, edit: Callable[[list[Any]], None]) -> bytes:
    hlen = struct.unpack_from(">I", img, 4)[0]
    header = msgspec.msgpack.decode(img[8 : 8 + hlen])
    edit(header)
    new = msgspec.msgpack.encode(header)
    return img[:4] + struct.pack(">I", len(new)) + new + img[8 + hlen :]


def _attach_missing_key(h: list[Any]) -> None:
    h[10][0][2].append("zzz")


def _leases_in_format_4(h: list[Any]) -> None:
    h[0] = 4


def _lease_beyond_index(h: list[Any]) -> None:
    h[10][1][0] = h[1] + 1


@pytest.mark.parametrize("edit", [_attach_missing_key, _leases_in_format_4, _lease_beyond_index])
def test_restore_rejects_impossible_leases(edit: Callable[[list[Any]], None]) -> None:
    """An image whose leases cannot be is refused, the store left as it was."""
    bad = _edit_header(encode_image(_leased().kv.freeze()), edit)
    victim = _Store()
    digest = victim.kv.digest()
    with pytest.raises(ImageError):
        victim.kv.restore(bad)
    assert victim.kv.digest() == digest


def test_an_image_of_format_4_is_still_restored() -> None:
    """An image written before leases (format 4, no lease field) loads with
    no leases."""
    s = _Store()
    s(Put("k", b"v"))

    def to_format_4(h: list[Any]) -> None:
        h[0] = 4
        del h[10]

    old = _edit_header(encode_image(s.kv.freeze()), to_format_4)
    kv = KVStore()
    kv.restore(old)
    assert kv.get("k") == b"v" and len(kv.leases) == 0


# --- the lessor ------------------------------------------------------------------


def _lessor(table: LeaseTable, now_ms: float, last_index: int = 100) -> Lessor:
    lessor = Lessor(table, extension_ms=300)
    lessor.became_leader(now_ms, last_index)
    return lessor


def test_new_leader_gives_every_lease_ttl_plus_election_timeout() -> None:
    """On becoming leader, every lease it inherits is due at now + TTL + the
    longest election timeout, not before."""
    t = LeaseTable()
    t.grant(10, 2_000)
    lessor = _lessor(t, now_ms=1_000)
    assert lessor.due(1_000 + 2_000 + 299) == []
    assert lessor.remaining_ms(10, 1_000) == 2_300
    assert lessor.due(1_000 + 2_300) == [10]


def test_lease_granted_while_leading_is_due_after_ttl() -> None:
    """A lease granted in this leader's term is due at TTL after it is first
    seen applied; a keep-alive pushes that to TTL after the renewal."""
    t = LeaseTable()
    lessor = _lessor(t, now_ms=0, last_index=100)
    t.grant(101, 2_000)
    assert lessor.due(500) == []
    assert lessor.renew(101, 1_500) == 2_000
    assert lessor.due(2_100) == []
    assert lessor.due(2_600) == []  # past the first deadline, not the renewed one
    assert lessor.due(3_499) == []
    assert lessor.due(3_500) == [101]


def test_expiry_in_flight_blocks_renewal_and_a_second_proposal() -> None:
    """While an expiry is in flight its leases are not renewed and no other
    expiry is proposed; once applied, the next batch comes."""
    t = LeaseTable()
    lessor = _lessor(t, now_ms=0, last_index=0)
    for lid in range(1, MAX_EXPIRE_BATCH + 3):
        t.grant(lid, 1_000)
    assert lessor.due(0) == []  # seen at 0: due at 1,000
    due = lessor.due(1_000)
    assert due == list(range(1, MAX_EXPIRE_BATCH + 1))
    lessor.proposed(500, due)
    assert lessor.due(1_000) == []
    assert lessor.renew(1, 1_000) is None and lessor.remaining_ms(1, 1_000) == 0
    for lid in due:
        t.remove(lid)
    lessor.applied(500)
    assert lessor.due(1_000) == [MAX_EXPIRE_BATCH + 1, MAX_EXPIRE_BATCH + 2]


def test_a_follower_keeps_no_deadlines() -> None:
    """After losing leadership nothing is due and nothing is renewed."""
    t = LeaseTable()
    t.grant(1, 1_000)
    lessor = _lessor(t, now_ms=0)
    lessor.lost_leadership()
    assert lessor.due(10_000) == [] and lessor.renew(1, 0) is None


# --- the client's errors --------------------------------------------------------


@pytest.mark.parametrize("code", [TOO_MANY_LEASES, LEASE_FULL, LEASE_NOT_FOUND])
def test_client_turns_lease_codes_into_sentences(code: str) -> None:
    """The state machine answers codes only; the client raises a sentence
    a user can act on, LeaseNotFound for a lease that is gone."""
    with pytest.raises(ClientError) as e:
        _raise_failed(ClientResponse(ok=False, error=code,
                                     message="lease 9 does not exist" if code == LEASE_NOT_FOUND
                                     else None))
    assert e.value.code == code and " " in str(e.value)
    assert isinstance(e.value, LeaseNotFound) == (code == LEASE_NOT_FOUND)
