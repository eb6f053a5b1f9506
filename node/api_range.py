"""The client requests of the revisioned store (docs/PROTOCOL.md,
"Revisions", "Watches"): range reads, range deletes, transactions,
compaction of the history and watches, as MessagePack maps, and what they
become in the state machine (node/state/ops.py). Schema and conversion
only: no sockets, no core.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from node.config import MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES
from node.state.mvcc import Mvcc, RangeResult, Span
from node.state.ops import Compare, Delete, DeleteRange, Put, Range, Txn, TxnOp, span_of
from node.state.sessions import KV

RangeKey = Annotated[str, msgspec.Meta(max_length=MAX_KEY_BYTES)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES)]
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]
Revision = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
ReqId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
SessionId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
LeaseId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

# What one range read answers at most, in bytes of keys and values (past the
# first key): the rest is left to the next read (`more`), so that an answer
# always fits a frame (MAX_MESSAGE_BYTES).
MAX_RANGE_ANSWER_BYTES = 4 * 1024 * 1024


class _Req(msgspec.Struct, frozen=True, kw_only=True, tag_field="op",
           forbid_unknown_fields=True):
    id: ReqId = 0


class RangeRequest(_Req, tag="range", frozen=True, kw_only=True):
    """Read `key`, the keys from `key` up to `range_end` (exclusive; "\\x00":
    to the last key) or those starting with `key` (`prefix`), at `revision`
    (0: now), at most `limit` of them (0: no limit); `keys_only` leaves
    values out, `count_only` answers only how many. Linearizable unless
    `stale`, as `get`."""

    key: RangeKey
    range_end: RangeKey | None = None
    prefix: bool = False
    revision: Revision = 0
    limit: Limit = 0
    keys_only: bool = False
    count_only: bool = False
    stale: bool = False

    def span(self) -> Span:
        """The keys it names; ValueError for a range no client could mean."""
        return span_of(self.key, self.range_end, self.prefix)


class _WriteReq(_Req, frozen=True, kw_only=True):
    session: SessionId
    seq: Seq
    first_outstanding: Seq | None = None


class DeleteRangeRequest(_WriteReq, tag="delete_range", frozen=True, kw_only=True):
    """Delete every key of a range (as `range` names one), at one revision."""

    key: RangeKey
    range_end: RangeKey | None = None
    prefix: bool = False


class TxnCompare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`target` of `key` `cmp` `value`: bin or nil (absent) for the value,
    an integer for version, create and mod revision."""

    key: Key
    target: Literal["value", "version", "create", "mod"]
    cmp: Literal["=", "!=", "<", ">"]
    value: Value | Revision | None = None


class TxnPut(msgspec.Struct, frozen=True, tag_field="op", tag="put", forbid_unknown_fields=True):
    key: Key
    value: Value
    prev: bool = False
    lease: LeaseId = 0


class TxnDelete(msgspec.Struct, frozen=True, tag_field="op", tag="delete",
                forbid_unknown_fields=True):
    """One key, or a range as `range` names one (then `prev` is refused)."""

    key: RangeKey
    range_end: RangeKey | None = None
    prefix: bool = False
    prev: bool = False


class TxnRange(msgspec.Struct, frozen=True, tag_field="op", tag="range",
               forbid_unknown_fields=True):
    key: RangeKey
    range_end: RangeKey | None = None
    prefix: bool = False
    limit: Limit = 0
    keys_only: bool = False
    count_only: bool = False


TxnItem = TxnPut | TxnDelete | TxnRange
Compares = Annotated[list[TxnCompare], msgspec.Meta(max_length=MAX_TXN_OPS)]
Items = Annotated[list[TxnItem], msgspec.Meta(max_length=MAX_TXN_OPS)]


class TxnRequest(_WriteReq, tag="txn", frozen=True, kw_only=True):
    """If every compare holds, run `success`, else `failure`: one log entry."""

    compare: Compares = []
    success: Items = []
    failure: Items = []


class CompactRequest(_Req, tag="compact", frozen=True, kw_only=True):
    """Forget the history before `revision` (through the log: every replica)."""

    revision: Revision


class WatchRequest(_Req, tag="watch", frozen=True, kw_only=True):
    """Stream every change of a key or range (named as `range` names one)
    from `start_revision` (0: the next one) on; the watch is this request's
    `id` on this connection. `once`: end after the first change (a ZooKeeper
    watch); `progress_ms`: when idle this long, say how far it is current."""

    key: RangeKey
    range_end: RangeKey | None = None
    prefix: bool = False
    start_revision: Revision = 0
    once: bool = False
    progress_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0

    def span(self) -> Span:
        return span_of(self.key, self.range_end, self.prefix)


class WatchCancelRequest(_Req, tag="watch_cancel", frozen=True, kw_only=True):
    """End the watch `watch` of this connection."""

    watch: ReqId


class WatchEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One change a watch delivers: `type` put or delete (or, from the
    Python client only, progress), the key, the revision of the change, and
    for a put the key's value, create revision and version after it."""

    type: str
    key: str
    revision: int
    value: bytes | None = None
    create_revision: int = 0
    version: int = 0


def op_of(item: TxnItem) -> TxnOp:
    """The state machine's operation for a transaction item; ValueError if bad."""
    if isinstance(item, TxnPut):
        return Put(item.key, item.value, item.prev, item.lease)
    if isinstance(item, TxnDelete):
        if item.range_end is None and not item.prefix:
            return Delete(item.key, item.prev)
        if item.prev:
            raise ValueError("prev is for the delete of one key, not of a range")
        return DeleteRange(item.key, item.range_end, item.prefix)
    return Range(item.key, item.range_end, item.prefix, item.limit, item.keys_only,
                 item.count_only)


def txn_of(req: TxnRequest) -> Txn:
    """The transaction a request asks for; ValueError with what is wrong."""
    compares = []
    for c in req.compare:
        if c.target == "value" and isinstance(c.value, int):
            raise ValueError(f"compare of value({c.key}) needs bin or nil, not a number")
        if c.target != "value" and not isinstance(c.value, int):
            raise ValueError(f"compare of {c.target}({c.key}) needs an integer")
        compares.append(Compare(c.key, c.target, c.cmp, c.value))
    return Txn(compares, [op_of(i) for i in req.success], [op_of(i) for i in req.failure])


def read_range(mv: Mvcc, req: RangeRequest) -> RangeResult:
    """Serve a range read from the local store; RevisionError if `revision`
    is compacted or ahead of it, ValueError for a bad range."""
    return mv.read(req.span(), req.revision, limit=req.limit, max_bytes=MAX_RANGE_ANSWER_BYTES,
                   keys_only=req.keys_only, count_only=req.count_only)


def kvs_of(got: RangeResult, keys_only: bool) -> list[KV]:
    return [KV(k, r.create, r.mod, r.version, None if keys_only else r.value)
            for k, r in got.kvs]
