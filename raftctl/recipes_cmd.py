"""`raftctl lock`, `elect`, `observe`, `register` and `discover`: the
coordination recipes of node/recipes/ from the shell. Commands parse, call
the recipe and render; the waiting, the leases and the watches are the
recipes'."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from types import FrameType

import click

from node.client import Client
from node.recipes import discovery, election
from node.recipes.lock import hold
from raftctl import render
from raftctl.exits import CliError, Exit
from raftctl.kv_cmd import client_for, value_text
from raftctl.options import cluster_of, json_option, timeout_option

# The environment a locked command gets: its fencing token and lock key.
TOKEN_ENV = "RAFTCTL_LOCK_TOKEN"
KEY_ENV = "RAFTCTL_LOCK_KEY"
# A command still running this long after SIGTERM (its lock lost) is killed.
TERM_GRACE_S = 5.0
# How often a running command's lease is looked at.
_LEASE_POLL_S = 0.1

ttl_option = click.option(
    "--ttl", "ttl_s", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
    help="Seconds the cluster keeps what this holds after this process stops renewing it "
         "(it dies or is cut off).")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a long-running command as Ctrl-C does, so it resigns
    or deregisters on the way out instead of leaving it to the TTL."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _name(kind: str, text: str) -> str:
    if not text or "/" in text:
        raise click.BadParameter(f"a {kind} name is a non-empty word without '/', not {text!r}")
    return text


def _ending(proc: subprocess.Popen[bytes]) -> int:
    """Terminate `proc` (SIGTERM, then SIGKILL after TERM_GRACE_S); its status."""
    proc.terminate()
    try:
        return proc.wait(TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _exit_code(status: int) -> int:
    """A child's status as a shell reports it: 128 + N for death by signal N."""
    return 128 - status if status < 0 else status


def run_locked(cl: Client, name: str, cmd: list[str], ttl_s: float,
               wait_s: float | None) -> tuple[int, int, bool]:
    """Run `cmd` while holding lock `name`: its exit code, the token, and
    whether the lease was lost while it ran (then it was terminated)."""
    with hold(cl, name, ttl_s, wait_s) as lock:
        assert lock.token is not None
        env = {**os.environ, TOKEN_ENV: str(lock.token), KEY_ENV: lock.key}
        try:
            proc = subprocess.Popen(cmd, env=env)
        except OSError as e:
            raise CliError(f"cannot run {cmd[0]}: {e.strerror or e}", Exit.FAILED) from None
        try:
            while proc.poll() is None:
                if lock.lease.lost.wait(_LEASE_POLL_S):
                    return _exit_code(_ending(proc)), lock.token, True
        except KeyboardInterrupt:
            _ending(proc)
            raise
        return _exit_code(proc.returncode), lock.token, False


@click.command("lock", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@ttl_option
@click.option("--wait", "wait_s", type=click.FloatRange(min=0.0), default=0.0,
              help="Give up after waiting this many seconds for the lock (0: wait as long "
                   "as it takes).")
@timeout_option
@json_option("After CMD exits, print one JSON line: the lock, its token and CMD's exit code.")
@click.pass_context
def lock_cmd(ctx: click.Context, name: str, cmd: tuple[str, ...], ttl_s: float, wait_s: float,
             timeout_s: float, as_json: bool) -> None:
    """Run CMD while holding the lock NAME: `raftctl lock NAME -- CMD ARGS`.
    Holders run one at a time, in the order they asked. CMD gets its
    fencing token in RAFTCTL_LOCK_TOKEN (it grows with every holder: pass
    it along with every write, and let the resource refuse a lower one)
    and the lock's key in RAFTCTL_LOCK_KEY. The lock is released when CMD
    exits (or this gets Ctrl-C or SIGTERM: CMD is terminated first), and
    --ttl seconds after this process dies. If the lock is lost
    while CMD runs (no renewal got through for --ttl seconds), CMD is
    terminated and this exits 1 saying so; otherwise it exits with CMD's code."""
    name = _name("lock", name)
    with _sigterm_as_interrupt(), client_for(cluster_of(ctx), timeout_s) as cl:
        code, token, lost = run_locked(cl, name, list(cmd), ttl_s, wait_s or None)
    if as_json and not lost:
        click.echo(render.dumps_line({"lock": name, "token": token, "exit_code": code}))
    if lost:
        raise CliError(f"lost the lock {name} (token {token}) while {cmd[0]} ran: its lease "
                       f"was not renewed for {ttl_s:g}s, so {cmd[0]} was terminated",
                       Exit.FAILED)
    ctx.exit(code)


@click.command("elect")
@click.argument("name")
@click.argument("value")
@ttl_option
@timeout_option
@json_option("Print JSON lines: when leader, and when resigned.")
@click.pass_context
def elect(ctx: click.Context, name: str, value: str, ttl_s: float, timeout_s: float,
          as_json: bool) -> None:
    """Campaign in election NAME with VALUE: wait until leader, say so, and
    lead until Ctrl-C or SIGTERM, then resign (the next candidate leads).
    Exits 1 if leadership is lost (no renewal got through for --ttl s)."""
    name = _name("election", name)
    with _sigterm_as_interrupt(), client_for(cluster_of(ctx), timeout_s) as cl, \
            cl.election(name, ttl_s) as e:
        try:
            rev = e.campaign(value.encode())
            _say(as_json, {"event": "elected", "election": name, "value": value,
                           "key": e.key, "revision": rev},
                 f"leader of {name} with {value!r} (revision {rev}); Ctrl-C resigns")
            e.lease.lost.wait()
        except KeyboardInterrupt:
            gone = e.resign()
            _say(as_json, {"event": "resigned", "election": name, "revision": gone},
                 f"resigned from {name}")
            return
    raise CliError(f"lost the leadership of {name}: the lease was not renewed for {ttl_s:g}s",
                   Exit.FAILED)


def _say(as_json: bool, data: dict[str, object], text: str) -> None:
    click.echo(render.dumps_line(data) if as_json else text)


@click.command("observe")
@click.argument("name")
@click.option("--count", type=click.IntRange(0), default=0,
              help="End after this many lines (0: run until Ctrl-C).")
@timeout_option
@json_option("Print each leader as one JSON line.")
@click.pass_context
def observe(ctx: click.Context, name: str, count: int, timeout_s: float,
            as_json: bool) -> None:
    """Print the leader of election NAME now, then again at every change of
    leader or of its value: `LEADER VALUE (revision R)`, or `NO LEADER`."""
    name = _name("election", name)
    shown = 0
    with _sigterm_as_interrupt(), client_for(cluster_of(ctx), timeout_s) as cl:
        try:
            for lead in election.observe(cl, name):
                if as_json:
                    click.echo(render.dumps_line(
                        {"election": name, "leader": None} if lead is None else
                        {"election": name, "leader": lead.key, "value": value_text(lead.value),
                         "create_revision": lead.create_revision, "revision": lead.revision}))
                else:
                    click.echo("NO LEADER" if lead is None else
                               f"LEADER {value_text(lead.value)} (revision {lead.revision})")
                shown += 1
                if count and shown >= count:
                    return
        except KeyboardInterrupt:
            return


@click.command("register")
@click.argument("service")
@click.argument("addr")
@ttl_option
@timeout_option
@json_option("Print JSON lines: when registered, and when deregistered.")
@click.pass_context
def register(ctx: click.Context, service: str, addr: str, ttl_s: float, timeout_s: float,
             as_json: bool) -> None:
    """Register ADDR as an instance of SERVICE until Ctrl-C or SIGTERM
    (then it is removed), or --ttl seconds after this process dies. Exits 1
    if the registration is lost (no renewal got through for --ttl s)."""
    service = _name("service", service)
    with _sigterm_as_interrupt(), client_for(cluster_of(ctx), timeout_s) as cl:
        try:
            with discovery.registered(cl, service, addr, ttl_s) as lease:
                _say(as_json, {"event": "registered", "service": service, "addr": addr,
                               "lease": lease.id, "ttl_s": ttl_s},
                     f"registered {addr} under {service} (lease {lease.id}, ttl {ttl_s:g}s); "
                     "Ctrl-C removes it")
                lease.lost.wait()
        except KeyboardInterrupt:
            _say(as_json, {"event": "deregistered", "service": service, "addr": addr},
                 f"removed {addr} from {service}")
            return
    raise CliError(f"lost the registration of {addr} under {service}: the lease was not "
                   f"renewed for {ttl_s:g}s", Exit.FAILED)


@click.command("discover")
@click.argument("service")
@click.option("--watch", "follow", is_flag=True,
              help="After the addresses, print `+ ADDR` and `- ADDR` as instances come and "
                   "go, until Ctrl-C.")
@timeout_option
@json_option("Print JSON: the addresses, and with --watch one line per change.")
@click.pass_context
def discover(ctx: click.Context, service: str, follow: bool, timeout_s: float,
             as_json: bool) -> None:
    """Print the addresses registered under SERVICE, one a line; with
    --watch, follow them from the revision read, missing and repeating
    nothing."""
    service = _name("service", service)
    with _sigterm_as_interrupt(), client_for(cluster_of(ctx), timeout_s) as cl:
        now = discovery.discover(cl, service)
        if as_json:
            click.echo(render.dumps_line({"service": service, "addrs": now.addrs,
                                          "revision": now.revision}))
        else:
            for a in now.addrs:
                click.echo(a)
        if not follow:
            return
        try:
            for ch in discovery.follow(cl, service, now):
                click.echo(render.dumps_line({"type": ch.type, "addr": ch.addr,
                                              "revision": ch.revision}) if as_json else
                           f"{'+' if ch.type == discovery.ADDED else '-'} {ch.addr}")
        except KeyboardInterrupt:
            return


def register_commands(group: click.Group) -> None:
    for cmd in (lock_cmd, elect, observe, register, discover):
        group.add_command(cmd)
