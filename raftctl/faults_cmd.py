"""CLI commands for link faults: partition, block, netem, heal. Thin: they
build a `FaultState` with `chaos.faults` and hand it to the cluster."""

from __future__ import annotations

import random

import click
import msgspec

from chaos.faults import (
    FaultState,
    Link,
    add_blocks,
    all_links,
    bridge,
    change_netem,
    isolate,
    majorities_ring,
    one_way,
    parse_groups,
    partition,
    random_partition,
    with_blocks,
)
from raftctl import render
from raftctl.cluster import Cluster, ClusterUnavailable
from raftctl.exits import CliError, Exit
from raftctl.logview import parse_duration_s
from raftctl.options import cluster_of, complete_nodes, json_option
from raftctl.remote import has_hosts

_KERNEL_HELP = ("On a cluster on hosts: enforce cuts and loss as iptables rules on the hosts "
                "(and delay, duplicate, reorder as netem where their kernel has it), over SSH; "
                "needs root or CAP_NET_ADMIN there. Stays on until `heal`.")


def _kernel_mode(c: Cluster, kernel: bool) -> str:
    """The cluster's kernel mode ("" if none), after turning `--kernel` on if asked."""
    mode = c.config().kernel_mode()  # first: says so if the cluster is not set up
    if not has_hosts(c.run_dir):
        if kernel:
            raise CliError("--kernel is for clusters on hosts ([hosts] in the cluster file); "
                           "on this machine, `raftctl up --netns` enforces faults in the kernel",
                           Exit.USAGE)
        return mode
    from raftctl.remote.cluster import HostCluster  # only here: it loads asyncssh

    assert isinstance(c, HostCluster), "open_cluster gives a HostCluster where there are hosts"
    if kernel:
        c.enable_kernel_faults()
    return "hosts" if c.host_kernel().on else mode


def _apply(c: Cluster, state: FaultState, change: str, as_json: bool,
           kernel: bool = False) -> None:
    """Record and push `state`; say what changed, then every fault now active."""
    kernel_mode = _kernel_mode(c, kernel)
    unconfirmed = c.apply_faults(state)
    if as_json:
        click.echo(render.dumps({
            "cluster": c.name, "change": change, "healed": state.is_clear(),
            "faults": state.description, "blocked": [list(x) for x in state.blocked],
            "netem": msgspec.to_builtins(state.netem), "kernel_mode": kernel_mode or None,
            "not_running": unconfirmed}))
        return
    click.echo(change)
    if state.is_clear():
        click.echo("healed: every link is up")
    else:
        click.echo("faults now: " + "; ".join(state.description))
    if kernel_mode == "hosts" and not state.is_clear():
        click.echo("(kernel mode hosts: cuts and loss are iptables rules on the nodes' hosts; "
                   "delay, duplicate and reorder are netem on hosts whose kernel has it, and "
                   "stay in the nodes' transports on the others; `heal` removes them all)")
    elif kernel_mode and not state.is_clear():
        where = ("the nodes' namespaces" if kernel_mode == "bridge"
                 else "the nodes' shared sandbox namespace")
        click.echo(f"(kernel mode {kernel_mode}: cuts and loss are iptables rules in {where}; "
                   "delay, duplicate and reorder stay in the nodes' transports, as this kernel "
                   "has no netem)")
    if unconfirmed:
        click.echo(f"(not running, will get the faults when started: {', '.join(unconfirmed)})")


def _percent(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    t = text.strip().rstrip("%")
    try:
        v = float(t) / 100.0
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a percentage like 5%", param_hint=what) from None
    if not 0.0 <= v <= 1.0:
        raise click.BadParameter(f"{text} is not between 0% and 100%", param_hint=what)
    return v


def _ms(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration_s(text if text[-1:].isalpha() else text + "ms") * 1000.0
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=what) from None


@click.command()
@click.argument("groups", nargs=-1)
@click.option("--isolate", "isolate_node", shell_complete=complete_nodes,
              help="Cut one node off from all others.")
@click.option("--leader", is_flag=True, help="Isolate whoever leads now.")
@click.option("--random", "rnd", is_flag=True, help="Two random groups.")
@click.option("--bridge", "bridge_", is_flag=True,
              help="Two halves joined only through one node (Jepsen's bridge; 3+ nodes).")
@click.option("--ring", is_flag=True,
              help="Each node sees a different majority (Jepsen's majorities ring; 4+ nodes).")
@click.option("--kernel", is_flag=True, help=_KERNEL_HELP)
@json_option()
@click.pass_context
def partition_cmd(ctx: click.Context, groups: tuple[str, ...], isolate_node: str | None,
                  leader: bool, rnd: bool, bridge_: bool, ring: bool, kernel: bool,
                  as_json: bool) -> None:
    """Split the cluster: `partition n1,n2 n3,n4,n5`. Nodes not named form one
    more group. Replaces the current partition; `heal` undoes it."""
    c = cluster_of(ctx)
    chosen = sum([bool(groups), isolate_node is not None, leader, rnd, bridge_, ring])
    if chosen != 1:
        raise click.UsageError("give groups, or one of --isolate, --leader, --random, "
                               "--bridge, --ring")
    nodes = c.node_ids()
    state = c.load_faults()
    if leader:
        lead = c.leader()
        if lead is None:
            raise ClusterUnavailable(f"cluster {c.name} has no leader right now")
        isolate_node = lead
    try:
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
    except ValueError as e:
        raise CliError(str(e), Exit.USAGE) from None
    if not links:
        raise CliError(_cuts_nothing(what, ring, len(nodes)), Exit.USAGE)
    _apply(c, with_blocks(state, links, what), f"partition: {what}", as_json, kernel)


def _cuts_nothing(what: str, ring: bool, n: int) -> str:
    if ring:
        return (f"a majorities ring needs at least 4 nodes, and this cluster has {n}: with "
                "links cut both ways, no two of 3 nodes can see different majorities, so "
                "nothing would be cut; `partition --bridge` is the closest on 3 nodes")
    return f"{what} cuts no link (every node is in one group); name at least two groups"


@click.command()
@click.argument("a", shell_complete=complete_nodes)
@click.argument("b", shell_complete=complete_nodes)
@click.option("--one-way", "oneway", is_flag=True, help="Only traffic from A to B is dropped.")
@click.option("--kernel", is_flag=True, help=_KERNEL_HELP)
@json_option()
@click.pass_context
def block(ctx: click.Context, a: str, b: str, oneway: bool, kernel: bool,
          as_json: bool) -> None:
    """Drop traffic between A and B (both ways unless --one-way)."""
    c = cluster_of(ctx)
    c.check_nodes([a, b])
    if a == b:
        raise click.UsageError("A and B must be different nodes")
    links = one_way(a, b) if oneway else one_way(a, b) | one_way(b, a)
    what = f"{a}->{b} blocked" if oneway else f"{a}<->{b} blocked"
    _apply(c, add_blocks(c.load_faults(), links, what), f"block: {what}", as_json, kernel)


@click.command()
@json_option()
@click.pass_context
def heal(ctx: click.Context, as_json: bool) -> None:
    """Remove every link fault: partitions, blocks and netem, in the
    transports and in the hosts' kernels (which turns --kernel off)."""
    _apply(cluster_of(ctx), FaultState(), "heal: every fault removed", as_json)


@click.command()
@click.option("--link", "links", multiple=True, help="A:B — only this link, both ways "
              "(repeatable); default: every link.")
@click.option("--delay", help="Added delay, like 50ms.")
@click.option("--jitter", help="Random extra delay up to this, like 10ms.")
@click.option("--loss", help="Share of messages dropped, like 5%.")
@click.option("--duplicate", help="Share of messages sent twice, like 1%.")
@click.option("--reorder", help="Share of messages held back so later ones pass, like 2%.")
@click.option("--replace", is_flag=True,
              help="Make each link's rule exactly the settings given (the others back to 0); "
                   "without it, the settings given are added to the link's rule.")
@click.option("--clear", is_flag=True, help="Remove netem settings (from --link, or all).")
@click.option("--kernel", is_flag=True, help=_KERNEL_HELP)
@json_option()
@click.pass_context
def netem(ctx: click.Context, links: tuple[str, ...], delay: str | None, jitter: str | None,
          loss: str | None, duplicate: str | None, reorder: str | None, replace: bool,
          clear: bool, kernel: bool, as_json: bool) -> None:
    """Delay, drop, duplicate and reorder messages on links (enforced in the
    nodes' transports).

    \b
    Settings add up: `netem --delay 50ms` then `netem --loss 5%` leaves both
    on every link; a setting given again takes the new value. --replace sets
    the rule to exactly what is given, --clear removes it.
    """
    c = cluster_of(ctx)
    nodes = c.node_ids()
    chosen: list[Link] = []
    for spec in links:
        a, sep, b = spec.partition(":")
        if not sep or a == b:
            raise click.BadParameter(f"{spec!r} is not A:B with two nodes", param_hint="--link")
        c.check_nodes([a, b])
        chosen += [(a, b), (b, a)]
    given = {k: v for k, v in (
        ("delay_ms", _ms(delay, "--delay")), ("jitter_ms", _ms(jitter, "--jitter")),
        ("loss", _percent(loss, "--loss")), ("duplicate", _percent(duplicate, "--duplicate")),
        ("reorder", _percent(reorder, "--reorder"))) if v is not None}
    if clear and (given or replace):
        raise click.UsageError("--clear removes the settings: give it alone (with --link)")
    if not clear and not given:
        raise click.UsageError("give at least one of --delay, --jitter, --loss, --duplicate, "
                               "--reorder, or --clear")
    where = ", ".join(links) if links else "all links"
    parts = " ".join(f"{k} {v}" for k, v in (("delay", delay), ("jitter", jitter),
                                              ("loss", loss), ("duplicate", duplicate),
                                              ("reorder", reorder)) if v is not None)
    if clear:
        change = f"netem: cleared on {where}"
    elif replace:
        change = f"netem: replaced the rule on {where} with {parts}"
    else:
        change = (f"netem: added {parts} to {where} (settings not given keep their values; "
                  "--replace drops them)")
    state = change_netem(c.load_faults(), chosen or all_links(nodes),
                         {} if clear else given, replace or clear, nodes)
    _apply(c, state, change, as_json, kernel)


def register(group: click.Group) -> None:
    group.add_command(partition_cmd, "partition")
    group.add_command(block)
    group.add_command(heal)
    group.add_command(netem)
