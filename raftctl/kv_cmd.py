"""The key-value commands: put, del, cas, get (of a key, a prefix, at a
revision), txn and compact-history. A client asks only the
nodes the supervisor knows to be up, the leader it last saw first, so a down
node never costs a command its attempt timeout."""

from __future__ import annotations

from typing import Any

import click

from node.client import Client, RangeResult, TxnResult, Unavailable, WriteResult
from node.config import MAX_VALUE_BYTES
from node.state.leases import MAX_KEYS_PER_LEASE
from node.state.sessions import KV, OpResult
from raftctl import render
from raftctl.cluster import Cluster, ClusterUnavailable
from raftctl.exits import CliError, Exit
from raftctl.options import cluster_of, complete_nodes, json_option, timeout_option
from raftctl.txn_syntax import TxnSyntaxError, parse_txn

STDIN_VALUE = "-"


def client_for(c: Cluster, timeout_s: float, only: str | None = None) -> Client:
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


def value_text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8", errors="replace")


def _write_out(ctx: click.Context, key: str, res: WriteResult, as_json: bool, what: str) -> None:
    if as_json:
        click.echo(render.dumps({"key": key, "ok": res.ok, "index": res.index,
                                 "previous": value_text(res.value), "error": res.error}))
        if not res.ok:
            ctx.exit(Exit.NOT_FOUND if res.error == "lease_not_found" else Exit.FAILED)
        return
    if res.ok:
        click.echo(f"OK {what} (index {res.index})")
        return
    if res.error == "lease_not_found":
        raise CliError(f"{what} failed: that lease does not exist (revoked, expired or never "
                       "granted); grant one with `raftctl lease grant TTL`", Exit.NOT_FOUND)
    if res.error == "lease_full":
        raise CliError(f"{what} failed: the lease holds {MAX_KEYS_PER_LEASE:,} keys, the most "
                       "one may; attach the key to another lease")
    if res.error == "cas_failed":
        cur = value_text(res.value)
        raise CliError(f"cas failed: {key} is {'absent' if cur is None else repr(cur)}")
    raise CliError(f"{what} failed: {res.error}")


@click.command()
@click.argument("key")
@click.argument("value")
@click.option("--lease", "lease_id", type=click.IntRange(1), default=None, metavar="ID",
              help="Attach KEY to lease ID (`raftctl lease grant`): it goes with the lease.")
@timeout_option
@json_option()
@click.pass_context
def put(ctx: click.Context, key: str, value: str, lease_id: int | None, timeout_s: float,
        as_json: bool) -> None:
    """Set KEY to VALUE (acknowledged once committed and applied). A VALUE
    of - reads the value from stdin. A put without --lease detaches KEY from
    any lease."""
    c = cluster_of(ctx)
    data = _value(value)
    with client_for(c, timeout_s) as cl:
        res = cl.put(key, data, prev=True, lease=lease_id or 0)
        _remember(c, cl)
    _write_out(ctx, key, res, as_json, "put")


@click.command("del")
@click.argument("key", required=False)
@click.option("--prefix", help="Delete every key that starts with PREFIX (\"\" is every key).")
@timeout_option
@json_option()
@click.pass_context
def delete(ctx: click.Context, key: str | None, prefix: str | None, timeout_s: float,
           as_json: bool) -> None:
    """Delete KEY, or every key under --prefix, at one revision."""
    _key_or_prefix(key, prefix)
    c = cluster_of(ctx)
    with client_for(c, timeout_s) as cl:
        if prefix is None:
            assert key is not None
            res = cl.delete(key, prev=True)
        else:
            deleted, revision = cl.delete_range(prefix, prefix=True)
        _remember(c, cl)
    if prefix is None:
        _write_out(ctx, key or "", res, as_json, "delete")
    elif as_json:
        click.echo(render.dumps({"prefix": prefix, "deleted": deleted, "revision": revision}))
    else:
        click.echo(f"OK deleted {deleted} key(s) under {prefix!r} (revision {revision})")


def _key_or_prefix(key: str | None, prefix: str | None) -> None:
    if (key is None) == (prefix is None):
        raise click.UsageError("give KEY or --prefix PREFIX (one of them)")


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
    with client_for(c, timeout_s) as cl:
        res = cl.cas(key, None if absent else expected.encode(), data)
        _remember(c, cl)
    _write_out(ctx, key, res, as_json, "cas")


@click.command()
@click.argument("key", required=False)
@click.option("--prefix", help="Every key that starts with PREFIX, in key order (\"\": all).")
@click.option("--rev", "revision", type=click.IntRange(0), default=0,
              help="Read as the store was at this revision (0: now); a compacted one fails "
                   "naming the oldest kept.")
@click.option("--limit", type=click.IntRange(0), default=0,
              help="With --prefix: at most this many keys (0: all).")
@click.option("--keys-only", is_flag=True, help="With --prefix: keys without their values.")
@click.option("--count-only", is_flag=True, help="With --prefix: only how many keys.")
@click.option("--stale", is_flag=True, help="Read a node's local copy (may be out of date).")
@click.option("--node", shell_complete=complete_nodes,
              help="With --stale: read this node's copy, and fail if it cannot answer.")
@timeout_option
@json_option()
@click.pass_context
def get(ctx: click.Context, key: str | None, prefix: str | None, revision: int, limit: int,
        keys_only: bool, count_only: bool, stale: bool, node: str | None, timeout_s: float,
        as_json: bool) -> None:
    """Print KEY's value, or the keys and values under --prefix: a
    linearizable read (ReadIndex) unless --stale. Exit 4 if KEY does not
    exist."""
    if node is not None and not stale:
        raise click.UsageError("--node needs --stale: only the leader answers a linearizable "
                               "read")
    _key_or_prefix(key, prefix)
    if prefix is None and (limit or keys_only or count_only):
        raise click.UsageError("--limit, --keys-only and --count-only go with --prefix")
    c = cluster_of(ctx)
    if prefix is not None or revision:
        with client_for(c, timeout_s, only=node) as cl:
            got = cl.range(prefix if prefix is not None else key or "", prefix=prefix is not None,
                           revision=revision, limit=limit, keys_only=keys_only,
                           count_only=count_only, stale=stale)
            if not stale:
                _remember(c, cl)
        _range_out(ctx, got, key, as_json, count_only)
        return
    assert key is not None
    with client_for(c, timeout_s, only=node) as cl:
        try:
            value = cl.get(key, stale=stale)
        except Unavailable:
            if node is None:
                raise
            raise ClusterUnavailable(f"node {node} did not answer within {timeout_s:g}s") \
                from None
        if not stale:
            _remember(c, cl)
    out: dict[str, Any] = {"key": key, "found": value is not None, "value": value_text(value)}
    if as_json:
        click.echo(render.dumps(out))
        if value is None:
            ctx.exit(Exit.NOT_FOUND)
        return
    if value is None:
        raise CliError(f"key {key} not found", Exit.NOT_FOUND)
    click.echo(value_text(value))


def _kv_json(kv: KV) -> dict[str, Any]:
    return {"key": kv.key, "value": value_text(kv.value), "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision, "version": kv.version}


def _op_json(r: OpResult) -> dict[str, Any]:
    """What one operation of a transaction answered, with values as text."""
    out: dict[str, Any] = {"op": r.op}
    if r.prev is not None:
        out["prev"] = _kv_json(r.prev)
    if r.kvs is not None:
        out["kvs"] = [_kv_json(kv) for kv in r.kvs]
    for name in ("deleted", "count", "more"):
        if getattr(r, name) is not None:
            out[name] = getattr(r, name)
    return out


def _range_out(ctx: click.Context, got: RangeResult, key: str | None, as_json: bool,
               count_only: bool) -> None:
    """A range read: a line per key (KEY<tab>VALUE), or KEY's value alone."""
    if as_json:
        click.echo(render.dumps({
            "revision": got.revision, "count": got.count, "more": got.more,
            "kvs": [_kv_json(kv) for kv in got.kvs]}))
        if key is not None and not got.kvs:
            ctx.exit(Exit.NOT_FOUND)
        return
    if key is not None:
        if not got.kvs:
            raise CliError(f"key {key} not found at that revision", Exit.NOT_FOUND)
        click.echo(value_text(got.kvs[0].value))
        return
    if count_only:
        click.echo(str(got.count))
        return
    for kv in got.kvs:
        click.echo(kv.key if kv.value is None else f"{kv.key}\t{value_text(kv.value)}")
    if got.more:
        click.echo(f"({got.count - len(got.kvs)} more; raise --limit to see them)", err=True)


@click.command()
@click.argument("source", type=click.File("r"), default="-")
@timeout_option
@json_option()
@click.pass_context
def txn(ctx: click.Context, source: Any, timeout_s: float, as_json: bool) -> None:
    """Run a transaction read from SOURCE (default stdin): `if` compares,
    then `then` operations if all hold, else the `else` ones, atomically, as
    one log entry. Exit 1 if the compares did not hold (the else branch ran).

    \b
      if value(config/mode) = blue      (value, version, create, mod; = != < >)
      then put config/mode green        (put KEY VALUE, del KEY, del --prefix P,
      else get config/mode               get KEY, get --prefix P [--limit N])

    JSON works too: {"compare": [...], "success": [...], "failure": [...]}
    (docs/CLI.md)."""
    try:
        compares, success, failure = parse_txn(source.read())
    except TxnSyntaxError as e:
        raise CliError(str(e), Exit.USAGE) from None
    c = cluster_of(ctx)
    with client_for(c, timeout_s) as cl:
        got = cl.txn(compares, success, failure)
        _remember(c, cl)
    _txn_out(ctx, got, as_json)


def _txn_out(ctx: click.Context, got: TxnResult, as_json: bool) -> None:
    if as_json:
        click.echo(render.dumps({
            "succeeded": got.succeeded, "revision": got.revision, "index": got.index,
            "responses": [_op_json(r) for r in got.responses]}))
    else:
        click.echo(f"{'SUCCESS' if got.succeeded else 'FAILURE'} (revision {got.revision})")
        for r in got.responses:
            if r.op == "range":
                for kv in r.kvs or []:
                    click.echo(kv.key if kv.value is None else f"{kv.key}\t{value_text(kv.value)}")
                if r.kvs is None:
                    click.echo(f"count {r.count}")
            elif r.deleted is not None:
                click.echo(f"{r.op}: {r.deleted} deleted")
            else:
                click.echo(f"{r.op}: OK")
    if not got.succeeded:
        ctx.exit(Exit.FAILED)


@click.command("compact-history")
@click.argument("revision", type=click.IntRange(1))
@timeout_option
@json_option()
@click.pass_context
def compact_history(ctx: click.Context, revision: int, timeout_s: float, as_json: bool) -> None:
    """Forget the history before REVISION on every replica: reads at and
    watches from older revisions then fail as compacted. The history is
    also compacted by itself past its retention (docs/STORAGE.md)."""
    c = cluster_of(ctx)
    with client_for(c, timeout_s) as cl:
        kept = cl.compact(revision)
        _remember(c, cl)
    if as_json:
        click.echo(render.dumps({"compacted": kept}))
    else:
        click.echo(f"OK the oldest revision kept is {kept}")


def register(group: click.Group) -> None:
    for cmd in (put, delete, cas, get, txn, compact_history):
        group.add_command(cmd)
