"""The `raftctl` command line: thin click commands that parse, call one
function and render. All printing happens in the command modules and in
`raftctl/render.py`; exit codes come from `raftctl/exits.py` alone."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from node.client import ClientError
from node.config import ALGORITHMS
from raftctl import (
    explain_cmd,
    faults_cmd,
    kv_cmd,
    logs_cmd,
    process_cmd,
    recipes_cmd,
    render,
    status_cmd,
    watch_cmd,
)
from raftctl.cluster import (
    CLUSTER_ENV,
    DEFAULT_CLUSTER,
    DEFAULT_HOME_NAME,
    HOME_ENV,
    RUN_DIR_ENV,
    Cluster,
    ClusterError,
    ClusterUnavailable,
    check_cluster_name,
    make_config,
)
from raftctl.exits import (
    JSON_META,
    CliError,
    Exit,
    epilog,
    error_json,
    from_client_error,
    from_cluster_error,
)
from raftctl.netns import MODES as NETNS_KERNEL_MODES
from raftctl.netns import auto_mode as netns_auto_mode
from raftctl.netns import unavailable as netns_unavailable
from raftctl.options import cluster_of, complete_nodes, json_option, run_dir_of
from raftctl.remote import has_hosts, open_cluster

LEADER_WAIT_S = 10.0
# Errors of the machine an operator can act on (free space, fix a
# permission), reported as such rather than as a bug of raftctl.
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def _version() -> str:
    # Imported here: reading the package metadata costs every command's start.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raftctl")
    except PackageNotFoundError:
        return "unknown"


def _cluster_name(name: str) -> str:
    try:
        return check_cluster_name(name)
    except ClusterError as e:
        raise click.BadParameter(str(e)) from None


def _print_version(ctx: click.Context) -> None:
    if ctx.resilient_parsing:
        return
    click.echo(f"raftctl, version {_version()}")
    ctx.exit()


class _RaftctlGroup(click.Group):
    """The top group. Its heaviest commands (`bench`, `chaos`, `sim`) are
    imported only when named, so `raftctl put` does not pay for the
    simulator, the load generator or rich's live views at every start; and
    every error a command lets through leaves with its exit code."""

    LAZY = {"bench": "raftctl.bench_cmd:bench", "chaos": "raftctl.chaos_cmd:chaos",
            "sim": "raftctl.sim_cmd:sim", "k8s": "raftctl.k8s_cmd:k8s",
            "member": "raftctl.member_cmd:member", "paxos": "raftctl.paxos_cmd:paxos",
            "lease": "raftctl.lease_cmd:lease"}

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

    def invoke(self, ctx: click.Context) -> Any:
        err: CliError
        try:
            return super().invoke(ctx)
        except ClusterError as e:
            err = from_cluster_error(e)
        except ClientError as e:
            err = from_client_error(e)
        except KeyboardInterrupt:
            err = CliError("interrupted", Exit.INTERRUPTED)
        except OSError as e:
            if e.errno not in _MACHINE_ERRNOS:
                raise
            # A full disk, a directory not ours: the machine, not a bug.
            where = f"{e.filename}: " if e.filename else ""
            err = CliError(f"{where}{e.strerror or e}", Exit.FAILED)
        except CliError as e:
            e.as_json = bool(ctx.meta.get(JSON_META))
            raise
        except click.ClickException as e:
            if ctx.meta.get(JSON_META):
                click.echo(error_json(e.format_message(), e.exit_code))
            raise
        # The command's --json, if it had one, was parsed by now.
        err.as_json = bool(ctx.meta.get(JSON_META))
        raise err from None


@click.group(cls=_RaftctlGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=epilog())
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _p, v: _print_version(ctx) if v else None,
              help="Show the version and exit.")
@click.option("--cluster", "-C", envvar=CLUSTER_ENV, default=DEFAULT_CLUSTER, show_default=True,
              callback=lambda _ctx, _p, v: _cluster_name(v),
              help=f"Cluster name: letters, digits, '.', '-', '_' (env {CLUSTER_ENV}).")
@click.option("--home", envvar=HOME_ENV, type=click.Path(file_okay=False, path_type=Path),
              help=f"Where clusters live: each in HOME/NAME, and `raftctl ls` lists them (env "
                   f"{HOME_ENV}; default ./{DEFAULT_HOME_NAME}, under the current directory).")
@click.option("--run-dir", envvar=RUN_DIR_ENV, type=click.Path(file_okay=False, path_type=Path),
              help=f"This cluster's run directory, wherever it is (env {RUN_DIR_ENV}; "
                   "default HOME/CLUSTER).")
@click.pass_context
def main(ctx: click.Context, cluster: str, home: Path | None, run_dir: Path | None) -> None:
    """Run, break and understand a Raft cluster on this machine.

    Start with `raftctl up`, then `raftctl status`, `raftctl put k v`,
    `raftctl kill --leader` and `raftctl logs -f` in another terminal.
    Every command takes --json (docs/CLI.md has the shapes).
    Shell completion: eval "$(_RAFTCTL_COMPLETE=bash_source raftctl)"
    (zsh_source, fish_source for those shells).
    """
    ctx.obj = open_cluster(run_dir_of(run_dir, home, cluster), cluster)


@main.command("version")
@json_option()
def version_cmd(as_json: bool) -> None:
    """Print the version of raftctl."""
    if as_json:
        click.echo(render.dumps({"version": _version()}))
    else:
        click.echo(f"raftctl {_version()}")


# --- up / down / status / ls ---------------------------------------------------------


@main.command()
@click.option("-n", "--nodes", type=click.IntRange(1, 15), help="Number of nodes [default: 3].")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML cluster file (see configs/).")
@click.option("--transport", type=click.Choice(["zmq", "udp"]), default=None,
              help="Peer transport: ZeroMQ over TCP, or plain UDP datagrams [default: zmq].")
@click.option("--fsync", type=click.Choice(["always", "never"]), default=None,
              help="WAL durability [default: always]; `never` can lose acknowledged writes.")
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default=None,
              help="Consensus algorithm, fixed for the cluster's life: Raft, or Multi-Paxos "
                   "(docs/PAXOS_VS_RAFT.md) [default: raft].")
@click.option("--netns", "netns_mode", type=click.Choice(["auto", *NETNS_KERNEL_MODES]),
              is_flag=False, flag_value="auto", default=None,
              help="Kernel mode: cuts and loss become iptables rules. `bridge` (root): a network "
                   "namespace per node on a private bridge; `sandbox` (no root): all nodes in "
                   "one user namespace on 127.1.0.x; a bare --netns picks bridge as root, else "
                   "sandbox. Delay, duplicate and reorder stay in the transport.")
@click.option("--power-loss", "power_loss", is_flag=True,
              help="Put each node's data directory on a power-loss mount (FUSE) before it "
                   "starts, so `chaos run` can cut its power: what was not fsynced is lost. "
                   "`down` unmounts them.")
@click.option("--wait", "wait_s", type=float, default=LEADER_WAIT_S, show_default=True,
              help="Seconds to wait for a leader.")
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Hosts ([hosts] in the cluster file): install this wheel of raftctl there "
                   "[default: one built from this source checkout].")
@click.option("--wheelhouse", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Hosts: wheels of the dependencies, for hosts that lack them and have no "
                   "package index.")
@json_option("Print the status as JSON (as `status --json`).")
@click.pass_context
def up(ctx: click.Context, nodes: int | None, config_file: Path | None, transport: str | None,
       fsync: str | None, algorithm: str | None, netns_mode: str | None, power_loss: bool,
       wait_s: float, wheel: Path | None, wheelhouse: Path | None, as_json: bool) -> None:
    """Start the cluster's nodes and wait for a leader. A cluster file with
    [hosts] tables runs its nodes on those hosts over SSH (docs/DEPLOY.md)."""
    c = cluster_of(ctx)
    if nodes is not None and config_file is not None:
        raise click.UsageError("give either -n or -c, not both")
    if netns_mode == "auto":
        netns_mode = netns_auto_mode()
    if netns_mode and (why := netns_unavailable(netns_mode)) is not None:
        raise CliError(why)
    _refuse_if_running(c)
    created = not c.exists()
    if not created:
        if nodes is not None or config_file is not None or transport or fsync or algorithm \
                or netns_mode:
            raise CliError(f"cluster {c.name} already exists in {c.run_dir} with "
                           f"{len(c.node_ids())} nodes; `raftctl up` restarts it as it is, "
                           "`raftctl down --purge` removes it to make a new one")
        _refuse_wheel_without_hosts(has_hosts(c.run_dir), wheel, wheelhouse)
    else:
        settings: dict[str, Any] = {}
        if fsync:
            settings["fsync"] = fsync
        if algorithm:
            settings["algorithm"] = algorithm
        hosts: dict[str, Any] = {}
        if config_file is not None:
            # Only here: the inventory's module loads asyncssh.
            from raftctl.remote.inventory import load_hosts_config

            cfg, hosts = load_hosts_config(config_file, name=c.name)
            if transport or settings:
                import msgspec

                cfg = msgspec.structs.replace(
                    cfg, **({"transport": transport} if transport else {}), **settings)
        else:
            cfg = make_config(nodes or 3, name=c.name, transport=transport or "zmq",
                              **settings)
        if netns_mode and hosts:
            raise CliError("--netns puts every node in a namespace of this machine, and the "
                           "cluster file runs them on hosts; for faults in the hosts' kernels "
                           "use `raftctl partition --kernel` once it is up", Exit.USAGE)
        _refuse_wheel_without_hosts(bool(hosts), wheel, wheelhouse)
        if netns_mode:
            cfg = c.with_netns_addresses(cfg, netns_mode)
        if hosts:
            c = ctx.obj = _host_cluster(c)
            c.create(cfg, hosts)
        else:
            c.create(cfg)
    cfg = c.config()
    status_cmd.warn_durability(c)
    try:
        refused = _start_all(c, wait_s, as_json, power_loss, wheel, wheelhouse)
    except ClusterError as e:
        raise type(e)(f"{e}{_after_failed_up(c, created)}") from None
    status_cmd.print_status(ctx, c, as_json, exit_on_no_leader=not refused)
    for n, why in refused.items():
        click.echo(f"Error: {n} did not start: {why}", err=True)
    if refused:
        ctx.exit(Exit.FAILED)


def _start_all(c: Cluster, wait_s: float, as_json: bool, power_loss: bool = False,
               wheel: Path | None = None, wheelhouse: Path | None = None) -> dict[str, str]:
    """Start every node and wait for a leader; returns the nodes that
    exited meanwhile (a refusal to start), with what they said. Raises
    if no leader comes, saying which nodes refused."""
    c.check_ports()
    failed = _install_on_hosts(c, wheel, wheelhouse)
    c.prepare_kernel()
    _power_loss_mounts(c, power_loss)
    ids = c.node_ids()
    for n in ids:
        if n in failed:
            continue
        try:
            c.start(n)
        except ClusterError as e:
            if not has_hosts(c.run_dir):
                raise
            failed[n] = str(e)  # on hosts, one node's trouble does not stop the others
    refused: dict[str, str] = dict(failed)
    answered: set[str] = set()
    deadline = time.monotonic() + wait_s
    with _spinner(as_json, f"waiting for cluster {c.name} to elect a leader"):
        # Until a leader is elected and each node answered or exited (a
        # refusal to start takes a moment: the node opens its storage first).
        while True:
            for n in ids:
                if n in refused or n in answered:
                    continue
                state = c.node_status(n, timeout_s=0.2)
                if state.status is not None:
                    answered.add(n)
                elif state.process == "down":
                    refused[n] = c.exit_output(n) or f"it exited; see {c.log_path(n).parent}"
            lead = c.leader() if answered else None
            if lead is not None and len(answered) + len(refused) == len(ids):
                return refused
            if time.monotonic() >= deadline or len(refused) == len(ids):
                if lead is not None:
                    return refused
                why = "".join(f"; {n} did not start: {w}" for n, w in refused.items())
                raise ClusterUnavailable(f"no leader was elected within {wait_s:.1f}s{why}; "
                                         "see `raftctl logs` and `raftctl status`")
            time.sleep(0.05)  # polling cadence; the condition is a leader and every node settled


def _after_failed_up(c: Cluster, created: bool) -> str:
    """What a failed `up` leaves behind, said at the end of its error: a
    run directory it made and in which nothing ran is removed."""
    if not created:
        return ""
    if not c.running_nodes() and not any(
            (c.log_path(n)).exists() for n in c.node_ids()):
        c.teardown_kernel()
        c.purge()
        return f"; the run directory it made, {c.run_dir}, was removed"
    return (f"; the run directory it made, {c.run_dir}, is kept for its logs "
            "(`raftctl down --purge` removes it)")


def _host_cluster(c: Cluster) -> Any:
    from raftctl.remote.cluster import HostCluster  # only here: it loads asyncssh

    return HostCluster(c.run_dir, c.name)


def _refuse_wheel_without_hosts(hosts: bool, wheel: Path | None,
                                wheelhouse: Path | None) -> None:
    if (wheel or wheelhouse) and not hosts:
        raise CliError("--wheel and --wheelhouse are for clusters on hosts ([hosts] in the "
                       "cluster file); this one runs here", Exit.USAGE)


def _install_on_hosts(c: Cluster, wheel: Path | None, wheelhouse: Path | None,
                      ) -> dict[str, str]:
    """Install raftctl on the cluster's hosts, if it has any; by node, the
    hosts where that failed (their nodes are not started, the others are)."""
    if not has_hosts(c.run_dir):
        return {}
    from raftctl.remote.cluster import HostCluster  # only here: it loads asyncssh

    assert isinstance(c, HostCluster), "open_cluster gives a HostCluster where there are hosts"
    return {n: str(e) for n, e in c.install(wheel, wheelhouse).items()}


def _power_loss_mounts(c: Cluster, wanted: bool) -> None:
    """Mount the data directories on power-loss mounts if `wanted`; refuse
    to start nodes whose data lives on an unmounted power-loss disk."""
    from raftctl import power  # FUSE plumbing: loaded only where it is needed

    if wanted:
        power.mount_data_dirs(c)
    elif lost := power.needs_power_loss(c):
        raise CliError(f"the data of {', '.join(lost)} lives on power-loss disks (nodes/N/disk); "
                       "start the cluster with `raftctl up --power-loss`")


def _unmount_power_loss(run_dir: Path) -> None:
    """After the nodes stopped: unmount any power-loss mount of the run directory."""
    if any(run_dir.glob("nodes/*/disk")):
        from raftctl import power  # FUSE plumbing: loaded only where it is needed

        power.unmount_data_dirs(run_dir)


def _refuse_if_running(c: Cluster) -> None:
    running = c.running_nodes()
    if not running:
        return
    down = [n for n in c.node_ids() if n not in running]
    if down:
        raise CliError(f"cluster {c.name} is partly up ({', '.join(running)} running, "
                       f"{', '.join(down)} down); `raftctl start` starts the stopped nodes, "
                       "`raftctl down` stops the running ones")
    raise CliError(f"cluster {c.name} is already up ({', '.join(running)} running); "
                   "`raftctl status` shows it, `raftctl down` stops it")


@main.command()
@click.option("--purge", is_flag=True, help="Also delete the run directory (data, logs, keys).")
@json_option()
@click.pass_context
def down(ctx: click.Context, purge: bool, as_json: bool) -> None:
    """Stop every node (SIGTERM, then SIGKILL after 10 s)."""
    c = cluster_of(ctx)
    stopped: list[str] = []
    if c.exists():
        stopped = c.stop_all()
        c.teardown_kernel()
    # Node processes no cluster.json names (it was deleted, or a raftctl
    # died before recording them) are this run directory's too.
    stopped += c.stop_orphans()
    if not c.exists() and not stopped and not (purge and c.run_dir.exists()):
        raise ClusterUnavailable(f"cluster {c.name} is not set up in {c.run_dir}")
    # Before --purge deletes anything: removing files through a live mount
    # would leave its server and the mount behind.
    _unmount_power_loss(c.run_dir)
    if purge:
        c.purge()
    if as_json:
        click.echo(render.dumps({"cluster": c.name, "stopped": stopped, "purged": purge}))
        return
    what = f"stopped {', '.join(stopped)}" if stopped else "no node was running"
    click.echo(f"cluster {c.name}: {what}" + ("; run directory removed" if purge else ""))


def _spinner(quiet: bool, text: str) -> Any:
    con = render.console(stderr=True)
    if quiet or not con.is_terminal:
        return contextlib.nullcontext()
    return con.status(text)


@main.command()
@click.argument("node", shell_complete=complete_nodes)
@click.option("--wait", "wait_s", type=float, default=3.0, show_default=True,
              help="Seconds to wait for NODE to take over.")
@json_option()
@click.pass_context
def transfer(ctx: click.Context, node: str, wait_s: float, as_json: bool) -> None:
    """Hand leadership to NODE (thesis §3.10, TimeoutNow)."""
    c = cluster_of(ctx)
    c.check_nodes([node])
    old = c.transfer(node)
    if old != node:
        deadline = time.monotonic() + wait_s
        while (now := c.leader()) != node:
            if time.monotonic() > deadline:
                raise CliError(f"{node} did not take over within {wait_s:g}s (leader: {now})")
            time.sleep(0.02)  # polling cadence; the condition is the new leader
    if as_json:
        click.echo(render.dumps({"from": old, "to": node, "moved": old != node}))
    elif old == node:
        click.echo(f"{node} already leads")
    else:
        click.echo(f"leadership moved from {old} to {node}")


# --- registration ------------------------------------------------------------------


process_cmd.register(main)
kv_cmd.register(main)
recipes_cmd.register_commands(main)
main.add_command(watch_cmd.watch_key)
main.add_command(logs_cmd.logs)
main.add_command(explain_cmd.explain)
faults_cmd.register(main)
status_cmd.register(main)


def run() -> None:
    """Entry point: one clear line on any unexpected error, never a traceback
    (set RAFTCTL_DEBUG=1 to see it)."""
    try:
        # The name is fixed, so `python -m raftctl` also answers completion
        # requests in _RAFTCTL_COMPLETE and shows `raftctl` in its usage.
        main(prog_name="raftctl")
    except Exception as e:  # the last line of defence for the operator
        if os.environ.get("RAFTCTL_DEBUG"):
            raise
        click.echo(f"raftctl: internal error: {type(e).__name__}: {e} "
                   "(RAFTCTL_DEBUG=1 shows the traceback)", err=True)
        sys.exit(Exit.INTERNAL)
