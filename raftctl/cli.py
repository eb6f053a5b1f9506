"""The `raftctl` command line: thin click commands that parse, call one
function and render. All printing happens here and in `raftctl/render.py`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click


def _version() -> str:
    try:
        return version("raftctl")
    except PackageNotFoundError:
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="raftctl")
def main() -> None:
    """Run, break and understand a Raft cluster on this machine."""


@main.command("version")
def version_cmd() -> None:
    """Print the version of raftctl."""
    click.echo(f"raftctl {_version()}")
