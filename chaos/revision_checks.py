"""The checks of the txn workload (chaos/txn_workload.py), on revisions.

Transactions and range reads: the revisions the store answered must be a
linearization. Writes that succeeded take distinct revisions; whatever
completed before another began has a lower revision (a read: no higher);
and a range read at revision R shows, for every key, the value of the last
write to it at or below R that anybody saw, so a transaction is seen whole
or not at all. With the per-key register check (chaos/checks.py reads these
operations too) that is linearizability of transactions and range reads.

Watches: each watcher got every change of the prefix from its first
revision to the last one it reached exactly once, in revision order, with
the value the change wrote, across reconnects and the death of its node.
Pure functions of the operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chaos.checks import key_slice, time_slice
from chaos.invariants import Violation
from chaos.linearizability import OK, UNKNOWN
from chaos.txn_workload import WATCH_END, WATCH_EVENT, WATCH_START
from chaos.workload import RANGE, TXN, OpRecord

# Check names, as the verdict reports them.
TXN_ORDER = "txn order"
WATCH_DELIVERY = "watch delivery"
# Findings of one check past this many are counted in one more.
_MOST = 20


@dataclass(frozen=True)
class RevStats:
    """What the checks looked at, for the verdict's rows."""

    txns: int
    ranges: int
    watchers: int
    events: int


def _v(check: str, ops: Sequence[OpRecord], at: list[int], detail: str) -> Violation:
    o = ops[at[-1]]
    return Violation(check=check, key=o.key, t_s=o.complete_s, detail=detail,
                     ops=key_slice(ops, o.key, at) if o.kind == TXN else tuple(sorted(at)))


def _desc(o: OpRecord) -> str:
    what = (f"txn writing {o.writes}" if o.kind == TXN and o.writes else
            f"txn reading {o.key}" if o.kind == TXN else f"range read of {o.key}")
    return f"{what} by {o.client} at revision {o.revision} [{o.invoke_s:.3f}s..{o.complete_s:.3f}s]"


def txn_order(ops: Sequence[OpRecord]) -> list[Violation]:
    """Distinct revisions for writes, revisions in real-time order, and
    range reads that agree with every write seen at or below their revision."""
    out: list[Violation] = []
    done = [i for i, o in enumerate(ops) if o.kind in (TXN, RANGE) and o.outcome == OK
            and o.revision is not None]
    writes = [i for i in done if ops[i].kind == TXN and ops[i].writes]
    by_rev: dict[int, int] = {}
    for i in writes:
        rev = ops[i].revision
        assert rev is not None
        if rev in by_rev:
            out.append(_v(TXN_ORDER, ops, [by_rev[rev], i], (
                f"{_desc(ops[by_rev[rev]])} and {_desc(ops[i])} were both answered revision "
                f"{rev}")))
        by_rev[rev] = i
    out += _real_time(ops, done)
    out += _snapshots(ops, done, writes)
    return out[:_MOST]


def _real_time(ops: Sequence[OpRecord], done: list[int]) -> list[Violation]:
    """Whatever completed before an operation began is ordered before it:
    a write gets a higher revision than all of them, a read no lower one."""
    out: list[Violation] = []
    by_end = sorted(done, key=lambda i: ops[i].complete)
    k = 0
    top, top_at = 0, -1
    for i in sorted(done, key=lambda i: ops[i].invoke):
        o = ops[i]
        while k < len(by_end) and ops[by_end[k]].complete < o.invoke:
            rev = ops[by_end[k]].revision or 0
            if rev > top:
                top, top_at = rev, by_end[k]
            k += 1
        rev = o.revision or 0
        writing = o.kind == TXN and bool(o.writes)
        if top_at >= 0 and (rev < top or (writing and rev == top and top_at != i)):
            out.append(_v(TXN_ORDER, ops, [top_at, i], (
                f"{_desc(o)} began after {_desc(ops[top_at])} had completed, yet its "
                f"revision is not above it")))
    return out


def _snapshots(ops: Sequence[OpRecord], done: list[int],
               writes: list[int]) -> list[Violation]:
    """What each key held at each revision, from the writes answered and the
    values reads found; every read must agree with it."""
    # (key, revision) -> (value, the op that says so)
    known: dict[tuple[str, int], tuple[str | None, int]] = {}
    out: list[Violation] = []
    for i in writes:
        o = ops[i]
        for k, v in (o.writes or {}).items():
            known[(k, o.revision or 0)] = (v, i)
    reads = [i for i in done if ops[i].kvs is not None]
    for i in reads:
        for kv in ops[i].kvs or []:
            seen = known.setdefault((kv.key, kv.mod), (kv.value, i))
            if seen[0] != kv.value:
                out.append(_v(TXN_ORDER, ops, [seen[1], i], (
                    f"{kv.key} at revision {kv.mod} held {seen[0]!r} by {_desc(ops[seen[1]])}, "
                    f"but {_desc(ops[i])} found {kv.value!r}")))
    revs: dict[str, list[int]] = {}
    for (k, rev) in known:
        revs.setdefault(k, []).append(rev)
    for k in revs:
        revs[k].sort()
    for i in reads:
        o = ops[i]
        if o.kind != RANGE:
            continue
        at = o.revision or 0
        found = {kv.key: kv.mod for kv in o.kvs or []}
        for k, rs in revs.items():
            latest = max((r for r in rs if r <= at), default=0)
            if latest and found.get(k, 0) < latest:
                w = known[(k, latest)][1]
                out.append(_v(TXN_ORDER, ops, [w, i], (
                    f"{_desc(o)} found {k} at revision {found.get(k)}, but {_desc(ops[w])} "
                    f"had written it at {latest}: the read is not the store at one revision")))
    return out


def watch_delivery(ops: Sequence[OpRecord]) -> tuple[list[Violation], int, int]:
    """Each watcher's events: revision order, no change twice, every change
    others saw (or a write was answered with) within its span, and the value
    that change wrote. Also: the number of watchers and of events."""
    out: list[Violation] = []
    changes: dict[tuple[str, int], tuple[str | None, int]] = {}
    for i, o in enumerate(ops):
        if o.kind == TXN and o.outcome == OK and o.writes and o.revision is not None:
            for k, v in o.writes.items():
                changes[(k, o.revision)] = (v, i)
    watchers: dict[str, list[int]] = {}
    for i, o in enumerate(ops):
        if o.kind in (WATCH_EVENT, WATCH_START, WATCH_END):
            watchers.setdefault(o.client, []).append(i)
    for name, idx in watchers.items():
        for i in idx:
            o = ops[i]
            if o.kind == WATCH_EVENT and o.revision is not None:
                seen = changes.setdefault((o.key, o.revision), (o.value, i))
                if seen[0] != o.value:
                    out.append(_v(WATCH_DELIVERY, ops, [seen[1], i], (
                        f"watcher {name} got {o.key}={o.value!r} at revision {o.revision}, "
                        f"but that change wrote {seen[0]!r}")))
    events = 0
    for name, idx in watchers.items():
        start = next((ops[i].revision for i in idx if ops[i].kind == WATCH_START), None)
        ends = [i for i in idx if ops[i].kind == WATCH_END]
        if start is None or not ends:
            out.append(Violation(check=WATCH_DELIVERY, detail=f"watcher {name} left no "
                                 "start or end", ops=tuple(idx[-3:])))
            continue
        end = ops[ends[-1]]
        if end.error is not None:
            out.append(Violation(check=WATCH_DELIVERY, t_s=end.complete_s, detail=(
                f"watcher {name} did not catch up with the store: {end.error}"),
                ops=time_slice(ops, end.complete_s)))
        reached = end.revision or 0
        got = [i for i in idx if ops[i].kind == WATCH_EVENT]
        events += len(got)
        last: tuple[int, str] = (0, "")
        have: set[tuple[str, int]] = set()
        for i in got:
            o = ops[i]
            mark = (o.revision or 0, o.key)
            if (o.key, o.revision or 0) in have:
                out.append(_v(WATCH_DELIVERY, ops, [i], (
                    f"watcher {name} got {o.key} at revision {o.revision} twice")))
            elif (o.revision or 0) < last[0]:
                out.append(_v(WATCH_DELIVERY, ops, [i], (
                    f"watcher {name} got revision {o.revision} after revision {last[0]}: out "
                    "of order")))
            have.add((o.key, o.revision or 0))
            last = max(last, mark)
        missing = sorted((r, k) for (k, r) in changes if start <= r <= reached
                         and (k, r) not in have)
        for r, k in missing[:_MOST]:
            w = changes[(k, r)][1]
            out.append(Violation(check=WATCH_DELIVERY, key=k, t_s=ops[w].complete_s, detail=(
                f"watcher {name} (revisions {start}..{reached}) never got the change of {k} "
                f"at revision {r} ({changes[(k, r)][0]!r})"), ops=(w,)))
    return out[:_MOST], len(watchers), events


def revision_checks(ops: Sequence[OpRecord]) -> tuple[list[Violation], RevStats]:
    """Both checks, and what they looked at."""
    found = txn_order(ops)
    watched, watchers, events = watch_delivery(ops)
    stats = RevStats(txns=sum(1 for o in ops if o.kind == TXN and o.outcome != UNKNOWN),
                     ranges=sum(1 for o in ops if o.kind == RANGE and o.outcome == OK),
                     watchers=watchers, events=events)
    return found + watched, stats
