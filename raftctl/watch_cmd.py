"""`raftctl watch-key`: a line per change of a key or a prefix, as the
cluster delivers them (node/client.py, `Client.watch`). It parses, runs the
watch and renders; the resuming and ordering are the client's."""

from __future__ import annotations

import click

from node.api_range import WatchEvent
from raftctl import render
from raftctl.exits import Exit
from raftctl.kv_cmd import client_for, value_text
from raftctl.options import cluster_of, complete_nodes, json_option, timeout_option


def _line(ev: WatchEvent) -> str:
    if ev.type == "put":
        return f"PUT {ev.key} {value_text(ev.value)} (revision {ev.revision})"
    if ev.type == "delete":
        return f"DELETE {ev.key} (revision {ev.revision})"
    return f"PROGRESS current through revision {ev.revision}"


@click.command("watch-key")
@click.argument("key", required=False)
@click.option("--prefix", help="Watch every key that starts with PREFIX (\"\" is every key).")
@click.option("--rev", "revision", type=click.IntRange(0), default=0,
              help="Start at this revision, replaying the history kept since (0: from the "
                   "next change).")
@click.option("--once", is_flag=True,
              help="End after the first change, as a ZooKeeper watch does.")
@click.option("--progress", is_flag=True,
              help="Also print how far the watch is current while nothing changes.")
@click.option("--count", type=click.IntRange(0), default=0,
              help="End after this many changes (0: run until Ctrl-C).")
@click.option("--node", shell_complete=complete_nodes,
              help="Watch from this node first (any node serves watches from its own state).")
@timeout_option
@json_option("Print each event as one JSON line.")
@click.pass_context
def watch_key(ctx: click.Context, key: str | None, prefix: str | None, revision: int,
              once: bool, progress: bool, count: int, node: str | None, timeout_s: float,
              as_json: bool) -> None:
    """Print each change of KEY (or of every key under --prefix) as it
    happens, in revision order, one line each: `PUT KEY VALUE (revision R)`
    or `DELETE KEY (revision R)`. If its node dies, the watch goes on from
    another one without missing or repeating a change. Ctrl-C ends it (exit
    0); a start revision already compacted fails naming the oldest kept."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give KEY or --prefix PREFIX (one of them)")
    c = cluster_of(ctx)
    seen = 0
    with client_for(c, timeout_s) as cl:
        w = cl.watch(prefix if prefix is not None else key or "", prefix=prefix is not None,
                     start_revision=revision, once=once, progress=progress, node=node)
        try:
            for ev in w:
                if as_json:
                    click.echo(render.dumps_line({
                        "type": ev.type, "key": ev.key, "revision": ev.revision,
                        "value": value_text(ev.value), "create_revision": ev.create_revision,
                        "version": ev.version, "node": w.node}))
                else:
                    click.echo(_line(ev))
                if ev.type != "progress":
                    seen += 1
                    if count and seen >= count:
                        break
        except KeyboardInterrupt:
            ctx.exit(Exit.OK)
        finally:
            w.close()
