"""The simulator's nemesis: picks random faults of the enabled kinds, starts
and ends them on a virtual clock, and strikes new leaders right after they win.

It decides what to break; the simulation it is handed carries it out.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from chaos.sim_members import MEMBERSHIP_ACTIONS
from chaos.sim_network import SimNetwork
from node.raft.ready import Step

FAULT_KINDS: tuple[str, ...] = (
    "loss", "duplicate", "reorder", "delay", "partition", "isolate", "oneway",
    "crash", "snapshot", "transfer", "membership",
)

# Chance per tick of starting a fault, and how many may be active at once.
_FAULT_CHANCE = 0.06
_MAX_ACTIVE_FAULTS = 3
# Chance that a new leader is cut off or crashed a few ticks after winning,
# and that the leader is, a few ticks after it took a membership change (it
# may then fall between C_old,new and C_new, thesis §4.3).
_STRIKE_CHANCE = 0.25
_MEMBERSHIP_STRIKE_CHANCE = 0.3
# Chance per tick of a membership change besides the other faults: a change
# takes two (add, then promote), and each wants faults around it.
_MEMBERSHIP_CHANCE = 0.03


def parse_faults(text: str) -> frozenset[str]:
    """`all`, `none` or a comma-separated list of `FAULT_KINDS`."""
    text = text.strip()
    if text == "all":
        return frozenset(FAULT_KINDS)
    if text in ("", "none"):
        return frozenset()
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(kinds - set(FAULT_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; "
                         f"choose from all, {', '.join(FAULT_KINDS)}")
    return kinds


def format_faults(kinds: frozenset[str]) -> str:
    """The canonical spelling of a set of kinds, as `parse_faults` reads it."""
    if kinds == frozenset(FAULT_KINDS):
        return "all"
    return ",".join(k for k in FAULT_KINDS if k in kinds) or "none"


class Target(Protocol):
    """What the nemesis needs of the simulation it breaks."""

    now: int

    @property
    def network(self) -> SimNetwork: ...

    def leader(self) -> str | None: ...

    def alive(self) -> list[str]: ...

    def crash(self, node: str, at: Step | None = None) -> None: ...

    def restart(self, node: str) -> None: ...

    def transfer(self, to: str) -> None:
        """Ask the leader to hand its leadership over to `to`."""
        ...

    def change_members(self, action: str) -> str | None:
        """Ask the leader for a membership change of kind `action` (one of
        MEMBERSHIP_ACTIONS); what was asked, or None if nothing could be."""
        ...

    def note(self, who: str, text: str) -> None: ...


@dataclass(slots=True)
class _Fault:
    kind: str
    until: int
    node: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)


class Nemesis:
    """Random faults of the kinds in `faults` (`snapshot` is not one it
    starts: the simulation compacts on its own when that kind is on)."""

    def __init__(self, rng: random.Random, ids: list[str], faults: frozenset[str]) -> None:
        self._rng = rng
        self._ids = ids
        self._quorum = len(ids) // 2 + 1
        self._kinds = [k for k in FAULT_KINDS if k in faults and k != "snapshot"]
        self._strike_kinds = [k for k in ("isolate", "crash") if k in faults]
        self._strikes: list[tuple[int, str]] = []
        self._active: list[_Fault] = []
        self.started: Counter[str] = Counter()

    def new_leader(self, now: int, node: str) -> None:
        """A leader of a cut-off minority's making leaves entries of its term
        on few nodes: the raw material of Figure 8 (§5.4.2). Sometimes cut the
        new leader off, or crash it, a few ticks after it won."""
        if self._strike_kinds and self._rng.random() < _STRIKE_CHANCE:
            self._strikes.append((now + self._rng.randint(1, 6), node))

    def step(self, t: Target) -> None:
        """One tick of the fault phase: end faults that are due, strike, and
        perhaps start a new random fault."""
        for f in [f for f in self._active if f.until <= t.now]:
            self._active.remove(f)
            self._end(t, f)
        while self._strikes and self._strikes[0][0] <= t.now:
            _, node = self._strikes.pop(0)
            self._start(t, self._rng.choice(self._strike_kinds), node)
        if self._kinds and self._rng.random() < _FAULT_CHANCE:
            self._start(t, self._rng.choice(self._kinds), None)
        if "membership" in self._kinds and self._rng.random() < _MEMBERSHIP_CHANCE:
            self._start(t, "membership", None)

    def heal(self, t: Target) -> None:
        """End every fault: links up, nodes restarted, the network clean."""
        for f in self._active:
            self._end(t, f)
        self._active.clear()
        self._strikes.clear()
        t.network.heal()
        for node in self._ids:
            t.restart(node)

    def _start(self, t: Target, kind: str, node: str | None) -> None:
        if len(self._active) >= _MAX_ACTIVE_FAULTS or any(f.kind == kind for f in self._active):
            return
        f = _Fault(kind, t.now + self._rng.randint(5, 60), node)
        what = self._begin(t, f)
        if what is None:
            return
        self._active.append(f)
        self.started[kind] += 1
        t.note("--", f"fault {what}" + (f" until tick {f.until}" if f.until > t.now else ""))

    def _pick(self, t: Target, prefer_leader: float) -> str:
        lead = t.leader()
        if lead is not None and self._rng.random() < prefer_leader:
            return lead
        return self._rng.choice(self._ids)

    def _begin(self, t: Target, f: _Fault) -> str | None:
        """Start `f`; a description of it, or None if it cannot start now."""
        rng, net, ids = self._rng, t.network, self._ids
        if f.kind == "loss":
            net.loss = rng.uniform(0.05, 0.35)
            return f"loss {net.loss:.2f}"
        if f.kind == "duplicate":
            net.duplicate = rng.uniform(0.05, 0.3)
            return f"duplicate {net.duplicate:.2f}"
        if f.kind == "reorder":
            net.jitter_ticks = rng.randint(2, 8)
            return f"reorder jitter {net.jitter_ticks} ticks"
        if f.kind == "delay":
            f.node = rng.choice(ids)
            net.slow_ticks[f.node] = rng.randint(3, 10)
            return f"delay {f.node} +{net.slow_ticks[f.node]} ticks"
        if f.kind == "partition":
            order = ids[:]
            rng.shuffle(order)
            k = rng.randint(1, len(order) // 2) if len(order) > 1 else 0
            side_a, side_b = sorted(order[:k]), sorted(order[k:])
            f.links = [link for a in side_a for b in side_b for link in net.cut(a, b)]
            return f"partition {','.join(side_a)} | {','.join(side_b)}"
        if f.kind == "isolate":
            f.node = f.node or self._pick(t, 0.6)
            f.links = net.isolate(f.node, ids)
            return f"isolate {f.node}"
        if f.kind == "oneway":
            a = self._pick(t, 0.5)
            others = [o for o in ids if o != a]
            if not others:
                return None
            outgoing = rng.random() < 0.5
            for b in sorted(rng.sample(others, rng.randint(1, len(others)))):
                f.links += net.block(a, b) if outgoing else net.block(b, a)
            return "block " + " ".join(f"{x}->{y}" for x, y in f.links)
        if f.kind == "crash":
            alive = t.alive()
            # Up to a majority may be down at once: progress stops, safety must not.
            if len(ids) - len(alive) >= self._quorum:
                return None
            f.node = f.node or self._pick(t, 0.5)
            if f.node not in alive:
                return None
            if rng.random() < 0.5:
                # Anywhere inside its next Ready (node/raft/ready.py's steps).
                at = rng.choice(list(Step))
                t.crash(f.node, at=at)
                return f"crash {f.node} at its next Ready, {at.value}"
            t.crash(f.node)
            return f"crash {f.node}"
        if f.kind == "membership":
            # One-shot: add, promote, remove or replace a member (thesis ch. 4).
            lead = t.leader()
            what = t.change_members(rng.choice(MEMBERSHIP_ACTIONS))
            if what is None:
                return None
            f.until = t.now
            if lead is not None and self._strike_kinds \
                    and rng.random() < _MEMBERSHIP_STRIKE_CHANCE:
                self._strikes.append((t.now + rng.randint(1, 4), lead))
                self._strikes.sort()
            return what
        # transfer: a one-shot request to the leader (thesis §3.10)
        lead = t.leader()
        if lead is None or len(ids) == 1:
            return None
        to = rng.choice([i for i in ids if i != lead])
        t.transfer(to)
        f.until = t.now
        return f"transfer {lead} -> {to}"

    def _end(self, t: Target, f: _Fault) -> None:
        net = t.network
        if f.kind == "loss":
            net.loss = 0.0
        elif f.kind == "duplicate":
            net.duplicate = 0.0
        elif f.kind == "reorder":
            net.jitter_ticks = 0
        elif f.kind == "delay" and f.node is not None:
            net.slow_ticks.pop(f.node, None)
        elif f.kind == "crash" and f.node is not None:
            t.restart(f.node)
        net.recover(f.links)
        if f.kind not in ("transfer", "membership"):
            t.note("--", f"fault {f.kind} ended")
