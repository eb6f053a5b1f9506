"""Per-link fault injection inside the node: `LinkRule`s held by a `LinkFilter`
and applied by `FaultyTransport` around a real transport.

Deterministic under a seeded rng and an injected clock; no sockets of its own
and no sleeping: held-back messages wait in a heap until `flush_due()`.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from node.config import LINK_REORDER_HOLD_MS
from node.transport.base import PeerTransport


def monotonic_ms() -> float:
    """The default clock: `time.monotonic()` in milliseconds."""
    return time.monotonic() * 1000.0


class LinkRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Faults on the link between this node and one peer.

    - `block_out` / `block_in`: drop every message to / from the peer.
    - `loss`: probability of dropping a message, drawn on its way out and
      again on its way in (a rule at one end makes both directions lossy).
    - `duplicate`: probability that an outgoing message is sent twice.
    - `delay_ms` ± `jitter_ms` (uniform): outgoing latency added. Delay and
      jitter keep the order of messages; only `reorder` breaks it.
    - `reorder`: probability that an outgoing message is held back by one to
      two LINK_REORDER_HOLD_MS more than its delay, so later ones pass it.

    Rules travel through the control socket as JSON or msgpack; omitted
    fields are off, unknown fields are an error.
    """

    block_out: bool = False
    block_in: bool = False
    loss: float = 0.0
    duplicate: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, not {p}")
        for name in ("delay_ms", "jitter_ms"):
            ms = getattr(self, name)
            if not 0.0 <= ms < float("inf"):
                raise ValueError(f"{name} must be a finite number of ms >= 0, not {ms}")

    def is_noop(self) -> bool:
        """True when the rule changes nothing (every fault off)."""
        return self == _NOOP


_NOOP = LinkRule()


class Verdict(NamedTuple):
    """What happens to one outgoing message: the due time of each copy (none:
    dropped), and whether one was held back to be reordered."""

    dues: tuple[float, ...]
    reordered: bool


class LinkFilter:
    """The link rules of this node, keyed by peer id, and the decisions they
    make: which outgoing copies leave when, and which incoming messages pass.

    `clock` returns milliseconds on the clock that `FaultyTransport`'s
    deadlines use (default `time.monotonic()` in ms).
    """

    def __init__(self, rng: random.Random, clock: Callable[[], float] = monotonic_ms) -> None:
        self._rng = rng
        self.clock = clock
        self._rules: dict[str, LinkRule] = {}
        # Due time of the last in-order message to each peer: delay with jitter
        # never lets a later message leave before it (see LinkRule).
        self._last_due: dict[str, float] = {}

    def set_rules(self, rules: dict[str, LinkRule]) -> None:
        """Replace every rule (peers absent from `rules` are healed). Rules
        that change nothing are not kept, so an idle filter costs nothing."""
        self._rules = {p: r for p, r in rules.items() if not r.is_noop()}
        self._last_due = {p: t for p, t in self._last_due.items() if p in self._rules}

    def clear(self) -> None:
        """Heal every link."""
        self.set_rules({})

    def rules(self) -> dict[str, LinkRule]:
        """A copy of the rules in force."""
        return dict(self._rules)

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def rule(self, peer: str) -> LinkRule | None:
        return self._rules.get(peer)

    def outgoing(self, peer: str, rule: LinkRule, now: float) -> Verdict:
        """When each copy of one message to `peer` leaves (empty: dropped)."""
        rng = self._rng
        if rule.block_out or (rule.loss and rng.random() < rule.loss):
            return Verdict((), False)
        copies = 2 if rule.duplicate and rng.random() < rule.duplicate else 1
        dues: list[float] = []
        reordered = False
        for _ in range(copies):
            due = now + rule.delay_ms
            if rule.jitter_ms:
                due = max(now, due + rng.uniform(-rule.jitter_ms, rule.jitter_ms))
            if rule.reorder and rng.random() < rule.reorder:
                # Not recorded in _last_due: messages after it may pass it.
                due += LINK_REORDER_HOLD_MS * (1.0 + rng.random())
                reordered = True
            else:
                due = max(due, self._last_due.get(peer, due))
                self._last_due[peer] = due
            dues.append(due)
        return Verdict(tuple(dues), reordered)

    def admits_incoming(self, rule: LinkRule) -> bool:
        """Whether one message from a peer with `rule` is delivered."""
        return not rule.block_in and not (rule.loss and self._rng.random() < rule.loss)


class FaultyTransport:
    """A `PeerTransport` that applies a `LinkFilter` around `inner`.

    Outgoing: block_out, loss, duplicate, delay ± jitter, reorder. Incoming:
    block_in and loss. Held-back messages wait in a heap; `flush_due()` (also
    run by `send()` and `receive()`) hands those that are due to `inner`,
    unless their link has been blocked meanwhile: a cut link loses what was
    still in flight. A message the filter drops or holds still makes `send()`
    return True: to the caller it left, as a packet lost in the network does.
    Healing a link lets new messages leave at once, ahead of held ones.

    `stats` is `inner.stats` itself, with `dropped_by_filter` (of which
    `dropped_by_filter_in` incoming), `duplicated`, `delayed` and `reordered`
    added. With no rule in force every call goes straight to `inner`.
    """

    def __init__(self, inner: PeerTransport, link_filter: LinkFilter) -> None:
        self._inner = inner
        self._filter = link_filter
        self._heap: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()
        self.stats = inner.stats
        for key in ("dropped_by_filter", "dropped_by_filter_in", "duplicated", "delayed",
                    "reordered"):
            self.stats.setdefault(key, 0)

    def poll_sockets(self) -> list[Any]:
        return self._inner.poll_sockets()

    def peers(self) -> dict[str, Any]:
        return self._inner.peers()

    def set_peer(self, peer: str, addr: Any) -> None:
        self._inner.set_peer(peer, addr)

    def remove_peer(self, peer: str) -> None:
        """Forget `peer`, and what was held back for it."""
        self._heap = [h for h in self._heap if h[2] != peer]
        heapq.heapify(self._heap)
        self._inner.remove_peer(peer)

    def send(self, dst: str, data: bytes) -> bool:
        if self._heap:
            self.flush_due()
        rule = self._filter.rule(dst)
        if rule is None:
            return self._inner.send(dst, data)
        now = self._filter.clock()
        verdict = self._filter.outgoing(dst, rule, now)
        stats = self.stats
        if not verdict.dues:
            stats["dropped_by_filter"] += 1
            return True
        if len(verdict.dues) > 1:
            stats["duplicated"] += 1
        if verdict.reordered:
            stats["reordered"] += 1
        ok = True
        for due in verdict.dues:
            if due <= now:
                ok = self._inner.send(dst, data) and ok
            else:
                stats["delayed"] += 1
                heapq.heappush(self._heap, (due, next(self._seq), dst, data))
        return ok

    def receive(self) -> list[tuple[str, bytes]]:
        if self._heap:
            self.flush_due()
        got = self._inner.receive()
        if not self._filter.active or not got:
            return got
        out: list[tuple[str, bytes]] = []
        for src, data in got:
            rule = self._filter.rule(src)
            if rule is None or self._filter.admits_incoming(rule):
                out.append((src, data))
            else:
                self.stats["dropped_by_filter"] += 1
                self.stats["dropped_by_filter_in"] += 1
        return out

    def flush_due(self) -> int:
        """Hand every held message that is due to `inner`, in due order;
        returns how many were handled (sent, or lost to a block)."""
        heap = self._heap
        if not heap:
            return 0
        now = self._filter.clock()
        n = 0
        while heap and heap[0][0] <= now:
            _, _, dst, data = heapq.heappop(heap)
            rule = self._filter.rule(dst)
            if rule is not None and rule.block_out:
                self.stats["dropped_by_filter"] += 1
            else:
                self._inner.send(dst, data)
            n += 1
        return n

    def next_deadline_ms(self) -> float | None:
        """When the next held message is due (the filter's clock, ms)."""
        inner_due = self._inner.next_deadline_ms()
        if not self._heap:
            return inner_due
        due = self._heap[0][0]
        return due if inner_due is None else min(due, inner_due)

    def close(self) -> None:
        self._heap.clear()
        self._inner.close()
