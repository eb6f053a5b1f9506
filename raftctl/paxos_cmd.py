"""`raftctl paxos decree VALUE`: one instance of the Synod protocol on a
Paxos cluster, shown message by message from the nodes' logs. Thin: parse,
call raftctl/decree.py, render."""

from __future__ import annotations

from dataclasses import asdict

import click

from node.control import DECREE_MAX_CHARS
from raftctl import render
from raftctl.decree import run_decree
from raftctl.logs_cmd import ballot_label
from raftctl.options import cluster_of, complete_nodes, json_option


@click.group("paxos")
def paxos() -> None:
    """Look inside a Paxos cluster (`raftctl up --algorithm paxos`)."""


@paxos.command("decree")
@click.argument("value")
@click.option("--node", "node", shell_complete=complete_nodes,
              help="The proposer [default: the leader].")
@click.option("--wait", "wait_s", type=float, default=5.0, show_default=True,
              help="Seconds to wait for every running node to learn the decree chosen.")
@json_option("Print JSON: node, ballot, value, slot, chosen_by, waiting_for, lines.")
@click.pass_context
def decree(ctx: click.Context, value: str, node: str | None, wait_s: float,
           as_json: bool) -> None:
    """Have a node propose VALUE by the single-decree Synod protocol and show
    the instance in the merged logs: prepare_sent (phase 1a), promised (1b),
    accept_sent (2a), accepted (2b), chosen (Paxos Made Simple §2).

    The proposer runs phase 1 with a fresh ballot even if it leads, as the
    Synod protocol does; Multi-Paxos skips it for later slots while its
    leader keeps its ballot. VALUE goes in the next free slot as a no-op
    that carries it: the key-value store ignores it.
    """
    if not 1 <= len(value) <= DECREE_MAX_CHARS:
        raise click.BadParameter(f"a decree is 1 to {DECREE_MAX_CHARS} characters, not "
                                 f"{len(value)}", param_hint="VALUE")
    c = cluster_of(ctx)
    d = run_decree(c, value, node, wait_s)
    if as_json:
        click.echo(render.dumps(asdict(d)))
        return
    con = render.console()
    colours = {n: render.NODE_COLOURS[i % len(render.NODE_COLOURS)]
               for i, n in enumerate(c.node_ids())}
    label = ballot_label(c)
    for ev in d.lines:
        con.print(render.log_line(ev, colours, label))
    late = f"; not yet: {', '.join(d.waiting_for)}" if d.waiting_for else ""
    click.echo(f"decree {value!r}: chosen in slot {d.slot}, ballot {d.ballot}, proposed by "
               f"{d.node}; learned by {', '.join(d.chosen_by)}{late}")
