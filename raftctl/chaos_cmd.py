"""`raftctl chaos run`: a seeded nemesis run against the running cluster, its
timeline and its verdict. Thin: `chaos.nemesis` runs, `chaos.report` judges,
this module parses options and renders."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click
import msgspec
from rich.table import Table
from rich.text import Text

from chaos.nemesis import DEFAULT_KINDS, ChaosError, ChaosOptions, parse_kinds, run_chaos
from chaos.report import (
    FaultEvent,
    RunRecord,
    TimelineRow,
    Verdict,
    judge,
    outcome_counts,
    summary,
    timeline,
)
from chaos.workload import ClientFactory, KVClient
from node.client import Client
from node.config import CHAOS_ATTEMPT_TIMEOUT_MS, CHAOS_CLIENT_OPS_PER_S, CHAOS_OP_TIMEOUT_MS
from raftctl import render
from raftctl.cluster import Cluster, ClusterError
from raftctl.exits import CliError, Exit, from_cluster_error
from raftctl.logview import parse_duration_s
from raftctl.options import json_option

# Violations listed one by one before the rest is only counted.
_SHOWN_VIOLATIONS = 20


def _c(ctx: click.Context) -> Cluster:
    c = ctx.find_object(Cluster)
    assert c is not None, "the raftctl group always sets up a Cluster"
    return c


def client_factory(c: Cluster) -> ClientFactory:
    """Each workload thread gets its own client of the cluster."""
    addrs, keys = c.client_addrs(), c.keys()

    def make() -> KVClient:
        return Client(addrs, keys, timeout_s=CHAOS_OP_TIMEOUT_MS / 1000.0,
                      attempt_timeout_s=CHAOS_ATTEMPT_TIMEOUT_MS / 1000.0)

    return make


def _seconds(text: str, what: str) -> float:
    try:
        s = float(text) if text.replace(".", "", 1).isdigit() else parse_duration_s(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=what) from None
    if s <= 0:
        raise click.BadParameter(f"{text} is not a positive duration", param_hint=what)
    return s


@click.group()
def chaos() -> None:
    """Nemesis runs: faults while clients write and read, then a verdict."""


@chaos.command("run")
@click.option("--duration", default="60s", show_default=True,
              help="How long faults are injected (60, 60s, 2m).")
@click.option("--nemesis", "nemesis_", default=",".join(DEFAULT_KINDS), show_default=True,
              help="Fault kinds, comma-separated: kill, pause, partition, netem, majority "
                   "(kill a majority at once), clock (skew a host's clock: clusters on hosts "
                   "with kernels of their own; never part of all), or all.")
@click.option("--interval", default="5s", show_default=True,
              help="Time between nemesis steps (each injects or repairs one fault).")
@click.option("--seed", type=int, default=None, help="Seed of the schedule [default: random].")
@click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Concurrent client threads.")
@click.option("--rate", type=click.FloatRange(0.0), default=CHAOS_CLIENT_OPS_PER_S,
              show_default=True,
              help="Operations a second per client (0: as fast as the cluster answers); "
                   "bounds the history the linearizability check must search.")
@click.option("--keys", "n_keys", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Keys the clients share.")
@click.option("--recovery-timeout", default="10s", show_default=True,
              help="After healing, a write must be acknowledged within this.")
@json_option("Print the summary and verdict as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the whole record (history, samples, timeline, verdict) as JSON.")
@click.pass_context
def run(ctx: click.Context, duration: str, nemesis_: str, interval: str, seed: int | None,
        clients: int, rate: float, n_keys: int, recovery_timeout: str, as_json: bool,
        report_file: Path | None) -> None:
    """Inject seeded faults into the running cluster while clients write,
    heal, and check that no acknowledged write was lost, replicas agree,
    the history is linearizable and the cluster recovers. Exit code 1 on any
    violation, 130 if Ctrl-C cut the run short (it still heals and judges)."""
    c = _c(ctx)
    try:
        kinds = parse_kinds(nemesis_)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--nemesis") from None
    opts = ChaosOptions(
        duration_s=_seconds(duration, "--duration"), interval_s=_seconds(interval, "--interval"),
        kinds=kinds, seed=seed if seed is not None else random.randrange(1, 2**31),
        clients=clients, keys=n_keys, rate=rate,
        recovery_timeout_s=_seconds(recovery_timeout, "--recovery-timeout"),
        key_prefix=f"chaos-{os.urandom(3).hex()}")
    try:
        if not c.running_nodes():
            raise CliError(f"cluster {c.name} is not up; start it with `raftctl up`",
                           Exit.UNAVAILABLE)
        factory = client_factory(c)
    except ClusterError as e:
        raise from_cluster_error(e) from None
    err = render.console(stderr=True)
    if not as_json:
        click.echo(f"chaos run on cluster {c.name} ({', '.join(c.node_ids())}): seed {opts.seed}, "
                   f"{opts.duration_s:g}s, nemesis {','.join(kinds)} every {opts.interval_s:g}s, "
                   f"{clients} clients" + (f" ({rate:g} ops/s each)" if rate else "")
                   + f" on {n_keys} keys")
    live = not as_json and err.is_terminal

    def on_event(ev: FaultEvent) -> None:
        if live:
            err.print(_event_text(ev))

    try:
        with _noting_interrupts() as interrupted:
            rec = run_chaos(c, factory, opts, on_event=on_event)
    except ChaosError as e:
        raise CliError(str(e), Exit.UNAVAILABLE) from None
    except ClusterError as e:
        raise from_cluster_error(e) from None
    verdict = judge(rec)
    if report_file is not None:
        _write_report(report_file, rec, verdict)
    if as_json:
        click.echo(render.dumps(summary(rec, verdict)))
    else:
        con = render.console()
        con.print(timeline_table(rec.nodes, timeline(rec)))
        con.print(_counts_table(rec))
        for line in verdict_lines(verdict):
            con.print(line)
        if report_file is not None:
            click.echo(f"report written to {report_file}")
    if not verdict.ok:
        ctx.exit(Exit.FAILED)
    if interrupted:
        # The checks passed on a run cut short: not the run that was asked for.
        ctx.exit(Exit.INTERRUPTED)


@contextmanager
def _noting_interrupts() -> Iterator[list[bool]]:
    """Ctrl-C still raises KeyboardInterrupt, on which `run_chaos` ends the
    fault phase early and still heals and judges; this notes that it came,
    so that an interrupted run cannot exit 0."""
    seen: list[bool] = []
    old = signal.getsignal(signal.SIGINT)
    if old is signal.SIG_IGN:
        yield seen
        return

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        seen.append(True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, old)


def _write_report(path: Path, rec: RunRecord, verdict: Verdict) -> None:
    doc = {"record": rec, "verdict": verdict, "timeline": timeline(rec)}
    try:
        path.write_bytes(msgspec.json.format(msgspec.json.encode(doc)))
    except OSError as e:
        raise CliError(f"cannot write the report to {path}: {e.strerror}") from None


# --- rendering ------------------------------------------------------------------------


_KIND_STYLES = {"kill": "bold red", "majority": "bold red", "pause": "magenta",
                "partition": "yellow", "netem": "cyan", "leader": "bold green",
                "start": "green", "resume": "green", "heal": "green", "heal-partition": "green",
                "clear-netem": "green", "recovered": "bold green", "converged": "bold green",
                "clock": "blue", "clock-reset": "green"}


def _event_text(ev: FaultEvent) -> Text:
    t = Text(f"{ev.t:7.2f}s ", style="dim")
    t.append(ev.detail, style=_KIND_STYLES.get(ev.kind, ""))
    if ev.error:
        t.append(f" (failed: {ev.error})", style="red")
    return t


def _cell_style(cell: str) -> str:
    if cell.startswith("L"):
        return "bold green"
    if cell in ("down", "paused"):
        return render.STATE_STYLES[cell]
    if cell[:1] in ("C", "P", "?"):
        return "yellow"
    return ""


def timeline_table(nodes: list[str], rows: list[TimelineRow]) -> Table:
    """One row a second: each node's role and term (L leader, F follower,
    C candidate, P pre-candidate), client outcomes, and what happened."""
    tab = Table(title="timeline", title_justify="left", header_style="bold")
    tab.add_column("t", justify="right")
    for n in nodes:
        tab.add_column(n)
    tab.add_column("ok", justify="right", style="green")
    tab.add_column("fail", justify="right", style="yellow")
    tab.add_column("unkn", justify="right", style="red")
    tab.add_column("events")
    for r in rows:
        tab.add_row(f"{r.second}s", *(Text(r.nodes.get(n, ""), style=_cell_style(r.nodes.get(
            n, ""))) for n in nodes), str(r.ok or ""), str(r.fail or ""), str(r.unknown or ""),
            "; ".join(r.events))
    return tab


def _counts_table(rec: RunRecord) -> Table:
    tab = Table(title="operations", title_justify="left", header_style="bold")
    cols = ("ok", "mismatch", "fail", "unknown")
    tab.add_column("kind")
    for col in cols:
        tab.add_column(col, justify="right")
    for kind, c in sorted(outcome_counts(rec).items()):
        tab.add_row(kind, *(str(c[col]) for col in cols))
    return tab


def verdict_lines(v: Verdict) -> list[Text]:
    out: list[Text] = []
    for check, text in v.checks.items():
        good = text.startswith("ok")
        line = Text("  ✓ " if good else "  ✗ ", style="green" if good else "bold red")
        line.append(f"{check}: ", style="bold")
        line.append(text)
        out.append(line)
    for viol in v.violations[:_SHOWN_VIOLATIONS]:
        out.append(Text(f"    {viol.check}: {viol.message}", style="red"))
    if len(v.violations) > _SHOWN_VIOLATIONS:
        out.append(Text(f"    ... and {len(v.violations) - _SHOWN_VIOLATIONS} more "
                        "(--report FILE has them all)", style="red"))
    verdict = (Text("verdict: OK", style="bold green") if v.ok else
               Text(f"verdict: {len(v.violations)} VIOLATION(S)", style="bold red"))
    return [*out, verdict]
