"""CLI commands for link faults: partition, block, netem, heal. Thin: they
build a `FaultState` with `chaos.faults` and hand it to the cluster."""

from __future__ import annotations

import random

import click

from chaos.faults import (
    FaultState,
    Netem,
    add_blocks,
    all_links,
    bridge,
    isolate,
    majorities_ring,
    one_way,
    parse_groups,
    partition,
    random_partition,
    with_blocks,
    with_netem,
)
from raftctl.cluster import Cluster, ClusterError
from raftctl.logview import parse_duration_s


def _c(ctx: click.Context) -> Cluster:
    c = ctx.find_object(Cluster)
    assert c is not None, "the raftctl group always sets up a Cluster"
    return c


def _apply(c: Cluster, state: FaultState) -> None:
    try:
        unconfirmed = c.apply_faults(state)
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    if state.is_clear():
        click.echo("healed: every link is up")
    else:
        click.echo("faults: " + "; ".join(state.description))
    try:
        kernel = c.config().kernel_mode()
    except ClusterError:
        kernel = ""
    if kernel and not state.is_clear():
        where = ("the nodes' namespaces" if kernel == "bridge"
                 else "the nodes' shared sandbox namespace")
        click.echo(f"(kernel mode {kernel}: cuts and loss are iptables rules in {where}; "
                   "delay, duplicate and reorder stay in the nodes' transports, as this kernel "
                   "has no netem)")
    if unconfirmed:
        click.echo(f"(not running, will get the faults when started: {', '.join(unconfirmed)})")


def _percent(text: str | None, what: str) -> float:
    if text is None:
        return 0.0
    t = text.strip().rstrip("%")
    try:
        v = float(t) / 100.0
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a percentage like 5%", param_hint=what) from None
    if not 0.0 <= v <= 1.0:
        raise click.BadParameter(f"{text} is not between 0% and 100%", param_hint=what)
    return v


def _ms(text: str | None, what: str) -> float:
    if text is None:
        return 0.0
    try:
        return parse_duration_s(text if text[-1].isalpha() else text + "ms") * 1000.0
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=what) from None


@click.command()
@click.argument("groups", nargs=-1)
@click.option("--isolate", "isolate_node", help="Cut one node off from all others.")
@click.option("--leader", is_flag=True, help="Isolate whoever leads now.")
@click.option("--random", "rnd", is_flag=True, help="Two random groups.")
@click.option("--bridge", "bridge_", is_flag=True,
              help="Two halves joined only through one node (Jepsen's bridge).")
@click.option("--ring", is_flag=True,
              help="Each node sees a different majority (Jepsen's majorities ring).")
@click.pass_context
def partition_cmd(ctx: click.Context, groups: tuple[str, ...], isolate_node: str | None,
                  leader: bool, rnd: bool, bridge_: bool, ring: bool) -> None:
    """Split the cluster: `partition n1,n2 n3,n4,n5`. Nodes not named form one
    more group. Replaces the current partition; `heal` undoes it."""
    c = _c(ctx)
    chosen = sum([bool(groups), isolate_node is not None, leader, rnd, bridge_, ring])
    if chosen != 1:
        raise click.UsageError("give groups, or one of --isolate, --leader, --random, "
                               "--bridge, --ring")
    try:
        nodes = c.node_ids()
        state = c.load_faults()
        if leader:
            lead = c.leader()
            if lead is None:
                raise click.ClickException(f"cluster {c.name} has no leader right now")
            isolate_node = lead
        if isolate_node is not None:
            c.check_nodes([isolate_node])
            links, what = isolate(isolate_node, nodes), f"{isolate_node} isolated"
        elif rnd:
            g = random_partition(nodes, random.Random())
            links, what = partition(g, nodes), "partition " + " | ".join(",".join(x) for x in g)
        elif bridge_:
            links, what = bridge(nodes), "bridge"
        elif ring:
            links, what = majorities_ring(nodes), "majorities ring"
        else:
            g = parse_groups(list(groups))
            links = partition(g, nodes)
            what = "partition " + " | ".join(",".join(x) for x in g)
    except (ValueError, ClusterError) as e:
        raise click.ClickException(str(e)) from None
    _apply(c, with_blocks(state, links, what))


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--one-way", "oneway", is_flag=True, help="Only traffic from A to B is dropped.")
@click.pass_context
def block(ctx: click.Context, a: str, b: str, oneway: bool) -> None:
    """Drop traffic between A and B (both ways unless --one-way)."""
    c = _c(ctx)
    try:
        c.check_nodes([a, b])
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    if a == b:
        raise click.UsageError("A and B must be different nodes")
    links = one_way(a, b) if oneway else one_way(a, b) | one_way(b, a)
    what = f"{a}->{b} blocked" if oneway else f"{a}<->{b} blocked"
    _apply(c, add_blocks(c.load_faults(), links, what))


@click.command()
@click.pass_context
def heal(ctx: click.Context) -> None:
    """Remove every link fault: partitions, blocks and netem."""
    _apply(_c(ctx), FaultState())


@click.command()
@click.option("--link", "links", multiple=True, help="A:B — only this link, both ways "
              "(repeatable); default: every link.")
@click.option("--delay", help="Added delay, like 50ms.")
@click.option("--jitter", help="Random extra delay up to this, like 10ms.")
@click.option("--loss", help="Share of messages dropped, like 5%.")
@click.option("--duplicate", help="Share of messages sent twice, like 1%.")
@click.option("--reorder", help="Share of messages held back so later ones pass, like 2%.")
@click.option("--clear", is_flag=True, help="Remove netem settings (from --link, or all).")
@click.pass_context
def netem(ctx: click.Context, links: tuple[str, ...], delay: str | None, jitter: str | None,
          loss: str | None, duplicate: str | None, reorder: str | None, clear: bool) -> None:
    """Delay, drop, duplicate and reorder messages on links (enforced in the
    nodes' transports)."""
    c = _c(ctx)
    try:
        nodes = c.node_ids()
        chosen: list[tuple[str, str]] = []
        for spec in links:
            a, sep, b = spec.partition(":")
            if not sep:
                raise click.BadParameter(f"{spec!r} is not A:B", param_hint="--link")
            c.check_nodes([a, b])
            chosen += [(a, b), (b, a)]
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    rates = Netem() if clear else Netem(
        delay_ms=_ms(delay, "--delay"), jitter_ms=_ms(jitter, "--jitter"),
        loss=_percent(loss, "--loss"), duplicate=_percent(duplicate, "--duplicate"),
        reorder=_percent(reorder, "--reorder"))
    if not clear and rates.is_clear():
        raise click.UsageError("give at least one of --delay, --loss, --duplicate, --reorder, "
                               "or --clear")
    parts = [f"{k} {v}" for k, v in (("delay", delay), ("jitter", jitter), ("loss", loss),
                                      ("duplicate", duplicate), ("reorder", reorder)) if v]
    where = ", ".join(links) if links else "all links"
    what = f"netem {' '.join(parts)} on {where}"
    _apply(c, with_netem(c.load_faults(), chosen or all_links(nodes), rates, what))


def register(group: click.Group) -> None:
    group.add_command(partition_cmd, "partition")
    group.add_command(block)
    group.add_command(heal)
    group.add_command(netem)
