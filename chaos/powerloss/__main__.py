"""`python -m chaos.powerloss BACKING MOUNTPOINT --control SOCKET`: serve a
power-loss filesystem until SIGTERM (`PowerLossMount` starts and stops it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chaos.powerloss.server import serve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos.powerloss", description=__doc__)
    ap.add_argument("backing", type=Path, help="the directory that holds what is durable")
    ap.add_argument("mountpoint", type=Path, help="an empty directory to mount the filesystem on")
    ap.add_argument("--control", type=Path, required=True,
                    help="the Unix socket on which to answer `cut` and `status`")
    args = ap.parse_args(argv)
    try:
        serve(args.backing, args.mountpoint, args.control)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"powerloss: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
