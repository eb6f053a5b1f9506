"""`raftctl chaos run` and `raftctl chaos report`: a seeded nemesis run
against the running cluster, saved with its page and its history, and the
verdict and page made again from a saved run. Thin: `chaos.run` runs,
`chaos.report` judges, `chaos.html_report` draws; this module parses options
and renders text."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TypeVar

import click
import msgspec
from rich.table import Table
from rich.text import Text

from chaos import html_report, jepsen_history, record
from chaos.nemesis import ChaosError
from chaos.pipeline import Endpoint
from chaos.power_fault import PowerLoss, find_mounts
from chaos.record import FaultEvent, RunRecord
from chaos.report import (
    LEGEND,
    TimelineRow,
    Verdict,
    fault_counts,
    judge,
    outcome_counts,
    summary,
    timeline,
)
from chaos.run import CHAOS_CLIENTS, CHAOS_PIPELINE_DEPTH, ChaosOptions, run_chaos
from chaos.schedule import (
    CLOCK,
    DEFAULT_MIX,
    KNOWN_KINDS,
    MEMBERSHIP,
    NEMESIS_INTERVAL_S,
    parse_mix,
)
from chaos.values import DEFAULT_SIZES, parse_sizes
from chaos.workload import (
    CHAOS_ATTEMPT_TIMEOUT_MS,
    CHAOS_OP_TIMEOUT_MS,
    CHAOS_OPS_PER_S,
    ClientFactory,
    KVClient,
)
from chaos.workload_mix import DEFAULT_WORKLOADS, WORKLOADS, parse_workloads
from node.client import Client
from node.config import node_dir
from raftctl import render
from raftctl.cluster import Cluster, ClusterError
from raftctl.exits import CliError, Exit, from_cluster_error
from raftctl.logview import parse_duration_s
from raftctl.members import ChaosMembers
from raftctl.options import json_option

T = TypeVar("T")
# Violations listed one by one before the rest is only counted.
_SHOWN_VIOLATIONS = 20
VERDICT_FILE = "verdict.json"


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


def _parsed(parse: Callable[[str], T], text: str, what: str) -> T:
    """`parse(text)`, its ValueError as the option's error."""
    try:
        return parse(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=what) from None


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
    """Nemesis runs: faults while clients write and read, then a verdict,
    a page (report.html) and a Jepsen-shaped history."""


@chaos.command("run")
@click.option("--duration", default="60s", show_default=True,
              help="How long faults are injected (60, 60s, 2m).")
@click.option("--nemesis", "nemesis_", default=DEFAULT_MIX, show_default=True,
              help=f"Fault kinds with optional weights, comma-separated, like "
                   f"kill:2,partition,netem:0.5; all is every kind but {MEMBERSHIP}, which "
                   f"changes the members, and {CLOCK}, which sets the clocks of the hosts "
                   f"(clusters on hosts with kernels of their own): name them. "
                   f"Kinds: {', '.join(KNOWN_KINDS)}.")
@click.option("--interval", default=f"{NEMESIS_INTERVAL_S:g}s", show_default=True,
              help="How long each fault lasts; after its heal the cluster gets as long again "
                   "to recover before the next fault.")
@click.option("--workload", default=DEFAULT_WORKLOADS, show_default=True,
              help=f"What the clients do, comma-separated ({', '.join(WORKLOADS)}): register "
                   "is read, write and cas per key (checked for linearizability); set appends "
                   "unique elements on pipelined sessions (checked for lost and duplicated "
                   "elements); churn opens and closes short sessions, some clients vanishing "
                   "without closing; txn and lock (not in the default) run transactions "
                   "with watches, and lock holders with fencing tokens and an election "
                   "(docs/CHAOS.md); all is every one. Clients are shared register 1 : "
                   "set 2 : churn 1 (: txn 1 : lock 1).")
@click.option("--seed", type=int, default=None, help="Seed of the schedule [default: random].")
@click.option("--clients", type=click.IntRange(1, 500), default=CHAOS_CLIENTS, show_default=True,
              help="Concurrent clients, all workloads together (one thread each).")
@click.option("--rate", type=click.FloatRange(0.0), default=CHAOS_OPS_PER_S, show_default=True,
              help="Operations a second, all clients together (0: as fast as the cluster "
                   "answers); bounds the history the checks must search.")
@click.option("--value-size", "value_size", default=DEFAULT_SIZES, show_default=True,
              help="Sizes of the register workload's values, with weights: 100, 4KiB, or "
                   "32:85,4KiB:12,1MiB:3 (at most 1MiB; a UDP cluster refuses entries over "
                   "about 56KB as too_large, which the history records as failed).")
@click.option("--pipeline", "depth", type=click.IntRange(1, 64), default=CHAOS_PIPELINE_DEPTH,
              show_default=True, help="Writes a set client keeps in flight on its session.")
@click.option("--keys", "n_keys", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Keys the register clients share, and as many sets.")
@click.option("--recovery-timeout", default="10s", show_default=True,
              help="After healing, a write must be acknowledged within this.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for record.json, report.html and the history "
                   "[default: RUN_DIR/chaos/TIME-seedSEED in the cluster's run directory].")
@json_option("Print the summary and verdict as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the whole record (history, samples, timeline, verdict) as one "
                   "JSON file.")
@click.pass_context
def run(ctx: click.Context, duration: str, nemesis_: str, interval: str, workload: str,
        seed: int | None, clients: int, rate: float, value_size: str, depth: int, n_keys: int,
        recovery_timeout: str, out_dir: Path | None, as_json: bool,
        report_file: Path | None) -> None:
    """Inject seeded faults into the running cluster while clients work,
    heal, and check that the history is linearizable, no acknowledged write
    or set element was lost or applied twice, the Raft invariants held on
    the nodes' status and digests, and the cluster recovers. Writes
    report.html, history.jsonl and history.edn into the run's directory.
    Exit code 1 on any violation, 130 if Ctrl-C cut the run short (it still
    heals and judges)."""
    c = _c(ctx)
    mix = _parsed(parse_mix, nemesis_, "--nemesis")
    names = _parsed(parse_workloads, workload, "--workload")
    if clients < len(names):
        raise click.BadParameter(f"the {len(names)} workloads {','.join(names)} need at least "
                                 f"{len(names)} clients", param_hint="--clients")
    opts = ChaosOptions(
        duration_s=_seconds(duration, "--duration"), interval_s=_seconds(interval, "--interval"),
        mix=mix, workload=workload, seed=seed if seed is not None else random.randrange(1, 2**31),
        clients=clients, keys=n_keys, rate=rate,
        sizes=_parsed(parse_sizes, value_size, "--value-size"), depth=depth,
        recovery_timeout_s=_seconds(recovery_timeout, "--recovery-timeout"),
        key_prefix=f"chaos-{os.urandom(3).hex()}")
    try:
        if not c.running_nodes():
            raise CliError(f"cluster {c.name} is not up; start it with `raftctl up`",
                           Exit.UNAVAILABLE)
        factory = client_factory(c)
        endpoint = Endpoint(c.client_addrs(), c.keys())
        mounts = find_mounts({n: node_dir(c.run_dir, n) for n in c.node_ids()})
    except ClusterError as e:
        raise from_cluster_error(e) from None
    out = out_dir or c.run_dir / "chaos" / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{opts.seed}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create {out}: {e.strerror}") from None
    err = render.console(stderr=True)
    if not as_json:
        click.echo(f"chaos run on cluster {c.name} ({', '.join(c.node_ids())}): seed {opts.seed}, "
                   f"{opts.duration_s:g}s, nemesis {nemesis_} (each fault {opts.interval_s:g}s, "
                   f"then {opts.interval_s:g}s to recover), workloads {workload}, {clients} "
                   "clients" + (f" ({rate:g} ops/s in all)" if rate else "")
                   + f" on {n_keys} keys")
    live = not as_json and err.is_terminal

    def on_event(ev: FaultEvent) -> None:
        if live:
            err.print(_event_text(ev))

    power = PowerLoss(c, mounts) if isinstance(mounts, dict) else mounts
    log_starts = _log_sizes(c)
    try:
        with _noting_interrupts() as interrupted:
            rec = run_chaos(c, factory, opts, on_event=on_event, endpoint=endpoint,
                            power=power, members=ChaosMembers(c))
    except ChaosError as e:
        raise CliError(str(e), Exit.UNAVAILABLE) from None
    except ClusterError as e:
        raise from_cluster_error(e) from None
    finally:
        endpoint.close()
    _save_node_logs(c, log_starts, out)
    verdict = _save(rec, out)
    if report_file is not None:
        _write_report(report_file, rec, verdict)
    _show(ctx, rec, verdict, out, as_json)
    if interrupted:
        # The checks passed on a run cut short: not the run that was asked for.
        ctx.exit(Exit.INTERRUPTED)


def _log_sizes(c: Cluster) -> dict[str, int]:
    """Where each node's log ends before the run: what it logs from there
    is the run's."""
    sizes: dict[str, int] = {}
    for n in c.node_ids():
        with contextlib.suppress(OSError):
            sizes[n] = c.log_path(n).stat().st_size
    return sizes


def _save_node_logs(c: Cluster, starts: dict[str, int], out: Path) -> None:
    """Copy what each node logged during the run to OUT/nodes/NODE/node.log,
    so that `raftctl explain --from OUT` tells the run after the cluster is
    gone. A node added during the run is copied whole."""
    for n in c.node_ids():
        src, dst = c.log_path(n), out / "nodes" / n / "node.log"
        try:
            with src.open("rb") as f:
                f.seek(starts.get(n, 0))
                dst.parent.mkdir(parents=True, exist_ok=True)
                with dst.open("wb") as g:
                    shutil.copyfileobj(f, g)
        except FileNotFoundError:
            continue  # a node of another host: its log is not here
        except OSError as e:
            raise CliError(f"cannot copy {n}'s log into {dst}: {e.strerror}") from None


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


@chaos.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@json_option("Print the summary and verdict as JSON.")
@click.pass_context
def report_cmd(ctx: click.Context, run_dir: Path, as_json: bool) -> None:
    """Judge a saved run again and redraw its report.html, history files
    and text summary from RUN_DIR/record.json. Exit code 1 on any violation."""
    try:
        rec = record.load(run_dir)
    except ValueError as e:
        raise CliError(str(e)) from None
    verdict = _save(rec, run_dir, write_record=False)
    _show(ctx, rec, verdict, run_dir, as_json)


def _save(rec: RunRecord, out: Path, write_record: bool = True) -> Verdict:
    verdict = judge(rec)
    try:
        if write_record:
            record.save(rec, out)
        (out / VERDICT_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(verdict)))
        jepsen_history.write(rec, out)
        html_report.write(rec, verdict, out)
    except OSError as e:
        raise CliError(f"cannot write the run's files into {out}: {e.strerror}") from None
    return verdict


def _show(ctx: click.Context, rec: RunRecord, verdict: Verdict, out: Path,
          as_json: bool) -> None:
    if as_json:
        click.echo(render.dumps({**summary(rec, verdict), "out_dir": str(out)}))
    else:
        con = render.console()
        con.print(timeline_table(rec.nodes, timeline(rec)))
        con.print(timeline_legend())
        con.print(_counts_table(rec))
        con.print(_faults_table(rec))
        for line in verdict_lines(verdict):
            con.print(line)
        click.echo(f"report: {out / html_report.REPORT_FILE}")
        click.echo(f"history: {out / jepsen_history.JSONL_FILE}, "
                   f"{out / jepsen_history.EDN_FILE}")
        if (out / "nodes").is_dir():
            click.echo(f"node logs: {out / 'nodes'} (raftctl explain --from {out})")
    if not verdict.ok:
        ctx.exit(Exit.FAILED)


def _write_report(path: Path, rec: RunRecord, verdict: Verdict) -> None:
    doc = {"record": rec, "verdict": verdict, "timeline": timeline(rec)}
    try:
        path.write_bytes(msgspec.json.format(msgspec.json.encode(doc)))
    except OSError as e:
        raise CliError(f"cannot write the report to {path}: {e.strerror}") from None


# --- rendering ------------------------------------------------------------------------


_KIND_STYLES = {"kill": "bold red", "kill-all": "bold red", "snapshot-kill": "bold red",
                "stop": "red", "compact": "red", "pause": "magenta", "isolate": "yellow",
                "partition": "yellow", "bridge": "yellow", "ring": "yellow", "one-way": "yellow",
                "netem": "cyan", "transfer": "bold cyan", "leader": "bold green",
                "power-loss": "bold red", "data-lost": "bold red reverse",
                "start": "green", "resume": "green", "heal": "green", "recovered": "bold green",
                "converged": "bold green", "invariant": "bold red", "skip": "dim"}


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
    """One row a second: each node's role and term, client outcomes, and
    what happened (`timeline_legend` explains the cells)."""
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


def timeline_legend() -> Text:
    t = Text("legend: ", style="bold")
    for i, (mark, meaning) in enumerate(LEGEND):
        if i:
            t.append("; ")
        t.append(mark, style=_cell_style(mark) or "bold")
        t.append(f" {meaning}")
    return t


def _counts_table(rec: RunRecord) -> Table:
    tab = Table(title="operations", title_justify="left", header_style="bold")
    cols = ("ok", "mismatch", "fail", "unknown")
    tab.add_column("kind")
    for col in cols:
        tab.add_column(col, justify="right")
    for kind, c in sorted(outcome_counts(rec).items()):
        tab.add_row(kind, *(str(c[col]) for col in cols))
    return tab


def _faults_table(rec: RunRecord) -> Table:
    tab = Table(title="faults", title_justify="left", header_style="bold",
                caption="; ".join(rec.notes) or None)
    cols = ("injected", "hit_leader", "failed")
    tab.add_column("kind")
    for col in cols:
        tab.add_column(col.replace("_", " "), justify="right")
    for kind, c in fault_counts(rec).items():
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
        out.append(Text(f"    {viol}", style="red"))
    if len(v.violations) > _SHOWN_VIOLATIONS:
        out.append(Text(f"    ... and {len(v.violations) - _SHOWN_VIOLATIONS} more "
                        "(report.html and verdict.json have them all)", style="red"))
    verdict = (Text("verdict: OK", style="bold green") if v.ok else
               Text(f"verdict: {len(v.violations)} VIOLATION(S)", style="bold red"))
    return [*out, verdict]
