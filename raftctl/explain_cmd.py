"""`raftctl explain`: the nodes' logs told as sentences, term by term, for the
cluster or for logs saved elsewhere (`--from DIR`). Thin: `raftctl/logview.py`
reads the files, `raftctl/explain.py` tells them, this module renders."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from raftctl import render
from raftctl.exits import CliError, Exit
from raftctl.explain import AGAIN, NO_LEADER, NOW, TERM, Narrator, Sentence, parse_terms
from raftctl.logview import (
    LogFilter,
    complete_size,
    follow,
    merged,
    node_logs,
    now_ts,
    parse_since,
)
from raftctl.options import cluster_of, complete_nodes, json_option
from raftctl.sentences import clock

_EVENT_STYLES = {"became_leader": "bold green", "stepped_down": "bold red",
                 "vote_rejected": "yellow", "link_faults_set": "magenta"}


def _sources(ctx: click.Context, from_dir: Path | None) -> dict[str, Path]:
    """Each node's log file: in DIR, or in the cluster's run directory."""
    if from_dir is None:
        c = cluster_of(ctx)
        return {n: c.log_path(n) for n in c.node_ids()}
    found = node_logs(from_dir)
    if not found:
        raise CliError(f"{from_dir} holds no node logs: --from wants a run directory or a copy "
                       "of one, with a file nodes/NODE/node.log per node", Exit.USAGE)
    return found


def _render(s: Sentence, first: bool) -> list[Text]:
    if s.kind == TERM:
        head = Text(s.text, style="bold")
        return [head] if first else [Text(""), head]
    if s.kind == NOW:
        return [Text(""), Text(s.text, style="bold")]
    line = Text(f"  {clock(s.ts)}  ", style="dim")
    if s.kind == AGAIN:
        line.append(s.text, style="dim")
    elif s.kind == NO_LEADER:
        line.append(s.text + (f" ({s.ref})" if s.ref else ""), style="yellow")
    else:
        line.append(s.text, style=_EVENT_STYLES.get(s.event or "", ""))
    return [line]


@click.command()
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("--node", "node_opts", multiple=True, metavar="NODE", shell_complete=complete_nodes,
              help="Only what this node did (repeatable; the same as naming it as an argument).")
@click.option("--term", "terms", metavar="TERM",
              help="Only this term (4), a range (3..5), or from a term on (3..).")
@click.option("--since", help="Only what happened after this: a duration (30s, 5m) or a time "
                              "(2026-11-28T19:46:41Z; local time without a zone).")
@click.option("--from", "from_dir", metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Explain the logs saved in DIR (a run directory, or a copy of one holding "
                   "nodes/NODE/node.log) instead of the cluster's.")
@click.option("-f", "--follow", "follow_", is_flag=True,
              help="Keep explaining as new lines come (from now on, unless --since); Ctrl-C "
                   "stops.")
@json_option("Print one JSON object a sentence, one a line (docs/CLI.md).")
@click.option("--for", "for_s", type=float, default=0.0, hidden=True,
              help="With -f: stop after this many seconds (for scripts).")
@click.pass_context
def explain(ctx: click.Context, nodes: tuple[str, ...], node_opts: tuple[str, ...],
            terms: str | None, since: str | None, from_dir: Path | None, follow_: bool,
            as_json: bool, for_s: float) -> None:
    """Tell what the nodes' logs say, term by term: whose election timer
    fired, who voted for whom or refused and why, who led, who lost its
    majority, each with the rule at work and where the Raft paper (§) or
    Ongaro's thesis states it.

    Every line of every node is read, so a sentence can use what other nodes
    logged (the votes of a new leader); the filters only choose what is told.
    A line that says again what a node already said in the same term is
    counted, and the count told when the term ends.
    """
    paths = _sources(ctx, from_dir)
    wanted = set(nodes) | set(node_opts)
    unknown = sorted(wanted - set(paths))
    if unknown:
        raise CliError(f"no node is named {', '.join(unknown)} (nodes: {', '.join(paths)})",
                       Exit.USAGE)
    first, last = 0, None
    if terms is not None:
        try:
            first, last = parse_terms(terms)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--term") from None
    since_ts = None
    if since:
        try:
            since_ts = parse_since(since)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--since") from None
    elif follow_:
        since_ts = now_ts()  # like `logs -f`: what happened before is only context

    def keep(s: Sentence) -> bool:
        return ((not wanted or s.node is None or s.node in wanted)
                and first <= s.term and (last is None or s.term <= last)
                and (since_ts is None or (s.until or s.ts) >= since_ts))

    narrator = Narrator(list(paths), keep)
    con = render.console()
    shown = [0]

    def emit(sentences: list[Sentence]) -> None:
        for s in sentences:
            if as_json:
                click.echo(render.dumps_line(s.to_json()))
            else:
                for line in _render(s, first=shown[0] == 0):
                    con.print(line)
            shown[0] += 1

    files = list(paths.values())
    offsets = {p: complete_size(p) for p in files}
    for ev, _raw in merged(files, LogFilter(), offsets):
        emit(narrator.feed(ev))
    if follow_:
        end = time.monotonic() + for_s if for_s else None

        def on_line(ev: dict[str, Any], _raw: str) -> None:
            emit(narrator.feed(ev))

        # Ctrl-C is how one stops following; what is pending is still told.
        with contextlib.suppress(KeyboardInterrupt):
            follow(offsets, LogFilter(), on_line,
                   stop=lambda: end is not None and time.monotonic() >= end)
    emit(narrator.finish())
    if not shown[0] and not as_json:
        click.echo("no log line matches: nothing to explain", err=True)
