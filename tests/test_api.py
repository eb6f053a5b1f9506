"""`ClientApi` against a stand-in core and the real state machine: who gets
which answer when entries apply, the leader's clock stamps, and refusals."""

from __future__ import annotations

from typing import Any, cast

import msgspec

from node.api import ClientApi, ClientResponse, decode_responses
from node.errors import NotLeader
from node.raft.core import RaftCore
from node.state.kv import Command, KVStore, decode_command


class _Core:
    """Just what ClientApi uses of a core: propose, read_index, term, leader."""

    def __init__(self) -> None:
        self.term = 1
        self.leader: str | None = "n1"
        self.leading = True
        self.log: list[tuple[int, bytes]] = []  # (term, data) at index i + 1
        self.calls: list[int] = []  # how many commands each propose_many had
        self.room: int | None = None  # how many the next propose_many takes

    def propose(self, data: bytes) -> int:
        if not self.leading:
            raise NotLeader(self.leader)
        self.log.append((self.term, data))
        return len(self.log)

    def propose_many(self, datas: list[bytes]) -> tuple[int, str | None]:
        if not self.leading:
            raise NotLeader(self.leader)
        self.calls.append(len(datas))
        taken = datas if self.room is None else datas[:self.room]
        for data in taken:
            self.propose(data)
        return len(taken), None if len(taken) == len(datas) else "overloaded"

    def read_index(self, ctx: bytes) -> None:
        raise NotLeader(self.leader)


class _Api:
    """A ClientApi wired to a fake core, a real KVStore and a fake clock."""

    def __init__(self) -> None:
        self.core = _Core()
        self.kv = KVStore()
        self.now = 100.0
        self.sent: list[ClientResponse] = []
        self.api = ClientApi("n1", cast(RaftCore, self.core), self.kv, self._reply, {},
                             lambda _: None, monotonic=lambda: self.now)

    def _reply(self, route: list[bytes], data: bytes) -> None:
        self.sent.extend(decode_responses(data))

    def request(self, **req: Any) -> None:
        self.api.handle([b"c"], msgspec.msgpack.encode(req))

    def apply(self, index: int, term: int, data: bytes) -> None:
        """Apply `data` as the entry (index, term), as the runner would."""
        self.api.applied(self.kv.apply(index, data), index, term)

    def apply_log(self) -> None:
        for i in range(self.kv.applied_index + 1, len(self.core.log) + 1):
            term, data = self.core.log[i - 1]
            self.apply(i, term, data)


def test_registration_is_answered_with_the_index_of_its_entry() -> None:
    """A register request is answered, once applied, with its entry's index as the session."""
    t = _Api()
    t.request(op="register", id=5)
    assert t.sent == []
    t.apply_log()
    assert [(r.id, r.ok, r.session, r.index) for r in t.sent] == [(5, True, 1, 1)]


def test_another_leaders_entry_at_the_index_does_not_answer_a_registration() -> None:
    """If a new leader put another entry at the index a registration was
    proposed at, applying it answers nobody: no client gets another's session."""
    t = _Api()
    t.request(op="register", id=5)
    other = t.core.log[0][1]  # a registration of the same shape, of term 2
    t.apply(1, 2, other)
    assert t.sent == []
    t.api.lost_leadership()
    assert [(r.id, r.error) for r in t.sent] == [(5, "leader_changed")]


def test_a_retry_in_flight_is_answered_with_the_first() -> None:
    """A write resent before it applies is proposed once; both attempts get the answer."""
    t = _Api()
    t.request(op="register", id=1)
    t.apply_log()
    sid = t.sent.pop().session
    for rid in (2, 3):
        t.request(op="put", id=rid, session=sid, seq=1, key="k", value=b"v")
    assert len(t.core.log) == 2, "the retry was not proposed again"
    t.apply_log()
    assert sorted((r.id, r.ok, r.index) for r in t.sent) == [(2, True, 2), (3, True, 2)]


def test_first_outstanding_above_seq_is_a_bad_request() -> None:
    """A write claiming it needs no answer at or below its own seq is refused unproposed."""
    t = _Api()
    t.request(op="put", id=2, session=1, seq=3, first_outstanding=4, key="k", value=b"v")
    assert [(r.id, r.error) for r in t.sent] == [(2, "bad_request")]
    assert t.core.log == []


def test_the_leader_stamps_its_clock_from_the_log_clock_onwards() -> None:
    """Stamps start at the log's clock when a term's first proposal is made
    and advance with this node's own clock; a new term starts over from the
    log's clock."""
    t = _Api()
    t.request(op="register", id=1)
    t.now += 2.5
    t.request(op="register", id=2)
    stamps = [decode_command(d).time_ms for _, d in t.core.log]
    assert stamps == [0, 2500]
    t.apply_log()
    assert t.kv.clock_ms == 2500
    t.core.term = 2  # leads again, in a later term, its clock having run on
    t.now += 100.0
    t.request(op="register", id=3)
    assert decode_command(t.core.log[-1][1]).time_ms == 2500


def test_stamps_are_what_expire_sessions() -> None:
    """A session idle longer than the timeout by the stamps is expired for
    every replica, and its write is refused."""
    t = _Api()
    t.kv = KVStore(session_timeout_ms=1_000)
    t.api.kv = t.kv
    t.request(op="register", id=1)
    t.request(op="register", id=2)
    t.apply_log()
    idle = t.sent[0].session
    t.now += 5.0
    t.request(op="register", id=3)  # a stamp 5 s later: the idle ones expire
    t.apply_log()
    t.sent.clear()
    t.request(op="put", id=4, session=idle, seq=1, key="k", value=b"v")
    t.apply_log()
    assert [(r.id, r.error) for r in t.sent] == [(4, "session_expired")]
    assert t.kv.get("k") is None
    assert isinstance(decode_command(t.core.log[-1][1]), Command)


def test_a_transaction_is_one_entry_answered_with_each_operation() -> None:
    """A txn request becomes one log entry; its answer carries whether the
    compares held, the revision and each operation's result."""
    t = _Api()
    t.request(op="register", id=1)
    t.apply_log()
    sid = t.sent.pop().session
    t.request(op="txn", id=2, session=sid, seq=1,
              compare=[{"key": "k", "target": "version", "cmp": "=", "value": 0}],
              success=[{"op": "put", "key": "k", "value": b"v"},
                       {"op": "range", "key": "k"}])
    assert len(t.core.log) == 2
    t.apply_log()
    r = t.sent.pop()
    assert r.ok and r.succeeded and r.revision == 2 and r.responses is not None
    assert [x.op for x in r.responses] == ["put", "range"]
    assert r.responses[1].kvs is not None and r.responses[1].kvs[0].value == b"v"


def test_oversized_or_contradictory_transactions_are_refused_unproposed() -> None:
    """More than MAX_TXN_OPS items, or a branch that writes a key twice, is
    a bad_request before anything enters the log."""
    t = _Api()
    many = [{"op": "put", "key": f"k{i}", "value": b""} for i in range(129)]
    t.request(op="txn", id=3, session=1, seq=1, success=many)
    t.request(op="txn", id=4, session=1, seq=2,
              success=[{"op": "put", "key": "k", "value": b""},
                       {"op": "delete", "key": "", "prefix": True}])
    assert [(r.id, r.error) for r in t.sent] == [(3, "bad_request"), (4, "bad_request")]
    assert "puts and deletes" in (t.sent[1].message or "") and not t.core.log


def _session(t: _Api) -> int:
    t.request(op="register", id=1)
    t.apply_log()
    sid = t.sent.pop().session
    assert sid is not None
    return sid


def test_the_writes_of_a_batch_go_into_the_log_together_in_order() -> None:
    """Between begin_batch and end_batch, writes are proposed with one call, in
    the order they came; a retry in the batch waits with its first."""
    t = _Api()
    sid = _session(t)
    t.api.begin_batch()
    for seq in (1, 2, 3):
        t.request(op="put", id=10 + seq, session=sid, seq=seq, key=f"k{seq}", value=b"v")
    t.request(op="put", id=20, session=sid, seq=2, key="k2", value=b"v")  # a retry
    assert len(t.core.log) == 1, "a write was proposed before the batch ended"
    t.api.end_batch()
    assert t.core.calls == [3]
    writes = [decode_command(data).body for _, data in t.core.log[1:]]
    assert [w.seq for w in writes] == [1, 2, 3]  # type: ignore[union-attr]
    t.apply_log()
    assert sorted(r.id for r in t.sent) == [11, 12, 13, 20]
    assert all(r.ok for r in t.sent)


def test_a_batch_the_log_cannot_take_whole_refuses_its_tail_as_busy() -> None:
    """Past the bound on uncommitted bytes the core takes a prefix: the writes
    after it are answered `busy`, and none of them waits any more."""
    t = _Api()
    sid = _session(t)
    t.core.room = 1
    t.api.begin_batch()
    for seq in (1, 2, 3):
        t.request(op="put", id=10 + seq, session=sid, seq=seq, key="k", value=b"v")
    t.api.end_batch()
    assert sorted((r.id, r.error) for r in t.sent) == [(12, "busy"), (13, "busy")]
    t.sent.clear()
    t.apply_log()
    assert [(r.id, r.ok) for r in t.sent] == [(11, True)]


def test_other_proposals_go_after_the_writes_before_them() -> None:
    """Closing a session after writes of the same batch: the writes enter the
    log first, as they came, so they are applied and not refused."""
    t = _Api()
    sid = _session(t)
    t.api.begin_batch()
    t.request(op="put", id=11, session=sid, seq=1, key="k", value=b"v")
    t.request(op="close_session", id=12, session=sid)
    t.api.end_batch()
    kinds = [type(decode_command(data).body).__name__ for _, data in t.core.log[1:]]
    assert kinds == ["Write", "CloseSession"]
    t.apply_log()
    assert [(r.id, r.ok) for r in t.sent] == [(11, True), (12, True)]


def test_a_batch_that_finds_no_leader_answers_every_write_not_leader() -> None:
    t = _Api()
    sid = _session(t)
    t.api.begin_batch()
    for seq in (1, 2):
        t.request(op="put", id=10 + seq, session=sid, seq=seq, key="k", value=b"v")
    t.core.leading = False
    t.api.end_batch()
    assert [(r.id, r.error) for r in t.sent] == [(11, "not_leader"), (12, "not_leader")]
