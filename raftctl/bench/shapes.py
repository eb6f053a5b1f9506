"""The shapes of load `raftctl bench write --shape` runs beside the virtual
clients of loadgen.py, to show what an application gets from each client of
node/: `per-connection` is one node/client.py Client per client, each in a
thread of its own sending one request per frame and waiting for it;
`pipelined` is one AsyncClient (node/client_async.py) in this process shared
by as many tasks, its requests batched. Both return loadgen's LoadResult."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from node.client import Client, ClientError, OutcomeUnknown
from node.client_async import AsyncClient
from raftctl.bench.loadgen import (
    LOADGEN_CONNECT_TIMEOUT_MS,
    LOADGEN_PROGRESS_INTERVAL_MS,
    LoadError,
    LoadResult,
    LoadSpec,
)

SHAPES = ("virtual", "pipelined", "per-connection")


class Draw:
    """The next operation of a client: a random key, write or read."""

    def __init__(self, spec: LoadSpec, seed: int | None) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.value = self.rng.randbytes(spec.value_size)

    def next(self) -> tuple[str, bool]:
        s = self.spec
        key = f"{s.key_prefix}{self.rng.randrange(s.key_space)}"
        return key, not (s.read_ratio > 0.0 and self.rng.random() < s.read_ratio)


def read_node(spec: LoadSpec, i: int) -> str | None:
    """Where client `i` reads: with read_nodes "all" the clients are spread
    over the nodes; None: where the client's own choice goes (the leader it
    learned opening its session)."""
    if spec.read_nodes != "all":
        return None
    nodes = sorted(spec.nodes)
    return nodes[i % len(nodes)]


def count_outcome(res: LoadResult, is_write: bool, started: float, failure: str | None,
                  node: str | None = None) -> None:
    """Count one operation that began at `started` (time.monotonic()): its
    latency if it succeeded, else its failure ("unknown": a write's outcome);
    a read answered by a known `node` is counted for it too."""
    if failure is None:
        res.latency.record(int((time.monotonic() - started) * 1_000_000))
        if is_write:
            res.writes += 1
        else:
            res.reads += 1
            if node is not None:
                res.reads_by_node[node] = res.reads_by_node.get(node, 0) + 1
    elif failure == "unknown":
        res.unknown += 1
    else:
        res.errors[failure] = res.errors.get(failure, 0) + 1


def run_pipelined(spec: LoadSpec, *, on_start: Callable[[], None] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """`spec.clients` tasks sharing one AsyncClient, each sending its next
    operation when the previous one ends, for `spec.duration_s`."""
    return asyncio.run(_pipelined(spec, on_start, on_progress))


async def run_tasks(spec: LoadSpec, res: LoadResult,
                    one: Callable[[int, float], Awaitable[None]],
                    on_progress: Callable[[int], None] | None) -> None:
    """Run `one(i, end)` for each of `spec.clients` clients on this loop, each
    until `end` (time.monotonic()), with progress reports; record the run's
    window and this process's CPU in `res`."""
    t_cpu, thread_cpu = os.times(), time.thread_time()
    res.started = time.monotonic()
    end = res.started + spec.duration_s

    async def progress() -> None:
        while True:
            await asyncio.sleep(LOADGEN_PROGRESS_INTERVAL_MS / 1000)  # a reporting cadence
            if on_progress is not None:
                on_progress(res.ops)

    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(one(i, end) for i in range(spec.clients)))
    reporter.cancel()
    res.ended = time.monotonic()
    t_cpu2 = os.times()
    res.cpu_s = (t_cpu2.user - t_cpu.user) + (t_cpu2.system - t_cpu.system)
    res.loop_cpu_s = time.thread_time() - thread_cpu
    res.saturated_procs = int(res.saturated())


async def _pipelined(spec: LoadSpec, on_start: Callable[[], None] | None,
                     on_progress: Callable[[int], None] | None) -> LoadResult:
    res = LoadResult()
    draw = Draw(spec, spec.seed)
    async with AsyncClient(spec.nodes, spec.keys, timeout_s=spec.op_timeout_s,
                           attempt_timeout_s=spec.attempt_timeout_s) as c:
        try:
            # Before the clock starts: the CURVE handshakes and the session.
            await asyncio.wait_for(asyncio.gather(*(c.ping(n) for n in spec.nodes),
                                                  return_exceptions=True),
                                   LOADGEN_CONNECT_TIMEOUT_MS / 1000)
            await c.open_session()
        except (ClientError, TimeoutError) as e:
            raise LoadError(f"the pipelined client could not start: {e}") from None
        if on_start is not None:
            on_start()

        async def one(i: int, end: float) -> None:
            at = read_node(spec, i)
            while time.monotonic() < end:
                key, is_write = draw.next()
                started = time.monotonic()
                failure: str | None = None
                try:
                    if is_write:
                        r = await c.put(key, draw.value)
                        failure = None if r.ok else r.error or "failed"
                    else:
                        await c.get(key, node=at)
                except OutcomeUnknown:
                    failure = "unknown"
                except ClientError as e:
                    failure = "timeout" if e.code == "unavailable" else e.code
                count_outcome(res, is_write, started, failure, None if is_write else at)

        await run_tasks(spec, res, one, on_progress)
        res.retries = c.stats.retries
    return res


class ThreadClient(Protocol):
    """One client of a thread: runs one operation at a time."""

    def op(self, key: str, is_write: bool) -> tuple[str | None, str | None]:
        """Run it; return its failure (None: it succeeded) and the node that
        answered a read, if known."""

    def close(self) -> None: ...


def run_threads(spec: LoadSpec, open_client: Callable[[int, bytes], ThreadClient], *,
                on_start: Callable[[], None] | None = None,
                on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """`spec.clients` threads, each with the client `open_client(i, value)`
    made before the clock starts, sending one operation and waiting for it
    until `spec.duration_s` has passed. A client that cannot be made fails
    the run before it starts."""
    n = spec.clients
    results = [LoadResult() for _ in range(n)]
    thread_cpu = [0.0] * n
    failed: list[str] = []
    ready = threading.Barrier(n + 1)
    go = threading.Event()
    window = [0.0, 0.0]  # the start and the end of the measured run

    def worker(i: int) -> None:
        res = results[i]
        draw = Draw(spec, None if spec.seed is None else spec.seed + i)
        c: ThreadClient | None = None
        try:
            try:
                c = open_client(i, draw.value)
            except Exception as e:  # any failure: a thread that died here never reaches the barrier
                failed.append(str(e) or type(e).__name__)
            ready.wait()
            go.wait()
            if c is None or failed:
                return
            cpu0 = time.thread_time()
            while time.monotonic() < window[1]:
                key, is_write = draw.next()
                started = time.monotonic()
                failure, node = c.op(key, is_write)
                count_outcome(res, is_write, started, failure, node)
            thread_cpu[i] = time.thread_time() - cpu0
        finally:
            if c is not None:
                c.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    if failed:
        go.set()
        for t in threads:
            t.join()
        raise LoadError(f"{len(failed)} of {n} clients could not start: {failed[0]}")
    if on_start is not None:
        on_start()
    t_cpu = os.times()
    window[0] = time.monotonic()
    window[1] = window[0] + spec.duration_s
    go.set()
    every = LOADGEN_PROGRESS_INTERVAL_MS / 1000
    for t in threads:
        while t.is_alive():
            t.join(every)
            if on_progress is not None:
                on_progress(sum(r.ops for r in results))
    merged = LoadResult(started=window[0], ended=time.monotonic())
    t_cpu2 = os.times()
    for r in results:
        r.started, r.ended = merged.started, merged.ended
        merged.merge(r)
    merged.procs = 1
    merged.cpu_s = (t_cpu2.user - t_cpu.user) + (t_cpu2.system - t_cpu.system)
    # The threads share one interpreter lock: together they are one loop.
    merged.loop_cpu_s = sum(thread_cpu)
    merged.saturated_procs = int(merged.saturated())
    return merged


class _SessionClient:
    """A node.client.Client with its own session and sockets."""

    def __init__(self, spec: LoadSpec, i: int, value: bytes) -> None:
        self.value = value
        self.at = read_node(spec, i)
        self.c = Client(spec.nodes, spec.keys, timeout_s=spec.op_timeout_s,
                        attempt_timeout_s=spec.attempt_timeout_s)
        try:
            self.c.open_session()
        except ClientError:
            self.c.close()
            raise

    def op(self, key: str, is_write: bool) -> tuple[str | None, str | None]:
        try:
            if is_write:
                r = self.c.put(key, self.value)
                return (None if r.ok else r.error or "failed"), None
            self.c.get(key, node=self.at)
            return None, self.at
        except OutcomeUnknown:
            return "unknown", None
        except ClientError as e:
            return ("timeout" if e.code == "unavailable" else e.code), None

    def close(self) -> None:
        self.c.close()


def run_per_connection(spec: LoadSpec, *, on_start: Callable[[], None] | None = None,
                       on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """`spec.clients` threads, each with its own Client (own session, own
    sockets), each sending one request and waiting for its answer."""
    return run_threads(spec, lambda i, value: _SessionClient(spec, i, value),
                       on_start=on_start, on_progress=on_progress)
