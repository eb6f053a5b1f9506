"""`python -m node --run-dir DIR --id n1`: run one node of the cluster whose
`cluster.json` is in DIR, until SIGTERM or the control command `shutdown`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO, cast

# structlog imports rich for pretty tracebacks whenever it is installed; a
# node only writes JSON, and rich adds a few hundred ms to every node start
# (what `raftctl up` and every restart wait for). An absent module makes
# structlog fall back to plain tracebacks.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # None marks "not importable"

from node.config import node_dir  # noqa: E402 - must come after the line above
from node.logs import LogFile  # noqa: E402
from node.membership_mark import DataLost  # noqa: E402
from node.private_files import open_private, private_dir  # noqa: E402
from node.runner import NodeRunner  # noqa: E402
from node.storage import StorageError  # noqa: E402
from node.transport.zmq import KeysError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    # Whatever the node creates is its owner's alone (docs/SECURITY.md);
    # the files it makes also say so themselves (node/private_files.py).
    os.umask(0o077)
    ap = argparse.ArgumentParser(prog="python -m node", description=__doc__)
    ap.add_argument("--run-dir", required=True, type=Path, help="the cluster's run directory")
    ap.add_argument("--id", required=True, help="this node's id in cluster.json")
    ap.add_argument("--force-rejoin", action="store_true",
                    help="start as a voter even though this node lost its data (unsafe)")
    args = ap.parse_args(argv)
    run_dir: Path = args.run_dir.resolve()
    log_path = node_dir(run_dir, args.id) / "node.log"
    private_dir(log_path.parent)
    log_file = LogFile(open_private(log_path, os.O_WRONLY | os.O_APPEND))
    # A LogFile is all of TextIO that a logger uses (write, flush).
    log_stream = cast(TextIO, log_file)
    with log_file:
        try:
            runner = NodeRunner(run_dir, args.id, log_stream, force_rejoin=args.force_rejoin)
        except KeyError as e:
            print(f"node: {e.args[0]}", file=sys.stderr)
            return 2
        except KeysError as e:
            print(f"node {args.id}: cannot start: {e}", file=sys.stderr)
            return 1
        except (StorageError, DataLost) as e:
            print(f"node {args.id}: cannot start: {e}", file=sys.stderr)
            return 1
        runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
