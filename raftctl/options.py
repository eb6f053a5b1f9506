"""What the command modules share: the cluster a command acts on, `--json`,
`--timeout`, and shell completion of node and event names. No printing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from raftctl.cluster import DEFAULT_CLUSTER, Cluster, ClusterError, default_run_dir
from raftctl.exits import JSON_META

F = TypeVar("F", bound=Callable[..., Any])


def cluster_of(ctx: click.Context) -> Cluster:
    c = ctx.find_object(Cluster)
    assert c is not None, "the raftctl group always sets up a Cluster"
    return c


def run_dir_of(run_dir: Path | None, home: Path | None, name: str) -> Path:
    """--run-dir wins; else HOME/NAME (HOME: --home, RAFTCTL_HOME or ./.raftctl)."""
    return (run_dir or default_run_dir(name, home)).resolve()


def complete_nodes(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Node names of the cluster the command line names so far."""
    root = ctx.find_root().params
    run_dir = run_dir_of(root.get("run_dir"), root.get("home"),
                         root.get("cluster") or DEFAULT_CLUSTER)
    try:
        ids = Cluster(run_dir, root.get("cluster") or DEFAULT_CLUSTER).node_ids()
    except (ClusterError, OSError):
        return []
    return [CompletionItem(n) for n in ids if n.startswith(incomplete)]


def complete_events(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    from node.logs import EVENTS  # only when completing: it loads structlog

    return [CompletionItem(e) for e in sorted(EVENTS) if e.startswith(incomplete)]


def json_option(help_text: str = "Print JSON (shape in docs/CLI.md).") -> Callable[[F], F]:
    """The `--json` flag of every command that prints: it also makes a
    failure print `{"error": ...}` on stdout (raftctl/exits.py)."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.meta[JSON_META] = True
        return value

    return click.option("--json", "as_json", is_flag=True, callback=remember, help=help_text)


timeout_option = click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
    help="Seconds before giving up.")
