"""The lock workload's checks (chaos/lock_checks.py) on small written-out
histories: correct ones pass, and a late write of a paused holder, a token
going back and two overlapping leaders are each named."""

from __future__ import annotations

from html import escape

from chaos import html_report
from chaos.linearizability import FAIL, OK
from chaos.lock_checks import (
    FENCED,
    LEADER,
    LOCK_FENCING,
    LOCK_WRITE,
    ONE_LEADER,
    RECIPE_EVENT,
    RECIPE_WATCH_END,
    lock_checks,
)
from chaos.report import MEANS, judge
from chaos.workload import OpRecord
from tests.chaos_runs import recorded_run

LOCK = "_lock/run/"
ELECT = "_election/run/"


class _H:
    """Builds a history in the order of the calls."""

    def __init__(self) -> None:
        self.ops: list[OpRecord] = []

    def _add(self, kind: str, client: str, key: str, value: str | None, rev: int,
             outcome: str = OK, error: str | None = None) -> None:
        pos = len(self.ops) + 1
        self.ops.append(OpRecord(client=client, kind=kind, key=key, value=value, invoke=pos,
                                 complete=pos, invoke_s=pos / 100, complete_s=pos / 100,
                                 outcome=outcome, error=error, revision=rev))

    def put(self, key: str, rev: int) -> None:
        self._add(RECIPE_EVENT, "recorder", key, "put", rev)

    def delete(self, key: str, rev: int) -> None:
        self._add(RECIPE_EVENT, "recorder", key, "delete", rev)

    def write(self, client: str, token: int, rev: int, accepted: bool = True) -> None:
        self._add(LOCK_WRITE, client, "run/fenced", str(token), rev,
                  outcome=OK if accepted else FAIL, error=None if accepted else FENCED)

    def leader(self, client: str, key: str, rev: int) -> None:
        self._add(LEADER, client, key, "run", rev)

    def covered(self, prefix: str, rev: int) -> None:
        self._add(RECIPE_WATCH_END, "recorder", prefix, None, rev)


def _two_holders() -> _H:
    """h1 holds from 10, h2 queues at 11 and gets the lock when h1's key goes at 13."""
    h = _H()
    h.put(LOCK + "a", 10)
    h.put(LOCK + "b", 11)
    h.write("h1", 10, 12)
    h.delete(LOCK + "a", 13)
    h.write("h2", 11, 14)
    h.delete(LOCK + "b", 15)
    return h


def test_writes_of_successive_holders_pass() -> None:
    """Each holder's write carries the token of the owner at its revision."""
    h = _two_holders()
    h.covered(LOCK, 15)
    found, stats = lock_checks(h.ops, LOCK)
    assert found == []
    assert stats.accepted == 2


def test_a_refused_late_write_is_fine() -> None:
    """A paused holder whose write the store fenced off breaks nothing."""
    h = _two_holders()
    h.write("h1", 10, 16, accepted=False)
    h.covered(LOCK, 16)
    found, stats = lock_checks(h.ops, LOCK)
    assert found == []
    assert stats.fenced == 1


def test_an_accepted_write_after_the_lock_moved_on_is_flagged() -> None:
    """h1 paused past its TTL: its key went at 13, h2 owns the lock, and
    h1's unfenced write at 14 was accepted anyway."""
    h = _H()
    h.put(LOCK + "a", 10)
    h.put(LOCK + "b", 11)
    h.delete(LOCK + "a", 13)
    h.write("h1", 10, 14)
    h.covered(LOCK, 14)
    found, _ = lock_checks(h.ops, LOCK)
    assert [v.check for v in found] == [LOCK_FENCING]
    assert "token 11's holder" in found[0].detail and "h1" in found[0].detail


def test_a_token_going_back_is_flagged() -> None:
    """A write with an older token after a newer one, even if each was the
    owner's when it applied, as far as the recorder knows."""
    h = _two_holders()
    h.write("h1", 10, 16)
    h.covered(LOCK, 16)
    found, _ = lock_checks(h.ops, LOCK)
    details = [v.detail for v in found]
    assert all(v.check == LOCK_FENCING for v in found)
    assert any("newer token 11" in d for d in details)
    assert any("when the lock was nobody's" in d for d in details)


def test_writes_past_the_recorded_history_are_reported_unchecked() -> None:
    """A recorder that fell short leaves writes unchecked, and says so."""
    h = _two_holders()
    h.covered(LOCK, 12)
    found, _ = lock_checks(h.ops, LOCK)
    assert [v.check for v in found] == [LOCK_FENCING]
    assert "unchecked" in found[0].detail


def test_successive_leaders_pass() -> None:
    """c2 becomes leader at the revision c1's key went."""
    h = _H()
    h.put(ELECT + "a", 20)
    h.leader("c1", ELECT + "a", 20)
    h.put(ELECT + "b", 21)
    h.put(ELECT + "a", 22)  # a proclaim: a put to an existing key changes no one's place
    h.delete(ELECT + "a", 23)
    h.leader("c2", ELECT + "b", 23)
    h.covered(ELECT, 23)
    found, stats = lock_checks(h.ops, LOCK)
    assert found == []
    assert stats.terms == 2


def test_overlapping_leaders_are_flagged() -> None:
    """c2 claimed leadership at 22 while c1's key lived until 23."""
    h = _H()
    h.put(ELECT + "a", 20)
    h.leader("c1", ELECT + "a", 20)
    h.put(ELECT + "b", 21)
    h.leader("c2", ELECT + "b", 22)
    h.delete(ELECT + "a", 23)
    h.covered(ELECT, 23)
    found, _ = lock_checks(h.ops, LOCK)
    assert {v.check for v in found} == {ONE_LEADER}
    assert any("ended at 23" in v.detail for v in found)
    assert any("store's oldest candidate was another key" in v.detail for v in found)


def test_a_claim_inside_a_long_term_is_flagged_after_a_short_one() -> None:
    """c1 leads from 20 to 40; c2's claim at 25 (ended 27) and c3's at 30
    both fall inside c1's term, and both are named."""
    h = _H()
    h.put(ELECT + "a", 20)
    h.leader("c1", ELECT + "a", 20)
    h.put(ELECT + "b", 21)
    h.put(ELECT + "c", 22)
    h.leader("c2", ELECT + "b", 25)
    h.delete(ELECT + "b", 27)
    h.leader("c3", ELECT + "c", 30)
    h.delete(ELECT + "a", 40)
    h.delete(ELECT + "c", 41)
    h.covered(ELECT, 41)
    found, _ = lock_checks(h.ops, LOCK)
    overlaps = [v for v in found if "term (from 20) ended at 40" in v.detail]
    assert {v.detail.split()[0] for v in overlaps} == {"c2", "c3"}


def test_the_verdict_and_the_page_list_the_lock_rows() -> None:
    """A run with the lock workload gets both rows in the verdict, with
    what they promise on the page; a late accepted write fails its row."""
    rec = recorded_run()
    assert judge(rec).checks[LOCK_FENCING] == "ok: no lock in this run"
    rec.lock_name = "run"
    h = _H()
    h.put(LOCK + "a", 10)
    h.put(LOCK + "b", 11)
    h.delete(LOCK + "a", 13)
    h.write("h1", 10, 14)
    h.covered(LOCK, 14)
    h.covered(ELECT, 14)
    rec.ops = sorted(rec.ops + h.ops, key=lambda o: o.invoke)
    v = judge(rec)
    assert v.checks[LOCK_FENCING].startswith("FAILED: 1 problem")
    assert v.checks[ONE_LEADER] == "ok: 0 terms of leadership, none overlapping"
    page = html_report.render(rec, v)
    assert escape(MEANS[LOCK_FENCING]) in page and escape(MEANS[ONE_LEADER]) in page
