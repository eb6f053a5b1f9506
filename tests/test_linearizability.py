"""The register linearizability checker: hand-made histories, and agreement
with a brute-force search over every order on small random histories."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.linearizability import (
    FAIL,
    OK,
    READ,
    UNKNOWN,
    WRITE,
    Operation,
    check_history,
    check_register,
)


def op(client: str, kind: str, value: str | None, invoke: int, complete: int | None,
       outcome: str = OK, key: str = "k") -> Operation:
    return Operation(client, kind, key, value, invoke, complete, outcome, invoke,
                     complete)


def test_sequential_history_is_linearizable() -> None:
    """Reads that return the last completed write are accepted."""
    h = [op("a", WRITE, "1", 1, 2), op("b", READ, "1", 3, 4), op("a", WRITE, "2", 5, 6),
         op("b", READ, "2", 7, 8)]
    assert check_history(h) == []


def test_stale_read_is_rejected() -> None:
    """A read that starts after a write completed must not return the older value."""
    h = [op("a", WRITE, "1", 1, 2), op("a", WRITE, "2", 3, 4), op("b", READ, "1", 5, 6)]
    failures = check_history(h)
    assert len(failures) == 1 and failures[0].key == "k"
    assert "b read" in failures[0].detail and failures[0].tick == 6


def test_read_concurrent_with_write_may_see_either_value() -> None:
    """A read overlapping a write may return the old or the new value."""
    for seen in ("1", "2"):
        h = [op("a", WRITE, "1", 1, 2), op("a", WRITE, "2", 3, 6), op("b", READ, seen, 4, 5)]
        assert check_history(h) == [], seen


def test_read_of_absent_key_after_a_write_is_rejected() -> None:
    """Once a write completed, reading the initial (absent) value is stale."""
    h = [op("a", WRITE, "1", 1, 2), op("b", READ, None, 3, 4)]
    assert check_history(h)


def test_unknown_write_may_take_effect_late() -> None:
    """A write with an unknown outcome may be seen long after it was invoked."""
    h = [op("a", WRITE, "1", 1, None, UNKNOWN), op("b", READ, None, 2, 3),
         op("b", READ, "1", 10, 11), op("b", READ, "1", 12, 13)]
    assert check_history(h) == []


def test_unknown_write_cannot_take_effect_before_its_invocation() -> None:
    """A value read before its write was even invoked is impossible."""
    h = [op("b", READ, "1", 1, 2), op("a", WRITE, "1", 3, None, UNKNOWN)]
    assert check_history(h)


def test_failed_write_must_not_be_seen() -> None:
    """A write that certainly failed never took effect."""
    h = [op("a", WRITE, "1", 1, 2, FAIL), op("b", READ, "1", 3, 4)]
    failures = check_history(h)
    assert failures and "nobody wrote" in failures[0].detail


def test_values_flip_back_is_rejected() -> None:
    """Two sequential reads cannot observe 2 then 1 when 1 was overwritten by 2."""
    h = [op("a", WRITE, "1", 1, 2), op("a", WRITE, "2", 3, 8), op("b", READ, "2", 4, 5),
         op("c", READ, "1", 6, 7)]
    assert check_history(h)


def test_keys_are_checked_independently() -> None:
    """A stale read on one key is reported for that key only."""
    h = [op("a", WRITE, "1", 1, 2, key="x"), op("a", WRITE, "2", 3, 4, key="x"),
         op("b", READ, "1", 5, 6, key="x"), op("a", WRITE, "3", 1, 2, key="y"),
         op("b", READ, "3", 5, 6, key="y")]
    assert [f.key for f in check_history(h)] == ["x"]


def test_duplicate_write_values_are_refused() -> None:
    """The checker's shortcuts need unique written values; it says so."""
    h = [op("a", WRITE, "1", 1, 2), op("b", WRITE, "1", 3, 4)]
    with pytest.raises(ValueError, match="unique"):
        check_history(h)


def test_many_concurrent_clients_are_checked_quickly() -> None:
    """A linearizable history of 1000 operations from 20 clients is accepted
    (the search must not explode on concurrency)."""
    rng = random.Random(5)
    spans: list[tuple[float, float, float, int, bool]] = []
    free = [0.0] * 20
    for _ in range(1000):
        c = rng.randrange(20)
        start = free[c] + rng.random()
        end = start + rng.random() * 3
        free[c] = end
        spans.append((start, end, rng.uniform(start, end), c, rng.random() < 0.5))
    state: str | None = None
    values: dict[int, str | None] = {}
    for i in sorted(range(len(spans)), key=lambda i: spans[i][2]):
        if spans[i][4]:
            state = f"v{i}"
        values[i] = state if not spans[i][4] else f"v{i}"
    order = sorted((t, i, e) for i, s in enumerate(spans) for e, t in ((0, s[0]), (1, s[1])))
    at = {(i, e): k for k, (_, i, e) in enumerate(order)}
    h = [Operation(f"c{s[3]}", WRITE if s[4] else READ, "k", values[i], at[(i, 0)],
                   at[(i, 1)], OK) for i, s in enumerate(spans)]
    assert check_history(h) == []


def _brute_force(ops: list[Operation]) -> bool:
    """Is there an order of the ok operations plus some of the unknown writes,
    respecting real time, in which every read sees the latest write?"""
    ok = [o for o in ops if o.outcome == OK]
    unknown = [o for o in ops if o.outcome == UNKNOWN and o.kind == WRITE]
    for r in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, r):
            chosen = ok + list(extra)
            for order in itertools.permutations(chosen):
                if _legal(order):
                    return True
    return False


def _legal(order: tuple[Operation, ...]) -> bool:
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if b.complete is not None and b.outcome == OK and b.complete < a.invoke:
                return False
    state: str | None = None
    for o in order:
        if o.kind == WRITE:
            state = o.value
        elif o.value != state:
            return False
    return True


@st.composite
def _histories(draw: st.DrawFn) -> list[Operation]:
    n = draw(st.integers(1, 5))
    times = draw(st.permutations(list(range(1, 2 * n + 1))))
    ops: list[Operation] = []
    written: list[str] = []
    for i in range(n):
        a, b = sorted(times[2 * i : 2 * i + 2])
        kind = draw(st.sampled_from([READ, WRITE]))
        outcome = draw(st.sampled_from([OK, OK, OK, UNKNOWN, FAIL]))
        if kind == WRITE:
            value: str | None = f"v{i}"
            written.append(f"v{i}")
        else:
            value = draw(st.sampled_from([None, *(f"v{j}" for j in range(n))]))
            if outcome == UNKNOWN:
                outcome = FAIL
        ops.append(Operation(f"c{i}", kind, "k", value, a,
                             None if outcome == UNKNOWN else b, outcome, a, b))
    return ops


@settings(max_examples=200, deadline=None)
@given(_histories())
def test_search_agrees_with_brute_force(ops: list[Operation]) -> None:
    """On small histories the checker accepts exactly what exhaustive search accepts."""
    expected = _brute_force([o for o in ops if o.outcome != FAIL])
    assert (check_register("k", ops) is None) == expected
