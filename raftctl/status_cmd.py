"""CLI commands that show a cluster: status (alias ps), a live table of it
(watch), its leader, and the clusters there are (ls). They read; they never
change a cluster."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from raftctl import render
from raftctl.cluster import Cluster, NodeState, default_home
from raftctl.discovery import find_clusters
from raftctl.exits import Exit
from raftctl.logview import now_ts
from raftctl.options import cluster_of, json_option


@click.command("status")
@json_option("Print JSON (a list, one object a node).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show each node's pid, state, term, leader, commit and faults. Exit 3
    if no node leads (all down, or no quorum)."""
    print_status(ctx, cluster_of(ctx), as_json)


def warn_durability(c: Cluster) -> None:
    """Say on stderr when the cluster runs without fsync (`up` says it too)."""
    if c.config().fsync == "never":
        render.console(stderr=True).print(
            "[bold red]warning:[/] fsync = never: durability is off; acknowledged writes can "
            "be lost on a crash")


def _warn_unsafe_bugs(states: list[NodeState]) -> None:
    bugs = {s.id: s.status["unsafe_bugs"] for s in states
            if s.status is not None and s.status.get("unsafe_bugs")}
    if bugs:
        which = "; ".join(f"{n}: {', '.join(b)}" for n, b in bugs.items())
        render.console(stderr=True).print(
            f"[bold red]warning:[/] test-only bugs are on ({which}): these nodes break their "
            "guarantees on purpose; restart them without RAFTCTL_TEST_UNSAFE_BUGS")


def print_status(ctx: click.Context, c: Cluster, as_json: bool,
                 exit_on_no_leader: bool = True) -> None:
    """The status table (or JSON) with its warnings; exit 3 without a
    leader unless told not to (`up` reports the nodes that did not start)."""
    warn_durability(c)
    states = c.status()
    _warn_unsafe_bugs(states)
    if as_json:
        click.echo(render.dumps(render.status_rows(states)))
    else:
        render.console().print(render.status_table(states, title=f"cluster {c.name}"))
    if c.leader(states) is None and exit_on_no_leader:
        up = [s.id for s in states if s.process == "running"]
        why = "no node is running" if not up else f"none of {', '.join(up)} leads"
        click.echo(f"Error: cluster {c.name} has no leader: {why}", err=True)
        ctx.exit(Exit.UNAVAILABLE)


@click.command("ls")
@json_option("Print JSON (a list, one object a cluster).")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List clusters: those under HOME (--home, RAFTCTL_HOME, default
    ./.raftctl), and every running cluster of this user wherever it is."""
    home = ctx.find_root().params.get("home") or default_home()
    found = find_clusters(Path(home).resolve(), cluster_of(ctx).run_dir)
    if as_json:
        click.echo(render.dumps([asdict(f) for f in found]))
    elif not found:
        click.echo(f"no cluster under {home} and none running; `raftctl up` makes one")
    else:
        render.console().print(render.clusters_table(found))


@click.command("watch")
@click.option("--interval", type=float, default=0.25, show_default=True,
              help="Seconds between refreshes.")
@click.option("--count", type=int, default=0, help="Stop after this many refreshes (0: never).")
@json_option("Print one JSON object a line, one line a refresh.")
@click.pass_context
def watch(ctx: click.Context, interval: float, count: int, as_json: bool) -> None:
    """A live table of the cluster; Ctrl-C to quit (exit 0)."""
    c = cluster_of(ctx)
    c.load()
    n = 0
    try:
        with _live(as_json) as live:
            while True:
                states = c.status(timeout_s=min(0.5, max(interval, 0.1)))
                if as_json:
                    click.echo(render.dumps_line({
                        "ts": now_ts(), "cluster": c.name,
                        "leader": c.leader(states), "nodes": render.status_rows(states)}))
                else:
                    live.update(render.status_table(
                        states, title=f"cluster {c.name}  {time.strftime('%H:%M:%S')}"),
                        refresh=True)
                n += 1
                if count and n >= count:
                    return
                time.sleep(interval)  # the refresh cadence
    except KeyboardInterrupt:
        return  # Ctrl-C is how one leaves `watch`: not an error


def _live(as_json: bool) -> Any:
    if as_json:
        return contextlib.nullcontext()
    from rich.live import Live  # only here: it costs every other command's start

    return Live(console=render.console(), auto_refresh=False)


@click.command("leader")
@json_option()
@click.pass_context
def leader(ctx: click.Context, as_json: bool) -> None:
    """Print the node that leads now (exit 3 if none)."""
    c = cluster_of(ctx)
    lead = c.leader()
    if as_json:
        click.echo(render.dumps({"leader": lead}))
    if lead is None:
        click.echo(f"Error: cluster {c.name} has no leader right now", err=True)
        ctx.exit(Exit.UNAVAILABLE)
    if not as_json:
        click.echo(lead)


def register(group: click.Group) -> None:
    for cmd in (status, ls, watch, leader):
        group.add_command(cmd)
    group.add_command(status, "ps")
