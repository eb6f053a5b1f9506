"""The checks of the lock workload (chaos/lock_workload.py): fencing and
one leader per election, judged against the store's own history of the
lock's and the election's keys, which a recorder watched from the run's
first revision. Who owns a lock or leads an election at a revision is
the store's answer (the live key with the oldest create revision), not
what a holder believed: a holder paused past its TTL still believes.

Lock fencing: accepted guarded writes carry non-decreasing tokens in the
store's revision order, and each one carried the token of the owner at
its revision. Election: the intervals [became leader, key deleted) of the
campaigners never overlap, and each began when the store said so.
Pure functions of the operations.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from chaos.checks import time_slice
from chaos.invariants import Violation
from chaos.linearizability import OK
from chaos.workload import OpRecord

# Kinds of the records the lock workload makes.
LOCK_WRITE = "lock-write"  # a guarded write: `value` its token, `revision` where it applied
LOCK_ACQUIRE = "lock-acquire"  # `value` the token, `revision` where the store granted it
LEADER = "elect-leader"  # `key` the candidate's key, `revision` where it became leader
RECIPE_EVENT = "recipe-event"  # a change of a lock or election key: `value` put or delete
RECIPE_WATCH_END = "recipe-watch-end"  # how far the recorder of `key` (a prefix) got
# The error of a guarded write the store refused: the writer no longer owned the lock.
FENCED = "fenced"

# Check names, as the verdict reports them.
LOCK_FENCING = "lock fencing"
ONE_LEADER = "one leader per election"
# Findings of one check past this many are left out.
_MOST = 20


@dataclass(frozen=True)
class LockStats:
    """What the checks looked at, for the verdict's rows."""

    acquired: int
    accepted: int
    fenced: int
    terms: int


class Owners:
    """Who owns each prefix (lock or election) at each revision, from the
    recorded changes of its keys: the create revision of its oldest key."""

    def __init__(self, ops: Sequence[OpRecord]) -> None:
        self._revs: dict[str, list[int]] = {}
        self._owner: dict[str, list[int]] = {}
        self.created: dict[str, int] = {}  # key -> its create revision
        self.deleted: dict[str, int] = {}  # key -> the revision it went
        self.covered: dict[str, int] = {}  # prefix -> revision the recorder reached
        live: dict[str, dict[str, int]] = {}
        events = sorted((o for o in ops if o.kind == RECIPE_EVENT and o.revision is not None),
                        key=lambda o: (o.revision or 0, o.invoke))
        for o in events:
            rev, prefix = o.revision or 0, _prefix_of(o.key)
            keys = live.setdefault(prefix, {})
            if o.value == "put":
                keys.setdefault(o.key, rev)
                self.created.setdefault(o.key, rev)
            else:
                keys.pop(o.key, None)
                self.deleted.setdefault(o.key, rev)
            revs, owner = self._revs.setdefault(prefix, []), self._owner.setdefault(prefix, [])
            now = min(keys.values(), default=0)
            if revs and revs[-1] == rev:
                owner[-1] = now
            else:
                revs.append(rev)
                owner.append(now)
        for o in ops:
            if o.kind == RECIPE_WATCH_END and o.outcome == OK and o.revision is not None:
                self.covered[o.key] = max(self.covered.get(o.key, 0), o.revision)

    def at(self, prefix: str, revision: int) -> int:
        """The owner's create revision at `revision` (0: nobody)."""
        revs = self._revs.get(prefix, [])
        k = bisect.bisect_right(revs, revision)
        return self._owner[prefix][k - 1] if k else 0


def _prefix_of(key: str) -> str:
    return key[: key.rfind("/") + 1]


def _v(check: str, ops: Sequence[OpRecord], o: OpRecord, detail: str) -> Violation:
    return Violation(check=check, key=o.key, t_s=o.complete_s, detail=detail,
                     ops=time_slice(ops, o.complete_s))


def lock_fencing(ops: Sequence[OpRecord], owners: Owners, lock_prefix: str) -> list[Violation]:
    """Accepted guarded writes: tokens non-decreasing in revision order, and
    each the token of the lock's owner at the write's revision."""
    out: list[Violation] = []
    accepted = sorted((o for o in ops if o.kind == LOCK_WRITE and o.outcome == OK
                       and o.revision is not None and o.value is not None),
                      key=lambda o: o.revision or 0)
    covered = owners.covered.get(lock_prefix, 0)
    if accepted and covered < (accepted[-1].revision or 0):
        out.append(_v(LOCK_FENCING, ops, accepted[-1], (
            f"the lock's history was recorded only to revision {covered}, short of the last "
            f"accepted write at {accepted[-1].revision}: the writes after it are unchecked")))
    prev: OpRecord | None = None
    for o in accepted:
        token, rev = int(o.value or 0), o.revision or 0
        if prev is not None and token < int(prev.value or 0):
            out.append(_v(LOCK_FENCING, ops, o, (
                f"{o.client} wrote with token {token} at revision {rev}, after {prev.client} "
                f"wrote with the newer token {prev.value} at revision {prev.revision}")))
        prev = o
        owner = owners.at(lock_prefix, rev)
        if rev <= covered and owner != token:
            whose = f"token {owner}'s holder" if owner else "nobody"
            out.append(_v(LOCK_FENCING, ops, o, (
                f"{o.client}'s write with token {token} was accepted at revision {rev}, when "
                f"the lock was {whose}'s")))
    return out[:_MOST]


def one_leader(ops: Sequence[OpRecord], owners: Owners) -> list[Violation]:
    """Per election: the campaigners' terms [became leader, key deleted)
    never overlap, and each began when the store made its key the oldest."""
    out: list[Violation] = []
    claims = sorted((o for o in ops if o.kind == LEADER and o.outcome == OK
                     and o.revision is not None), key=lambda o: o.revision or 0)
    open_terms: dict[str, tuple[OpRecord, float]] = {}
    for o in claims:
        prefix, became = _prefix_of(o.key), o.revision or 0
        last = open_terms.get(prefix)
        if last is not None and last[1] > became:
            ended = "still held" if last[1] == float("inf") else f"ended at {int(last[1])}"
            out.append(_v(ONE_LEADER, ops, o, (
                f"{o.client} became leader of {prefix} at revision {became} while "
                f"{last[0].client}'s term (from {last[0].revision}) {ended}")))
        went = owners.deleted.get(o.key)
        end = float("inf") if went is None else float(went)
        # The term that ends last so far: a later claim must begin after it.
        if last is None or end > last[1]:
            open_terms[prefix] = (o, end)
        covered = owners.covered.get(prefix, 0)
        if became <= covered and owners.at(prefix, became) != owners.created.get(o.key):
            out.append(_v(ONE_LEADER, ops, o, (
                f"{o.client} believed it led {prefix} from revision {became}, where the "
                f"store's oldest candidate was another key")))
    return out[:_MOST]


def lock_checks(ops: Sequence[OpRecord], lock_prefix: str) -> tuple[list[Violation], LockStats]:
    """Both checks, and what they looked at."""
    owners = Owners(ops)
    found = lock_fencing(ops, owners, lock_prefix) + one_leader(ops, owners)
    stats = LockStats(
        acquired=sum(1 for o in ops if o.kind == LOCK_ACQUIRE and o.outcome == OK),
        accepted=sum(1 for o in ops if o.kind == LOCK_WRITE and o.outcome == OK),
        fenced=sum(1 for o in ops if o.kind == LOCK_WRITE and o.error == FENCED),
        terms=sum(1 for o in ops if o.kind == LEADER and o.outcome == OK))
    return found, stats

