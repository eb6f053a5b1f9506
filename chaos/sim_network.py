"""The simulator's network: messages in flight on a virtual clock, with link
faults (cut, one-way block, loss, duplication, delay, reordering).

Seeded and in memory: no sockets, no wall clock.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter

from node.paxos.messages import PaxosMessage
from node.raft.messages import PeerMessage, SnapshotMeta

# What travels between simulated nodes: Raft's messages or Paxos's.
WireMessage = PeerMessage | PaxosMessage


class SimNetwork:
    """Messages in flight and the link faults they meet, with etcd's verbs:
    `cut`, `isolate`, `block` (one way), `recover` (undo some) and `heal`.

    A blocked link loses what would cross it (checked on delivery), as a cut
    stream socket does; it never delivers late in a burst.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._queue: list[tuple[int, int, WireMessage]] = []
        self._seq = 0
        self._blocked: Counter[tuple[str, str]] = Counter()
        self._last_at: dict[tuple[str, str], int] = {}
        self.loss = 0.0
        # Loss on one link (src, dst), on top of `loss`.
        self.link_loss: dict[tuple[str, str], float] = {}
        self.duplicate = 0.0
        self.jitter_ticks = 0
        self.slow_ticks: dict[str, int] = {}

    def block(self, a: str, b: str) -> list[tuple[str, str]]:
        """Drop what `a` sends to `b` (one way). Returns the links blocked."""
        self._blocked[(a, b)] += 1
        return [(a, b)]

    def cut(self, a: str, b: str) -> list[tuple[str, str]]:
        """Drop everything between `a` and `b`."""
        return self.block(a, b) + self.block(b, a)

    def isolate(self, n: str, others: list[str]) -> list[tuple[str, str]]:
        """Cut `n` off from every other node."""
        return [link for o in others if o != n for link in self.cut(n, o)]

    def recover(self, links: list[tuple[str, str]]) -> None:
        """Undo one fault's blocks; links another fault blocks stay blocked."""
        self._blocked.subtract(links)
        self._blocked = +self._blocked

    def heal(self) -> None:
        """Every link up, no loss, duplication, delay or reordering."""
        self._blocked.clear()
        self.link_loss.clear()
        self.loss = self.duplicate = 0.0
        self.jitter_ticks = 0
        self.slow_ticks.clear()

    def blocked(self, a: str, b: str) -> bool:
        return (a, b) in self._blocked

    def set_link(self, a: str, b: str, loss: float) -> None:
        """Make the link from `a` to `b` lose exactly this fraction (1: cut
        one way), whatever faults it had."""
        del self._blocked[(a, b)]
        self.link_loss.pop((a, b), None)
        if loss >= 1.0:
            self._blocked[(a, b)] = 1
        elif loss > 0.0:
            self.link_loss[(a, b)] = loss

    def lost(self, a: str, b: str) -> bool:
        """Whether a message from `a` to `b` is lost now: the link is blocked,
        or its own loss rate says so (the test harness delivers through this)."""
        if (a, b) in self._blocked:
            return True
        prob = self.link_loss.get((a, b), 0.0)
        return prob > 0 and self._rng.random() < prob

    def send(self, now: int, m: WireMessage) -> str | None:
        """Queue `m` for delivery a tick or two from `now`; the reason it was
        lost instead, if it was."""
        rng = self._rng
        if self.loss and rng.random() < self.loss:
            return "loss"
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        link = (m.src, m.dst)
        for _ in range(copies):
            at = now + 1 + rng.randrange(2)
            if self.slow_ticks:
                at += self.slow_ticks.get(m.src, 0) + self.slow_ticks.get(m.dst, 0)
            if self.jitter_ticks:
                at += rng.randrange(self.jitter_ticks + 1)
            else:
                # Without reordering a link is FIFO, like one stream socket.
                at = max(at, self._last_at.get(link, 0))
                self._last_at[link] = at
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, m))
        return None

    def due(self, now: int) -> list[WireMessage]:
        """Messages whose delivery time has come, in order."""
        out: list[WireMessage] = []
        q = self._queue
        while q and q[0][0] <= now:
            out.append(heapq.heappop(q)[2])
        return out


def describe(m: WireMessage) -> str:
    """A one-line, readable form of a peer message for the trace."""
    parts = [f"{m.src}->{m.dst} {type(m).__name__} term={m.term}"]
    for name in m.__struct_fields__:
        if name in ("src", "dst", "term"):
            continue
        v = getattr(m, name)
        if name == "entries":
            parts.append(f"entries=[{v[0].index}..{v[-1].index}]" if v else "entries=[]")
        elif isinstance(v, bytes):
            parts.append(f"{name}=<{len(v)} bytes>")
        elif isinstance(v, SnapshotMeta):
            parts.append(f"{name}={v.index}/{v.term}")
        else:
            parts.append(f"{name}={v}")
    return " ".join(parts)
