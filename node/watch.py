"""`WatchHub`: the watches a node serves from its own applied state
(docs/PROTOCOL.md, "Watches"), leader or follower alike. A watch is a
cursor into the store's history: each loop turn, what the history holds
past the cursor is sent as far as the watcher's connection takes it. It
never writes to the store and never holds a watcher's backlog in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from node.api import ClientResponse, encode_response
from node.api_range import WatchCancelRequest, WatchEvent, WatchRequest
from node.config import (
    WATCH_FRAME_BYTES,
    WATCH_KEEPALIVE_MS,
    WATCH_MAX_LAG_REVISIONS,
    WATCH_MAX_WATCHES,
    WATCH_TURN_BUDGET_MS,
)
from node.state.kv import KVStore
from node.state.mvcc import Span

# Codes a watch is refused or cancelled with (besides `compacted`).
SLOW_WATCHER = "slow_watcher"
TOO_MANY_WATCHES = "too_many_watches"
WATCH_EXISTS = "watch_exists"

Route = list[bytes]


# Push one frame to a route: True sent, False not now (nothing kept), None gone.
PushFn = Callable[[Route, bytes], "bool | None"]


@dataclass(slots=True)
class _Watch:
    route: Route
    wid: int
    span: Span
    cursor: int  # the next revision to deliver
    once: bool
    progress_s: float
    last_sent: float
    fresh: bool = True  # its `created` answer may not have left yet
    # Cancelled, its last frame not yet taken by the connection: (error,
    # message, compacted). Nothing else is sent to it meanwhile.
    ending: tuple[str, str, int | None] | None = None


class WatchHub:
    """The watches of one node, by (connection, watch id)."""

    def __init__(self, node_id: str, kv: KVStore, push: PushFn,
                 monotonic: Callable[[], float] = time.monotonic,
                 max_watches: int = WATCH_MAX_WATCHES,
                 max_lag_revisions: int = WATCH_MAX_LAG_REVISIONS) -> None:
        self.node_id = node_id
        self.kv = kv
        self._push_bytes = push
        self._monotonic = monotonic
        self.max_watches = max_watches
        self.max_lag = max_lag_revisions
        self._watches: dict[tuple[bytes, int], _Watch] = {}
        self._turn = 0
        # Nothing to do until the store passes `_idle_rev` or the clock
        # `_idle_until` (a progress notification is due): what a turn of the
        # loop costs with many quiet watches.
        self._idle_rev = -1
        self._idle_until = 0.0
        self.events_sent = 0
        self.cancelled_slow = 0

    def __len__(self) -> int:
        return len(self._watches)

    def start(self, route: Route, req: WatchRequest) -> tuple[str, str] | int:
        """Open a watch; the store's revision it starts at (answered as
        `created`), or an (error code, message) refusal."""
        if len(route) != 1:
            return "bad_request", "a watch streams to a DEALER socket, not a REQ one"
        try:
            span = req.span()
        except ValueError as e:
            return "bad_request", str(e)
        key = (route[0], req.id)
        if key in self._watches:
            return WATCH_EXISTS, f"watch {req.id} is open on this connection; give a new id"
        if len(self._watches) >= self.max_watches:
            return TOO_MANY_WATCHES, (f"this node serves {self.max_watches} watches at most; "
                                      "cancel some, or watch from another node")
        mv = self.kv.mvcc
        cursor = req.start_revision or mv.revision + 1
        if cursor < mv.compacted:
            return "compacted", (f"revision {cursor} was compacted: the oldest kept is "
                                 f"{mv.compacted}; read the range, then watch from there")
        progress_s = (req.progress_ms or WATCH_KEEPALIVE_MS) / 1000.0
        self._watches[key] = _Watch(route, req.id, span, cursor, req.once, progress_s,
                                    self._monotonic())
        self._idle_rev = -1
        return mv.revision

    def cancel(self, route: Route, req: WatchCancelRequest) -> bool:
        """End a watch of this connection; whether there was one."""
        return self._watches.pop((route[0], req.watch), None) is not None if route else False

    def serve(self) -> None:
        """Send each watch what it is owed, as far as its connection takes
        and this turn's budget allows (the next turn goes on where this one
        stopped, starting with another watch)."""
        if not self._watches:
            return
        now = self._monotonic()
        rev = self.kv.mvcc.revision
        if rev == self._idle_rev and now < self._idle_until:
            return
        until = now + WATCH_TURN_BUDGET_MS / 1000.0
        items = list(self._watches.items())
        self._turn = (self._turn + 1) % len(items)
        pending = False
        for key, w in items[self._turn:] + items[:self._turn]:
            if w.fresh:
                w.fresh = False  # its `created` leaves with this turn's answers
                pending = True
                continue
            self._serve_one(key, w, now)
            if w.cursor <= rev or w.ending is not None:
                pending = True  # its connection took less than it is owed
            if self._monotonic() >= until:
                return
        if not pending:
            self._idle_rev = rev
            self._idle_until = min((w.last_sent + w.progress_s for w in self._watches.values()),
                                   default=now + 1.0)

    def _serve_one(self, key: tuple[bytes, int], w: _Watch, now: float) -> None:
        """Serve one watch."""
        mv = self.kv.mvcc
        if w.ending is not None:
            error, message, compacted = w.ending
            if self._push(w, w.cursor - 1, [], canceled=True, error=error, message=message,
                          compacted=compacted) is not False:
                del self._watches[key]
            return
        if w.cursor < mv.compacted:
            self._end(key, w, "compacted", f"revision {w.cursor} was compacted before this "
                      f"watch got it: the oldest kept is {mv.compacted}", mv.compacted)
            return
        lag = mv.revision - w.cursor + 1
        if lag > self.max_lag:
            self.cancelled_slow += 1
            self._end(key, w, SLOW_WATCHER, (
                f"the watcher fell {lag} revisions behind (at most {self.max_lag}): it reads "
                f"its events too slowly; watch again from revision {w.cursor}"))
            return
        if w.cursor <= mv.revision:
            events, upto = self._collect(w)
            if not events:
                w.cursor = upto + 1
            else:
                done = w.once
                sent = self._push(w, upto, events, canceled=done, message="a one-time watch "
                                  "ends with its first change" if done else None)
                if sent is None:
                    del self._watches[key]
                    return
                if not sent:
                    return
                self.events_sent += len(events)
                w.cursor, w.last_sent = upto + 1, now
                if done:
                    del self._watches[key]
                return
        if now - w.last_sent >= w.progress_s:
            sent = self._push(w, w.cursor - 1, [])
            if sent is None:
                del self._watches[key]
            elif sent:
                w.last_sent = now

    def _collect(self, w: _Watch) -> tuple[list[WatchEvent], int]:
        """The events past `w.cursor`, whole revisions of about
        WATCH_FRAME_BYTES, and the last revision they cover."""
        mv = self.kv.mvcc
        events: list[WatchEvent] = []
        size = 0
        upto = w.cursor - 1
        span = w.span
        for c in mv.log.since(w.cursor):
            if c.rev != upto:
                # A one-time watch gets the first revision that touched it.
                if size >= WATCH_FRAME_BYTES or (w.once and events):
                    return events, upto
                upto = c.rev
            if c.key not in span:
                continue
            after = c.after
            if after is None:
                events.append(WatchEvent("delete", c.key, c.rev))
                size += len(c.key) + 16
            else:
                shown = mv.shown(after)
                events.append(WatchEvent("put", c.key, c.rev, after.value, shown.create,
                                         shown.version))
                size += len(c.key) + len(after.value) + 24
        return events, mv.revision

    def _end(self, key: tuple[bytes, int], w: _Watch, error: str, message: str,
             compacted: int | None = None) -> None:
        """Cancel a watch, telling it why: at once if its connection takes
        the frame, else at a later turn (the watch stays, sending nothing
        else, until then or until its connection is gone)."""
        w.ending = (error, message, compacted)
        if self._push(w, w.cursor - 1, [], canceled=True, error=error, message=message,
                      compacted=compacted) is not False:
            del self._watches[key]

    def _push(self, w: _Watch, revision: int, events: list[WatchEvent], *,
              canceled: bool = False, error: str | None = None, message: str | None = None,
              compacted: int | None = None) -> bool | None:
        """Send a frame of watch `w`: events through `revision` (every change
        of its keys up to it delivered), a progress notification (no events),
        or its end (`canceled`; with an `error` unless a one-time watch ended
        as it should)."""
        return self._push_bytes(w.route, encode_response(ClientResponse(
            id=w.wid, ok=error is None, revision=revision, events=events,
            canceled=canceled or None, error=error, message=message, compacted=compacted,
            node=self.node_id)))

    def stats(self) -> dict[str, int]:
        return {"watches": len(self._watches), "watch_events_sent": self.events_sent,
                "watches_cancelled_slow": self.cancelled_slow}
