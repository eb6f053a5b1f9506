"""Link faults as data: partitions, one-way blocks and netem-style rates,
compiled into per-node link rules. Pure functions; `chaos` never imports
`raftctl`, and nothing here touches a process or a socket.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import msgspec

from node.transport.links import LinkRule

Link = tuple[str, str]  # (from, to): traffic from the first node to the second


class Netem(msgspec.Struct, frozen=True, kw_only=True):
    """Rates and delays on one directed link (like Linux netem)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0

    def is_clear(self) -> bool:
        return self == Netem()


class FaultState(msgspec.Struct, kw_only=True):
    """Every active link fault of a cluster (kept in the run directory)."""

    blocked: list[Link] = []
    netem: dict[str, Netem] = {}  # "from>to" -> rates
    description: list[str] = []

    def blocked_set(self) -> set[Link]:
        return {(a, b) for a, b in self.blocked}

    def is_clear(self) -> bool:
        return not self.blocked and not self.netem


def _key(link: Link) -> str:
    return f"{link[0]}>{link[1]}"


def _unkey(k: str) -> Link:
    a, _, b = k.partition(">")
    return a, b


def cut_between(groups: list[list[str]]) -> set[Link]:
    """Both directions between nodes of different groups."""
    where = {n: i for i, g in enumerate(groups) for n in g}
    return {(a, b) for a in where for b in where if a != b and where[a] != where[b]}


def complete_groups(groups: list[list[str]], nodes: list[str]) -> list[list[str]]:
    """Nodes not named in any group form one more group (as in Blockade)."""
    named = [n for g in groups for n in g]
    dup = sorted({n for n in named if named.count(n) > 1})
    if dup:
        raise ValueError(f"{', '.join(dup)} named in more than one group")
    unknown = sorted(set(named) - set(nodes))
    if unknown:
        raise ValueError(f"not in the cluster: {', '.join(unknown)} (nodes: {', '.join(nodes)})")
    rest = [n for n in nodes if n not in named]
    out = [list(g) for g in groups if g]
    if rest:
        out.append(rest)
    return out


def partition(groups: list[list[str]], nodes: list[str]) -> set[Link]:
    return cut_between(complete_groups(groups, nodes))


def isolate(node: str, nodes: list[str]) -> set[Link]:
    return partition([[node]], nodes)


def random_partition(nodes: list[str], rng: random.Random) -> list[list[str]]:
    """Two non-empty groups, chosen at random."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    k = rng.randint(1, max(1, len(nodes) - 1))
    return [sorted(shuffled[:k]), sorted(shuffled[k:])]


def bridge(nodes: list[str]) -> set[Link]:
    """Two halves that cannot talk to each other, and one node (the bridge)
    that talks to both (Jepsen's bridge)."""
    if len(nodes) < 3:
        raise ValueError("a bridge needs at least 3 nodes")
    mid = len(nodes) // 2
    left, bridge_node, right = nodes[:mid], nodes[mid], nodes[mid + 1 :]
    cut = cut_between([left, right])
    return {(a, b) for a, b in cut if bridge_node not in (a, b)}


def majorities_ring(nodes: list[str]) -> set[Link]:
    """Each node sees a majority (itself and its nearest neighbours on a
    ring) but no two nodes see the same majority (Jepsen's majorities ring)."""
    n = len(nodes)
    if n < 3:
        raise ValueError("a majorities ring needs at least 3 nodes")
    reach = n // 2  # neighbours on each side... trimmed to a majority below
    sees: dict[str, set[str]] = {}
    for i, a in enumerate(nodes):
        s = {a}
        for d in range(1, reach + 1):
            s.add(nodes[(i + d) % n])
            s.add(nodes[(i - d) % n])
            if len(s) >= n // 2 + 1:
                break
        sees[a] = s
    # Links are symmetric: a link stays up only if each end sees the other.
    return {(a, b) for a in nodes for b in nodes
            if a != b and not (b in sees[a] and a in sees[b])}


def one_way(src: str, dst: str) -> set[Link]:
    return {(src, dst)}


def compile_rules(state: FaultState, nodes: list[str]) -> dict[str, dict[str, LinkRule]]:
    """Per node, the link rule for each peer. A block is enforced at both
    ends (sender drops outgoing, receiver drops incoming), so a node that
    missed an update still honours it through its peer."""
    blocked = state.blocked_set()
    net = {_unkey(k): v for k, v in state.netem.items()}
    out: dict[str, dict[str, LinkRule]] = {}
    for a in nodes:
        rules: dict[str, LinkRule] = {}
        for b in nodes:
            if a == b:
                continue
            ne = net.get((a, b), Netem())
            rule = LinkRule(
                block_out=(a, b) in blocked, block_in=(b, a) in blocked,
                loss=ne.loss, duplicate=ne.duplicate, delay_ms=ne.delay_ms,
                jitter_ms=ne.jitter_ms, reorder=ne.reorder)
            if rule != LinkRule():
                rules[b] = rule
        out[a] = rules
    return out


def with_blocks(state: FaultState, links: Iterable[Link], what: str) -> FaultState:
    """Replace the blocked links (a new partition replaces the old one)."""
    return FaultState(blocked=sorted(set(links)), netem=dict(state.netem),
                      description=[d for d in state.description if d.startswith("netem")] + [what])


def add_blocks(state: FaultState, links: Iterable[Link], what: str) -> FaultState:
    return FaultState(blocked=sorted(state.blocked_set() | set(links)), netem=dict(state.netem),
                      description=[*state.description, what])


def with_netem(state: FaultState, links: Iterable[Link], rates: Netem, what: str) -> FaultState:
    netem = dict(state.netem)
    for link in links:
        if rates.is_clear():
            netem.pop(_key(link), None)
        else:
            netem[_key(link)] = rates
    desc = [d for d in state.description if not d.startswith("netem")]
    if netem:
        desc.append(what)
    return FaultState(blocked=list(state.blocked), netem=netem, description=desc)


def change_netem(state: FaultState, links: Iterable[Link], changes: dict[str, float],
                 replace: bool, nodes: list[str]) -> FaultState:
    """Set the given Netem fields on `links`: on top of each link's current
    rates, or (`replace`) on clear ones, so the fields not given drop to 0.
    The netem descriptions are rebuilt from the result."""
    netem = dict(state.netem)
    for link in links:
        base = Netem() if replace else netem.get(_key(link), Netem())
        rates = msgspec.structs.replace(base, **changes)
        if rates.is_clear():
            netem.pop(_key(link), None)
        else:
            netem[_key(link)] = rates
    desc = [d for d in state.description if not d.startswith("netem")]
    return FaultState(blocked=list(state.blocked), netem=netem,
                      description=desc + describe_netem(netem, nodes))


def describe_netem(netem: dict[str, Netem], nodes: list[str]) -> list[str]:
    """One line per distinct set of rates: `netem delay 50ms loss 5% on n1:n2`
    (both ways), `n1->n2` (one way) or `on all links`."""
    by_rates: dict[Netem, set[Link]] = {}
    for k, rates in netem.items():
        by_rates.setdefault(rates, set()).add(_unkey(k))
    every = set(all_links(nodes))
    out = []
    for rates, links in by_rates.items():
        if links == every:
            where = "all links"
        else:
            both = sorted({(min(a, b), max(a, b)) for a, b in links if (b, a) in links})
            one = sorted((a, b) for a, b in links if (b, a) not in links)
            where = ", ".join([f"{a}:{b}" for a, b in both] + [f"{a}->{b}" for a, b in one])
        out.append(f"netem {rates_text(rates)} on {where}")
    return sorted(out)


def rates_text(rates: Netem) -> str:
    """`delay 50ms jitter 10ms loss 5%`: the rates that are set."""
    parts = [(f"delay {rates.delay_ms:g}ms", rates.delay_ms),
             (f"jitter {rates.jitter_ms:g}ms", rates.jitter_ms),
             (f"loss {rates.loss * 100:g}%", rates.loss),
             (f"duplicate {rates.duplicate * 100:g}%", rates.duplicate),
             (f"reorder {rates.reorder * 100:g}%", rates.reorder)]
    return " ".join(text for text, v in parts if v) or "nothing"


def all_links(nodes: list[str]) -> list[Link]:
    return [(a, b) for a in nodes for b in nodes if a != b]


def parse_groups(args: list[str]) -> list[list[str]]:
    """`n1,n2 n3,n4,n5` -> [["n1", "n2"], ["n3", "n4", "n5"]]."""
    return [[n for n in a.split(",") if n] for a in args]
