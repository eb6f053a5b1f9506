"""`raftctl lease`: grant, keep-alive, revoke, ttl and ls of leases
(docs/PROTOCOL.md, "Leases"); `raftctl put --lease ID` attaches a key.
Thin: each parses, calls node/client.py, renders."""

from __future__ import annotations

import contextlib
import time

import click

from node.client import LeaseInfo
from raftctl import render
from raftctl.kv_cmd import client_for
from raftctl.options import cluster_of, json_option, timeout_option

_lease_id = click.argument("lease_id", metavar="ID", type=click.IntRange(1))


@click.group()
def lease() -> None:
    """Leases: keys that go when their lease is revoked or expires (a lease
    expires when no keep-alive reached the leader for its TTL)."""


@lease.command()
@click.argument("ttl_s", metavar="TTL", type=click.FloatRange(min=0, min_open=True))
@timeout_option
@json_option()
@click.pass_context
def grant(ctx: click.Context, ttl_s: float, timeout_s: float, as_json: bool) -> None:
    """Grant a lease of TTL seconds and print its id."""
    with client_for(cluster_of(ctx), timeout_s) as cl:
        got = cl.lease_grant(ttl_s)
    if as_json:
        click.echo(render.dumps({"lease": got.id, "ttl_ms": got.ttl_ms}))
    else:
        click.echo(got.id)


@lease.command("keep-alive")
@_lease_id
@click.option("--once", is_flag=True, help="Renew once and exit.")
@timeout_option
@json_option("Print one JSON object per renewal.")
@click.pass_context
def keep_alive(ctx: click.Context, lease_id: int, once: bool, timeout_s: float,
               as_json: bool) -> None:
    """Renew lease ID every third of its TTL, a line per renewal, until
    Ctrl-C (or once, with --once). Fails when the lease is gone."""
    with client_for(cluster_of(ctx), timeout_s) as cl, contextlib.suppress(KeyboardInterrupt):
        # Ctrl-C is how a stream of renewals ends: exit 0, as `watch` does.
        while True:
            ttl_ms = cl.lease_keepalive(lease_id)
            if as_json:
                click.echo(render.dumps({"lease": lease_id, "ttl_ms": ttl_ms}))
            else:
                click.echo(f"lease {lease_id} kept alive, TTL {ttl_ms / 1000:g}s")
            if once:
                return
            # Pacing, not synchronisation: the next renewal is due then.
            time.sleep(ttl_ms / 3000)


@lease.command()
@_lease_id
@timeout_option
@json_option()
@click.pass_context
def revoke(ctx: click.Context, lease_id: int, timeout_s: float, as_json: bool) -> None:
    """Revoke lease ID: its keys are deleted at one revision."""
    with client_for(cluster_of(ctx), timeout_s) as cl:
        cl.lease_revoke(lease_id)
    if as_json:
        click.echo(render.dumps({"lease": lease_id, "revoked": True}))
    else:
        click.echo(f"OK lease {lease_id} revoked")


@lease.command()
@_lease_id
@click.option("--keys", is_flag=True, help="Also list the keys attached to the lease.")
@timeout_option
@json_option()
@click.pass_context
def ttl(ctx: click.Context, lease_id: int, keys: bool, timeout_s: float, as_json: bool) -> None:
    """Show what is left of lease ID's TTL (by the leader's clock)."""
    with client_for(cluster_of(ctx), timeout_s) as cl:
        info: LeaseInfo = cl.lease_ttl(lease_id, keys=keys)
    if as_json:
        out: dict[str, object] = {"lease": info.id, "ttl_ms": info.ttl_ms,
                                  "granted_ttl_ms": info.granted_ttl_ms}
        if keys:
            out["keys"] = info.keys
        click.echo(render.dumps(out))
        return
    click.echo(f"lease {info.id}: {info.ttl_ms / 1000:g}s left of {info.granted_ttl_ms / 1000:g}s")
    for k in info.keys:
        click.echo(k)


@lease.command("ls")
@timeout_option
@json_option()
@click.pass_context
def ls(ctx: click.Context, timeout_s: float, as_json: bool) -> None:
    """List the ids of every lease."""
    with client_for(cluster_of(ctx), timeout_s) as cl:
        ids = cl.lease_list()
    if as_json:
        click.echo(render.dumps({"leases": ids}))
    else:
        for i in ids:
            click.echo(i)
