"""CLI commands `raftctl bench write|read|failover|up|txn|watch|lease|lock`: thin; they
parse, call one function of `raftctl.bench.runs`, and render its report as a table or as JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from raftctl import render
from raftctl.bench.against import bench_against
from raftctl.bench.failover import bench_failover
from raftctl.bench.leases import LeaseReport, bench_lease
from raftctl.bench.loadgen import READ_NODES
from raftctl.bench.locks import LockReport, bench_lock
from raftctl.bench.revisions import TxnReport, WatchReport, bench_txn, bench_watch
from raftctl.bench.runs import (
    FailoverReport,
    FailoverTrial,
    Summary,
    UpReport,
    UpTrial,
    WriteReport,
    bench_write,
    to_json,
)
from raftctl.bench.shapes import SHAPES
from raftctl.bench.up import bench_up
from raftctl.cluster import Cluster, ClusterError
from raftctl.exits import CliError, Exit, from_cluster_error
from raftctl.options import json_option

T = TypeVar("T")
SATURATED = "load generator saturated: figures are a lower bound"
# The killed leader and its term, then the leader that followed and its term.
FAILOVER_COLUMNS = ("TRIAL", "KILLED", "OLD TERM", "NEW LEADER", "NEW TERM", "LEADER ms",
                    "WRITE ms", "CATCH-UP ms")


def _cluster(ctx: click.Context) -> Cluster:
    c = ctx.find_object(Cluster)
    assert c is not None, "the raftctl group always sets up a Cluster"
    return c


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ClusterError as e:
        raise from_cluster_error(e) from None


@contextmanager
def _progress(con: Console, text: str, total: float) -> Iterator[Progress | None]:
    """A transient progress bar, only when stdout is a terminal."""
    if not con.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeRemainingColumn(), console=con, transient=True) as p:
        p.add_task(text, total=total, info="")
        yield p


def _fmt(v: float | None, unit: str = " ms") -> str:
    return "—" if v is None else f"{v:,.1f}{unit}"


def _summary_row(t: Table, what: str, s: Summary) -> None:
    t.add_row(what, _fmt(s.median), _fmt(s.worst))


def _against_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--rounds", type=click.IntRange(1, 100), default=2, show_default=True,
                     help="With --against: interleaved rounds, each raftctl then the other.")(f)
    return click.option("--against", metavar="etcd[=HOST:PORT,...]", default=None,
                        help="Run the same load on etcd too and print the ratio (see below).")(f)


@click.group("bench")
def bench() -> None:
    """Measure the cluster: write throughput and latency, failover, start-up."""


@bench.command("write")
@click.option("--clients", type=click.IntRange(1, 1000), default=64, show_default=True,
              help="Virtual clients, each with one request in flight.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds of load.")
@click.option("--value-size", type=click.IntRange(0, 1024 * 1024), default=100,
              show_default=True, help="Bytes per value.")
@click.option("--keys", type=click.IntRange(1), default=100_000, show_default=True,
              help="Distinct keys, chosen at random per operation.")
@click.option("--read-ratio", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Fraction of operations that are linearizable reads.")
@click.option("--procs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Load generator processes sharing the clients.")
@click.option("--shape", type=click.Choice(SHAPES), default=None,
              help="How the clients are made: virtual (the load generator's own), pipelined "
              "(one AsyncClient, one task per client), per-connection (one Client each). "
              "Default: virtual; per-connection with --against.")
@_against_options
@json_option("Print JSON (schema above).")
@click.pass_context
def write(ctx: click.Context, clients: int, duration_s: float, value_size: int, keys: int,
          read_ratio: float, procs: int, shape: str | None, against: str | None, rounds: int,
          as_json: bool) -> None:
    """Closed-loop load on the running cluster: acknowledged operations/s,
    latency, errors, leader changes and CPU.

    Each client sends its next put (or get) as soon as the previous one is
    answered. A write that got no answer by its deadline is counted as
    unknown, never as failed. The shape says what a client is:

    \b
      virtual         the load generator's: a session per client, the
                      requests of all pipelined over one connection per
                      node (the most the cluster takes)
      pipelined       one node.client_async.AsyncClient in one process,
                      one task per client (an application that pipelines)
      per-connection  one node.client.Client per client, in a thread each:
                      one request per frame (an application on Client)

    \b
    --json prints one object:
      mode ("write"), shape, cluster, nodes, fsync, clients, procs,
      duration_s (asked), elapsed_s (measured), value_size, keys, read_ratio,
      ops = writes + reads (acknowledged), ops_per_s = ops / elapsed_s,
      reads_per_s, read_nodes ("leader" or "all"), reads_by_node {node: reads answered},
      latency_ms {p50, p90, p99, max, mean},
      errors, errors_by_code {code: count}, unknown, retries,
      leader_changes, leaders_seen [{term, leader}],
      node_cpu [{node, pid, cpu_s, percent}]  (percent of one core),
      loadgen_cpu_s, loadgen_cpu_percent, loadgen_saturated (bool),
      heartbeat_gap_max_ms (the longest silence of the leader a follower saw),
      node_loop [{node, loop_max_busy_ms, loop_max_cpu_ms, leader_gap_max_ms, snapshots,
      keys, rss_mib, gc_max_ms, wal_sync_max_ms}]  (sampled from status during the run;
      memory at its end; gc_max_ms: CPU of the longest garbage collection;
      wal_sync_max_ms: the longest WAL write + fdatasync, on the loop),
      server_cpu_us_per_op (every node's CPU per acknowledged operation),
      against (null without --against): {rounds [{raftctl_ops_per_s, other_ops_per_s,
      ratio}], ratio_median, cpu_per_op_ratio, other {system, version, endpoints, leader,
      started_here, nodes, shape, ops, writes, reads, ops_per_s, latency_ms, errors,
      errors_by_code, unknown, reads_by_node, server_cpu_s, server_cpu_us_per_op,
      loadgen_cpu_percent, loadgen_saturated}}  (the top level is raftctl's last round).

    \b
    --against etcd runs the same load on etcd through its JSON gateway, in
    --rounds interleaved rounds (raftctl, etcd, raftctl, etcd ...), and
    prints the ratio of each round. `--against etcd` starts an etcd cluster
    of as many members on this machine for the run (the etcd binary must be
    on PATH); `--against etcd=HOST:PORT,...` uses a running one (give every
    member's client address; writes go to its leader).
    """
    shape = shape or ("per-connection" if against else "virtual")
    report = _load(ctx, f"bench write, {clients} {shape} clients", "ops", as_json,
                   clients=clients, duration_s=duration_s, value_size=value_size, keys=keys,
                   read_ratio=read_ratio, procs=procs, shape=shape, against=against,
                   rounds=rounds)
    if report.ops == 0:
        raise CliError("no operation was acknowledged; see `raftctl status`", Exit.UNAVAILABLE)


def _load(ctx: click.Context, title: str, unit: str, as_json: bool, *, duration_s: float,
          against: str | None, rounds: int, **kw: Any) -> WriteReport:
    """Run `bench_write` (or with `against`, `bench_against`) with a progress
    bar, print its table or JSON, and return its report (`bench write` and
    `bench read`)."""
    c = _cluster(ctx)
    con = render.console()
    total = duration_s * (2 * rounds if against else 1)
    with _progress(con, title, total) as bar:

        def progress(elapsed_s: float, ops: int) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=min(elapsed_s, total),
                           info=f"{ops:,} {unit}")

        if against:
            report = _run(lambda: bench_against(c, against, rounds=rounds,
                                                duration_s=duration_s, on_progress=progress,
                                                **kw))
        else:
            report = _run(lambda: bench_write(c, duration_s=duration_s, on_progress=progress,
                                              **kw))
    if as_json:
        click.echo(render.dumps(to_json(report)))
    else:
        con.print(write_table(report))
        if report.against is not None:
            con.print(against_table(report))
        if report.loadgen_saturated:
            con.print(f"[bold yellow]{SATURATED}[/] (try --procs 2)")
    return report


@bench.command("read")
@click.option("--clients", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="Virtual clients, each with one read in flight.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds of load.")
@click.option("--keys", type=click.IntRange(1), default=100_000, show_default=True,
              help="Distinct keys (those `bench write` writes), chosen at random per read.")
@click.option("--nodes", "read_nodes", type=click.Choice(READ_NODES), default="all",
              show_default=True,
              help="all: each client reads at one node, followers included (each asks "
                   "the leader for a read index); leader: every read at the leader.")
@click.option("--procs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Load generator processes sharing the clients.")
@click.option("--shape", type=click.Choice(SHAPES), default=None,
              help="As for `bench write`. Default: virtual; per-connection with --against.")
@_against_options
@json_option("Print JSON (the schema of `bench write --json`).")
@click.pass_context
def read(ctx: click.Context, clients: int, duration_s: float, keys: int, read_nodes: str,
         procs: int, shape: str | None, against: str | None, rounds: int,
         as_json: bool) -> None:
    """Closed-loop linearizable reads on the running cluster: reads/s,
    latency, and how many reads each node answered.

    Each virtual client sends its next get as soon as the previous one is
    answered. With --nodes all the clients are spread over the nodes, and a
    follower serves a read once it applied the leader's read index
    (docs/PROTOCOL.md, "Reads"); with --nodes leader the leader serves them
    all. Run `bench write` first for the keys to hold values. With
    --against etcd the same reads go to etcd (linearizable ranges), as in
    `bench write --against`.
    """
    shape = shape or ("per-connection" if against else "virtual")
    report = _load(ctx, f"bench read, {clients} clients at {read_nodes}", "reads", as_json,
                   clients=clients, duration_s=duration_s, value_size=0, keys=keys,
                   read_ratio=1.0, read_nodes=read_nodes, procs=procs, shape=shape,
                   against=against, rounds=rounds)
    if report.reads == 0:
        raise CliError("no read was answered; see `raftctl status`", Exit.UNAVAILABLE)


def write_table(r: WriteReport) -> Table:
    t = Table(title=f"bench write: cluster {r.cluster}, {r.nodes} nodes, fsync {r.fsync}, "
              f"{r.clients} {r.shape} clients, {r.value_size}-byte values", title_justify="left",
              show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    lat = r.latency_ms
    rows: list[tuple[str, str]] = [
        ("operations/s", f"{r.ops_per_s:,.0f}"),
        *([("reads/s", f"{r.reads_per_s:,.0f} (at {r.read_nodes})"),
           ("reads answered by", ", ".join(f"{n} {k:,}" for n, k in r.reads_by_node.items()))]
          if r.reads else []),
        ("acknowledged", f"{r.ops:,} in {r.elapsed_s:.1f} s"
         + (f" ({r.writes:,} writes, {r.reads:,} reads)" if r.reads else "")),
        ("latency p50 / p90 / p99", f"{lat.p50:.2f} / {lat.p90:.2f} / {lat.p99:.2f} ms"),
        ("latency max / mean", f"{lat.max:.2f} / {lat.mean:.2f} ms"),
        ("server CPU per operation", _fmt(r.server_cpu_us_per_op, " µs")),
        ("errors", f"{r.errors:,}" + (" (" + ", ".join(
            f"{k} {v}" for k, v in sorted(r.errors_by_code.items())) + ")" if r.errors else "")),
        ("unknown outcomes", f"{r.unknown:,}"),
        ("retries", f"{r.retries:,}"),
        ("leader changes", f"{r.leader_changes}"
         + (" (" + ", ".join(f"{x.leader}@{x.term}" for x in r.leaders_seen) + ")"
            if r.leader_changes else "")),
    ]
    for n in r.node_cpu:
        rows.append((f"CPU {n.node}", "—" if n.percent is None else
                     f"{n.percent:.0f}% ({n.cpu_s:.1f} s)"))
    rows.append(("longest leader silence", "—" if r.heartbeat_gap_max_ms is None
                 else f"{r.heartbeat_gap_max_ms:.1f} ms"))
    for lp in r.node_loop:
        rows.append((f"loop {lp.node}", ", ".join([
            "longest turn " + ("—" if lp.loop_max_busy_ms is None
                               else f"{lp.loop_max_busy_ms:.1f} ms"),
            "most CPU in a turn " + ("—" if lp.loop_max_cpu_ms is None
                                     else f"{lp.loop_max_cpu_ms:.1f} ms"),
            "longest GC " + ("—" if lp.gc_max_ms is None else f"{lp.gc_max_ms:.1f} ms"),
            "longest WAL sync " + ("—" if lp.wal_sync_max_ms is None
                                   else f"{lp.wal_sync_max_ms:.1f} ms"),
            f"{lp.snapshots} snapshots",
            ("—" if lp.keys is None else f"{lp.keys:,} keys"),
            ("—" if lp.rss_mib is None else f"{lp.rss_mib:,.0f} MiB")])))
    rows.append(("CPU load generator", f"{r.loadgen_cpu_percent:.0f}% ({r.loadgen_cpu_s:.1f} s, "
                 f"{r.procs} process{'es' if r.procs > 1 else ''})"))
    for k, v in rows:
        t.add_row(k, v)
    return t


def against_table(r: WriteReport) -> Table:
    """raftctl beside the other system, round by round."""
    a = r.against
    assert a is not None
    o = a.other
    where = "started here" if o.started_here else "at " + ", ".join(o.endpoints)
    t = Table(title=f"against {o.system} {o.version} ({o.nodes} members, {where}), "
              f"{r.clients} {r.shape} clients, same load", title_justify="left")
    t.add_column("")
    t.add_column("raftctl", justify="right")
    t.add_column(o.system, justify="right")
    t.add_column("ratio", justify="right")
    for i, p in enumerate(a.rounds, 1):
        t.add_row(f"round {i}: operations/s", f"{p.raftctl_ops_per_s:,.0f}",
                  f"{p.other_ops_per_s:,.0f}", f"{p.ratio:.2f}")
    t.add_row("median ratio", "", "", f"{a.ratio_median:.2f}")
    lat, olat = r.latency_ms, o.latency_ms
    t.add_row("last round: latency p50", f"{lat.p50:.2f} ms", f"{olat.p50:.2f} ms",
              f"{lat.p50 / olat.p50:.2f}" if olat.p50 else "—")
    t.add_row("last round: latency p99", f"{lat.p99:.2f} ms", f"{olat.p99:.2f} ms",
              f"{lat.p99 / olat.p99:.2f}" if olat.p99 else "—")
    t.add_row("last round: server CPU per op", _fmt(r.server_cpu_us_per_op, " µs"),
              _fmt(o.server_cpu_us_per_op, " µs"),
              "—" if a.cpu_per_op_ratio is None else f"{a.cpu_per_op_ratio:.2f}")
    t.add_row("last round: errors / unknown", f"{r.errors:,} / {r.unknown:,}",
              f"{o.errors:,} / {o.unknown:,}", "")
    t.add_row("last round: load generator CPU", f"{r.loadgen_cpu_percent:.0f}%",
              f"{o.loadgen_cpu_percent:.0f}%", "")
    return t


@bench.command("failover")
@click.option("--trials", type=click.IntRange(1, 1000), default=10, show_default=True)
@json_option("Print JSON (schema above).")
@click.pass_context
def failover(ctx: click.Context, trials: int, as_json: bool) -> None:
    """SIGKILL the leader, time the recovery, restart it; TRIALS times.

    While a few clients write without pause, each trial kills the leader and
    measures the time from the kill to a survivor reporting itself leader of
    a later term, and to the first write acknowledged by a survivor; then it
    restarts the victim and waits until it has applied the leader's commit
    index. Needs every node of a cluster of 3 or more running.

    \b
    --json prints one object:
      mode ("failover"), cluster, nodes, trials, completed,
      leader_ms {median, worst}, write_ms {median, worst},
      writes, unknown, errors  (of the writer, over all trials),
      results [{trial, victim, old_term, new_leader, new_term,
                leader_ms, write_ms, catch_up_ms}]  (null: not seen in time).
    """
    c = _cluster(ctx)
    con = render.console()
    with _progress(con, "bench failover", trials) as bar:

        def step(r: FailoverTrial) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=r.trial,
                           info=f"write {_fmt(r.write_ms)}")

        report = _run(lambda: bench_failover(c, trials=trials, on_trial=step))
    if as_json:
        click.echo(render.dumps(to_json(report)))
    else:
        con.print(failover_table(report))
    if report.completed < report.trials:
        raise CliError(
            f"{report.trials - report.completed} of {report.trials} trials saw no new leader "
            "or no acknowledged write in time; see `raftctl logs`")


def failover_table(r: FailoverReport) -> Table:
    t = Table(title=f"bench failover: cluster {r.cluster}, {r.nodes} nodes, {r.trials} trials "
              "(times from the SIGKILL of the leader; catch-up from the restart)",
              title_justify="left", header_style="bold")
    for col in FAILOVER_COLUMNS:
        t.add_column(col, justify="left" if col in {"KILLED", "NEW LEADER"} else "right")
    for x in r.results:
        t.add_row(str(x.trial), x.victim, str(x.old_term), x.new_leader or "—",
                  "—" if x.new_term is None else str(x.new_term), _fmt(x.leader_ms, ""),
                  _fmt(x.write_ms, ""), _fmt(x.catch_up_ms, ""))
    s = Table(show_header=True, header_style="bold", title_justify="left")
    s.add_column("")
    s.add_column("MEDIAN", justify="right")
    s.add_column("WORST", justify="right")
    _summary_row(s, "kill -> new leader", r.leader_ms)
    _summary_row(s, "kill -> acknowledged write", r.write_ms)
    outer = Table.grid()
    outer.add_row(t)
    outer.add_row(s)
    outer.add_row(f"writer: {r.writes:,} writes acknowledged, {r.unknown} unknown, "
                  f"{r.errors} errors")
    return outer


@bench.command("up")
@click.option("--trials", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("-n", "--nodes", type=click.IntRange(1, 15), default=3, show_default=True)
@click.option("--fsync", type=click.Choice(["always", "never"]), default="always",
              show_default=True)
@json_option("Print JSON (schema above).")
def up(trials: int, nodes: int, fsync: str, as_json: bool) -> None:
    """Time from `up` to the first acknowledged write, on throwaway clusters.

    Each trial makes a fresh cluster in a temporary run directory on free
    ports (never the cluster named by --cluster/--run-dir), starts its nodes,
    writes until a write is acknowledged, then stops the nodes and removes
    the directory.

    \b
    --json prints one object:
      mode ("up"), nodes, fsync, trials, completed,
      first_write_ms {median, worst},
      results [{trial, spawned_ms, first_write_ms}]  (from the start of `up`:
      config and keys written, processes spawned; null: no write in time).
    """
    con = render.console()
    with _progress(con, "bench up", trials) as bar:

        def step(r: UpTrial) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=r.trial,
                           info=f"first write {_fmt(r.first_write_ms)}")

        report = _run(lambda: bench_up(trials=trials, nodes=nodes, fsync=fsync, on_trial=step))
    if as_json:
        click.echo(render.dumps(to_json(report)))
    else:
        con.print(up_table(report))
    if report.completed < report.trials:
        raise CliError(
            f"{report.trials - report.completed} of {report.trials} fresh clusters acknowledged "
            "no write in time")


def up_table(r: UpReport) -> Table:
    t = Table(title=f"bench up: {r.nodes} nodes, fsync {r.fsync}, {r.trials} trials "
              "(times from the start of `up`)",
              title_justify="left", header_style="bold")
    for col in ("TRIAL", "SPAWNED ms", "FIRST WRITE ms"):
        t.add_column(col, justify="right")
    for x in r.results:
        t.add_row(str(x.trial), _fmt(x.spawned_ms, ""), _fmt(x.first_write_ms, ""))
    t.add_section()
    t.add_row("median", "", _fmt(r.first_write_ms.median, ""))
    t.add_row("worst", "", _fmt(r.first_write_ms.worst, ""))
    return t


@bench.command("txn")
@click.option("--clients", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Client threads, each with its own session, one transaction at a time.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds of load.")
@json_option("Print JSON (schema above).")
@click.pass_context
def txn(ctx: click.Context, clients: int, duration_s: float, as_json: bool) -> None:
    """Transactions a second: each client runs `if version(k) = v then put k,
    put k2 else get k` on keys of its own, without pause.

    \b
    --json prints one object:
      mode ("txn"), cluster, nodes, clients, duration_s, txns,
      failed_compares, errors, txns_per_s, latency_ms {p50, p90, p99, max, mean}.
    """
    r: TxnReport = _run(lambda: bench_txn(_cluster(ctx), clients=clients,
                                          duration_s=duration_s))
    if as_json:
        click.echo(render.dumps(msgspec.to_builtins(r)))
        return
    t = Table(title=f"bench txn: cluster {r.cluster}, {r.nodes} nodes, {r.clients} clients, "
              f"{r.duration_s:g} s", title_justify="left", show_header=False)
    t.add_row("transactions/s", f"{r.txns_per_s:,.1f}")
    t.add_row("latency p50 / p99", f"{r.latency_ms.p50:.2f} / {r.latency_ms.p99:.2f} ms")
    t.add_row("transactions", f"{r.txns:,} ({r.failed_compares} compares failed, "
              f"{r.errors} errors)")
    render.console().print(t)


@bench.command("lease")
@click.option("--clients", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Client threads, each with its own session, one request at a time.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0.2), default=10.0,
              show_default=True, help="Seconds of load: half granting, half keeping alive.")
@json_option("Print JSON (schema above).")
@click.pass_context
def lease(ctx: click.Context, clients: int, duration_s: float, as_json: bool) -> None:
    """Lease grants a second (each a write through the log; of the shortest
    TTL, so they lapse), then keep-alives a second (each confirmed by a
    quorum as the leader's), each client renewing a lease of its own.

    \b
    --json prints one object:
      mode ("lease"), cluster, nodes, clients, duration_s, grants, grants_per_s,
      grant_latency_ms, keepalives, keepalives_per_s, keepalive_latency_ms
      ({p50, p90, p99, max, mean} each), errors.
    """
    r: LeaseReport = _run(lambda: bench_lease(_cluster(ctx), clients=clients,
                                              duration_s=duration_s))
    if as_json:
        click.echo(render.dumps(msgspec.to_builtins(r)))
        return
    t = Table(title=f"bench lease: cluster {r.cluster}, {r.nodes} nodes, {r.clients} clients, "
              f"{r.duration_s:g} s", title_justify="left", show_header=False)
    t.add_row("keep-alives/s", f"{r.keepalives_per_s:,.1f}")
    t.add_row("keep-alive p50 / p99", f"{r.keepalive_latency_ms.p50:.2f} / "
              f"{r.keepalive_latency_ms.p99:.2f} ms")
    t.add_row("grants/s", f"{r.grants_per_s:,.1f}")
    t.add_row("grant p50 / p99", f"{r.grant_latency_ms.p50:.2f} / "
              f"{r.grant_latency_ms.p99:.2f} ms")
    t.add_row("errors", f"{r.errors}")
    render.console().print(t)


@bench.command("watch")
@click.option("--watchers", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Watchers of one prefix, spread over the nodes (followers too).")
@click.option("--writers", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Client threads putting keys under the prefix.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds of writes.")
@json_option("Print JSON (schema above).")
@click.pass_context
def watch(ctx: click.Context, watchers: int, writers: int, duration_s: float,
          as_json: bool) -> None:
    """Watch events a second delivered to WATCHERS watchers of one prefix
    while WRITERS clients put keys under it; every watcher must get every
    change (exit 1 if one did not within 30 s after the writes).

    \b
    --json prints one object:
      mode ("watch"), cluster, nodes, watchers, writers, duration_s, writes,
      writes_per_s, events, events_expected, events_per_s, delivery_s,
      complete, errors.
    """
    r: WatchReport = _run(lambda: bench_watch(_cluster(ctx), watchers=watchers,
                                              writers=writers, duration_s=duration_s))
    if as_json:
        click.echo(render.dumps(msgspec.to_builtins(r)))
    else:
        t = Table(title=f"bench watch: cluster {r.cluster}, {r.nodes} nodes, {r.watchers} "
                  f"watchers, {r.writers} writers, {r.duration_s:g} s",
                  title_justify="left", show_header=False)
        t.add_row("events/s delivered (all watchers)", f"{r.events_per_s:,.1f}")
        t.add_row("writes/s", f"{r.writes_per_s:,.1f}")
        t.add_row("events", f"{r.events:,} of {r.events_expected:,} in {r.delivery_s:.2f} s")
        render.console().print(t)
    if not r.complete:
        raise CliError(f"the watchers got {r.events:,} of {r.events_expected:,} events; "
                       "a watcher fell behind or was cancelled (slow_watcher)")


@bench.command("lock")
@click.option("--contenders", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Holders of one lock in the contended phase, each with its own lease.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds of each phase.")
@json_option("Print JSON (schema above).")
@click.pass_context
def lock(ctx: click.Context, contenders: int, duration_s: float, as_json: bool) -> None:
    """Lock cycles (acquire, release) a second: one holder alone, then
    CONTENDERS holders of one lock taking turns in order.

    \b
    --json prints one object:
      mode ("lock"), cluster, nodes, and for `uncontended` and `contended`:
      contenders, duration_s, cycles, errors, cycles_per_s,
      acquire_ms {p50, p90, p99, max, mean}.
    """
    r: LockReport = _run(lambda: bench_lock(_cluster(ctx), contenders=contenders,
                                            duration_s=duration_s))
    if as_json:
        click.echo(render.dumps(msgspec.to_builtins(r)))
        return
    t = Table(title=f"bench lock: cluster {r.cluster}, {r.nodes} nodes, {duration_s:g} s a "
              "phase", title_justify="left")
    for col in ("HOLDERS", "CYCLES/s", "ACQUIRE p50 ms", "ACQUIRE p99 ms", "ERRORS"):
        t.add_column(col, justify="right")
    for p in (r.uncontended, r.contended):
        t.add_row(str(p.contenders), f"{p.cycles_per_s:,.1f}", f"{p.acquire_ms.p50:.2f}",
                  f"{p.acquire_ms.p99:.2f}", str(p.errors))
    render.console().print(t)
