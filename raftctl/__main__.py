"""`python -m raftctl` runs the CLI."""

from raftctl.cli import run

run()
