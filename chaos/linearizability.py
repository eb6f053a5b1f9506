"""Linearizability of a key-value history, one register per key (WGL search).

Works on plain `Operation` records; it neither runs nor talks to a cluster.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"

READ = "read"
WRITE = "write"

# Completion of an operation whose outcome is unknown: it may take effect at
# any time after its invocation, or never.
_NEVER = 1 << 62


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on `key`.

    `invoke` and `complete` are positions in one global order of events
    (strictly increasing, distinct); `complete` is None unless `outcome` is
    ok or fail. A write's `value` must be unique in the history; a read's
    `value` is what it returned (None: the key was absent). A failed
    operation certainly had no effect; an unknown write may have had one.
    """

    client: str
    kind: str
    key: str
    value: str | None
    invoke: int
    complete: int | None
    outcome: str
    invoke_tick: int = 0
    complete_tick: int | None = None
    unit: str = "ticks"  # what invoke_tick and complete_tick count

    def describe(self) -> str:
        end = "?" if self.complete_tick is None else str(self.complete_tick)
        arrow = "<-" if self.kind == READ else ":="
        return (f"{self.client} {self.kind} {self.key}{arrow}{self.value!r} "
                f"[{self.outcome}, {self.unit} {self.invoke_tick}..{end}]")


@dataclass(frozen=True, slots=True)
class NotLinearizable:
    """The operations on `key` have no linearization; `tick` is when the
    history first became impossible to explain."""

    key: str
    tick: int
    detail: str


def check_history(ops: Iterable[Operation]) -> list[NotLinearizable]:
    """Check each key's history on its own (registers compose: Herlihy and
    Wing's locality) and return one failure per non-linearizable key."""
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    out: list[NotLinearizable] = []
    for key in sorted(by_key):
        failure = check_register(key, by_key[key])
        if failure is not None:
            out.append(failure)
    return out


def check_register(key: str, ops: list[Operation]) -> NotLinearizable | None:
    """Wing & Gong's search with Lowe's memo of (linearized set, value).
    Raises ValueError if two writes of `key` carry the same value: the
    search's shortcuts are exact only for unique values."""
    values = [op.value for op in ops if op.kind == WRITE]
    if len(set(values)) != len(values) or None in values:
        raise ValueError(f"writes of {key!r} must carry unique, non-None values")
    read_values = {op.value for op in ops if op.kind == READ and op.outcome == OK}
    kept: list[Operation] = []
    for op in ops:
        if op.outcome == FAIL or (op.kind == READ and op.outcome != OK):
            continue
        # An unknown write that no read saw can always be left out: dropping
        # it from any linearization keeps every read's value.
        if op.kind == WRITE and op.outcome == UNKNOWN and op.value not in read_values:
            continue
        kept.append(op)
    written = {op.value for op in kept if op.kind == WRITE}
    for op in kept:
        if op.kind == READ and op.value is not None and op.value not in written:
            return NotLinearizable(key, _tick_of(op),
                                   f"{op.describe()} returned a value nobody wrote")
    return _search(key, kept)


def _tick_of(op: Operation) -> int:
    return op.complete_tick if op.complete_tick is not None else op.invoke_tick


def _search(key: str, ops: list[Operation]) -> NotLinearizable | None:
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    inv = [o.invoke for o in ops]
    comp = [o.complete if o.complete is not None and o.outcome == OK else _NEVER for o in ops]
    is_read = [o.kind == READ for o in ops]
    val = [o.value for o in ops]
    writer = {o.value: i for i, o in enumerate(ops) if o.kind == WRITE}
    required = 0
    for i, o in enumerate(ops):
        if o.outcome == OK:
            required |= 1 << i

    def window(mask: int) -> list[int]:
        """The pending operations that may go next: those invoked before any
        pending operation completed (real-time order). Scanning in invocation
        order from the first pending one, the bound only tightens."""
        lo = ((mask + 1) & ~mask).bit_length() - 1
        bound = _NEVER
        out: list[int] = []
        for i in range(lo, n):
            if inv[i] > bound:
                break
            if not mask >> i & 1:
                out.append(i)
                bound = min(bound, comp[i])
        return out

    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = [(0, None)]
    deepest: tuple[int, int, str | None] = (-1, 0, None)
    while stack:
        mask, state = stack.pop()
        # A pending read of the current value can go at once: no write can
        # bring a unique value back, so delaying it never helps.
        while True:
            cands = window(mask)
            now = [i for i in cands if is_read[i] and val[i] == state]
            if not now:
                break
            for i in now:
                mask |= 1 << i
        if (mask, state) in seen:
            continue
        seen.add((mask, state))
        if mask & required == required:
            return None
        done = mask.bit_count()
        if done > deepest[0]:
            deepest = (done, mask, state)
        wanted: set[str | None] = set()
        dead = False
        for i in cands:
            if is_read[i]:
                v = val[i]
                # Its value was written and overwritten already, or it wants
                # the initial value after a write: it can never fit.
                if v is None or mask >> writer[v] & 1:
                    dead = True
                    break
                wanted.add(v)
        if dead:
            continue
        writes = [i for i in cands if not is_read[i]]
        # Try first a write some pending read waits for, then by completion.
        writes.sort(key=lambda i: (val[i] not in wanted, comp[i]), reverse=True)
        stack.extend((mask | 1 << i, val[i]) for i in writes)
    _, mask, state = deepest
    pending = [i for i in range(n) if not mask >> i & 1]
    blocked = min(pending, key=lambda i: comp[i])
    stuck = ops[blocked]
    return NotLinearizable(
        key,
        _tick_of(stuck),
        f"no linearization of {n} operations on {key!r}: at best {n - len(pending)} "
        f"fit (value then {state!r}); {stuck.describe()} cannot follow",
    )
