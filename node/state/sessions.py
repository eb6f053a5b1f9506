"""Client sessions for exactly-once writes (Raft thesis §6.3, as LogCabin
does them): registered through the log, expired by the time the leader
stamps into the log, and holding the answers a client may still ask for.

Part of the replicated state machine: no clocks, I/O or randomness. Every
replica that applies the same entries keeps the same sessions, answers and
clock, byte for byte, so a retried write gets the same answer everywhere.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Iterable
from operator import attrgetter

import msgspec

from node.raft.messages import U64


class KV(msgspec.Struct, frozen=True, omit_defaults=True):
    """A key as a read or a transaction answers it: its value (left out for
    a keys-only read) and revisions (node/state/mvcc.py)."""

    key: str
    create_revision: int
    mod_revision: int
    version: int
    value: bytes | None = None


class OpResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one operation of a transaction did: `op` names it; a put's or
    delete's `prev` when asked for; a delete's count `deleted`; a read's
    `kvs`, `count` (in the whole range) and `more` (left out by a limit)."""

    op: str
    prev: KV | None = None
    deleted: int | None = None
    kvs: list[KV] | None = None
    count: int | None = None
    more: bool | None = None


class Result(msgspec.Struct, frozen=True, omit_defaults=True):
    """The outcome of one command. `value` is the previous value for put and
    delete when asked for (`prev`), and the current value when a cas fails;
    `error` is one of the codes of node/state/kv.py. A transaction answers
    whether its compares held (`succeeded`), what each operation did
    (`responses`) and the store's `revision` after it; a range delete how
    many keys went (`deleted`) and the revision; a lease's grant its id
    (`lease`) and TTL (`ttl_ms`)."""

    ok: bool
    value: bytes | None = None
    error: str | None = None
    revision: int | None = None
    deleted: int | None = None
    succeeded: bool | None = None
    responses: list[OpResult] | None = None
    # A lease's grant: its id and granted TTL (node/state/leases.py).
    lease: int | None = None
    ttl_ms: int | None = None


def fingerprint(op: msgspec.Raw) -> int:
    """What tells a retry of a write from another write under the same seq:
    the length and CRC-32 of the operation's bytes."""
    return (len(op) << 32) | zlib.crc32(op)


class Answer(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What a session's write `seq` got when it was applied at `index`.
    `fingerprint` identifies the operation, so a different write reusing
    the same seq is told apart from a retry. What an image holds."""

    seq: U64
    index: U64
    fingerprint: U64
    result: Result

    def fingerprinted(self) -> int:
        return self.fingerprint

    def sealed(self) -> Answer:
        """This answer as an image holds it."""
        return self


class KeptAnswer(Answer, frozen=True, array_like=True, gc=False):
    """An answer as the replica that applied a small write keeps it: the
    operation's bytes (`op`, a view of the entry's own bytes) instead of
    their fingerprint (0 here). Most answers are released unread, so the
    fingerprint is worked out only when a retry asks (`fingerprinted`) and
    when an image is made (`sealed`): never encoded itself, so images hold
    the four fields they always did."""

    op: msgspec.Raw

    def fingerprinted(self) -> int:
        return fingerprint(self.op)

    def sealed(self) -> Answer:
        return Answer(self.seq, self.index, fingerprint(self.op), self.result)


_seq = attrgetter("seq")


class Session:
    """One registered client: when it was last heard of (log time), the
    lowest seq whose answer it still needs, and the answers from there on."""

    __slots__ = ("answers", "first_outstanding", "id", "last_ms")

    def __init__(self, sid: int, last_ms: int, first_outstanding: int = 1,
                 answers: dict[int, Answer] | None = None) -> None:
        self.id = sid
        self.last_ms = last_ms
        self.first_outstanding = first_outstanding
        self.answers: dict[int, Answer] = answers if answers is not None else {}

    def release_below(self, first_outstanding: int) -> None:
        """The client needs no answer below `first_outstanding` any more."""
        if first_outstanding <= self.first_outstanding:
            return
        old, self.first_outstanding = self.first_outstanding, first_outstanding
        answers = self.answers
        if not answers:
            return
        if first_outstanding - old == 1:
            answers.pop(old, None)  # a client with one write in flight, moving on
        elif first_outstanding - old <= len(answers):
            # The usual step (a client with a few writes in flight moves on
            # by one or a few): drop those seqs, not rebuild the dict.
            for seq in range(old, first_outstanding):
                answers.pop(seq, None)
        else:
            self.answers = {s: a for s, a in answers.items() if s >= first_outstanding}


class SessionImage(msgspec.Struct, frozen=True, array_like=True):
    """A session as a snapshot image holds it."""

    id: U64
    last_ms: U64
    first_outstanding: U64
    answers: list[Answer]


class SessionTable:
    """The sessions of one state machine, oldest activity first.

    `timeout_ms`, `max_sessions` and `max_outstanding` are part of the
    replicated state's rules: every replica of a cluster must use the same.
    """

    def __init__(self, *, timeout_ms: int, max_sessions: int, max_outstanding: int) -> None:
        if timeout_ms < 1 or max_sessions < 1 or max_outstanding < 1:
            raise ValueError("session timeout and limits must be positive")
        self.timeout_ms = timeout_ms
        self.max_sessions = max_sessions
        self.max_outstanding = max_outstanding
        # The log's clock: the largest time a leader stamped on an applied
        # entry. Never goes back, even if a new leader's stamps lag.
        self.clock_ms = 0
        self._by_activity: collections.OrderedDict[int, Session] = collections.OrderedDict()
        # What this replica saw go since it started (not replicated: for status).
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._by_activity)

    def get(self, sid: int) -> Session | None:
        return self._by_activity.get(sid)

    def advance(self, time_ms: int) -> None:
        """An entry stamped `time_ms` is applied: move the clock and expire
        every session idle for longer than the timeout by that clock."""
        if time_ms <= self.clock_ms:
            # The clock did not move: what it expires went when it last did
            # (sessions registered or touched since are stamped with it).
            return
        self.clock_ms = time_ms
        horizon = self.clock_ms - self.timeout_ms
        sessions = self._by_activity
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest.last_ms >= horizon:
                break
            sessions.popitem(last=False)
            self.expired += 1

    def register(self, sid: int) -> Session:
        """A new session `sid` (the index of its registration entry); the
        oldest ones go if there are more than `max_sessions`."""
        s = Session(sid, self.clock_ms)
        self._by_activity[sid] = s
        while len(self._by_activity) > self.max_sessions:
            self._by_activity.popitem(last=False)
            self.evicted += 1
        return s

    def heard(self, sid: int) -> Session | None:
        """Session `sid`, its client heard from at the current log time (so
        it expires last); None if it is not open."""
        s = self._by_activity.get(sid)
        if s is not None:
            s.last_ms = self.clock_ms
            self._by_activity.move_to_end(sid)
        return s

    def close(self, sid: int) -> bool:
        """End a session at its client's request; False if it was not open."""
        return self._by_activity.pop(sid, None) is not None

    def image(self) -> list[SessionImage]:
        return [SessionImage(s.id, s.last_ms, s.first_outstanding,
                             [a.sealed() for a in sorted(s.answers.values(), key=_seq)])
                for s in self._by_activity.values()]

    def load(self, clock_ms: int, sessions: Iterable[SessionImage]) -> None:
        """Replace every session by those of an image, oldest activity first."""
        self.clock_ms = clock_ms
        self._by_activity = collections.OrderedDict(
            (s.id, Session(s.id, s.last_ms, s.first_outstanding, {a.seq: a for a in s.answers}))
            for s in sessions)


def check_images(clock_ms: int, applied_index: int, sessions: list[SessionImage]) -> str | None:
    """What is wrong with the sessions of an image, or None."""
    seen: set[int] = set()
    last_ms = 0
    for s in sessions:
        if s.id in seen:
            return f"session {s.id} appears twice"
        if not 0 < s.id <= applied_index:
            return f"session {s.id} is not an index at or below {applied_index}"
        if not last_ms <= s.last_ms <= clock_ms:
            return f"session {s.id} is out of activity order"
        if s.first_outstanding < 1:
            return f"session {s.id} has no outstanding seq"
        for a in s.answers:
            if a.seq < s.first_outstanding or a.index > applied_index or a.index < s.id:
                return f"session {s.id} holds an answer for seq {a.seq} it cannot have"
        if len({a.seq for a in s.answers}) != len(s.answers):
            return f"session {s.id} holds two answers for one seq"
        seen.add(s.id)
        last_ms = s.last_ms
    return None
