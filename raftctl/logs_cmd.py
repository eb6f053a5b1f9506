"""`raftctl logs`: the nodes' log files merged in time order, filtered by
node, event and time, the last N of them, and followed live with -f."""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from raftctl import render
from raftctl.cluster import Cluster
from raftctl.exits import CliError, Exit
from raftctl.logview import LogFilter, complete_size, follow, last, merged, parse_since
from raftctl.options import cluster_of, complete_events, complete_nodes, json_option
from raftctl.remote import has_hosts


def check_events(names: tuple[str, ...]) -> set[str]:
    """The event names asked for; a name no node logs is a usage error that
    lists the vocabulary (docs/LOGS.md)."""
    from node.logs import EVENTS  # only here: it loads structlog

    for name in names:
        if name not in EVENTS:
            close = difflib.get_close_matches(name, sorted(EVENTS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CliError(f"no event is named {name!r}{hint}; the events are: "
                           f"{', '.join(sorted(EVENTS))} (docs/LOGS.md)", Exit.USAGE)
    return set(names)


@click.command()
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new events.")
@click.option("--event", "events", multiple=True, shell_complete=complete_events,
              help="Only this event (repeatable; names in docs/LOGS.md).")
@click.option("--since", help="Only events newer than this: a duration (250ms, 30s, 5m, 1h) "
                              "or a time (2026-11-28T19:46:41Z; local time without a zone).")
@click.option("-n", "--tail", "tail", type=click.IntRange(min=0), default=None,
              help="Only the last N events (after the filters); with -f, then follow "
                   "[default: all; with -f, none unless --since].")
@json_option("Print the raw JSON lines, one event a line.")
@click.option("--for", "for_s", type=float, default=0.0, hidden=True,
              help="With -f: stop after this many seconds (for scripts).")
@click.pass_context
def logs(ctx: click.Context, nodes: tuple[str, ...], follow_: bool, events: tuple[str, ...],
         since: str | None, tail: int | None, as_json: bool, for_s: float) -> None:
    """The nodes' logs merged in time order; -f follows them live."""
    c = cluster_of(ctx)
    ids = c.check_nodes(list(nodes)) if nodes else c.node_ids()
    flt = LogFilter(nodes=set(ids), events=check_events(events))
    if since:
        try:
            flt.since_ts = parse_since(since)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--since") from None
    with _mirrored(c, ids, follow_):
        _show(c, ids, flt, follow_, tail, since, as_json, for_s)


@contextlib.contextmanager
def _mirrored(c: Cluster, ids: list[str], follow_: bool) -> Iterator[None]:
    """Nodes on other hosts: their logs copied here over SSH first (and, with
    -f, all along); a host that cannot be reached is named on stderr."""
    if not has_hosts(c.run_dir):
        yield
        return
    from raftctl.remote.cluster import HostCluster  # only here: it loads asyncssh

    assert isinstance(c, HostCluster), "open_cluster gives a HostCluster where there are hosts"
    with c.mirrored_logs(ids, follow_) as problems:
        for n, why in problems.items():
            click.echo(f"warning: {n}: showing its log as last copied: {why}", err=True)
        yield


def ballot_label(c: Cluster) -> Callable[[Any], str] | None:
    """For a Paxos cluster, how a line's term reads: as the ballot it is
    (`b5.n2`, round 5 of n2, node/paxos/ballot.py); None for Raft's terms."""
    cfg = c.config()
    if cfg.algorithm != "paxos":
        return None
    from node.paxos.ballot import Ranks  # only here: Raft clusters never need it

    ranks = Ranks(sorted(cfg.initial_ids()))

    def label(term: Any) -> str:
        return f"b{ranks.describe(term) if isinstance(term, int) else '?':<5}"

    return label


def _show(c: Cluster, ids: list[str], flt: LogFilter, follow_: bool, tail: int | None,
          since: str | None, as_json: bool, for_s: float) -> None:
    paths = [c.log_path(n) for n in ids]
    con = render.console()
    colours: dict[str, str] = {n: render.NODE_COLOURS[i % len(render.NODE_COLOURS)]
                               for i, n in enumerate(c.node_ids())}

    label = ballot_label(c)

    def emit(ev: dict[str, Any], raw: str) -> None:
        if as_json:
            click.echo(raw)
        else:
            con.print(render.log_line(ev, colours, label))

    # Where the past ends and following would begin, for every file at once.
    offsets = {p: complete_size(p) for p in paths}
    if follow_ and tail is None and since is None:
        tail = 0  # like `tail -f`: only what comes from now on
    if tail != 0:
        for ev, raw in last(merged(paths, flt, offsets), tail):
            emit(ev, raw)
    if not follow_:
        return
    end = time.monotonic() + for_s if for_s else None
    try:
        follow(offsets, flt, emit, stop=lambda: end is not None and time.monotonic() >= end)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one stops following: not an error
