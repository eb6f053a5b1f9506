"""The checks that read a run's client history: linearizability per key,
lost acknowledged writes, compare-and-set preconditions. Each finding is a
`Violation` carrying the smallest slice of history that shows it. Pure
functions of the operations; nothing here runs or talks to a node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chaos.invariants import Violation
from chaos.linearizability import OK, READ, UNKNOWN, WRITE, Operation, check_register
from chaos.record import FINAL_CLIENT
from chaos.workload import CAS, OpRecord, checker_ops

# Check names, as the verdict reports them.
ACKED_WRITES = "acknowledged writes"
LINEARIZABLE = "linearizable"
# How much of a key's history a slice shows around the operations that
# prove an anomaly: this many before the first and after the last.
SLICE_BEFORE = 6
SLICE_AFTER = 3


def _desc(o: OpRecord) -> str:
    what = f"{o.kind} {o.key}={o.value!r}"
    if o.kind == CAS:
        what = f"cas {o.key} {o.expected!r}->{o.value!r}"
    end = f"{o.complete_s:.3f}s" if o.outcome != UNKNOWN else "?"
    return f"{what} by {o.client} [{o.outcome}, {o.invoke_s:.3f}s..{end}]"


def key_slice(ops: Sequence[OpRecord], key: str, core: Iterable[int],
              before: int = SLICE_BEFORE, after: int = SLICE_AFTER) -> tuple[int, ...]:
    """Positions (in `ops`, ordered by invocation) of the operations on
    `key` that show an anomaly: the `core` ones, the operations concurrent
    with them, a few before and after, and the write behind every value a
    read in the slice returned."""
    mine = [i for i, o in enumerate(ops) if o.key == key]
    core = sorted(set(core))
    rank = {p: k for k, p in enumerate(mine)}
    ranks = [rank[c] for c in core if c in rank]
    if not ranks:
        return tuple(core)
    lo, hi = min(ranks), max(ranks)
    picked = set(core) | set(mine[max(0, lo - before): hi + after + 1])
    first, last = ops[core[0]], ops[core[-1]]
    for i in mine:  # concurrent with the core: their order is what is in question
        o = ops[i]
        if o.invoke < last.complete and o.complete > first.invoke:
            picked.add(i)
    writers = {o.value: i for i, o in ((i, ops[i]) for i in mine)
               if o.kind in (WRITE, CAS) and o.value is not None}
    for i in list(picked):
        o = ops[i]
        v = o.value if o.kind == READ else o.found
        if v is not None and v in writers:
            picked.add(writers[v])
    return tuple(sorted(picked))


def _truncated(key_ops: list[Operation], at: int) -> list[Operation]:
    """The key's history as it stood at position `at`: operations done by
    then, writes still running as unknown (they may or may not take
    effect), reads still running left out. Linearizable if the whole is."""
    out: list[Operation] = []
    for op in key_ops:
        if op.complete is not None and op.complete <= at:
            out.append(op)
        elif op.kind == WRITE and op.invoke < at:
            out.append(Operation(op.client, WRITE, op.key, op.value, op.invoke, None, UNKNOWN,
                                 op.invoke_tick, None, op.unit))
    return out


def linearizability(ops: Sequence[OpRecord], keys: Iterable[str]) -> list[Violation]:
    """One violation per key whose history has no linearization, at the
    first completion after which none exists (a binary search over the
    history truncated at each completion), with the ops around it."""
    pos = {o.invoke: i for i, o in enumerate(ops)}
    by_key: dict[str, list[Operation]] = {}
    for op in checker_ops(ops):
        by_key.setdefault(op.key, []).append(op)
    out: list[Violation] = []
    for key in sorted(set(keys) | set(by_key)):
        kops = sorted(by_key.get(key, []), key=lambda o: o.invoke)
        whole = check_register(key, kops)
        if whole is None:
            continue
        # Truncated at the last completion it is the whole history (a write
        # invoked after every completion can go last), so that one fails.
        ends = sorted(o.complete for o in kops if o.complete is not None)
        lo, hi = 0, len(ends) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if check_register(key, _truncated(kops, ends[mid])) is None:
                lo = mid + 1
            else:
                hi = mid
        first = check_register(key, _truncated(kops, ends[lo])) or whole
        culprit = next(o for o in kops if o.complete == ends[lo])
        at = pos[culprit.invoke]
        out.append(Violation(check=LINEARIZABLE, key=key, t_s=ops[at].complete_s,
                             detail=f"{key}: {first.detail}",
                             ops=key_slice(ops, key, [at])))
    return out


def lost_writes(ops: Sequence[OpRecord], keys: Iterable[str]) -> list[Violation]:
    """Acknowledged writes that the final linearizable read of their key
    cannot be reconciled with. With unique values the final value names the
    write that produced it (W); an acknowledged write invoked after W had
    completed was ordered after W, so it must have replaced W's value: if W's
    value is still there, that write is lost. A final value of nothing, while
    some write was acknowledged, loses them all."""
    out: list[Violation] = []
    finals = {o.key: i for i, o in enumerate(ops) if o.client == FINAL_CLIENT and o.kind == READ}
    for key in keys:
        fi = finals.get(key)
        fin = None if fi is None else ops[fi]
        if fin is None or fi is None or fin.outcome != OK:
            out.append(Violation(check=ACKED_WRITES, key=key, detail=(
                f"{key}: the final read did not succeed, so no acknowledged write of it can "
                "be shown present"), ops=() if fi is None else (fi,)))
            continue
        writes = [i for i, o in enumerate(ops) if o.key == key and o.kind in (WRITE, CAS)
                  and o.outcome != "fail"]
        acked = [i for i in writes if ops[i].outcome == OK]
        if fin.value is None:
            out += [Violation(check=ACKED_WRITES, key=key, t_s=fin.complete_s,
                              detail=f"{key}: acknowledged {_desc(ops[w])} is lost (the key "
                              "is absent)", ops=key_slice(ops, key, [w, fi], after=0))
                    for w in acked]
            continue
        by = [i for i in writes if ops[i].value == fin.value]
        if not by:
            out.append(Violation(check=ACKED_WRITES, key=key, t_s=fin.complete_s, detail=(
                f"{key}: final value {fin.value!r} was written by no operation"),
                ops=key_slice(ops, key, [fi], after=0)))
            continue
        w0 = ops[by[0]]
        if w0.outcome != OK:
            continue  # an unknown write may have taken effect as late as the end
        out += [Violation(check=ACKED_WRITES, key=key, t_s=fin.complete_s, detail=(
            f"{key}: acknowledged {_desc(ops[w])} is lost: it began after {_desc(w0)} had "
            f"completed, yet the final value is {fin.value!r}"),
            ops=key_slice(ops, key, [by[0], w, fi], before=2, after=0))
            for w in acked if ops[w].invoke > w0.complete]
    return out


def cas_preconditions(ops: Sequence[OpRecord]) -> list[Violation]:
    """The parts of a compare-and-set's contract the register model leaves
    out. With unique values and no deletes, a key holds a value at most once,
    so two successful cas from the same expected value cannot both be right;
    and a cas that succeeded expecting the key absent must not follow a write
    that had already completed."""
    out: list[Violation] = []
    from_value: dict[tuple[str, str | None], int] = {}
    for i in sorted((i for i, o in enumerate(ops) if o.kind == CAS and o.outcome == OK),
                    key=lambda i: ops[i].invoke):
        op = ops[i]
        prev = from_value.get((op.key, op.expected))
        if prev is not None:
            out.append(Violation(check=LINEARIZABLE, key=op.key, t_s=op.complete_s, detail=(
                f"{op.key}: {_desc(ops[prev])} and {_desc(op)} both succeeded from "
                f"{op.expected!r}"), ops=key_slice(ops, op.key, [prev, i], before=2)))
        from_value[(op.key, op.expected)] = i
        if op.expected is None:
            earlier = [j for j, w in enumerate(ops) if w.key == op.key
                       and w.kind in (WRITE, CAS) and w.outcome == OK and w.complete < op.invoke]
            if earlier:
                out.append(Violation(check=LINEARIZABLE, key=op.key, t_s=op.complete_s, detail=(
                    f"{op.key}: {_desc(op)} found the key absent after {_desc(ops[earlier[0]])} "
                    "had completed"), ops=key_slice(ops, op.key, [earlier[0], i], before=1)))
    return out


def time_slice(ops: Sequence[OpRecord], t_s: float, most: int = 8) -> tuple[int, ...]:
    """For a finding about no key: the operations nearest to `t_s`."""
    near = sorted(range(len(ops)), key=lambda i: abs(ops[i].complete_s - t_s))[:most]
    return tuple(sorted(near))
