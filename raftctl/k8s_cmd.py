"""`raftctl k8s manifest`: the Kubernetes objects for a cluster's config, as
JSON on stdout (kubectl reads JSON as it reads YAML). Thin: raftctl/k8s.py
builds them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from raftctl.cluster import load_config_file
from raftctl.exits import CliError, Exit
from raftctl.k8s import DEFAULT_STORAGE, manifest
from raftctl.options import cluster_of, json_option

# A StatefulSet's pods are NAME-ORDINAL, and a pod name is a DNS label (63).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")


@click.group()
def k8s() -> None:
    """Run the cluster on Kubernetes instead (docs/DEPLOY.md)."""


@k8s.command("manifest")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A cluster file (fresh keys are made) [default: this cluster's config and "
                   "keys].")
@click.option("--image", required=True,
              help="An image with raftctl installed (docs/DEPLOY.md shows one).")
@click.option("--name", help="Name of the Service, Secret and StatefulSet [default: the "
                             "cluster's name].")
@click.option("--namespace", default="default", show_default=True)
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True,
              help="Each node's data volume.")
@json_option("The manifest is JSON either way; with --json a failure is JSON too.")
@click.pass_context
def manifest_cmd(ctx: click.Context, config_file: Path | None, image: str, name: str | None,
                 namespace: str, storage: str, as_json: bool) -> None:
    """Print a headless Service, a Secret (keys and config) and a
    StatefulSet, one pod a node, ready once its node knows a leader:
    `raftctl k8s manifest --image IMG | kubectl apply -f -`."""
    from node.transport.zmq import generate_keys  # only here: it loads ZeroMQ

    c = cluster_of(ctx)
    if config_file is not None:
        cfg = load_config_file(config_file, name=name)
        keys = generate_keys()
    else:
        cfg, keys = c.config(), c.keys()
    name = name or cfg.name
    for what, value in (("--name", name), ("--namespace", namespace)):
        if not _NAME.fullmatch(value):
            raise CliError(f"{what} {value!r} must be lower-case letters, digits and '-', "
                           "starting and ending with a letter or digit (a DNS label)",
                           Exit.USAGE)
    click.echo(json.dumps(manifest(cfg, keys, name=name, namespace=namespace, image=image,
                                   storage=storage), indent=2))
