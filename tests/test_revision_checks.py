"""The txn workload's checks (chaos/revision_checks.py, and the per-key
register check of chaos/checks.py on its operations) on small written-out
histories: a correct one passes, and each kind of anomaly is named."""

from __future__ import annotations

from chaos import checks
from chaos.linearizability import OK, UNKNOWN
from chaos.revision_checks import TXN_ORDER, WATCH_DELIVERY, revision_checks
from chaos.txn_workload import WATCH_END, WATCH_EVENT, WATCH_START
from chaos.workload import RANGE, TXN, OpRecord, RevKV

KEYS = ["t0", "t1"]


class _H:
    """Builds a history: each op takes the next two positions unless told."""

    def __init__(self) -> None:
        self.ops: list[OpRecord] = []
        self.pos = 0

    def _op(self, kind: str, client: str, key: str, inv: int | None, comp: int | None,
            **kw: object) -> OpRecord:
        if inv is None:
            self.pos += 1
            inv = self.pos
        if comp is None:
            self.pos += 1
            comp = self.pos
        o = OpRecord(client=client, kind=kind, key=key, value=kw.pop("value", None),  # type: ignore[arg-type]
                     invoke=inv, complete=comp, invoke_s=inv / 100, complete_s=comp / 100,
                     outcome=kw.pop("outcome", OK), **kw)  # type: ignore[arg-type]
        self.ops.append(o)
        return o

    def txn(self, rev: int, writes: dict[str, str], inv: int | None = None,
            comp: int | None = None, outcome: str = OK) -> None:
        first = next(iter(writes))
        self._op(TXN, "c1", first, inv, comp, value=writes[first], writes=writes,
                 revision=rev, outcome=outcome)

    def range(self, rev: int, kvs: list[tuple[str, str, int]], inv: int | None = None,
              comp: int | None = None) -> None:
        self._op(RANGE, "c2", "t", inv, comp, revision=rev, scope=KEYS,
                 kvs=[RevKV(k, v, m) for k, v, m in kvs])

    def watcher(self, name: str, start: int, events: list[tuple[str, str, int]],
                end: int) -> None:
        self._op(WATCH_START, name, "t", None, None, revision=start)
        for k, v, r in events:
            self._op(WATCH_EVENT, name, k, None, None, value=v, revision=r)
        self._op(WATCH_END, name, "t", None, None, revision=end)


def _good() -> _H:
    h = _H()
    h.txn(2, {"t0": "a"})
    h.txn(3, {"t0": "b", "t1": "c"})
    h.range(3, [("t0", "b", 3), ("t1", "c", 3)])
    h.txn(4, {"t1": "d"})
    h.watcher("w1", 2, [("t0", "a", 2), ("t0", "b", 3), ("t1", "c", 3), ("t1", "d", 4)], 4)
    return h


def _checks(h: _H) -> list[str]:
    found, _ = revision_checks(h.ops)
    return sorted({v.check for v in found})


def test_a_correct_history_passes_every_check() -> None:
    """Writes in revision order, a range read of one revision, a watcher with all of it."""
    h = _good()
    found, stats = revision_checks(h.ops)
    assert found == [] and stats.txns == 3 and stats.ranges == 1 and stats.events == 4
    assert checks.linearizability(h.ops, KEYS) == []


def test_two_writes_answered_one_revision_are_caught() -> None:
    """Distinct transactions that wrote must have distinct revisions."""
    h = _good()
    h.txn(4, {"t0": "e"})
    assert TXN_ORDER in _checks(h)


def test_a_revision_against_real_time_is_caught() -> None:
    """A write that began after another completed cannot have a lower revision."""
    h = _H()
    h.txn(5, {"t0": "a"})
    h.txn(4, {"t1": "b"})
    assert TXN_ORDER in _checks(h)


def test_a_range_read_that_sees_half_a_transaction_is_caught() -> None:
    """A read at revision 3 that shows t1 from before revision 3's transaction
    saw only half of it: not the store at one revision."""
    h = _H()
    h.txn(2, {"t1": "x"})
    h.txn(3, {"t0": "b", "t1": "c"})
    h.range(3, [("t0", "b", 3), ("t1", "x", 2)])
    assert _checks(h) == [TXN_ORDER]


def test_a_stale_range_read_is_caught_by_both_checks() -> None:
    """A read that began after a write was acknowledged but shows the value
    before it breaks real-time order and per-key linearizability."""
    h = _H()
    h.txn(2, {"t0": "a"})
    h.txn(3, {"t0": "b"})
    h.range(2, [("t0", "a", 2)])
    assert _checks(h) == [TXN_ORDER]
    assert [v.key for v in checks.linearizability(h.ops, KEYS)] == ["t0"]


def test_an_unknown_transaction_may_show_up_later() -> None:
    """A transaction of unknown outcome seen by a later read is no anomaly."""
    h = _H()
    h.txn(0, {"t0": "u"}, outcome=UNKNOWN)
    h.range(2, [("t0", "u", 2)])
    assert _checks(h) == [] and checks.linearizability(h.ops, KEYS) == []


def test_a_watcher_that_misses_repeats_or_reorders_is_caught() -> None:
    """Every change once, in revision order, through the revision reached."""
    for events in ([("t0", "a", 2), ("t0", "b", 3), ("t1", "d", 4)],  # t1@3 missing
                   [("t0", "a", 2), ("t0", "b", 3), ("t1", "c", 3), ("t1", "c", 3),
                    ("t1", "d", 4)],  # repeated
                   [("t0", "a", 2), ("t0", "b", 3), ("t1", "d", 4), ("t1", "c", 3)],
                   [("t0", "a", 2), ("t0", "z", 3), ("t1", "c", 3), ("t1", "d", 4)]):
        h = _good()
        h.watcher("w2", 2, events, 4)
        found, _ = revision_checks(h.ops)
        assert [v.check for v in found] and all(v.check == WATCH_DELIVERY for v in found), events
        assert all("w2" in v.detail for v in found)


def test_a_watcher_that_did_not_catch_up_is_caught() -> None:
    """A watcher whose end says it stopped short fails the check."""
    h = _good()
    h._op(WATCH_START, "w3", "t", None, None, revision=2)
    h._op(WATCH_END, "w3", "t", None, None, revision=2, error="stopped before catching up")
    assert _checks(h) == [WATCH_DELIVERY]
