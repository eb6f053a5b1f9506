"""Exit codes of every `raftctl` command, decided here once, and the error a
command raises to end with one. The `--help` epilog and docs/CLI.md list the
same table; tests/test_cli_exits.py keeps the three equal."""

from __future__ import annotations

import json
import textwrap
from enum import IntEnum
from typing import IO, Any

import click

from node.client import ClientError, LeaseNotFound, OutcomeUnknown, Unavailable
from raftctl.cluster import ClusterError, ClusterUnavailable, UnknownNode

# ctx.meta key: set by every --json option, read when an error is shown.
JSON_META = "raftctl.json"


class Exit(IntEnum):
    """What a command's exit status means, the same for every command."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNAVAILABLE = 3
    NOT_FOUND = 4
    UNKNOWN_OUTCOME = 5
    INTERNAL = 70
    INTERRUPTED = 130


MEANINGS: dict[Exit, str] = {
    Exit.OK: "success",
    Exit.FAILED: "the command ran and failed: a check did not pass (chaos, sim, bench), "
                 "a cas did not match, the cluster refused (already up, transfer not done)",
    Exit.USAGE: "bad usage: an unknown option, node, event or value, or a request that "
                "cannot mean anything (a partition that cuts nothing)",
    Exit.UNAVAILABLE: "cluster unavailable: not set up, no node running, no leader, a named "
                      "node down, or no answer in time; a write that exits 3 was not applied",
    Exit.NOT_FOUND: "`get`: the key does not exist; `lease`, `put --lease`: the lease does "
                    "not exist",
    Exit.UNKNOWN_OUTCOME: "a write was sent but not answered in time: it may or may not "
                          "have been applied; read the key to know",
    Exit.INTERNAL: "a bug in raftctl (RAFTCTL_DEBUG=1 shows the traceback)",
    Exit.INTERRUPTED: "interrupted by Ctrl-C (not for `watch`, `logs -f` and a lease's "
                      "stream of renewals, which end so)",
}


def epilog() -> str:
    """The exit-code table for `raftctl --help` (wrapped here: click keeps a
    paragraph marked \\b as it is)."""
    rows = [textwrap.fill(MEANINGS[code], width=78, initial_indent=f"  {int(code):<5}",
                          subsequent_indent=" " * 7) for code in Exit]
    return "\b\nExit codes (docs/CLI.md):\n" + "\n".join(rows)


class CliError(click.ClickException):
    """A command's failure: one sentence on stderr, the exit code of `code`,
    and with --json also `{"error": {...}}` on stdout (docs/CLI.md)."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.exit_code = int(code)
        self.as_json = False

    def show(self, file: IO[Any] | None = None) -> None:
        if self.as_json:
            click.echo(error_json(self.message, self.exit_code))
        super().show(file)


def error_json(message: str, exit_code: int) -> str:
    """The `--json` shape of a failure."""
    try:
        reason = Exit(exit_code).name.lower()
    except ValueError:  # a code click chose, not one of ours
        reason = "failed"
    return json.dumps({"error": {"exit_code": exit_code, "reason": reason, "message": message}},
                      indent=2, sort_keys=True)


def from_cluster_error(e: ClusterError) -> CliError:
    if isinstance(e, UnknownNode):
        return CliError(str(e), Exit.USAGE)
    if isinstance(e, ClusterUnavailable):
        return CliError(str(e), Exit.UNAVAILABLE)
    return CliError(str(e), Exit.FAILED)


def from_client_error(e: ClientError) -> CliError:
    if isinstance(e, OutcomeUnknown):
        return CliError(f"{e} [{e.code}]", Exit.UNKNOWN_OUTCOME)
    if isinstance(e, Unavailable):
        return CliError(f"{e} [{e.code}]", Exit.UNAVAILABLE)
    if isinstance(e, LeaseNotFound):
        return CliError(f"{e} [{e.code}]", Exit.NOT_FOUND)
    if e.code == "bad_request":
        return CliError(f"the cluster refused the request: {e} [{e.code}]", Exit.USAGE)
    return CliError(f"{e} [{e.code}]", Exit.FAILED)
