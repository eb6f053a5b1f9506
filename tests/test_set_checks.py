"""The set checks on hand-made histories: an acknowledged element missing,
one present twice, one nobody appended or whose append was refused, a read
that misses a known element; each reported with its element, the append
behind it and a slice, and each its own row of the verdict."""

from __future__ import annotations

import msgspec

from chaos.linearizability import FAIL, OK, UNKNOWN
from chaos.record import FINAL_CLIENT
from chaos.report import judge
from chaos.set_checks import (
    DUPLICATED_ELEMENTS,
    LOST_ELEMENTS,
    MOST_PER_KEY,
    STALE_SET_READ,
    UNEXPECTED_ELEMENTS,
    set_checks,
)
from chaos.workload import APPEND, OPEN_SESSION, READ_SET, OpRecord
from tests.chaos_runs import recorded_run

S = "set"


class _Ops:
    """Operations in invocation order, each taking 0.1 s unless told."""

    def __init__(self) -> None:
        self.ops: list[OpRecord] = []
        self.pos = 0

    def add(self, client: str, kind: str, t0: float, *, value: str | None = None,
            outcome: str = OK, elements: list[str] | None = None, t1: float | None = None,
            error: str | None = None, session: int | None = None, seq: int | None = None,
            key: str = S) -> int:
        self.pos += 2
        self.ops.append(OpRecord(
            client=client, kind=kind, key=key, value=value, invoke=self.pos - 1,
            complete=self.pos, invoke_s=t0, complete_s=t1 if t1 is not None else t0 + 0.1,
            outcome=outcome, error=error, elements=elements, session=session, seq=seq,
            index=self.pos if outcome == OK and kind == APPEND else None))
        return len(self.ops) - 1

    def append(self, client: str, element: str, t0: float, outcome: str = OK,
               **kw: object) -> int:
        return self.add(client, APPEND, t0, value=element, outcome=outcome, session=7,
                        seq=int(element.rsplit("-", 1)[1]), **kw)  # type: ignore[arg-type]

    def read(self, client: str, t0: float, elements: list[str]) -> int:
        return self.add(client, READ_SET, t0, elements=elements)


def _clean() -> _Ops:
    h = _Ops()
    h.add("s1", OPEN_SESSION, 0.0, session=7)
    h.append("s1", "s1-1", 0.2)
    h.append("s1", "s1-2", 0.4, outcome=UNKNOWN)
    h.append("s1", "s1-3", 0.6, outcome=FAIL, error="session_expired")
    h.read("s2", 0.8, ["s1-1"])
    h.read(FINAL_CLIENT, 2.0, ["s1-1", "s1-2"])
    return h


def test_a_clean_set_history_passes() -> None:
    """Acknowledged once, unknown at most once, refused absent: nothing to report."""
    found, stats = set_checks(_clean().ops, [S])
    assert found == []
    assert (stats.acknowledged, stats.unknown, stats.present, stats.reads) == (1, 1, 2, 2)


def test_an_acknowledged_element_missing_at_the_end_is_lost() -> None:
    """The lost element is named, with its append (session, seq) and the final read."""
    h = _clean()
    h.ops[-1].elements = ["s1-2"]
    (v,) = [x for x in set_checks(h.ops, [S])[0] if x.check == LOST_ELEMENTS]
    assert v.element == "s1-1" and v.key == S
    assert "session 7, seq 1" in v.detail
    assert {h.ops[i].kind for i in v.ops} >= {APPEND, READ_SET}
    assert 1 in v.ops and len(h.ops) - 1 in v.ops


def test_an_element_present_twice_is_duplicated_whatever_its_outcome() -> None:
    """Twice in the final read is a duplicate, for an acknowledged and an
    unknown append alike, found in the earliest read that shows it."""
    h = _clean()
    h.ops[-1].elements = ["s1-1", "s1-2", "s1-1", "s1-2"]
    h.ops[1].attempts = 3
    found = [x for x in set_checks(h.ops, [S])[0] if x.check == DUPLICATED_ELEMENTS]
    assert sorted(x.element or "" for x in found) == ["s1-1", "s1-2"]
    assert all("2 times" in x.detail and "appended once" in x.detail for x in found)
    assert "(session 7, seq 1, sent 3 times)" in found[0].detail
    h.ops[4].elements = ["s1-1", "s1-1"]
    first = next(x for x in set_checks(h.ops, [S])[0] if x.element == "s1-1")
    assert "a read by s2" in first.detail and 4 in first.ops


def test_elements_never_appended_or_refused_are_unexpected() -> None:
    """An element nobody appended, or whose append certainly failed, must not be there."""
    h = _clean()
    h.ops[-1].elements = ["s1-1", "s1-3", "ghost-1"]
    found = {x.element: x for x in set_checks(h.ops, [S])[0]
             if x.check == UNEXPECTED_ELEMENTS}
    assert set(found) == {"s1-3", "ghost-1"}
    assert "refused" in found["s1-3"].detail and "nobody appended" in found["ghost-1"].detail


def test_a_read_that_misses_a_known_element_is_stale() -> None:
    """A read begun after an append was acknowledged, or after a read that
    held the element had completed, must hold it."""
    h = _clean()
    h.read("s3", 1.0, [])  # after s1-1 was acknowledged (0.3 s) and read (0.9 s)
    (v,) = [x for x in set_checks(h.ops, [S])[0] if x.check == STALE_SET_READ]
    assert v.element == "s1-1" and "the read by s3" in v.detail


def test_findings_per_key_are_capped_with_a_count_of_the_rest() -> None:
    """A flood of duplicates is shown as MOST_PER_KEY findings and one more counting the rest."""
    h = _Ops()
    n = MOST_PER_KEY + 5
    for k in range(1, n + 1):
        h.append("s1", f"s1-{k}", k * 0.01)
    h.read(FINAL_CLIENT, 5.0, [f"s1-{k}" for k in range(1, n + 1)] * 2)
    found = set_checks(h.ops, [S])[0]
    assert len(found) == MOST_PER_KEY + 1
    assert "and 5 more" in found[-1].detail


def test_each_set_check_is_its_own_row_of_the_verdict() -> None:
    """A run with sets: a duplicate fails its own row and no other set row."""
    rec = recorded_run()
    h = _clean()
    h.ops[-1].elements = ["s1-1", "s1-1", "s1-2"]
    base = max(o.complete for o in rec.ops)
    for o in h.ops:
        o.invoke += base
        o.complete += base
    rec = msgspec.structs.replace(rec, set_keys=[S], ops=sorted(rec.ops + h.ops,
                                                             key=lambda o: o.invoke))
    v = judge(rec)
    assert v.checks[DUPLICATED_ELEMENTS].startswith("FAILED")
    assert v.checks[LOST_ELEMENTS].startswith("ok") and v.checks[UNEXPECTED_ELEMENTS].startswith(
        "ok")
    assert not v.ok
