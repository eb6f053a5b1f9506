"""The `raftctl` command line: thin click commands that parse, call one
function and render. All printing happens here and in `raftctl/render.py`."""

from __future__ import annotations

import importlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from click.shell_completion import CompletionItem

from node.client import Client, ClientError
from raftctl import faults_cmd, render
from raftctl.cluster import (
    CLUSTER_ENV,
    DEFAULT_CLUSTER,
    RUN_DIR_ENV,
    Cluster,
    ClusterError,
    default_run_dir,
    load_config_file,
    make_config,
)
from raftctl.logview import LogFilter, follow, merged, parse_duration_s, since_ts
from raftctl.netns import MODES as NETNS_KERNEL_MODES
from raftctl.netns import auto_mode as netns_auto_mode
from raftctl.netns import unavailable as netns_unavailable

LEADER_WAIT_S = 10.0


def _version() -> str:
    # Imported here: reading the package metadata costs every command's start.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raftctl")
    except PackageNotFoundError:
        return "unknown"


def _print_version(ctx: click.Context) -> None:
    if ctx.resilient_parsing:
        return
    click.echo(f"raftctl, version {_version()}")
    ctx.exit()


def _cluster(ctx: click.Context) -> Cluster:
    c = ctx.find_object(Cluster)
    assert c is not None, "the raftctl group always sets up a Cluster"
    return c


def _complete_nodes(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    root = ctx.find_root().params
    name = root.get("cluster") or DEFAULT_CLUSTER
    run_dir = Path(root["run_dir"]) if root.get("run_dir") else default_run_dir(name)
    try:
        ids = Cluster(run_dir, name).node_ids()
    except (ClusterError, OSError):
        return []
    return [CompletionItem(n) for n in ids if n.startswith(incomplete)]


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


class _LazyGroup(click.Group):
    """A group whose heaviest commands (`bench`, `chaos`, `sim`) are imported
    only when named, so `raftctl put` does not pay for the simulator, the
    load generator or rich's live views at every start."""

    LAZY = {"bench": "raftctl.bench_cmd:bench", "chaos": "raftctl.chaos_cmd:chaos",
            "sim": "raftctl.sim_cmd:sim"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.LAZY.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command), target
        return cmd


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _p, v: _print_version(ctx) if v else None,
              help="Show the version and exit.")
@click.option("--cluster", "-C", envvar=CLUSTER_ENV, default=DEFAULT_CLUSTER, show_default=True,
              help=f"Cluster name (env {CLUSTER_ENV}).")
@click.option("--run-dir", envvar=RUN_DIR_ENV, type=click.Path(file_okay=False, path_type=Path),
              help=f"The cluster's run directory (env {RUN_DIR_ENV}; "
                   "default ./.raftctl/CLUSTER).")
@click.pass_context
def main(ctx: click.Context, cluster: str, run_dir: Path | None) -> None:
    """Run, break and understand a Raft cluster on this machine.

    Start with `raftctl up`, then `raftctl status`, `raftctl put k v`,
    `raftctl kill --leader` and `raftctl logs -f` in another terminal.
    """
    ctx.obj = Cluster((run_dir or default_run_dir(cluster)).resolve(), cluster)


@main.command("version")
def version_cmd() -> None:
    """Print the version of raftctl."""
    click.echo(f"raftctl {_version()}")


# --- up / down / status --------------------------------------------------------


@main.command()
@click.option("-n", "--nodes", type=click.IntRange(1, 15), help="Number of nodes [default: 3].")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML cluster file (see configs/).")
@click.option("--transport", type=click.Choice(["zmq", "udp"]), default=None,
              help="Peer transport: ZeroMQ over TCP, or plain UDP datagrams [default: zmq].")
@click.option("--fsync", type=click.Choice(["always", "never"]), default=None,
              help="WAL durability [default: always]; `never` can lose acknowledged writes.")
@click.option("--netns", "netns_mode", type=click.Choice(["auto", *NETNS_KERNEL_MODES]),
              is_flag=False, flag_value="auto", default=None,
              help="Kernel mode: cuts and loss become iptables rules. `bridge` (root): a network "
                   "namespace per node on a private bridge; `sandbox` (no root): all nodes in "
                   "one user namespace on 127.1.0.x; a bare --netns picks bridge as root, else "
                   "sandbox. Delay, duplicate and reorder stay in the transport.")
@click.option("--wait", "wait_s", type=float, default=LEADER_WAIT_S, show_default=True,
              help="Seconds to wait for a leader.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def up(ctx: click.Context, nodes: int | None, config_file: Path | None, transport: str | None,
       fsync: str | None, netns_mode: str | None, wait_s: float, as_json: bool) -> None:
    """Start the cluster's nodes and wait for a leader."""
    c = _cluster(ctx)
    if nodes is not None and config_file is not None:
        _fail("give either -n or -c, not both")
    if netns_mode == "auto":
        netns_mode = netns_auto_mode()
    if netns_mode and (why := netns_unavailable(netns_mode)) is not None:
        _fail(why)
    try:
        running = c.running_nodes()
        if running:
            _fail(f"cluster {c.name} is already up ({', '.join(running)} running); "
                  "`raftctl status` shows it, `raftctl down` stops it")
        if c.exists():
            if nodes is not None or config_file is not None or transport or fsync or netns_mode:
                _fail(f"cluster {c.name} already exists in {c.run_dir} with "
                      f"{len(c.node_ids())} nodes; `raftctl up` restarts it as it is, "
                      "`raftctl down --purge` removes it to make a new one")
        else:
            settings: dict[str, Any] = {}
            if fsync:
                settings["fsync"] = fsync
            if config_file is not None:
                cfg = load_config_file(config_file, name=c.name)
                if transport or fsync:
                    import msgspec

                    cfg = msgspec.structs.replace(
                        cfg, **({"transport": transport} if transport else {}), **settings)
            else:
                cfg = make_config(nodes or 3, name=c.name, transport=transport or "zmq",
                                  **settings)
            if netns_mode:
                cfg = c.with_netns_addresses(cfg, netns_mode)
            c.create(cfg)
        cfg = c.config()
        _warn_durability(c)
        c.check_ports()
        c.prepare_kernel()
        for n in cfg.nodes:
            c.start(n.id)
        with _spinner(as_json, f"waiting for cluster {c.name} to elect a leader"):
            c.wait_for_leader(wait_s)
        _print_status(c, as_json)
    except ClusterError as e:
        _fail(str(e))


@main.command()
@click.option("--purge", is_flag=True, help="Also delete the run directory (data, logs, keys).")
@click.pass_context
def down(ctx: click.Context, purge: bool) -> None:
    """Stop every node (SIGTERM, then SIGKILL after 10 s)."""
    c = _cluster(ctx)
    if not c.exists():
        if purge and c.run_dir.exists():
            c.purge()
            return
        _fail(f"cluster {c.name} is not set up in {c.run_dir}")
    try:
        stopped = c.stop_all()
        c.teardown_kernel()
        if purge:
            c.purge()
    except ClusterError as e:
        _fail(str(e))
    what = f"stopped {', '.join(stopped)}" if stopped else "no node was running"
    click.echo(f"cluster {c.name}: {what}" + ("; run directory removed" if purge else ""))


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list, one object a node).")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show each node's pid, state, term, leader, commit and faults."""
    try:
        _print_status(_cluster(ctx), as_json)
    except ClusterError as e:
        _fail(str(e))


main.add_command(status_cmd, "ps")


def _warn_durability(c: Cluster) -> None:
    if c.config().fsync == "never":
        render.console(stderr=True).print(
            "[bold red]warning:[/] fsync = never: durability is off; acknowledged writes can "
            "be lost on a crash")


def _print_status(c: Cluster, as_json: bool) -> None:
    _warn_durability(c)
    states = c.status()
    if as_json:
        click.echo(render.dumps(render.status_rows(states)))
    else:
        render.console().print(render.status_table(states, title=f"cluster {c.name}"))


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def _spinner(quiet: bool, text: str) -> Any:
    con = render.console(stderr=True)
    if quiet or not con.is_terminal:
        return _NullCtx()
    return con.status(text)


@main.command()
@click.option("--interval", type=float, default=0.25, show_default=True,
              help="Seconds between refreshes.")
@click.option("--count", type=int, default=0, help="Stop after this many refreshes (0: never).")
@click.pass_context
def watch(ctx: click.Context, interval: float, count: int) -> None:
    """A live table of the cluster; Ctrl-C to quit."""
    from rich.live import Live  # only here: it costs every other command's start

    c = _cluster(ctx)
    con = render.console()
    n = 0
    try:
        with Live(console=con, auto_refresh=False) as live:
            while True:
                states = c.status(timeout_s=min(0.5, max(interval, 0.1)))
                live.update(render.status_table(
                    states, title=f"cluster {c.name}  {time.strftime('%H:%M:%S')}"), refresh=True)
                n += 1
                if count and n >= count:
                    return
                time.sleep(interval)  # the refresh cadence
    except ClusterError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        return


# --- processes -------------------------------------------------------------------


def _targets(c: Cluster, nodes: tuple[str, ...], leader: bool, rnd: bool,
             running_only: bool = True) -> list[str]:
    if sum([bool(nodes), leader, rnd]) != 1:
        _fail("name the nodes, or give --leader or --random")
    if leader:
        lead = c.leader()
        if lead is None:
            _fail(f"cluster {c.name} has no leader right now")
        return [lead]
    if rnd:
        pool = c.running_nodes() if running_only else c.node_ids()
        if not pool:
            _fail(f"no node of cluster {c.name} is running")
        return [random.choice(sorted(pool))]
    return c.check_nodes(list(nodes))


def _process_command(name: str, help_text: str, action: Callable[[Cluster, str], str],
                     running_only: bool = True) -> None:
    @main.command(name, help=help_text)
    @click.argument("nodes", nargs=-1, shell_complete=_complete_nodes)
    @click.option("--leader", is_flag=True, help="The node that leads now.")
    @click.option("--random", "rnd", is_flag=True, help="A random node.")
    @click.pass_context
    def cmd(ctx: click.Context, nodes: tuple[str, ...], leader: bool, rnd: bool) -> None:
        c = _cluster(ctx)
        try:
            for n in _targets(c, nodes, leader, rnd, running_only):
                click.echo(action(c, n))
        except ClusterError as e:
            _fail(str(e))


def _do_start(c: Cluster, n: str) -> str:
    pid = c.start(n)
    deadline = time.monotonic() + 5.0
    while c.node_status(n, timeout_s=0.5).status is None:
        if c.process_state(n)[1] == "down":
            log = c.run_dir / "nodes" / n / "stdout.log"
            raise ClusterError(f"node {n} exited right after starting; see {log}")
        if time.monotonic() > deadline:
            raise ClusterError(f"node {n} (pid {pid}) started but does not answer; "
                               f"see `raftctl logs {n}`")
    return f"{n}: started (pid {pid})"


def _do_restart(c: Cluster, n: str) -> str:
    if c.process_state(n)[1] != "down":
        c.stop(n)
    return _do_start(c, n).replace("started", "restarted")


_process_command("kill", "SIGKILL nodes: they die at once, losing nothing they acknowledged.",
                 lambda c, n: f"{n}: killed (pid {c.kill(n)})")
_process_command("stop", "SIGTERM nodes: a leader hands over leadership first.",
                 lambda c, n: f"{n}: stopped (pid {c.stop(n)})")
_process_command("start", "Start stopped or killed nodes.", _do_start, running_only=False)
_process_command("restart", "Stop (SIGTERM) and start nodes again.", _do_restart,
                 running_only=False)
_process_command("pause", "SIGSTOP nodes: frozen, as if the machine hung.",
                 lambda c, n: f"{n}: paused (pid {c.pause(n)})")
_process_command("resume", "SIGCONT paused nodes.",
                 lambda c, n: f"{n}: resumed (pid {c.resume(n)})")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def leader(ctx: click.Context, as_json: bool) -> None:
    """Print the node that leads now (exit 1 if none)."""
    c = _cluster(ctx)
    try:
        lead = c.leader()
    except ClusterError as e:
        _fail(str(e))
    if as_json:
        click.echo(render.dumps({"leader": lead}))
    if lead is None:
        _fail(f"cluster {c.name} has no leader right now")
    if not as_json:
        click.echo(lead)


@main.command()
@click.argument("node", shell_complete=_complete_nodes)
@click.option("--wait", "wait_s", type=float, default=3.0, show_default=True)
@click.pass_context
def transfer(ctx: click.Context, node: str, wait_s: float) -> None:
    """Hand leadership to NODE (thesis §3.10, TimeoutNow)."""
    c = _cluster(ctx)
    try:
        c.check_nodes([node])
        old = c.transfer(node)
        if old == node:
            click.echo(f"{node} already leads")
            return
        deadline = time.monotonic() + wait_s
        while c.leader() != node:
            if time.monotonic() > deadline:
                _fail(f"{node} did not take over within {wait_s:.1f}s (leader: {c.leader()})")
            time.sleep(0.02)
    except ClusterError as e:
        _fail(str(e))
    click.echo(f"leadership moved from {old} to {node}")


# --- key-value commands -------------------------------------------------------------


def _client(c: Cluster, timeout_s: float) -> Client:
    try:
        c.load()  # says so if the cluster is not set up at all
        if not c.running_nodes():
            _fail(f"cluster {c.name} is not up (no node is running); start it with `raftctl up`")
        return Client(c.client_addrs(), c.keys(), timeout_s=timeout_s,
                      attempt_timeout_s=min(1.0, timeout_s))
    except ClusterError as e:
        _fail(str(e))


_timeout_opt = click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True,
                            help="Seconds before giving up.")
_json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8", errors="replace")


def _write_out(key: str, res: Any, as_json: bool, what: str) -> None:
    if as_json:
        click.echo(render.dumps({"key": key, "ok": res.ok, "index": res.index,
                                 "previous": _text(res.value), "error": res.error}))
    elif res.ok:
        click.echo(f"OK {what} (index {res.index})")
    if not res.ok:
        if res.error == "cas_failed":
            cur = _text(res.value)
            _fail(f"cas failed: {key} is {'absent' if cur is None else repr(cur)}")
        _fail(f"{what} failed: {res.error}")


@main.command()
@click.argument("key")
@click.argument("value")
@_timeout_opt
@_json_opt
@click.pass_context
def put(ctx: click.Context, key: str, value: str, timeout_s: float, as_json: bool) -> None:
    """Set KEY to VALUE (acknowledged once committed and applied)."""
    with _client(_cluster(ctx), timeout_s) as cl:
        res = _run(lambda: cl.put(key, value.encode(), prev=True))
    _write_out(key, res, as_json, "put")


@main.command("del")
@click.argument("key")
@_timeout_opt
@_json_opt
@click.pass_context
def delete(ctx: click.Context, key: str, timeout_s: float, as_json: bool) -> None:
    """Delete KEY."""
    with _client(_cluster(ctx), timeout_s) as cl:
        res = _run(lambda: cl.delete(key, prev=True))
    _write_out(key, res, as_json, "delete")


@main.command()
@click.argument("key")
@click.argument("expected")
@click.argument("value")
@click.option("--absent", is_flag=True, help="Expect KEY to be absent (EXPECTED is ignored).")
@_timeout_opt
@_json_opt
@click.pass_context
def cas(ctx: click.Context, key: str, expected: str, value: str, absent: bool,
        timeout_s: float, as_json: bool) -> None:
    """Set KEY to VALUE only if it is now EXPECTED (compare-and-set)."""
    with _client(_cluster(ctx), timeout_s) as cl:
        res = _run(lambda: cl.cas(key, None if absent else expected.encode(), value.encode()))
    _write_out(key, res, as_json, "cas")


@main.command()
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read a node's local copy (may be out of date).")
@click.option("--node", shell_complete=_complete_nodes, help="With --stale: the node to read.")
@_timeout_opt
@_json_opt
@click.pass_context
def get(ctx: click.Context, key: str, stale: bool, node: str | None, timeout_s: float,
        as_json: bool) -> None:
    """Print KEY's value: a linearizable read (ReadIndex) unless --stale."""
    c = _cluster(ctx)
    if node is not None:
        try:
            c.check_nodes([node])
        except ClusterError as e:
            _fail(str(e))
    with _client(c, timeout_s) as cl:
        value = _run(lambda: cl.get(key, stale=stale, node=node))
    if as_json:
        click.echo(render.dumps({"key": key, "found": value is not None, "value": _text(value)}))
        if value is None:
            sys.exit(1)
        return
    if value is None:
        _fail(f"key {key} not found")
    click.echo(_text(value))


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ClientError as e:
        _fail(f"{e} [{e.code}]")


# --- logs ------------------------------------------------------------------------------


@main.command()
@click.argument("nodes", nargs=-1, shell_complete=_complete_nodes)
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new events.")
@click.option("--event", "events", multiple=True, help="Only this event (repeatable).")
@click.option("--since", help="Only events newer than this (250ms, 30s, 5m, 1h).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON lines.")
@click.option("--for", "for_s", type=float, default=0.0, hidden=True,
              help="With -f: stop after this many seconds (for scripts).")
@click.pass_context
def logs(ctx: click.Context, nodes: tuple[str, ...], follow_: bool, events: tuple[str, ...],
         since: str | None, as_json: bool, for_s: float) -> None:
    """The nodes' logs merged in time order; -f follows them live."""
    c = _cluster(ctx)
    try:
        ids = c.check_nodes(list(nodes)) if nodes else c.node_ids()
    except ClusterError as e:
        _fail(str(e))
    flt = LogFilter(nodes=set(ids), events=set(events))
    if since:
        try:
            flt.since_ts = since_ts(parse_duration_s(since))
        except ValueError as e:
            _fail(str(e))
    paths = [c.log_path(n) for n in ids]
    con = render.console()
    colours: dict[str, str] = {n: render.NODE_COLOURS[i % len(render.NODE_COLOURS)]
                               for i, n in enumerate(c.node_ids())}

    def emit(ev: dict[str, Any], raw: str) -> None:
        if as_json:
            click.echo(raw)
        else:
            con.print(render.log_line(ev, colours))

    if not follow_:
        for ev, raw in merged(paths, flt):
            emit(ev, raw)
        return
    end = time.monotonic() + for_s if for_s else None
    try:
        follow(paths, flt, emit, stop=lambda: end is not None and time.monotonic() >= end,
               from_end=since is None)
    except KeyboardInterrupt:
        return


faults_cmd.register(main)


def run() -> None:
    """Entry point: one clear line on any unexpected error, never a traceback
    (set RAFTCTL_DEBUG=1 to see it)."""
    try:
        main(standalone_mode=True)
    except Exception as e:  # the last line of defence for the operator
        if os.environ.get("RAFTCTL_DEBUG"):
            raise
        click.echo(f"raftctl: internal error: {type(e).__name__}: {e} "
                   "(RAFTCTL_DEBUG=1 shows the traceback)", err=True)
        sys.exit(70)
