"""The set checks, as Jepsen's set test makes them: every acknowledged
append's element is in the final read of its set exactly once, an element
of unknown outcome at most once, and nothing else is there; and a read never
misses an element that was known to be there before it began. Each finding
names the element and carries the append that added it and its slice of
history. Pure functions of the operations.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chaos.invariants import Violation
from chaos.linearizability import FAIL, OK, UNKNOWN
from chaos.record import FINAL_CLIENT
from chaos.workload import APPEND, OPEN_SESSION, READ_SET, OpRecord

# Check names, as the verdict reports them (each a row of its own).
LOST_ELEMENTS = "lost elements"
DUPLICATED_ELEMENTS = "duplicated elements"
UNEXPECTED_ELEMENTS = "unexpected elements"
# A read that missed an element known to be there (a stale read): the
# linearizable row's.
STALE_SET_READ = "stale set read"
# Findings of one check on one key past this many are counted in one more.
MOST_PER_KEY = 20
# Operations of the appending session shown around an append, each side.
_SESSION_CONTEXT_S = 1.0
_SLICE_MOST = 14


@dataclass(frozen=True)
class SetStats:
    """What the set checks looked at, for the verdict's rows."""

    keys: int
    acknowledged: int
    unknown: int
    present: int  # distinct elements in the final reads
    reads: int


def _desc(o: OpRecord) -> str:
    end = f"{o.complete_s:.3f}s" if o.outcome != UNKNOWN else "?"
    sent = f", sent {o.attempts} times" if o.attempts and o.attempts > 1 else ""
    who = f"{o.client}" + (f" (session {o.session}, seq {o.seq}{sent})" if o.session else "")
    at = f" at index {o.index}" if o.index is not None else ""
    err = f", {o.error}" if o.error else ""
    return f"append {o.value!r} to {o.key} by {who} [{o.outcome}{at}{err}, " \
           f"{o.invoke_s:.3f}s..{end}]"


def _slice(ops: Sequence[OpRecord], core: Iterable[int], append: int | None) -> tuple[int, ...]:
    """The core operations and, around the append, what its session did."""
    picked = {i for i in core if i is not None}
    if append is not None:
        a = ops[append]
        lo, hi = a.invoke_s - _SESSION_CONTEXT_S, a.complete_s + _SESSION_CONTEXT_S
        near = [i for i, o in enumerate(ops) if o.session == a.session and a.session
                and lo <= o.invoke_s <= hi and o.kind in (APPEND, OPEN_SESSION)]
        near.sort(key=lambda i: abs(ops[i].invoke_s - a.invoke_s))
        picked |= set(near[:max(0, _SLICE_MOST - len(picked))])
    return tuple(sorted(picked))


def _capped(found: list[Violation], check: str, key: str) -> list[Violation]:
    if len(found) <= MOST_PER_KEY:
        return found
    more = len(found) - MOST_PER_KEY
    last = found[MOST_PER_KEY - 1]
    return [*found[:MOST_PER_KEY], Violation(
        check=check, key=key, t_s=last.t_s,
        detail=f"{key}: and {more} more {check} like the above (record.json has them all)")]


def set_checks(ops: Sequence[OpRecord], keys: Iterable[str]) -> tuple[list[Violation], SetStats]:
    """Every set finding on `keys` (each check capped at MOST_PER_KEY a key),
    and what was looked at."""
    out: list[Violation] = []
    acked = unknown = present = reads = 0
    keys = list(keys)
    for key in keys:
        found, counts = _one_set(ops, key)
        out += found
        acked += counts[OK]
        unknown += counts[UNKNOWN]
        present += counts["present"]
        reads += counts["reads"]
    return out, SetStats(len(keys), acked, unknown, present, reads)


def _one_set(ops: Sequence[OpRecord], key: str) -> tuple[list[Violation], Counter[str]]:
    appends: dict[str, int] = {}
    set_reads: list[int] = []
    final: int | None = None
    for i, o in enumerate(ops):
        if o.key != key:
            continue
        if o.kind == APPEND and o.value is not None:
            appends.setdefault(o.value, i)
        elif o.kind == READ_SET and o.outcome == OK:
            set_reads.append(i)
            if o.client == FINAL_CLIENT:
                final = i
    counts: Counter[str] = Counter(ops[i].outcome for i in appends.values())
    counts["reads"] = len(set_reads)
    lost: list[Violation] = []
    dup: list[Violation] = []
    unexpected: list[Violation] = []
    seen_twice: set[str] = set()
    for r in set_reads:
        for element, n in Counter(ops[r].elements or []).items():
            if n > 1 and element not in seen_twice:
                seen_twice.add(element)
                dup.append(_duplicate(ops, key, element, n, r, appends.get(element), final))
    acked = [a for a in appends.values() if ops[a].outcome == OK]
    if final is None:
        if acked:
            lost.append(Violation(check=LOST_ELEMENTS, key=key, detail=(
                f"{key}: the final read did not succeed, so none of its {len(acked)} "
                "acknowledged elements can be shown present")))
        return _capped(lost, LOST_ELEMENTS, key) + dup, counts
    fin = ops[final]
    in_final = Counter(fin.elements or [])
    counts["present"] = len(in_final)
    for element in in_final:
        a = appends.get(element)
        if a is None or ops[a].outcome == FAIL:
            why = ("nobody appended it" if a is None else
                   f"its append was refused or never sent, so had no effect: {_desc(ops[a])}")
            unexpected.append(Violation(
                check=UNEXPECTED_ELEMENTS, key=key, element=element, t_s=fin.complete_s,
                detail=f"{key}: {element!r} is in the final read, yet {why}",
                ops=_slice(ops, [final] + ([a] if a is not None else []), a)))
    for a in acked:
        o = ops[a]
        assert o.value is not None
        if o.value not in in_final:
            lost.append(Violation(
                check=LOST_ELEMENTS, key=key, element=o.value, t_s=fin.complete_s,
                detail=f"{key}: acknowledged {_desc(o)} is missing from the final read "
                f"({len(in_final)} elements)", ops=_slice(ops, [a, final], a)))
    stale = _stale_reads(ops, key, set_reads, appends)
    return (_capped(lost, LOST_ELEMENTS, key) + _capped(dup, DUPLICATED_ELEMENTS, key)
            + _capped(unexpected, UNEXPECTED_ELEMENTS, key)
            + _capped(stale, STALE_SET_READ, key)), counts


def _duplicate(ops: Sequence[OpRecord], key: str, element: str, n: int, read: int,
               append: int | None, final: int | None) -> Violation:
    r = ops[read]
    where = "the final read" if read == final else \
        f"a read by {r.client} at {r.complete_s:.3f}s"
    if append is None:
        what = "nobody appended it"
    else:
        a = ops[append]
        what = f"it was appended once: {_desc(a)}"
    # When it happened: the append's end, by which its second copy was in
    # (a retry's answer is what ended it), or the read that showed it.
    t = ops[append].complete_s if append is not None else r.complete_s
    core = [read] + ([append] if append is not None else []) + \
        ([final] if final is not None else [])
    return Violation(check=DUPLICATED_ELEMENTS, key=key, element=element, t_s=min(t, r.complete_s),
                     detail=f"{key}: {element!r} is in {where} {n} times; {what}",
                     ops=_slice(ops, core, append))


def _stale_reads(ops: Sequence[OpRecord], key: str, reads: list[int],
                 appends: dict[str, int]) -> list[Violation]:
    """Reads that began after an element was known to be in the set (its
    append acknowledged, or an earlier read done that held it) and miss it."""
    known: dict[str, tuple[int, int]] = {}  # element -> (position known at, op that showed it)
    for e, a in appends.items():
        if ops[a].outcome == OK:
            known[e] = (ops[a].complete, a)
    for r in reads:
        for e in ops[r].elements or []:
            if e not in known or ops[r].complete < known[e][0]:
                known[e] = (ops[r].complete, r)
    order = sorted((m, e) for e, (m, _) in known.items())
    marks = [m for m, _ in order]
    out: list[Violation] = []
    for r in reads:
        o = ops[r]
        due = bisect.bisect_left(marks, o.invoke)
        have = set(o.elements or [])
        if due == 0 or sum(1 for e in have if e in known and known[e][0] < o.invoke) >= due:
            continue
        e = next(x for _, x in order[:due] if x not in have)
        m = ops[known[e][1]]
        why = (f"acknowledged at {m.complete_s:.3f}s: {_desc(m)}" if m.kind == APPEND else
               f"in the read by {m.client} done at {m.complete_s:.3f}s")
        out.append(Violation(
            check=STALE_SET_READ, key=key, element=e, t_s=o.complete_s,
            detail=f"{key}: the read by {o.client} [{o.invoke_s:.3f}s..{o.complete_s:.3f}s] "
            f"misses {e!r}, {why}", ops=_slice(ops, [known[e][1], r], appends.get(e))))
    return out
