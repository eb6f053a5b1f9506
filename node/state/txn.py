"""What each operation of node/state/ops.py does to the revisioned data
(node/state/mvcc.py) and answers: one command, at most one revision.
Deterministic and free of I/O, as the state machine it is part of.
"""

from __future__ import annotations

from node.config import MAX_TXN_ANSWER_BYTES, MAX_VALUE_BYTES
from node.state.leases import LEASE_FULL, LEASE_NOT_FOUND, LeaseTable
from node.state.mvcc import Mvcc, Rec, Span
from node.state.ops import (
    Append,
    Cas,
    Compare,
    Delete,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    Op,
    Put,
    Range,
    Txn,
    TxnOp,
)
from node.state.sessions import KV, OpResult, Result

# Codes in `Result.error`; clients match on them, so they never change.
CAS_FAILED = "cas_failed"
VALUE_TOO_LARGE = "too_large"

_NOOP = Result(ok=True)
_TOO_LARGE = Result(ok=False, error=VALUE_TOO_LARGE)
_LEASE_NOT_FOUND = Result(ok=False, error=LEASE_NOT_FOUND)


def kv_of(key: str, rec: Rec, keys_only: bool = False) -> KV:
    return KV(key, rec.create, rec.mod, rec.version, None if keys_only else rec.value)


def execute(mv: Mvcc, op: Op, leases: LeaseTable | None = None, index: int = 0) -> Result:
    """Run one session's write, the entry at `index`; compact what the
    history bounds then exclude. A put, delete, cas or append answers as it
    always has (no revision: a retry's cached answer must be the first
    one's, and these answers are the common case); a range delete, a
    transaction and a lease's revocation answer the revision after them. A
    write naming a lease that cannot take its key changes nothing."""
    if leases is None:
        leases = LeaseTable()
    if isinstance(op, LeaseGrant):
        problem = leases.grant_problem()
        if problem is not None:
            return Result(ok=False, error=problem)
        leases.grant(index, op.ttl_ms)
        return Result(ok=True, lease=index, ttl_ms=op.ttl_ms)
    if isinstance(op, LeaseRevoke):
        if op.lease not in leases:
            return _LEASE_NOT_FOUND
        return Result(ok=True, revision=end_leases(mv, leases, [op.lease]))
    if type(op) is Put and not op.lease:
        # The common write: no lease to check, one change.
        replaced = mv.put_alone(op.key, op.value)
        leases.attach(op.key, 0)
        return Result(ok=True, value=replaced.value) if op.prev and replaced else _NOOP
    problem = _lease_problem(op, leases)
    if problem is not None:
        return Result(ok=False, error=problem)
    mv.begin()
    try:
        if isinstance(op, Put):
            replaced = mv.put(op.key, op.value)
            leases.attach(op.key, op.lease)
            return Result(ok=True, value=replaced.value) if op.prev and replaced else _NOOP
        if isinstance(op, Delete):
            removed = mv.delete(op.key)
            leases.detach(op.key)
            return Result(ok=True, value=removed.value) if op.prev and removed else _NOOP
        if isinstance(op, Append):
            cur = mv.get(op.key)
            before = b"" if cur is None else cur.value
            if len(before) + len(op.value) > MAX_VALUE_BYTES:
                return _TOO_LARGE
            mv.put(op.key, before + op.value)
            return _NOOP
        if isinstance(op, Cas):
            return _cas(mv, op, leases)
        if isinstance(op, DeleteRange):
            n = _delete_span(mv, leases, op.span())
            return Result(ok=True, deleted=n, revision=mv.revision)
        return run_txn(mv, op, leases)
    finally:
        mv.retain()


def end_leases(mv: Mvcc, leases: LeaseTable, ids: list[int]) -> int:
    """End the leases `ids` (those that exist), deleting every key attached
    to them at one revision; the store's revision after."""
    mv.begin()
    for lid in ids:
        for key in leases.remove(lid):
            mv.delete(key)
    mv.retain()
    return mv.revision


def _lease_problem(op: Op, leases: LeaseTable) -> str | None:
    """Why a put of `op` cannot attach its key to its lease, or None."""
    puts = [op] if isinstance(op, Put) else \
        [o for o in (*op.success, *op.failure) if isinstance(o, Put)] if isinstance(op, Txn) else []
    adding: dict[int, int] = {}
    for p in puts:
        if not p.lease:
            continue
        problem = leases.attach_problem(p.key, p.lease)
        if problem is not None:
            return problem
        lease = leases.get(p.lease)
        if lease is not None and p.key not in lease.keys:
            adding[p.lease] = adding.get(p.lease, 0) + 1
            if len(lease.keys) + adding[p.lease] > leases.max_keys_per_lease:
                return LEASE_FULL
    return None


def _delete_span(mv: Mvcc, leases: LeaseTable, span: Span) -> int:
    n = mv.delete_span(span)
    if n:
        leases.detach_span(span)
    return n


def _cas(mv: Mvcc, op: Cas, leases: LeaseTable) -> Result:
    """Compare-and-set as the transaction it is (its put detaches the key
    from any lease, as a put without one does)."""
    got = run_txn(mv, Txn([Compare(op.key, "value", "=", op.expected)], [Put(op.key, op.value)],
                          [Range(op.key)]), leases)
    if got.succeeded:
        return _NOOP
    found = got.responses[0].kvs if got.responses else None
    return Result(ok=False, value=found[0].value if found else None, error=CAS_FAILED)


def compare_holds(mv: Mvcc, c: Compare) -> bool:
    rec = mv.get(c.key)
    have: bytes | int | None
    if c.target == "value":
        have = None if rec is None else rec.value
    elif rec is None:
        have = 0
    else:
        shown = mv.shown(rec)
        have = shown.version if c.target == "version" else \
            shown.create if c.target == "create" else shown.mod
    want = c.operand
    if c.op == "=":
        return have == want
    if c.op == "!=":
        return have != want
    if c.op == "<":
        return _below(have, want)
    return _below(want, have)


def _below(a: bytes | int | None, b: bytes | int | None) -> bool:
    """a < b, where an absent value (None) is below every value."""
    if a is None or b is None:
        return a is None and b is not None
    if isinstance(a, int) != isinstance(b, int):
        return False  # Compare refuses such operands; never reached
    return a < b  # type: ignore[operator]  # both bytes or both int, checked above


def run_txn(mv: Mvcc, txn: Txn, leases: LeaseTable | None = None) -> Result:
    """If every compare holds, run `success`, else `failure`, in order: a
    read sees the writes before it in the branch. What reads answer is
    bounded by MAX_TXN_ANSWER_BYTES in all (`more` says a read was cut):
    the answer is kept in the session for retries."""
    succeeded = all(compare_holds(mv, c) for c in txn.compare)
    budget = [MAX_TXN_ANSWER_BYTES]
    responses = [_run(mv, op, budget, leases)
                 for op in (txn.success if succeeded else txn.failure)]
    return Result(ok=True, succeeded=succeeded, responses=responses, revision=mv.revision)


def _run(mv: Mvcc, op: TxnOp, budget: list[int], leases: LeaseTable | None) -> OpResult:
    if isinstance(op, Put):
        prev = mv.put(op.key, op.value)
        if leases is not None:
            leases.attach(op.key, op.lease)
        return OpResult("put", prev=kv_of(op.key, mv.shown(prev)) if op.prev and prev else None)
    if isinstance(op, Delete):
        prev = mv.delete(op.key)
        if leases is not None:
            leases.detach(op.key)
        return OpResult("delete", deleted=int(prev is not None),
                        prev=kv_of(op.key, mv.shown(prev)) if op.prev and prev else None)
    if isinstance(op, DeleteRange):
        n = mv.delete_span(op.span()) if leases is None else _delete_span(mv, leases, op.span())
        return OpResult("delete_range", deleted=n)
    if op.count_only:
        return OpResult("range", count=mv.read(op.span(), count_only=True).count)
    got = mv.read(op.span(), limit=op.limit, max_bytes=max(1, budget[0]), keys_only=op.keys_only)
    kvs = [kv_of(k, r, op.keys_only) for k, r in got.kvs]
    budget[0] -= sum(len(k.key) + len(k.value or b"") for k in kvs)
    return OpResult("range", kvs=kvs, count=got.count, more=got.more)
