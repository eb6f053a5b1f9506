"""Chaos workloads and the history they record: the `Workload` interface,
what every workload is made from (`WorkloadSpec`, a shared `Pacer`), the
operation kinds, and the register workload (client threads writing unique
values, reading linearizably and doing compare-and-set on a few keys). A
workload talks to the cluster only through clients.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import msgspec

from chaos.linearizability import FAIL, OK, READ, UNKNOWN, WRITE, Operation
from chaos.values import DEFAULT_SIZES, SizeMix, decode_value, encode_value, parse_sizes
from node.client import ClientError, OutcomeUnknown, Unavailable, WriteResult

if TYPE_CHECKING:  # only a type: the raw-protocol client builds on this module
    from chaos.pipeline import Endpoint

# The workload's clients.
CHAOS_OP_TIMEOUT_MS = 3_000  # a workload operation gives up (unknown or failed) after this
# A register client's node gets this long to answer before the next is tried
# (the pipelined clients adapt theirs: chaos/pipeline.py).
CHAOS_ATTEMPT_TIMEOUT_MS = 500
CHAOS_OPS_PER_S = 300.0  # all clients of a run together start at most this many a second

# Operation kinds (`f` in the Jepsen history), besides read and write.
CAS = "cas"
TXN = "txn"  # a transaction of the txn workload (chaos/txn_workload.py)
RANGE = "range"  # a range read of the txn workload
APPEND = "append"  # add a unique element to the set held in a key
READ_SET = "read-set"  # a linearizable read of a set: every element, in order
OPEN_SESSION = "open-session"
CLOSE_SESSION = "close-session"
# What separates the elements of a set in its value.
SET_SEPARATOR = ","
# A failed compare-and-set that reports the value it found (node/state/kv.py).
CAS_FAILED = "cas_failed"

# The mix of operations a client draws from: (kind, weight).
_MIX: tuple[tuple[str, float], ...] = ((WRITE, 0.5), (READ, 0.3), (CAS, 0.2))


class KVClient(Protocol):
    """What the workload needs of a client (node.client.Client fits)."""

    def put(self, key: str, value: bytes) -> WriteResult: ...
    def get(self, key: str, *, node: str | None = None) -> bytes | None:
        """A linearizable read, at `node` first if given."""
        ...
    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult: ...
    def close(self) -> None: ...


ClientFactory = Callable[[], KVClient]


class RevKV(msgspec.Struct, frozen=True, array_like=True):
    """A key as a range read found it: its value's name and mod revision."""

    key: str
    value: str | None
    mod: int


class OpRecord(msgspec.Struct, kw_only=True):
    """One operation as a client saw it.

    `invoke`/`complete` are positions in one order shared by all clients
    (taken just before the request leaves and just after the answer
    arrived), `invoke_s`/`complete_s` seconds since the run started. A write
    or cas carries the value it wrote in `value`; a read the value it got; a
    cas also its `expected` value and, when it failed on a mismatch, the value
    it `found`. `outcome` is ok, fail (certainly no effect) or unknown. An
    acknowledged write carries the log `index` it was applied at. Values are
    the names of writes (`c3-17`); a padded one's byte `size` is kept beside.
    An append's `value` is its element, a set read's `elements` what it read
    (duplicates kept); writes of the raw-protocol clients carry their
    `session` and `seq` and how many `attempts` they sent, session
    operations the session.
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
    size: int | None = None
    elements: list[str] | None = None
    session: int | None = None
    seq: int | None = None
    attempts: int | None = None
    # The revisioned store (chaos/txn_workload.py): the store's revision a
    # transaction or range read answered (a watch event's own), what a
    # successful transaction wrote (key -> value name), and what a range
    # read or a failed transaction's read found.
    revision: int | None = None
    writes: dict[str, str] | None = None
    kvs: list[RevKV] | None = None
    scope: list[str] | None = None  # the keys a range read covers


def parse_set(raw: bytes | None) -> list[str]:
    """The elements of a set's value, in order, duplicates kept."""
    if not raw:
        return []
    return [e for e in raw.decode("utf-8", errors="replace").split(SET_SEPARATOR) if e]


class Pacer:
    """Spreads the operations of all of a run's clients to at most `rate` a
    second (0: no limit), so a run's load does not grow with its clients.
    Thread-safe; a stalled cluster builds up no burst."""

    def __init__(self, rate: float) -> None:
        self.gap_s = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """The monotonic time at which the caller may start its next operation."""
        now = time.monotonic()
        if not self.gap_s:
            return now
        with self._lock:
            t = max(self._next, now)
            self._next = t + self.gap_s
            return t

    def wait(self, stop: threading.Event) -> bool:
        """Wait for a turn; False if `stop` was set meanwhile."""
        # The pacing of the workload, not a synchronisation.
        return not stop.wait(max(0.0, self.reserve() - time.monotonic()))


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


def run_op(cl: KVClient, history: History, client: str, kind: str, key: str,
           value: str | None = None, expected: str | None = None, size: int = 0,
           expected_raw: bytes | None = None,
           node: str | None = None) -> tuple[OpRecord, bytes | None]:
    """Perform one operation and record what it really returned: the
    record, and the bytes a read or a failed cas found (what a later cas of
    this client expects). A write's value is `value` padded to `size` bytes;
    a cas expects `expected_raw` (the bytes of `expected`); a read goes to
    `node` first if given."""
    payload = b"" if value is None else encode_value(value, size)
    inv, inv_s = history.mark()
    outcome, got, found, error, index = OK, value, None, None, None
    raw: bytes | None = None
    try:
        if kind == READ:
            raw = cl.get(key, node=node)
            got = decode_value(raw)
        else:
            assert value is not None, "a write needs a value"
            res = (cl.put(key, payload) if kind == WRITE
                   else cl.cas(key, expected_raw, payload))
            if not res.ok:
                outcome, error = FAIL, res.error
                if res.error == CAS_FAILED:
                    raw = res.value
                    found = decode_value(raw)
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
                  index=index,
                  size=len(payload) if value is not None and len(payload) > len(value) else None)
    if kind == READ and outcome != OK:
        op.value = None
    history.add(op)
    return op, raw


def read_set_op(cl: KVClient, history: History, client: str, key: str) -> OpRecord:
    """A linearizable read of the set in `key`, recorded with its elements."""
    inv, inv_s = history.mark()
    outcome, error, elements = OK, None, None
    try:
        elements = parse_set(cl.get(key))
    except ClientError as e:
        outcome, error = FAIL, e.code
    except Exception as e:  # a client library failure: a read that failed has no effect
        outcome, error = FAIL, f"{type(e).__name__}: {e}"
    comp, comp_s = history.mark()
    op = OpRecord(client=client, kind=READ_SET, key=key, value=None, invoke=inv,
                  complete=comp, invoke_s=round(inv_s, 4), complete_s=round(comp_s, 4),
                  outcome=outcome, error=error, elements=elements)
    history.add(op)
    return op


@dataclass(frozen=True)
class WorkloadSpec:
    """What every workload is made from: a client factory (register
    clients), the raw-protocol `endpoint` (pipelined and short-lived
    clients; None where none is needed), the history to record into, the
    register `keys`, the `set_keys`, the `txn_keys` and the `lock_name`,
    how many clients, the seed, the `pacer` every client of the run
    shares, the value sizes of register writes, how many writes a
    pipelined client keeps in flight, and the nodes register reads go to."""

    factory: ClientFactory
    history: History
    keys: list[str]
    clients: int
    seed: int
    pacer: Pacer = field(default_factory=lambda: Pacer(0.0))
    set_keys: list[str] = field(default_factory=list)
    endpoint: Endpoint | None = None
    sizes: SizeMix = field(default_factory=lambda: parse_sizes(DEFAULT_SIZES))
    depth: int = 4
    txn_keys: list[str] = field(default_factory=list)
    lock_name: str = ""
    # Register reads go to one of these at random (followers serve reads
    # too, docs/PROTOCOL.md "Reads"), so the checks cover every node's;
    # empty: wherever the client goes (the leader it knows).
    read_nodes: list[str] = field(default_factory=list)


class Workload(Protocol):
    """A load that runs on its own threads and records every operation it
    performs in the spec's history; `errors` says what kept it from running."""

    errors: list[str]

    def start(self) -> None: ...

    def stop(self, timeout_s: float) -> bool:
        """Stop after the operations in flight; False if one is still
        running after `timeout_s` (its operation is missing then)."""
        ...


class Threads:
    """The threads of a workload: started together, stopped together."""

    def __init__(self, targets: list[tuple[str, Callable[[], None]]]) -> None:
        self.stopping = threading.Event()
        self._threads = [threading.Thread(target=fn, name=name, daemon=True)
                         for name, fn in targets]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask every thread to stop after its current operation and wait;
        False if one is still running after `timeout_s`."""
        self.stopping.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


class RegisterWorkload:
    """`clients` threads, each with its own client, doing seeded random
    writes, reads and compare-and-sets on `keys` until stopped. Every
    written value is unique (`<client>-<n>`, padded to a size of the size
    mix), so a read tells which write it saw."""

    def __init__(self, spec: WorkloadSpec) -> None:
        if spec.clients < 1 or not spec.keys:
            raise ValueError("a workload needs at least one client and one key")
        self.spec = spec
        self._threads = Threads([
            (f"chaos-register-{i + 1}",
             functools.partial(self._run, f"c{i + 1}", random.Random(spec.seed * 1000 + i)))
            for i in range(spec.clients)])
        self.errors: list[str] = []

    def start(self) -> None:
        self._threads.start()

    def stop(self, timeout_s: float) -> bool:
        return self._threads.stop(timeout_s)

    def _run(self, name: str, rng: random.Random) -> None:
        spec, stop = self.spec, self._threads.stopping
        try:
            cl = spec.factory()
        except Exception as e:  # reported in the verdict, not a crash of the run
            self.errors.append(f"{name}: cannot make a client: {e}")
            return
        kinds = [k for k, _ in _MIX]
        weights = [w for _, w in _MIX]
        # The value this client last saw for each key (its name and bytes):
        # what its cas expects.
        seen: dict[str, tuple[str | None, bytes | None]] = {}
        n = 0
        try:
            while spec.pacer.wait(stop):
                kind = rng.choices(kinds, weights)[0]
                key = rng.choice(spec.keys)
                if kind == READ:
                    node = rng.choice(spec.read_nodes) if spec.read_nodes else None
                    op, raw = run_op(cl, spec.history, name, READ, key, node=node)
                    if op.outcome == OK:
                        seen[key] = (op.value, raw)
                    continue
                n += 1
                value, size = f"{name}-{n}", spec.sizes.draw(rng)
                exp, exp_raw = seen.get(key, (None, None))
                op, raw = run_op(cl, spec.history, name, kind, key, value,
                                 expected=exp if kind == CAS else None, size=size,
                                 expected_raw=exp_raw)
                if op.outcome == OK:
                    seen[key] = (value, encode_value(value, size))
                elif op.error == CAS_FAILED:
                    seen[key] = (op.found, raw)
        finally:
            cl.close()


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
        if op.kind in (TXN, RANGE):
            out += _txn_ops(op)
            continue
        if op.kind not in (READ, WRITE, CAS):
            continue  # set and session operations: the set checks read those
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


def _txn_ops(op: OpRecord) -> list[Operation]:
    """A transaction or range read of the txn workload as register
    operations, one per key: a transaction that wrote is a write of each of
    its keys (at once), one whose compare failed a read of the key it read,
    one of unknown outcome a write of unknown outcome of each key; a range
    read is a read of every key it covers (absent: nil)."""
    ms_in, ms_out = int(op.invoke_s * 1000), int(op.complete_s * 1000)
    if op.outcome == UNKNOWN and op.writes:
        return [Operation(op.client, WRITE, k, v, op.invoke, None, UNKNOWN, ms_in, None, "ms")
                for k, v in op.writes.items()]
    if op.outcome != OK:
        return []
    if op.kind == TXN and op.writes:
        return [Operation(op.client, WRITE, k, v, op.invoke, op.complete, OK, ms_in, ms_out,
                          "ms") for k, v in op.writes.items()]
    found = {kv.key: kv.value for kv in op.kvs or []}
    keys = [op.key] if op.kind == TXN else list(op.scope or found)
    return [Operation(op.client, READ, k, found.get(k), op.invoke, op.complete, OK, ms_in,
                      ms_out, "ms") for k in keys]
