"""`raftctl member list|add|promote|remove|replace`: change who is in the
cluster (docs/MEMBERSHIP.md). Thin: parse, call raftctl/members.py, render."""

from __future__ import annotations

from dataclasses import asdict

import click

from raftctl import members, render
from raftctl.members import Outcome
from raftctl.options import cluster_of, complete_nodes, json_option

force_option = click.option(
    "--force", is_flag=True,
    help="Do it even if the voters left could not form a quorum of running nodes.")


@click.group("member")
def member() -> None:
    """Add, promote, remove and replace members: changes go through the
    leader's log by joint consensus (Raft thesis ch. 4), one at a time."""


@member.command("list")
@json_option()
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every node and its place in the configuration: voter, learner,
    leaving (an old voter while the change is joint), removed."""
    c = cluster_of(ctx)
    conf, rows = members.list_members(c)
    if as_json:
        click.echo(render.dumps({
            "cluster": c.name, "leader": conf.leader if conf else None,
            "voters": conf.voters if conf else None,
            "learners": conf.learners if conf else None,
            "outgoing": conf.outgoing if conf else None,
            "joint": conf.joint if conf else None,
            "conf_index": conf.index if conf else None,
            "committed": conf.committed if conf else None,
            "members": [asdict(r) for r in rows]}))
        return
    render.console().print(render.members_table(rows, conf, f"cluster {c.name}"))
    if conf is None:
        click.echo("no node leads right now, so the configuration is not known", err=True)


@member.command("add")
@click.argument("name", required=False)
@json_option()
@click.pass_context
def add_cmd(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Start a new node and add it as a learner (NAME: default the first
    free nN). It receives the log but does not vote until promoted."""
    _show(members.add(cluster_of(ctx), name), as_json)


@member.command("promote")
@click.argument("name", shell_complete=complete_nodes)
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for the learner to catch up before promoting it.")
@json_option()
@click.pass_context
def promote_cmd(ctx: click.Context, name: str, wait_s: float, as_json: bool) -> None:
    """Make learner NAME a voter; refused, with how far behind it is, until
    it has nearly caught up with the leader's log."""
    _show(members.promote(cluster_of(ctx), name, wait_s), as_json)


@member.command("remove")
@click.argument("name", shell_complete=complete_nodes)
@force_option
@json_option()
@click.pass_context
def remove_cmd(ctx: click.Context, name: str, force: bool, as_json: bool) -> None:
    """Remove NAME from the cluster, then stop its process. A leader
    removed steps down once the change commits."""
    _show(members.remove(cluster_of(ctx), name, force), as_json)


@member.command("replace")
@click.argument("name", shell_complete=complete_nodes)
@force_option
@json_option()
@click.pass_context
def replace_cmd(ctx: click.Context, name: str, force: bool, as_json: bool) -> None:
    """Replace voter NAME by a new member: it joins as a learner, catches
    up, then one change removes NAME and promotes it. The way back for a
    node that lost its data."""
    _show(members.replace(cluster_of(ctx), name, force), as_json)


def _show(o: Outcome, as_json: bool) -> None:
    if as_json:
        click.echo(render.dumps(asdict(o)))
        return
    click.echo(render.member_outcome(o))
    if o.forced:
        click.echo("warning: --force: the voters left may not form a quorum of running "
                   "nodes until the stopped ones start", err=True)
