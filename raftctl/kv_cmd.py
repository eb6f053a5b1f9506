"""The key-value commands: put, del, cas and get. A client asks only the
nodes the supervisor knows to be up, the leader it last saw first, so a down
node never costs a command its attempt timeout."""

from __future__ import annotations

from typing import Any

import click

from node.client import Client, Unavailable, WriteResult
from node.config import MAX_VALUE_BYTES
from raftctl import render
from raftctl.cluster import Cluster, ClusterUnavailable
from raftctl.exits import CliError, Exit
from raftctl.options import cluster_of, complete_nodes, json_option, timeout_option

STDIN_VALUE = "-"


def _client(c: Cluster, timeout_s: float, only: str | None = None) -> Client:
    """A client of the nodes that can answer (only `only`, if given)."""
    c.load()  # says so if the cluster is not set up at all
    if only is not None:
        c.check_nodes([only])
        state = c.process_state(only)[1]
        if state != "running":
            how = "start" if state == "down" else "resume"
            raise ClusterUnavailable(f"node {only} is {state}, so it cannot answer; "
                                     f"`raftctl {how} {only}`, or leave out --node")
        addrs = {only: c.client_addrs()[only]}
    else:
        addrs = c.up_client_addrs()
    if not addrs:
        running = c.running_nodes()
        if running:
            raise ClusterUnavailable(f"every running node of cluster {c.name} is paused "
                                     f"({', '.join(running)}); `raftctl resume` resumes them")
        raise ClusterUnavailable(f"cluster {c.name} is not up (no node is running); start it "
                                 "with `raftctl up`")
    return Client(addrs, c.keys(), timeout_s=timeout_s, attempt_timeout_s=min(1.0, timeout_s))


def _remember(c: Cluster, cl: Client) -> None:
    if cl.leader is not None:
        c.remember_leader(cl.leader)


def _value(text: str) -> bytes:
    """VALUE as bytes; `-` reads it from stdin (a value too long for a
    command line, or binary)."""
    if text == STDIN_VALUE:
        data = click.get_binary_stream("stdin").read(MAX_VALUE_BYTES + 1)
        where = "the value read from stdin"
    else:
        data = text.encode()
        where = "VALUE"
    if len(data) > MAX_VALUE_BYTES:
        raise CliError(f"{where} is over {MAX_VALUE_BYTES:,} bytes, the most a value may be",
                       Exit.USAGE)
    return data


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8", errors="replace")


def _write_out(ctx: click.Context, key: str, res: WriteResult, as_json: bool, what: str) -> None:
    if as_json:
        click.echo(render.dumps({"key": key, "ok": res.ok, "index": res.index,
                                 "previous": _text(res.value), "error": res.error}))
        if not res.ok:
            ctx.exit(Exit.FAILED)
        return
    if res.ok:
        click.echo(f"OK {what} (index {res.index})")
        return
    if res.error == "cas_failed":
        cur = _text(res.value)
        raise CliError(f"cas failed: {key} is {'absent' if cur is None else repr(cur)}")
    raise CliError(f"{what} failed: {res.error}")


@click.command()
@click.argument("key")
@click.argument("value")
@timeout_option
@json_option()
@click.pass_context
def put(ctx: click.Context, key: str, value: str, timeout_s: float, as_json: bool) -> None:
    """Set KEY to VALUE (acknowledged once committed and applied). A VALUE
    of - reads the value from stdin."""
    c = cluster_of(ctx)
    data = _value(value)
    with _client(c, timeout_s) as cl:
        res = cl.put(key, data, prev=True)
        _remember(c, cl)
    _write_out(ctx, key, res, as_json, "put")


@click.command("del")
@click.argument("key")
@timeout_option
@json_option()
@click.pass_context
def delete(ctx: click.Context, key: str, timeout_s: float, as_json: bool) -> None:
    """Delete KEY."""
    c = cluster_of(ctx)
    with _client(c, timeout_s) as cl:
        res = cl.delete(key, prev=True)
        _remember(c, cl)
    _write_out(ctx, key, res, as_json, "delete")


@click.command()
@click.argument("key")
@click.argument("expected")
@click.argument("value")
@click.option("--absent", is_flag=True, help="Expect KEY to be absent (EXPECTED is ignored).")
@timeout_option
@json_option()
@click.pass_context
def cas(ctx: click.Context, key: str, expected: str, value: str, absent: bool,
        timeout_s: float, as_json: bool) -> None:
    """Set KEY to VALUE only if it is now EXPECTED (compare-and-set). A VALUE
    of - reads the value from stdin."""
    c = cluster_of(ctx)
    data = _value(value)
    with _client(c, timeout_s) as cl:
        res = cl.cas(key, None if absent else expected.encode(), data)
        _remember(c, cl)
    _write_out(ctx, key, res, as_json, "cas")


@click.command()
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read a node's local copy (may be out of date).")
@click.option("--node", shell_complete=complete_nodes,
              help="With --stale: read this node's copy, and fail if it cannot answer.")
@timeout_option
@json_option()
@click.pass_context
def get(ctx: click.Context, key: str, stale: bool, node: str | None, timeout_s: float,
        as_json: bool) -> None:
    """Print KEY's value: a linearizable read (ReadIndex) unless --stale.
    Exit 4 if KEY does not exist."""
    if node is not None and not stale:
        raise click.UsageError("--node needs --stale: only the leader answers a linearizable "
                               "read")
    c = cluster_of(ctx)
    with _client(c, timeout_s, only=node) as cl:
        try:
            value = cl.get(key, stale=stale)
        except Unavailable:
            if node is None:
                raise
            raise ClusterUnavailable(f"node {node} did not answer within {timeout_s:g}s") \
                from None
        if not stale:
            _remember(c, cl)
    out: dict[str, Any] = {"key": key, "found": value is not None, "value": _text(value)}
    if as_json:
        click.echo(render.dumps(out))
        if value is None:
            ctx.exit(Exit.NOT_FOUND)
        return
    if value is None:
        raise CliError(f"key {key} not found", Exit.NOT_FOUND)
    click.echo(_text(value))


def register(group: click.Group) -> None:
    for cmd in (put, delete, cas, get):
        group.add_command(cmd)
