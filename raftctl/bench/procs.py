"""The load generator over several processes (`bench write --procs N`):
each a fresh interpreter running loadgen.py's LoadGen on its share of the
clients, driven over a socket pair, their results merged."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import msgspec

from raftctl.bench.loadgen import (
    LOADGEN_CONNECT_TIMEOUT_MS,
    LoadError,
    LoadGen,
    LoadResult,
    LoadSpec,
)


def worker_main(fd: int) -> None:
    """A worker process (`python -m raftctl.bench.procs FD`): read its LoadSpec from
    the connection on FD, connect, report ready, run on "go", report the result."""
    # The parent decides when to stop; a Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        spec = conn.recv()
        if not isinstance(spec, LoadSpec):
            raise TypeError(f"expected a LoadSpec, got {type(spec).__name__}")
        gen = LoadGen(spec)
        try:
            answered = gen.connect()
            conn.send(("ready", sorted(answered)))
            if conn.recv() != "go":
                return
            conn.send(("result", gen.run(lambda ops: conn.send(("progress", ops)))))
        finally:
            gen.close()
    except Exception as e:  # reported to the parent, which raises LoadError
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def split_clients(clients: int, procs: int) -> list[int]:
    """`clients` spread over `procs` processes as evenly as possible."""
    procs = max(1, min(procs, clients))
    return [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]


def run_procs(spec: LoadSpec, procs: int, *, on_start: Callable[[], None] | None = None,
              on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """Run `spec` split over `procs` worker processes and merge their results.
    Workers connect first; `on_start` runs just before they are all told to go."""
    workers: list[tuple[subprocess.Popen[bytes], Connection]] = []
    try:
        for i, n in enumerate(split_clients(spec.clients, procs)):
            # A fresh interpreter, not multiprocessing: no fork of a ZeroMQ
            # context, and no re-import of whatever the parent's __main__ is.
            mine, theirs = socket.socketpair()
            with mine, theirs:
                fd = theirs.fileno()
                p = subprocess.Popen([sys.executable, "-m", "raftctl.bench.procs", str(fd)],
                                     pass_fds=[fd], stdin=subprocess.DEVNULL)
                conn = Connection(mine.detach())
            workers.append((p, conn))
            seed = None if spec.seed is None else spec.seed + i
            conn.send(msgspec.structs.replace(spec, clients=n, seed=seed))
        conns = [c for _, c in workers]
        for conn in conns:
            kind, detail = _recv(conn, LOADGEN_CONNECT_TIMEOUT_MS / 1000 + 30.0)
            if kind != "ready":
                raise LoadError(f"a load generator process failed: {detail}")
            if not detail:
                raise LoadError("no node answered the load generator; is the cluster up?")
        if on_start is not None:
            on_start()
        for conn in conns:
            conn.send("go")
        return _collect(conns, on_progress)
    finally:
        for p, conn in workers:
            conn.close()
            try:
                p.wait(2.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(2.0)


def _recv(conn: Connection, timeout_s: float) -> tuple[str, Any]:
    if not conn.poll(timeout_s):
        raise LoadError(f"a load generator process did not answer within {timeout_s:.0f}s")
    try:
        msg: tuple[str, Any] = conn.recv()
    except EOFError:
        raise LoadError("a load generator process exited unexpectedly") from None
    return msg


def _collect(conns: list[Connection], on_progress: Callable[[int], None] | None) -> LoadResult:
    ops = dict.fromkeys(range(len(conns)), 0)
    results: dict[int, LoadResult] = {}
    index = {id(c): i for i, c in enumerate(conns)}
    while len(results) < len(conns):
        for ready in wait([c for i, c in enumerate(conns) if i not in results], 0.1):
            assert isinstance(ready, Connection)
            i = index[id(ready)]
            kind, detail = _recv(ready, 0.0)
            if kind == "progress":
                ops[i] = detail
                if on_progress is not None:
                    on_progress(sum(ops.values()))
            elif kind == "result":
                results[i] = detail
            else:
                raise LoadError(f"a load generator process failed: {detail}")
    merged = results[0]
    for i in range(1, len(conns)):
        merged.merge(results[i])
    return merged


if __name__ == "__main__":
    # Run the copy of this module that the parent's pickles name, not __main__.
    from raftctl.bench import procs

    procs.worker_main(int(sys.argv[1]))
