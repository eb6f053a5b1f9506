"""The operations a session's write carries in the log: put, delete, cas and
append on one key, delete of a range, and transactions (compare, then one
list of operations or the other). Each checks at construction what its
schema cannot, so a bad one is refused before it is proposed and the same
way when it is applied. Pure data: nothing here touches the store.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from node.config import MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES
from node.state.leases import MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS
from node.state.mvcc import Span

# A key is at most MAX_KEY_BYTES of UTF-8; a character is at least one byte, so
# the decoder can reject longer strings before `check_key` counts bytes.
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES)]
# Where a range starts: "" is before every key.
RangeKey = Annotated[str, msgspec.Meta(max_length=MAX_KEY_BYTES)]
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]
Revision = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
LeaseId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

# A range_end of this one character means "every key from `key` on" (etcd's "\0").
TO_THE_END = "\x00"


def check_key(key: str, *, may_be_empty: bool = False) -> None:
    if not key and not may_be_empty:
        raise ValueError("a key must not be empty")
    # 4 bytes is the longest UTF-8 character: shorter keys need no encoding.
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"a key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8")


def check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"a value must be at most {MAX_VALUE_BYTES} bytes")


def span_of(key: str, range_end: str | None, prefix: bool) -> Span:
    """The keys (`key`, `range_end`, `prefix`) name, as docs/PROTOCOL.md says;
    ValueError if they name none in a way a client could mean."""
    check_key(key, may_be_empty=prefix or range_end is not None)
    if prefix:
        if range_end is not None:
            raise ValueError("give either prefix or range_end, not both")
        return Span.prefix(key)
    if range_end is None:
        return Span(key)
    if range_end == TO_THE_END:
        return Span(key, None, one=False)
    check_key(range_end)
    if range_end <= key:
        raise ValueError(f"range_end {range_end!r} is not after key {key!r}: the range is empty")
    return Span(key, range_end, one=False)


class Put(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="put"):
    """Set `key` to `value`; with `prev`, answer the value it replaced. The
    key is attached to `lease` (0: to none, which detaches it)."""

    key: Key
    value: Value
    prev: bool = False
    lease: LeaseId = 0

    def __post_init__(self) -> None:
        # Inline: run for every write at its proposal and at every replica's apply.
        if len(self.key) * 4 > MAX_KEY_BYTES or not self.key:
            check_key(self.key)
        if len(self.value) > MAX_VALUE_BYTES:
            check_value(self.value)


class Delete(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="delete"):
    """Remove `key` (absent is fine); with `prev`, answer the value it had."""

    key: Key
    prev: bool = False

    def __post_init__(self) -> None:
        check_key(self.key)


class Cas(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="cas"):
    """Set `key` to `value` only if it now holds `expected` (None: is absent):
    the transaction [value(key) = expected] then [put] else [get]."""

    key: Key
    expected: Value | None
    value: Value

    def __post_init__(self) -> None:
        check_key(self.key)
        check_value(self.value)
        if self.expected is not None:
            check_value(self.expected)


class Append(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="append"):
    """Add `value` to the end of `key`'s value (absent: empty). Not
    idempotent, so a write applied twice shows: what the set workload of
    `chaos run` relies on."""

    key: Key
    value: Value

    def __post_init__(self) -> None:
        check_key(self.key)
        check_value(self.value)


class DeleteRange(msgspec.Struct, frozen=True, array_like=True, tag_field="op",
                  tag="delete_range"):
    """Remove every key of the range, all at one revision; answer how many."""

    key: RangeKey
    range_end: RangeKey | None = None
    prefix: bool = False

    def __post_init__(self) -> None:
        span_of(self.key, self.range_end, self.prefix)

    def span(self) -> Span:
        return span_of(self.key, self.range_end, self.prefix)


class Range(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="range"):
    """Read a key or a range (inside a transaction: at its point in it)."""

    key: RangeKey
    range_end: RangeKey | None = None
    prefix: bool = False
    limit: Limit = 0
    keys_only: bool = False
    count_only: bool = False

    def __post_init__(self) -> None:
        span_of(self.key, self.range_end, self.prefix)

    def span(self) -> Span:
        return span_of(self.key, self.range_end, self.prefix)


Target = Literal["value", "version", "create", "mod"]
Comparison = Literal["=", "!=", "<", ">"]


class Compare(msgspec.Struct, frozen=True, array_like=True):
    """`target` of `key` `op` `operand`: a value (bin, or None: absent, which
    is below every value) or, for version, create and mod, a number (an
    absent key's are 0)."""

    key: Key
    target: Target
    op: Comparison
    operand: Value | Revision | None

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.target == "value":
            if isinstance(self.operand, int):
                raise ValueError(f"compare of value({self.key}) needs bytes or nil, not a number")
        elif not isinstance(self.operand, int):
            raise ValueError(f"compare of {self.target}({self.key}) needs a number")


TxnOp = Put | Delete | DeleteRange | Range
Ops = Annotated[list[TxnOp], msgspec.Meta(max_length=MAX_TXN_OPS)]


class Txn(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="txn"):
    """If every compare holds, run `success`, else `failure`: one log entry,
    one revision for all its changes. As in etcd, a branch may not write a
    key twice (a put inside a range it deletes included)."""

    compare: Annotated[list[Compare], msgspec.Meta(max_length=MAX_TXN_OPS)] = []
    success: Ops = []
    failure: Ops = []

    def __post_init__(self) -> None:
        if len(self.compare) + len(self.success) + len(self.failure) > MAX_TXN_OPS:
            raise ValueError(f"a transaction holds at most {MAX_TXN_OPS} compares and "
                             "operations in all")
        for branch in (self.success, self.failure):
            _check_branch(branch)


def _check_branch(ops: list[TxnOp]) -> None:
    puts: set[str] = set()
    spans: list[Span] = []
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts:
                raise ValueError(f"a transaction branch puts {op.key!r} twice")
            puts.add(op.key)
        elif isinstance(op, Delete):
            spans.append(Span(op.key))
        elif isinstance(op, DeleteRange):
            spans.append(op.span())
    for s in spans:
        for k in puts:
            if k in s:
                raise ValueError(f"a transaction branch both puts and deletes {k!r}")


class LeaseGrant(msgspec.Struct, frozen=True, array_like=True, tag_field="op",
                 tag="lease_grant"):
    """Grant a lease of `ttl_ms`; its id is the index of the entry."""

    ttl_ms: int

    def __post_init__(self) -> None:
        if not MIN_LEASE_TTL_MS <= self.ttl_ms <= MAX_LEASE_TTL_MS:
            raise ValueError(f"a lease's TTL must be {MIN_LEASE_TTL_MS // 1000} to "
                             f"{MAX_LEASE_TTL_MS // 1000} s, not {self.ttl_ms / 1000:g} s")


class LeaseRevoke(msgspec.Struct, frozen=True, array_like=True, tag_field="op",
                  tag="lease_revoke"):
    """End lease `lease`, deleting every key attached to it at one revision."""

    lease: LeaseId


def leases_named(op: Op) -> set[int]:
    """The leases the puts of `op` attach keys to (both branches of a txn)."""
    if isinstance(op, Put):
        return {op.lease} if op.lease else set()
    if isinstance(op, Txn):
        return {o.lease for o in (*op.success, *op.failure) if isinstance(o, Put) and o.lease}
    return set()


Op = Put | Delete | Cas | Append | DeleteRange | Txn | LeaseGrant | LeaseRevoke
