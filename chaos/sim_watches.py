"""Watches in the simulator: a few watchers follow ranges of the keys
through each node's own `WatchHub` (node/watch.py), on followers and
leaders alike. A watcher whose node crashes, or whose connection the hub
let go, watches again from another live node, from the revision it was
owed next (what a client does, node/client_watch.py). Its connection
sometimes takes nothing for a turn, as a slow reader's does.

Checked at every frame a watcher gets: it continues exactly where the last
one ended (no revision skipped, none delivered twice), and its events are,
revision by revision, the changes of its keys that the replicas applied at
that revision, values included; a progress notification claims no change
it did not send. And at every revision a replica applies: its changes, with
their values, are those any other replica applied at that revision.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chaos.invariants_base import Violation
from node.api import decode_responses
from node.api_range import WatchEvent, WatchRequest
from node.config import TICK_MS
from node.state.mvcc import Span
from node.watch import WatchHub

if TYPE_CHECKING:
    from chaos.sim_base import _Node

# The checks of this module.
WATCH_STREAM = "watch_stream"
WATCH_HISTORY = "watch_history"

# The counters that show which watch paths a sweep went through.
WATCH_COVERAGE = ("watch_events", "watch_progress", "watch_moves", "watch_stalls")

# What each watcher watches: every key, one key's prefix, a range.
_SPANS: tuple[tuple[str, str | None, bool], ...] = (
    ("", None, True), ("k1", None, True), ("k0", "k2", False))
# A watcher's connection takes nothing in a turn this often.
_STALL_CHANCE = 0.2
# Each tick a hub is served with this chance (a node's loop serves them
# every turn; fewer turns than commits make frames of several revisions).
_SERVE_CHANCE = 0.5

# A change as a watch shows it: key and value (None: deleted).
Changes = tuple[tuple[str, bytes | None], ...]


@dataclass(slots=True)
class _Watcher:
    wid: int
    key: str
    range_end: str | None
    prefix: bool
    cursor: int = 0  # the next revision owed (0: from whatever is next)
    node: str | None = None
    epoch: int = 0  # its connection to the current node (a new one per move)

    def span(self) -> Span:
        return Span.prefix(self.key) if self.prefix else Span(self.key, self.range_end, False)

    def route(self) -> list[bytes]:
        return [f"w{self.wid}.{self.epoch}".encode()]


class SimWatches:
    """The watchers of one run and the changes each revision made."""

    def __init__(self, seed: int, watchers: int) -> None:
        # A generator of its own: the run's other paths for a seed stay as
        # they were (watches only read).
        self._rng = random.Random(seed * 7919 + 3)
        self._watchers = [_Watcher(i, *_SPANS[i % len(_SPANS)]) for i in range(watchers)]
        self._hubs: dict[str, WatchHub] = {}
        self._by_route: dict[bytes, _Watcher] = {}
        # Revision -> the changes made at it, as the first replica to apply it saw them.
        self._truth: dict[int, Changes] = {}
        # Per node, the revision its store had when last looked at.
        self._seen: dict[str, int] = {}
        self._found: list[Violation] = []
        self._now = 0
        self.stats: Counter[str] = Counter()

    # --- what the replicas apply ---------------------------------------------

    def applied(self, n: _Node, tick: int) -> list[Violation]:
        """`n` applied an entry: record (or compare) the changes of a new revision."""
        mv = n.kv.mvcc
        rev = mv.revision
        if rev <= self._seen.get(n.id, 0):
            return []
        self._seen[n.id] = rev
        changes: Changes = tuple((c.key, None if c.after is None else c.after.value)
                                 for c in mv.log.since(rev))
        known = self._truth.setdefault(rev, changes)
        if known == changes:
            return []
        return [Violation(check=WATCH_HISTORY, tick=tick, detail=(
            f"{n.id} made {_show(changes)} at revision {rev}, another replica {_show(known)}"))]

    def node_down(self, node: str) -> None:
        """`node` crashed or stopped: its watches are gone with its process."""
        self._hubs.pop(node, None)
        self._seen.pop(node, None)
        for w in self._watchers:
            if w.node == node:
                w.node = None

    def _hub(self, n: _Node) -> WatchHub:
        """`n`'s hub; a new one (and its watchers placed again) if `n`
        restarted with a fresh state machine since."""
        hub = self._hubs.get(n.id)
        if hub is not None and hub.kv is n.kv:
            return hub
        for w in self._watchers:
            if w.node == n.id:
                w.node = None
        self._seen[n.id] = n.kv.mvcc.revision
        hub = self._hubs[n.id] = WatchHub(n.id, n.kv, self._push,
                                          monotonic=lambda: self._now * TICK_MS / 1000,
                                          max_lag_revisions=64)
        return hub

    # --- each tick --------------------------------------------------------------

    def tick(self, tick: int, live: list[_Node]) -> list[Violation]:
        """Place the watchers without a node, then serve some hubs."""
        self._now = tick
        hubs = [self._hub(n) for n in live]
        for w in self._watchers:
            if w.node is None and live:
                self._place(w, self._rng.choice(live))
        for hub in hubs:
            if self._rng.random() < _SERVE_CHANCE:
                hub.serve()
                if self._found:
                    break
        found, self._found = self._found, []
        return found

    def _place(self, w: _Watcher, n: _Node) -> None:
        w.epoch += 1
        w.node = n.id
        route = w.route()
        self._by_route[route[0]] = w
        got = self._hub(n).start(route, WatchRequest(
            id=w.wid, key=w.key, range_end=w.range_end, prefix=w.prefix,
            start_revision=w.cursor, progress_ms=50))
        if isinstance(got, int):
            if not w.cursor:
                w.cursor = got + 1
            if w.epoch > 1:
                self.stats["watch_moves"] += 1
            return
        code, _ = got
        if code != "compacted":
            raise AssertionError(f"watch {w.wid} refused at {n.id}: {got}")
        # Its next revision is gone here: as a client does, read the range
        # now and watch from the next revision (a gap the client knows of).
        self.stats["watch_compacted"] += 1
        w.cursor = 0
        w.node = None

    def _push(self, route: list[bytes], data: bytes) -> bool | None:
        w = self._by_route.get(route[0])
        if w is None or w.route() != route:
            return None  # an earlier connection of a watcher that moved on
        if self._rng.random() < _STALL_CHANCE:
            self.stats["watch_stalls"] += 1
            return False
        for r in decode_responses(data):
            if r.created:
                continue  # a watch's start is answered by `start` here
            self._frame(w, r.revision or 0, list(r.events or ()), bool(r.canceled), r.error)
        return True

    def _frame(self, w: _Watcher, revision: int, events: list[WatchEvent], canceled: bool,
               error: str | None) -> None:
        if canceled:
            # Compacted past it (watch from now on, after reading the range,
            # as a client does) or too slow (watch again where it was).
            w.node = None
            if error == "compacted":
                self.stats["watch_compacted"] += 1
                w.cursor = 0
            return
        if revision < w.cursor - 1:
            self._fail(w, f"a frame through revision {revision} after revision "
                          f"{w.cursor - 1} was delivered")
            return
        span = w.span()
        got: dict[int, list[tuple[str, bytes | None]]] = {}
        last = w.cursor - 1
        for e in events:
            if not (w.cursor <= e.revision <= revision and e.revision >= last):
                self._fail(w, f"an event at revision {e.revision} in a frame owed revisions "
                              f"{w.cursor}..{revision} (after {last})")
                return
            last = e.revision
            got.setdefault(e.revision, []).append((e.key, e.value if e.type == "put" else None))
        for rev in range(w.cursor, revision + 1):
            known = self._truth.get(rev)
            if known is None:
                self.stats["watch_unrecorded"] += 1
                continue
            want = [(k, v) for k, v in known if k in span]
            if got.get(rev, []) != want:
                self._fail(w, f"revision {rev}: got {_show(tuple(got.get(rev, ())))}, the "
                              f"replicas made {_show(tuple(want))} of its keys")
                return
        self.stats["watch_events" if events else "watch_progress"] += len(events) or 1
        w.cursor = revision + 1

    def _fail(self, w: _Watcher, detail: str) -> None:
        self._found.append(Violation(check=WATCH_STREAM, tick=self._now,
                                     detail=f"watch {w.wid} at {w.node}: {detail}"))


def _show(changes: Changes) -> str:
    return "[" + ", ".join(f"{k}={'deleted' if v is None else v!r}" for k, v in changes) + "]"
