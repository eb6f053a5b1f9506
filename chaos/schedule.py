"""The nemesis schedule as data, after Jepsen: faults start and heal in
cycles (a fault for one interval, then an interval of quiet to recover),
each aimed at the leader, its likely successor, one node, a minority or a
majority. A pure function of the seed, the nodes, the mix and what a leader
oracle answers: it never touches a cluster or a clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from chaos import faults
from chaos.faults import Link, Netem

# Every kind of fault. Process faults: kill (SIGKILL), pause (SIGSTOP),
# stop (SIGTERM: the node hands over leadership and exits), kill-all (every
# node at once, all restarted at the heal), snapshot-kill (a forced
# compaction, then SIGKILL while it is written), power-loss (SIGKILL, then
# what the node's disk had not synced is gone: chaos/power_fault.py). Link
# faults: isolate, partition (two halves), bridge, ring (majorities ring),
# one-way, netem (delay, loss, duplicate and reorder). And transfer
# (leadership transfer).
KINDS = ("kill", "pause", "stop", "kill-all", "snapshot-kill", "isolate", "partition",
         "bridge", "ring", "one-way", "netem", "transfer", "power-loss")
POWER_LOSS = "power-loss"
# Power loss needs every node's data directory on a power-loss mount; a
# schedule is told when they are (`unavailable` says why not otherwise).
NO_POWER_LOSS = {POWER_LOSS: "the nodes' data directories are not on power-loss mounts "
                             "(`raftctl up --power-loss` puts them there)"}
# Named on its own, never part of `all`: membership removes a member,
# replaces it or adds one, each undone at the heal (docs/MEMBERSHIP.md). It
# changes who is in the cluster, and takes longer than the faults above.
MEMBERSHIP = "membership"
# Named on its own too: clock skews the clock of the target's host (and sets
# it back at the heal). Only for clusters on hosts with kernels of their own
# (docs/DEPLOY.md): it sets a real machine's clock.
CLOCK = "clock"
KNOWN_KINDS = (*KINDS, MEMBERSHIP, CLOCK)
# How far a clock fault moves a host's clock, either way.
_CLOCK_SKEW_S = (2.0, 30.0)
# What a membership fault does: remove the target (added back with its data
# at the heal), replace it by a new member (and the new one by it at the
# heal), or grow the cluster by a voter (removed at the heal).
MEMBERSHIP_CHANGES = ("remove", "replace", "grow")
DEFAULT_MIX = "all"
# How long a fault lasts, and then the quiet after its heal: twelve cycles,
# one of each kind, in a 60 s run.
NEMESIS_INTERVAL_S = 2.5

# How targets are chosen.
LEADER = "leader"
SUCCESSOR = "successor"  # the follower most likely to lead next
ONE = "one"
MINORITY = "minority"
MAJORITY = "majority"
ALL = "all"
# The leader is aimed at twice as often as any other choice: it is where a
# fault does the most damage.
_SPEC_WEIGHTS = {LEADER: 2.0, SUCCESSOR: 1.0, ONE: 1.0, MINORITY: 1.0, MAJORITY: 1.0}
# The choices each kind can use (the others fall back to the first).
_SPECS: dict[str, tuple[str, ...]] = {
    "kill": (LEADER, SUCCESSOR, ONE, MINORITY, MAJORITY),
    "pause": (LEADER, SUCCESSOR, ONE, MINORITY, MAJORITY),
    "stop": (LEADER, SUCCESSOR, ONE, MINORITY),
    "snapshot-kill": (LEADER, SUCCESSOR, ONE),
    "isolate": (LEADER, SUCCESSOR, ONE, MINORITY),
    "partition": (LEADER, SUCCESSOR, ONE, MINORITY, MAJORITY),
    "bridge": (LEADER, SUCCESSOR, ONE),
    "one-way": (LEADER, SUCCESSOR, ONE),
    "netem": (LEADER, MINORITY, MAJORITY),
    "transfer": (SUCCESSOR, ONE),
    "membership": (LEADER, SUCCESSOR, ONE),
    "clock": (LEADER, SUCCESSOR, ONE),
    "kill-all": (ALL,),
    "ring": (ALL,),
    # Jepsen's LazyFS nemesis cuts any subset, the whole cluster too.
    POWER_LOSS: (LEADER, SUCCESSOR, ONE, MINORITY, MAJORITY, ALL),
}
# The fewest nodes a kind needs, and why.
_NEEDS: dict[str, tuple[int, str]] = {
    "ring": (5, "each node must see a majority that no other node sees"),
    "bridge": (3, "two halves and a node between them"),
    "isolate": (2, "a node to cut off from another"),
    "partition": (2, "two halves"),
    "one-way": (2, "a link"),
    "netem": (2, "a link"),
    "transfer": (2, "a follower to hand leadership to"),
    "membership": (3, "a member to take out while the others keep a quorum"),
}
# Seeded ranges of the netem rates.
_DELAY_MS = (5.0, 50.0)
_LOSS = (0.02, 0.2)
_DUPLICATE = (0.02, 0.2)
_REORDER = (0.05, 0.3)


@dataclass(frozen=True, slots=True)
class View:
    """What the oracle knows when a fault is chosen: who leads, and the
    follower most likely to lead next (the highest match index)."""

    leader: str | None = None
    successor: str | None = None


Oracle = Callable[[float], View]


@dataclass(frozen=True, slots=True)
class Step:
    """One fault: from `t_s` to `heal_s` (seconds since the run began).
    Link faults block `links`, or with `rates` slow them down; `to` is the
    new leader of a transfer."""

    t_s: float
    heal_s: float
    kind: str
    targets: tuple[str, ...]
    spec: str
    label: str
    leader: str | None
    links: tuple[Link, ...] = ()
    rates: Netem | None = None
    change: str = ""  # membership: one of MEMBERSHIP_CHANGES
    offset_s: float = 0.0  # clock: the skew of the target's host clock

    def key(self) -> tuple[float, str, tuple[str, ...]]:
        return self.t_s, self.kind, self.targets

    @property
    def hits_leader(self) -> bool:
        return self.leader is not None and self.leader in self.targets


def parse_mix(text: str) -> dict[str, float]:
    """`kill:2,partition,netem:0.5` or `all` (every kind at weight 1, later
    terms override) -> kind -> weight, checked."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, w = part.partition(":")
        name = name.strip()
        try:
            weight = float(w) if sep else 1.0
        except ValueError:
            raise ValueError(f"weight {w!r} of {name} is not a number (like kill:2)") from None
        if not weight > 0:
            raise ValueError(f"weight of {name} must be above 0, not {w}")
        if name == "all":
            mix.update(dict.fromkeys(KINDS, weight))
        elif name in KNOWN_KINDS:
            mix[name] = weight
        else:
            raise ValueError(f"unknown nemesis {name}; choose from {', '.join(KNOWN_KINDS)} or "
                             "all, each with an optional :weight")
    if not mix:
        raise ValueError(f"no nemesis given; choose from {', '.join(KNOWN_KINDS)} or all")
    return mix


def feasible(mix: dict[str, float], nodes: Sequence[str],
             unavailable: Mapping[str, str] = NO_POWER_LOSS) -> tuple[dict[str, float], list[str]]:
    """The kinds of `mix` that `nodes` allow and that are not `unavailable`
    (kind -> why), and a note for each left out. Raises ValueError if none
    is left."""
    kept: dict[str, float] = {}
    notes: list[str] = []
    for kind, w in mix.items():
        need, why = _NEEDS.get(kind, (1, ""))
        if kind in unavailable:
            notes.append(f"{kind} skipped: {unavailable[kind]}")
        elif len(nodes) < need:
            notes.append(f"{kind} skipped: it needs at least {need} nodes ({why}), "
                         f"the cluster has {len(nodes)}")
        else:
            kept[kind] = w
    if not kept:
        raise ValueError("; ".join(notes))
    return kept, notes


class _Stride:
    """Proportional choice (stride scheduling): each name is taken in
    proportion to its weight, and with equal weights every name once before
    any twice; the seeded phases decide the order."""

    def __init__(self, weights: dict[str, float], rng: random.Random) -> None:
        self._stride = {k: 1.0 / w for k, w in weights.items()}
        self._pass = {k: rng.random() * s for k, s in self._stride.items()}

    def take(self, allowed: Sequence[str] | None = None) -> str:
        names = [k for k in self._pass if allowed is None or k in allowed]
        k = min(names, key=lambda n: (self._pass[n], n))
        self._pass[k] += self._stride[k]
        return k


class Schedule:
    """The cycles of one run: `next_time()` says when the next fault
    starts, `next(view)` makes it from what the oracle sees then."""

    def __init__(self, seed: int, nodes: Sequence[str], mix: dict[str, float],
                 interval_s: float = NEMESIS_INTERVAL_S,
                 unavailable: Mapping[str, str] = NO_POWER_LOSS) -> None:
        if interval_s <= 0:
            raise ValueError("the nemesis interval must be above 0 s")
        self.nodes = sorted(nodes)
        self.mix, self.notes = feasible(mix, self.nodes, unavailable)
        self.interval_s = interval_s
        self._rng = random.Random(seed)
        self._kinds = _Stride(self.mix, self._rng)
        self._specs = _Stride(_SPEC_WEIGHTS, self._rng)
        # A kind that may also hit every node deals its choices on its own
        # (made at its first fault), so the others' schedules stay as they were.
        self._own_specs: dict[str, _Stride] = {}
        self._k = 0

    def next_time(self) -> float:
        # A quiet interval first, so the clients are under way.
        return round((2 * self._k + 1) * self.interval_s, 6)

    def next(self, view: View) -> Step:
        t = self.next_time()
        self._k += 1
        kind = self._kinds.take()
        allowed = _SPECS[kind]
        if len(allowed) == 1:
            spec = allowed[0]
        elif ALL in allowed:
            if kind not in self._own_specs:
                self._own_specs[kind] = _Stride({**_SPEC_WEIGHTS, ALL: 1.0}, self._rng)
            spec = self._own_specs[kind].take(allowed)
        else:
            spec = self._specs.take(allowed)
        return self._make(t, kind, spec, view)

    # --- targets ---------------------------------------------------------------

    def _pick(self, spec: str, view: View) -> list[str]:
        rng, nodes = self._rng, self.nodes
        n = len(nodes)
        if spec == LEADER and view.leader in nodes:
            return [view.leader]
        if spec == SUCCESSOR:
            if view.successor in nodes and view.successor != view.leader:
                return [view.successor]
            others = [x for x in nodes if x != view.leader]
            return [rng.choice(others or nodes)]
        if spec == MINORITY:
            return sorted(rng.sample(nodes, rng.randint(1, max(1, (n - 1) // 2))))
        if spec == MAJORITY:
            return sorted(rng.sample(nodes, n // 2 + 1))
        if spec == ALL:
            return list(nodes)
        return [rng.choice(nodes)]  # one, or the leader when none is known

    def _make(self, t: float, kind: str, spec: str, view: View) -> Step:
        heal = round(t + self.interval_s, 6)
        nodes = self.nodes
        targets = self._pick(spec, view)
        links: set[Link] = set()
        rates: Netem | None = None
        change = ""
        offset = 0.0
        names = ",".join(targets)
        if kind in ("kill", "pause", "stop", "snapshot-kill", "kill-all", POWER_LOSS):
            verb = {"kill": "killed", "pause": "paused", "stop": "stopped (SIGTERM)",
                    "snapshot-kill": "killed while writing a snapshot",
                    "kill-all": "killed (all)", POWER_LOSS: "lost power"}[kind]
            label = f"{names} {verb}"
        elif kind == "isolate":
            links = faults.partition([targets], nodes)
            label = f"{names} isolated"
        elif kind == "partition":
            targets, label, links = self._halves(spec, view, targets)
        elif kind == "bridge":
            targets, label, links = self._bridge(targets[0])
        elif kind == "ring":
            order = list(nodes)
            self._rng.shuffle(order)
            links = faults.majorities_ring(order)
            label = f"majorities ring {'-'.join(order)}"
        elif kind == "one-way":
            t0 = targets[0]
            others = [x for x in nodes if x != t0]
            if self._rng.random() < 0.5:
                links = {(t0, o) for o in others}
                label = f"{t0} cannot send (one-way)"
            else:
                links = {(o, t0) for o in others}
                label = f"{t0} cannot hear (one-way)"
        elif kind == "netem":
            if spec == MAJORITY:
                targets = list(nodes)
            links = {(a, b) for a, b in faults.all_links(nodes) if a in targets or b in targets}
            rates = self._rates()
            where = "every link" if len(targets) == len(nodes) else f"the links of {names}"
            label = f"netem on {where}: {describe_rates(rates)}"
        elif kind == "membership":
            change = self._rng.choice(MEMBERSHIP_CHANGES)
            if change == "grow":
                targets, label = [], "a new member added and promoted (removed at the heal)"
            elif change == "remove":
                label = f"{names} removed from the cluster (added back at the heal)"
            else:
                label = f"{names} replaced by a new member (and back at the heal)"
        elif kind == CLOCK:
            offset = round(self._rng.uniform(*_CLOCK_SKEW_S), 1) * self._rng.choice((-1, 1))
            label = f"{names}'s host clock {offset:+g}s"
        else:  # transfer
            lead, to = view.leader, targets[0]
            if to == lead:
                to = self._rng.choice([x for x in nodes if x != lead])
            if lead is None:
                targets, label = [], "leadership transfer skipped: no leader known"
            else:
                targets, label = [lead, to], f"leadership {lead} -> {to}"
        return Step(t_s=t, heal_s=heal, kind=kind, targets=tuple(targets), spec=spec,
                    label=label, leader=view.leader, links=tuple(sorted(links)), rates=rates,
                    change=change, offset_s=offset)

    def _halves(self, spec: str, view: View,
                targets: list[str]) -> tuple[list[str], str, set[Link]]:
        """Two halves, the smaller holding the targets (the larger holding
        the leader when the majority is aimed at)."""
        nodes = list(self.nodes)
        small = (len(nodes) - 1) // 2 or 1
        self._rng.shuffle(nodes)
        if spec == MAJORITY and view.leader in nodes:
            first = [x for x in nodes if x != view.leader][:small]
        else:
            first = [*targets, *(x for x in nodes if x not in targets)][:small]
        side = sorted(first)
        rest = sorted(x for x in nodes if x not in side)
        return side, f"partition {','.join(side)} | {','.join(rest)}", faults.partition(
            [side, rest], self.nodes)

    def _bridge(self, mid: str) -> tuple[list[str], str, set[Link]]:
        """Two halves that meet only in `mid` (Jepsen's bridge)."""
        others = [x for x in self.nodes if x != mid]
        self._rng.shuffle(others)
        # faults.bridge takes the middle of the order as the bridge.
        half = (len(others) + 1) // 2
        order = [*others[:half], mid, *others[half:]]
        left, right = sorted(others[:half]), sorted(others[half:])
        return [mid], f"bridge through {mid} ({','.join(left)} | {','.join(right)})", \
            faults.bridge(order)

    def _rates(self) -> Netem:
        u = self._rng.uniform
        delay = round(u(*_DELAY_MS))
        return Netem(delay_ms=delay, jitter_ms=round(delay / 2), loss=round(u(*_LOSS), 2),
                     duplicate=round(u(*_DUPLICATE), 2), reorder=round(u(*_REORDER), 2))


def describe_rates(r: Netem) -> str:
    parts = []
    if r.delay_ms:
        parts.append(f"delay {r.delay_ms:g}±{r.jitter_ms:g}ms")
    parts += [f"{name} {getattr(r, name) * 100:g}%" for name in ("loss", "duplicate", "reorder")
              if getattr(r, name)]
    return ", ".join(parts)


def plan(seed: int, nodes: Sequence[str], mix: dict[str, float], oracle: Oracle,
         duration_s: float, interval_s: float = NEMESIS_INTERVAL_S,
         unavailable: Mapping[str, str] = NO_POWER_LOSS) -> list[Step]:
    """Every fault of a run of `duration_s`, asking `oracle` at each start."""
    sched = Schedule(seed, nodes, mix, interval_s, unavailable)
    out: list[Step] = []
    while (t := sched.next_time()) < duration_s:
        out.append(sched.next(oracle(t)))
    return out
