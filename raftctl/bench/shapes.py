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
from collections.abc import Callable

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


class _Draw:
    """The next operation of a client: a random key, write or read."""

    def __init__(self, spec: LoadSpec, seed: int | None) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.value = self.rng.randbytes(spec.value_size)

    def next(self) -> tuple[str, bool]:
        s = self.spec
        key = f"{s.key_prefix}{self.rng.randrange(s.key_space)}"
        return key, not (s.read_ratio > 0.0 and self.rng.random() < s.read_ratio)


def _count(res: LoadResult, is_write: bool, started: float, failure: str | None) -> None:
    if failure is None:
        res.latency.record(int((time.monotonic() - started) * 1_000_000))
        if is_write:
            res.writes += 1
        else:
            res.reads += 1
    elif failure == "unknown":
        res.unknown += 1
    else:
        res.errors[failure] = res.errors.get(failure, 0) + 1


def run_pipelined(spec: LoadSpec, *, on_start: Callable[[], None] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """`spec.clients` tasks sharing one AsyncClient, each sending its next
    operation when the previous one ends, for `spec.duration_s`."""
    return asyncio.run(_pipelined(spec, on_start, on_progress))


async def _pipelined(spec: LoadSpec, on_start: Callable[[], None] | None,
                     on_progress: Callable[[int], None] | None) -> LoadResult:
    res = LoadResult()
    draw = _Draw(spec, spec.seed)
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
        t_cpu, thread_cpu = os.times(), time.thread_time()
        res.started = time.monotonic()
        end = res.started + spec.duration_s

        async def one() -> None:
            while time.monotonic() < end:
                key, is_write = draw.next()
                started = time.monotonic()
                failure: str | None = None
                try:
                    if is_write:
                        r = await c.put(key, draw.value)
                        failure = None if r.ok else r.error or "failed"
                    else:
                        await c.get(key)
                except OutcomeUnknown:
                    failure = "unknown"
                except ClientError as e:
                    failure = "timeout" if e.code == "unavailable" else e.code
                _count(res, is_write, started, failure)

        async def progress() -> None:
            while True:
                await asyncio.sleep(LOADGEN_PROGRESS_INTERVAL_MS / 1000)  # a reporting cadence
                if on_progress is not None:
                    on_progress(res.ops)

        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(one() for _ in range(spec.clients)))
        reporter.cancel()
        res.ended = time.monotonic()
        t_cpu2 = os.times()
        res.cpu_s = (t_cpu2.user - t_cpu.user) + (t_cpu2.system - t_cpu.system)
        res.loop_cpu_s = time.thread_time() - thread_cpu
        res.retries = c.stats.retries
    res.saturated_procs = int(res.saturated())
    return res


def run_per_connection(spec: LoadSpec, *, on_start: Callable[[], None] | None = None,
                       on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """`spec.clients` threads, each with its own Client (own session, own
    sockets), each sending one request and waiting for its answer."""
    n = spec.clients
    results = [LoadResult() for _ in range(n)]
    thread_cpu = [0.0] * n
    failed: list[str] = []
    ready = threading.Barrier(n + 1)
    go = threading.Event()
    window = [0.0, 0.0]  # the start and the end of the measured run

    def worker(i: int) -> None:
        res = results[i]
        draw = _Draw(spec, None if spec.seed is None else spec.seed + i)
        c = Client(spec.nodes, spec.keys, timeout_s=spec.op_timeout_s,
                   attempt_timeout_s=spec.attempt_timeout_s)
        try:
            try:
                c.open_session()
            except ClientError as e:
                failed.append(str(e))
            ready.wait()
            go.wait()
            if failed:
                return
            cpu0 = time.thread_time()
            while time.monotonic() < window[1]:
                key, is_write = draw.next()
                started = time.monotonic()
                failure: str | None = None
                try:
                    if is_write:
                        r = c.put(key, draw.value)
                        failure = None if r.ok else r.error or "failed"
                    else:
                        c.get(key)
                except OutcomeUnknown:
                    failure = "unknown"
                except ClientError as e:
                    failure = "timeout" if e.code == "unavailable" else e.code
                _count(res, is_write, started, failure)
            thread_cpu[i] = time.thread_time() - cpu0
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    if failed:
        go.set()
        for t in threads:
            t.join()
        raise LoadError(f"{len(failed)} of {n} clients could not open a session: {failed[0]}")
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
