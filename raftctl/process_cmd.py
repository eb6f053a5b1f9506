"""CLI commands on node processes: kill, stop, start, restart, pause and
resume (alias unpause). Each acts on every node it is given, goes on past a
node that fails, reports each node, and exits with the code of the first
failure (raftctl/exits.py)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import click

from raftctl import render
from raftctl.cluster import Cluster, ClusterError, ClusterUnavailable
from raftctl.exits import Exit, from_cluster_error
from raftctl.options import cluster_of, complete_nodes, json_option

# How long `start` waits for a new process to answer on its control socket.
START_ANSWER_TIMEOUT_S = 5.0

# (cluster, node, its process state: running | paused | down) -> (what was done, pid)
Action = Callable[[Cluster, str, str], tuple[str, int | None]]


@dataclass
class Outcome:
    """What one command did to one node (the `--json` item, docs/CLI.md)."""

    node: str
    ok: bool
    result: str
    pid: int | None = None
    error: str | None = None


def _kill(c: Cluster, n: str, state: str) -> tuple[str, int | None]:
    if state == "down":
        return "already down", None
    return "killed", c.kill(n)


def _stop(c: Cluster, n: str, state: str) -> tuple[str, int | None]:
    if state == "down":
        return "already down", None
    return "stopped", c.stop(n)


def _start(c: Cluster, n: str, state: str) -> tuple[str, int | None]:
    if state == "paused":
        return f"already running, but paused (`raftctl resume {n}`)", c.process_state(n)[0]
    if state == "running":
        return "already running", c.process_state(n)[0]
    return "started", _start_and_wait(c, n)


def _restart(c: Cluster, n: str, state: str) -> tuple[str, int | None]:
    if state != "down":
        c.stop(n)
    return "restarted", _start_and_wait(c, n)


def _pause(c: Cluster, n: str, state: str) -> tuple[str, int | None]:
    if state == "down":
        raise ClusterUnavailable(f"node {n} is down, so it cannot be paused; "
                                 f"`raftctl start {n}` starts it")
    if state == "paused":
        return "already paused", c.process_state(n)[0]
    return "paused", c.pause(n)


def _resume(c: Cluster, n: str, state: str) -> tuple[str, int | None]:
    if state == "down":
        raise ClusterUnavailable(f"node {n} is down, so it cannot be resumed; "
                                 f"`raftctl start {n}` starts it")
    if state == "running":
        return "not paused", c.process_state(n)[0]
    return "resumed", c.resume(n)


def _start_and_wait(c: Cluster, n: str) -> int:
    pid = c.start(n)
    deadline = time.monotonic() + START_ANSWER_TIMEOUT_S
    while c.node_status(n, timeout_s=0.5).status is None:
        if c.process_state(n)[1] == "down":
            raise ClusterError(exited_message(c, n))
        if time.monotonic() > deadline:
            raise ClusterError(f"node {n} (pid {pid}) started but does not answer; "
                               f"see `raftctl logs {n}`")
    return pid


def exited_message(c: Cluster, n: str) -> str:
    """Why node `n` exited right after starting, in its own words if it
    gave any (a refusal to start is printed on its stdout)."""
    log = c.run_dir / "nodes" / n / "stdout.log"
    said = c.exit_output(n)
    if not said:
        return f"node {n} exited right after starting; see {log}"
    return f"node {n} exited right after starting: {said}"


@dataclass(frozen=True)
class _Spec:
    """One process command: its action, which nodes --random picks from,
    and which it acts on when given no node (None: it needs to be told)."""

    help_text: str
    action: Action
    random_pool: frozenset[str]
    default: frozenset[str] | None = None


SPECS: dict[str, _Spec] = {
    "kill": _Spec("SIGKILL nodes: they die at once, losing nothing they acknowledged. "
                  "A node already down is reported, not an error.",
                  _kill, frozenset({"running", "paused"})),
    "stop": _Spec("SIGTERM nodes: a leader hands over leadership first.",
                  _stop, frozenset({"running", "paused"})),
    "start": _Spec("Start stopped or killed nodes; with no NODES, every node that is down.",
                   _start, frozenset({"down"}), default=frozenset({"running", "paused", "down"})),
    "restart": _Spec("Stop (SIGTERM) and start nodes again.",
                     _restart, frozenset({"running", "paused", "down"})),
    "pause": _Spec("SIGSTOP nodes: frozen, as if the machine hung.",
                   _pause, frozenset({"running"})),
    "resume": _Spec("SIGCONT paused nodes; with no NODES, every paused node. "
                    "Alias: unpause.", _resume, frozenset({"paused"}),
                    default=frozenset({"paused"})),
}


def _targets(c: Cluster, spec: _Spec, nodes: tuple[str, ...], leader: bool,
             rnd: bool) -> list[str]:
    chosen = sum([bool(nodes), leader, rnd])
    if chosen > 1 or (chosen == 0 and spec.default is None):
        raise click.UsageError("name the nodes, or give --leader or --random")
    if leader:
        lead = c.leader()
        if lead is None:
            raise ClusterUnavailable(f"cluster {c.name} has no leader right now")
        return [lead]
    if nodes:
        return c.check_nodes(list(dict.fromkeys(nodes)))
    pool = spec.random_pool if rnd else spec.default
    assert pool is not None
    ids = [n for n in c.node_ids() if c.process_state(n)[1] in pool]
    if rnd:
        if not ids:
            raise ClusterUnavailable(f"no node of cluster {c.name} is "
                                     f"{' or '.join(sorted(pool))}")
        return [random.choice(ids)]
    return ids


def _command(name: str, spec: _Spec) -> click.Command:
    @click.command(name, help=spec.help_text)
    @click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
    @click.option("--leader", is_flag=True, help="The node that leads now.")
    @click.option("--random", "rnd", is_flag=True, help="A random node this command can act on.")
    @json_option()
    @click.pass_context
    def cmd(ctx: click.Context, nodes: tuple[str, ...], leader: bool, rnd: bool,
            as_json: bool) -> None:
        c = cluster_of(ctx)
        targets = _targets(c, spec, nodes, leader, rnd)
        outcomes, code = act(c, spec.action, targets)
        if as_json:
            click.echo(render.dumps({"cluster": c.name, "action": name,
                                     "nodes": [asdict(o) for o in outcomes]}))
        else:
            if not outcomes:
                click.echo(f"cluster {c.name}: no node to {name}")
            for o in outcomes:
                if o.ok:
                    click.echo(f"{o.node}: {o.result}" + (f" (pid {o.pid})" if o.pid else ""))
                else:
                    click.echo(f"Error: {o.node}: {o.error}", err=True)
        if code != Exit.OK:
            ctx.exit(code)

    return cmd


def act(c: Cluster, action: Action, targets: list[str]) -> tuple[list[Outcome], int]:
    """Act on each target in turn, going on past failures; the outcomes and
    the exit code of the first failure (0 if none)."""
    out: list[Outcome] = []
    code = int(Exit.OK)
    for n in targets:
        try:
            result, pid = action(c, n, c.process_state(n)[1])
        except ClusterError as e:
            out.append(Outcome(n, False, "failed", error=str(e)))
            code = code or from_cluster_error(e).exit_code
            continue
        out.append(Outcome(n, True, result, pid))
    return out, code


def register(group: click.Group) -> None:
    for name, spec in SPECS.items():
        group.add_command(_command(name, spec))
    resume = group.commands["resume"]
    group.add_command(resume, "unpause")  # docker's word

