"""Chaos workloads and the history they record: the `Workload` interface,
a registry of workloads by name, and the register workload (client threads
writing unique values, reading linearizably and doing compare-and-set on a
few keys). A workload talks to the cluster only through clients.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from chaos.linearizability import FAIL, OK, READ, UNKNOWN, WRITE, Operation
from node.client import ClientError, OutcomeUnknown, Unavailable, WriteResult

# The workload's clients.
CHAOS_OP_TIMEOUT_MS = 3_000  # a workload operation gives up (unknown or failed) after this
CHAOS_ATTEMPT_TIMEOUT_MS = 500  # one node gets this long to answer before the next is tried
CHAOS_CLIENT_OPS_PER_S = 20.0  # each workload client starts at most this many operations a second

CAS = "cas"
# A failed compare-and-set that reports the value it found (node/state/kv.py).
CAS_FAILED = "cas_failed"

# The mix of operations a client draws from: (kind, weight).
_MIX: tuple[tuple[str, float], ...] = ((WRITE, 0.5), (READ, 0.3), (CAS, 0.2))


class KVClient(Protocol):
    """What the workload needs of a client (node.client.Client fits)."""

    def put(self, key: str, value: bytes) -> WriteResult: ...
    def get(self, key: str) -> bytes | None: ...
    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult: ...
    def close(self) -> None: ...


ClientFactory = Callable[[], KVClient]


class OpRecord(msgspec.Struct, kw_only=True):
    """One operation as a client saw it.

    `invoke`/`complete` are positions in one order shared by all clients
    (taken just before the request leaves and just after the answer
    arrived), `invoke_s`/`complete_s` seconds since the run started. A write
    or cas carries the value it wrote in `value`; a read the value it got; a
    cas also its `expected` value and, when it failed on a mismatch, the value
    it `found`. `outcome` is ok, fail (certainly no effect) or unknown. An
    acknowledged write carries the log `index` it was applied at.
    """

    client: str
    kind: str
    key: str
    value: str | None
    invoke: int
    complete: int
    invoke_s: float
    complete_s: float
    outcome: str
    expected: str | None = None
    found: str | None = None
    error: str | None = None
    index: int | None = None


class History:
    """Thread-safe recorder of completed operations."""

    def __init__(self, t0: float | None = None) -> None:
        self._lock = threading.Lock()
        self._pos = 0
        self.t0 = time.monotonic() if t0 is None else t0
        self.ops: list[OpRecord] = []

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def mark(self) -> tuple[int, float]:
        """The next position in the shared order, and the time."""
        with self._lock:
            self._pos += 1
            return self._pos, self.now_s()

    def add(self, op: OpRecord) -> None:
        with self._lock:
            self.ops.append(op)


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8", errors="replace")


def run_op(cl: KVClient, history: History, client: str, kind: str, key: str,
           value: str | None = None, expected: str | None = None) -> OpRecord:
    """Perform one operation and record what it really returned."""
    inv, inv_s = history.mark()
    outcome, got, found, error, index = OK, value, None, None, None
    try:
        if kind == READ:
            got = _text(cl.get(key))
        else:
            assert value is not None, "a write needs a value"
            if kind == WRITE:
                res = cl.put(key, value.encode())
            else:
                res = cl.cas(key, None if expected is None else expected.encode(),
                             value.encode())
            if not res.ok:
                outcome, error = FAIL, res.error
                if res.error == CAS_FAILED:
                    found = _text(res.value)
            else:
                index = res.index
    except OutcomeUnknown as e:
        outcome, error = UNKNOWN, e.code
    except Unavailable as e:
        outcome, error = FAIL, e.code
    except ClientError as e:
        outcome, error = FAIL, e.code
    except Exception as e:  # a client library failure: we cannot know what happened
        outcome, error = (FAIL if kind == READ else UNKNOWN), f"{type(e).__name__}: {e}"
    comp, comp_s = history.mark()
    op = OpRecord(client=client, kind=kind, key=key, value=got if kind == READ else value,
                  invoke=inv, complete=comp, invoke_s=round(inv_s, 4),
                  complete_s=round(comp_s, 4), outcome=outcome,
                  expected=expected if kind == CAS else None, found=found, error=error,
                  index=index)
    if kind == READ and outcome != OK:
        op.value = None
    history.add(op)
    return op


@dataclass(frozen=True)
class WorkloadSpec:
    """What every workload is made from: a client factory, the history to
    record into, the keys to use, how many clients, the seed, and at most
    how many operations a second each client starts (0: no limit)."""

    factory: ClientFactory
    history: History
    keys: list[str]
    clients: int
    seed: int
    rate: float = 0.0


class Workload(Protocol):
    """A load that runs on its own threads and records every operation it
    performs in the spec's history; `errors` says what kept it from running."""

    errors: list[str]

    def start(self) -> None: ...

    def stop(self, timeout_s: float) -> bool:
        """Stop after the operations in flight; False if one is still
        running after `timeout_s` (its operation is missing then)."""
        ...


class RegisterWorkload:
    """`clients` threads, each with its own client, doing seeded random
    writes, reads and compare-and-sets on `keys` until stopped. Every
    written value is unique (`<client>-<n>`), so a read tells which write
    it saw."""

    def __init__(self, spec: WorkloadSpec) -> None:
        if spec.clients < 1 or not spec.keys:
            raise ValueError("a workload needs at least one client and one key")
        self.factory = spec.factory
        self.history = spec.history
        self.keys = spec.keys
        # Each client starts at most `rate` operations a second, which
        # bounds the history the checker must search (0: no limit).
        self.gap_s = 1.0 / spec.rate if spec.rate > 0 else 0.0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run,
                             args=(f"c{i + 1}", random.Random(spec.seed * 1000 + i)),
                             name=f"chaos-client-{i + 1}", daemon=True)
            for i in range(spec.clients)
        ]
        self.errors: list[str] = []

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask every client to stop after its current operation and wait;
        False if one is still running after `timeout_s`."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _run(self, name: str, rng: random.Random) -> None:
        try:
            cl = self.factory()
        except Exception as e:  # reported in the verdict, not a crash of the run
            self.errors.append(f"{name}: cannot make a client: {e}")
            return
        kinds = [k for k, _ in _MIX]
        weights = [w for _, w in _MIX]
        # The value this client last saw for each key: what its cas expects.
        seen: dict[str, str | None] = {}
        n = 0
        next_start = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.gap_s:
                    if self._stop.wait(max(0.0, next_start - time.monotonic())):
                        break  # the pacing of the workload, not a synchronisation
                    next_start = max(next_start + self.gap_s, time.monotonic())
                kind = rng.choices(kinds, weights)[0]
                key = rng.choice(self.keys)
                if kind == READ:
                    op = run_op(cl, self.history, name, READ, key)
                    if op.outcome == OK:
                        seen[key] = op.value
                else:
                    n += 1
                    value = f"{name}-{n}"
                    op = run_op(cl, self.history, name, kind, key, value,
                                expected=seen.get(key) if kind == CAS else None)
                    if op.outcome == OK:
                        seen[key] = value
                    elif op.error == CAS_FAILED:
                        seen[key] = op.found
        finally:
            cl.close()


# Workloads by name (`raftctl chaos run --workload`).
WORKLOADS: dict[str, Callable[[WorkloadSpec], Workload]] = {"register": RegisterWorkload}
DEFAULT_WORKLOAD = "register"


def checker_ops(ops: Iterable[OpRecord]) -> list[Operation]:
    """The history in the linearizability checker's terms (one register per
    key). A cas that succeeded is a write of its new value: the register
    model does not check its `expected` value (`cas_preconditions` does the
    part of that check that needs no search). A cas that failed on a mismatch
    read the value it `found`, atomically, so it is a read. Failed operations
    had no effect and are left out; an unknown write may have taken effect at
    any time after its invocation."""
    out: list[Operation] = []
    for op in ops:
        ms_in, ms_out = int(op.invoke_s * 1000), int(op.complete_s * 1000)
        if op.kind == READ:
            if op.outcome == OK:
                out.append(Operation(op.client, READ, op.key, op.value, op.invoke, op.complete,
                                     OK, ms_in, ms_out, "ms"))
        elif op.outcome == OK:
            out.append(Operation(op.client, WRITE, op.key, op.value, op.invoke, op.complete,
                                 OK, ms_in, ms_out, "ms"))
        elif op.outcome == UNKNOWN:
            out.append(Operation(op.client, WRITE, op.key, op.value, op.invoke, None,
                                 UNKNOWN, ms_in, None, "ms"))
        elif op.kind == CAS and op.error == CAS_FAILED:
            out.append(Operation(op.client, READ, op.key, op.found, op.invoke, op.complete,
                                 OK, ms_in, ms_out, "ms"))
    return out
