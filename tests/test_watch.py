"""`WatchHub` (node/watch.py) against the real state machine, a fake
connection and a fake clock: what a watch delivers and in which frames,
and how a slow, a compacted, a one-time and an idle watch end or go on."""

from __future__ import annotations

import msgspec
import pytest

from node.api import ClientResponse, decode_responses
from node.api_range import WatchCancelRequest, WatchRequest
from node.state.kv import Command, CompactHistory, KVStore, RegisterSession, Write, encode_command
from node.state.kv import encode_op as kv_encode_op
from node.state.ops import Delete, DeleteRange, Op, Put, Txn
from node.watch import SLOW_WATCHER, WatchHub

ROUTE = [b"conn"]


class _Conn:
    """A connection whose queue takes frames while `open`, goes away when `gone`."""

    def __init__(self) -> None:
        self.frames: list[ClientResponse] = []
        self.open = True
        self.gone = False

    def push(self, route: list[bytes], data: bytes) -> bool | None:
        if self.gone:
            return None
        if not self.open:
            return False
        self.frames.extend(decode_responses(data))
        return True


class _Setup:
    def __init__(self, **limits: int) -> None:
        self.kv = KVStore(history_revisions=limits.pop("history", 1000))
        self.conn = _Conn()
        self.now = 0.0
        self.hub = WatchHub("n1", self.kv, self.conn.push, lambda: self.now, **limits)
        self.kv.apply(1, encode_command(Command(0, RegisterSession())))
        self.seq = 0

    def write(self, *ops: Op) -> None:
        for op in ops:
            self.seq += 1
            self.kv.apply(self.kv.applied_index + 1, encode_command(
                Command(0, Write(1, self.seq, self.seq, kv_encode_op(op)))))

    def watch(self, wid: int = 7, **kw: object) -> int | tuple[str, str]:
        req = msgspec.convert({"op": "watch", "id": wid, **kw}, WatchRequest)
        got = self.hub.start(ROUTE, req)
        self.hub.serve()  # the turn that answers `created`
        return got

    def events(self) -> list[tuple[str, str, int]]:
        return [(e.type, e.key, e.revision) for f in self.conn.frames for e in f.events or []]


def test_a_prefix_watch_gets_every_change_in_revision_order() -> None:
    """Puts, deletes, a range delete and a transaction under the prefix
    arrive once each, in revision order, with values; other keys do not."""
    s = _Setup()
    assert s.watch(key="p/", prefix=True) == 1
    s.write(Put("p/a", b"1"), Put("q", b"x"), Put("p/b", b"2"), Delete("p/a"),
            Txn([], [Put("p/c", b"3"), Put("p/d", b"4")]), DeleteRange("p/", prefix=True))
    s.hub.serve()
    assert s.events() == [("put", "p/a", 2), ("put", "p/b", 4), ("delete", "p/a", 5),
                          ("put", "p/c", 6), ("put", "p/d", 6), ("delete", "p/b", 7),
                          ("delete", "p/c", 7), ("delete", "p/d", 7)]
    assert s.conn.frames[-1].revision == 7
    assert s.conn.frames[0].events and s.conn.frames[0].events[0].value == b"1"


def test_a_watch_from_a_past_revision_replays_the_history_then_follows() -> None:
    """start_revision in the retained history replays from there."""
    s = _Setup()
    s.write(Put("k", b"1"), Put("k", b"2"), Put("k", b"3"))
    s.watch(key="k", start_revision=3)
    s.hub.serve()
    s.write(Put("k", b"4"))
    s.hub.serve()
    assert s.events() == [("put", "k", 3), ("put", "k", 4), ("put", "k", 5)]


def test_frames_hold_whole_revisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame is cut between revisions, never inside one, so resuming from
    a frame's `revision` + 1 misses and repeats nothing."""
    monkeypatch.setattr("node.watch.WATCH_FRAME_BYTES", 10)
    s = _Setup()
    s.watch(key="", prefix=True)
    s.write(Txn([], [Put("a", b"x" * 8), Put("b", b"y" * 8)]), Put("c", b"z" * 8))
    for _ in range(3):
        s.hub.serve()
    assert [[(e.key, e.revision) for e in f.events or []] for f in s.conn.frames] == [
        [("a", 2), ("b", 2)], [("c", 3)]]
    assert [f.revision for f in s.conn.frames] == [2, 3]


def test_a_slow_watcher_is_cancelled_with_its_reason_and_costs_no_buffer() -> None:
    """While its connection takes nothing, the watch keeps only its cursor;
    past the lag bound it is cancelled saying why and where to resume."""
    s = _Setup(max_lag_revisions=5)
    s.watch(key="k")
    s.conn.open = False
    for i in range(4):
        s.write(Put("k", b"%d" % i))
        s.hub.serve()
    assert len(s.hub) == 1 and not s.conn.frames
    s.write(Put("k", b"4"), Put("k", b"5"))
    s.conn.open = True
    s.hub.serve()
    end = s.conn.frames[-1]
    assert end.canceled and end.error == SLOW_WATCHER and not end.ok
    assert "fell 6 revisions behind" in (end.message or "") and "from revision 2" in (
        end.message or "")
    assert len(s.hub) == 0 and s.hub.stats()["watches_cancelled_slow"] == 1


def test_a_compacted_start_is_refused_and_a_compacted_cursor_ends_the_watch() -> None:
    """A watch from before the compaction point is refused naming the oldest
    kept; one whose next revision gets compacted away is cancelled so."""
    s = _Setup()
    s.write(*[Put("k", b"%d" % i) for i in range(5)])
    s.kv.apply(s.kv.applied_index + 1, encode_command(Command(0, CompactHistory(4))))
    got = s.watch(key="k", start_revision=2)
    assert isinstance(got, tuple) and got[0] == "compacted" and "oldest kept is 4" in got[1]
    s.conn.open = False
    assert s.watch(wid=8, key="k", start_revision=5) == 6
    s.kv.apply(s.kv.applied_index + 1, encode_command(Command(0, CompactHistory(6))))
    s.conn.open = True
    s.hub.serve()
    assert s.conn.frames[-1].error == "compacted" and s.conn.frames[-1].compacted == 6


def test_a_one_time_watch_ends_with_its_first_change() -> None:
    """As a ZooKeeper watch: the first change (all of its revision), then done."""
    s = _Setup()
    s.watch(key="k", once=True)
    s.write(Put("k", b"1"), Put("k", b"2"))
    s.hub.serve()
    s.hub.serve()
    assert s.events() == [("put", "k", 2)] and s.conn.frames[-1].canceled
    assert s.conn.frames[-1].ok and len(s.hub) == 0


def test_an_idle_watch_gets_progress_and_a_gone_client_is_dropped() -> None:
    """A watch with nothing to send is told how far it is current every
    progress_ms; a connection that went away loses its watches."""
    s = _Setup()
    s.watch(key="k", progress_ms=100)
    s.write(Put("other", b"x"))
    s.now = 0.05
    s.hub.serve()
    assert not s.conn.frames
    s.now = 0.2
    s.hub.serve()
    assert [(f.revision, f.events) for f in s.conn.frames] == [(2, [])]
    s.conn.gone = True
    s.now = 0.4
    s.hub.serve()
    assert len(s.hub) == 0


def test_watch_ids_are_per_connection_and_cancel_ends_one() -> None:
    """The same id twice on a connection is refused; cancel removes it."""
    s = _Setup()
    s.watch(key="k")
    again = s.watch(key="k")
    assert isinstance(again, tuple) and again[0] == "watch_exists"
    assert s.hub.cancel(ROUTE, WatchCancelRequest(watch=7))
    assert not s.hub.cancel(ROUTE, WatchCancelRequest(watch=7)) and len(s.hub) == 0


def test_a_slow_watchers_cancellation_waits_for_room_on_its_connection() -> None:
    """Cancelled while its connection takes nothing, a slow watch sends
    nothing more and keeps no events; its reason goes out once there is room."""
    s = _Setup(max_lag_revisions=2)
    s.watch(key="k")
    s.conn.open = False
    s.write(*[Put("k", b"%d" % i) for i in range(5)])
    s.hub.serve()
    assert len(s.hub) == 1 and not s.conn.frames
    s.write(Put("k", b"more"))
    s.hub.serve()
    s.conn.open = True
    s.hub.serve()
    assert [(f.error, f.canceled, f.events) for f in s.conn.frames] == [
        (SLOW_WATCHER, True, [])]
    assert len(s.hub) == 0


def test_quiet_watches_cost_a_turn_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once every watch is current, a turn looks at none of them until the
    store moves on or a progress notification is due."""
    s = _Setup()
    for wid in range(50):
        s.watch(wid=wid, key=f"k{wid}", progress_ms=1000)
    served: list[int] = []
    original = WatchHub._serve_one

    def counting(self: WatchHub, key: tuple[bytes, int], w: object, now: float) -> None:
        served.append(1)
        original(self, key, w, now)  # type: ignore[arg-type]  # the hub's own watch

    monkeypatch.setattr(WatchHub, "_serve_one", counting)
    s.hub.serve()
    first = len(served)
    s.hub.serve()
    s.now = 0.5
    s.hub.serve()
    assert first == 50 and len(served) == 50
    s.write(Put("k3", b"x"))
    s.hub.serve()
    assert len(served) == 100 and s.events() == [("put", "k3", 2)]
    s.now = 1.5
    s.hub.serve()
    assert len(served) == 150
