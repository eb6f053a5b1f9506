"""The txn workload of `chaos run`: clients that write one or two keys
under one prefix in transactions (half of them conditional on the mod
revision they last saw) and read the whole prefix with range reads, and
watchers that watch the prefix from the run's first revision, reconnecting
now and then, while the nemesis kills the nodes they watch from.
chaos/revision_checks.py reads what they record.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from chaos.linearizability import FAIL, OK, UNKNOWN
from chaos.values import decode_value, encode_value
from chaos.workload import RANGE, TXN, OpRecord, RevKV, Threads, WorkloadSpec
from node.api_range import TxnCompare, TxnItem, TxnPut, TxnRange, WatchEvent
from node.client import ClientError, OutcomeUnknown, RangeResult, TxnResult

WATCH_EVENT = "watch-event"  # a change a watcher got
WATCH_START = "watch-start"  # a watcher's first revision
WATCH_END = "watch-end"  # how far a watcher got (`revision`), or why it stopped (`error`)

# Watchers per run; each reconnects after about this long on one watch.
WATCHERS = 2
WATCH_RECONNECT_S = 4.0
# After the writers stop, a watcher gets this long to catch up with the store.
WATCH_CATCH_UP_S = 10.0
_TXN_SHARE = 0.6


@runtime_checkable
class RevClient(Protocol):
    """What this workload needs of a client (node.client.Client fits)."""

    def txn(self, compare: list[TxnCompare], success: list[TxnItem] = ...,
            failure: list[TxnItem] = ...) -> TxnResult: ...
    def range(self, key: str, range_end: str | None = None, *, prefix: bool = False,
              revision: int = 0, limit: int = 0, keys_only: bool = False,
              count_only: bool = False, stale: bool = False,
              node: str | None = None) -> RangeResult: ...
    def watch(self, key: str, range_end: str | None = None, *, prefix: bool = False,
              start_revision: int = 0, once: bool = False, progress: bool = False,
              node: str | None = None) -> WatchLike: ...
    def close(self) -> None: ...

    @property
    def nodes(self) -> dict[str, str]: ...


class WatchLike(Protocol):
    revision: int
    node: str | None

    def __iter__(self) -> Iterator[WatchEvent]: ...
    def reconnect(self, node: str | None = None) -> None: ...
    def close(self) -> None: ...


class TxnWorkload:
    """Transactions and range reads on `spec.txn_keys`, and WATCHERS watchers."""

    def __init__(self, spec: WorkloadSpec) -> None:
        if spec.clients < 1 or not spec.txn_keys:
            raise ValueError("the txn workload needs at least one client and one key")
        self.spec = spec
        self.prefix = txn_prefix(spec.txn_keys)
        self._writers = Threads([
            (f"chaos-txn-{i + 1}",
             functools.partial(self._write, f"t{i + 1}", random.Random(spec.seed * 7919 + i)))
            for i in range(spec.clients)])
        self._watchers = Threads([
            (f"chaos-watch-{i + 1}",
             functools.partial(self._watch, f"w{i + 1}", random.Random(spec.seed * 104729 + i)))
            for i in range(WATCHERS)])
        self._start_revision = 0
        self._started = threading.Event()
        self.errors: list[str] = []

    def start(self) -> None:
        try:
            cl = self._client("start")
        except ClientError:
            return
        try:
            self._start_revision = cl.range(self.prefix, prefix=True, count_only=True).revision + 1
        except ClientError as e:
            self.errors.append(f"txn workload: cannot read the start revision: {e}")
            return
        finally:
            cl.close()
        self._writers.start()
        self._watchers.start()

    def stop(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s + WATCH_CATCH_UP_S
        ok = self._writers.stop(timeout_s)
        return self._watchers.stop(max(0.0, deadline - time.monotonic())) and ok

    def _client(self, name: str) -> RevClient:
        cl = self.spec.factory()
        if not isinstance(cl, RevClient):
            self.errors.append(f"{name}: the txn workload needs a client with txn, range "
                               "and watch")
            cl.close()
            raise ClientError("bad_client", "no txn")
        return cl

    def _write(self, name: str, rng: random.Random) -> None:
        spec, stop = self.spec, self._writers.stopping
        try:
            cl = self._client(name)
        except Exception as e:  # reported in the verdict, not a crash of the run
            self.errors.append(f"{name}: cannot make a client: {e}")
            return
        mods: dict[str, int] = {}
        n = 0
        try:
            while spec.pacer.wait(stop):
                if rng.random() >= _TXN_SHARE:
                    self._range(cl, name)
                    continue
                keys = rng.sample(spec.txn_keys, rng.choice((1, 2)))
                n += 1
                writes = {k: f"{name}-{n}{'ab'[j]}" for j, k in enumerate(keys)}
                compare = ([TxnCompare(keys[0], "mod", "=", mods.get(keys[0], 0))]
                           if rng.random() < 0.5 else [])
                op = self._txn(cl, name, keys[0], writes, compare)
                for kv in op.kvs or []:
                    mods[kv.key] = kv.mod
                if op.outcome == OK and op.writes and op.revision is not None:
                    mods.update(dict.fromkeys(op.writes, op.revision))
        finally:
            cl.close()

    def _txn(self, cl: RevClient, name: str, key: str, writes: dict[str, str],
             compare: list[TxnCompare]) -> OpRecord:
        h = self.spec.history
        inv, inv_s = h.mark()
        op = OpRecord(client=name, kind=TXN, key=key, value=writes[key], invoke=inv,
                      complete=0, invoke_s=round(inv_s, 4), complete_s=0.0, outcome=OK,
                      writes=writes)
        try:
            got = cl.txn(compare, [TxnPut(k, encode_value(v, 0)) for k, v in writes.items()],
                         [TxnRange(key)])
            op.revision = got.revision
            op.index = got.index
            if not got.succeeded:
                op.writes = None
                op.error = "compare_failed"
                found = (got.responses[0].kvs or []) if got.responses else []
                op.kvs = [RevKV(kv.key, decode_value(kv.value), kv.mod_revision) for kv in found]
        except OutcomeUnknown as e:
            op.outcome, op.error = UNKNOWN, e.code
        except ClientError as e:
            op.outcome, op.error = FAIL, e.code
        except Exception as e:  # a client library failure: the write may have happened
            op.outcome, op.error = UNKNOWN, f"{type(e).__name__}: {e}"
        comp, comp_s = h.mark()
        op.complete, op.complete_s = comp, round(comp_s, 4)
        h.add(op)
        return op

    def _range(self, cl: RevClient, name: str) -> None:
        h = self.spec.history
        inv, inv_s = h.mark()
        op = OpRecord(client=name, kind=RANGE, key=self.prefix, value=None, invoke=inv,
                      complete=0, invoke_s=round(inv_s, 4), complete_s=0.0, outcome=OK,
                      scope=list(self.spec.txn_keys))
        try:
            got = cl.range(self.prefix, prefix=True)
            op.revision = got.revision
            op.kvs = [RevKV(kv.key, decode_value(kv.value), kv.mod_revision) for kv in got.kvs]
        except ClientError as e:
            op.outcome, op.error = FAIL, e.code
        except Exception as e:  # a client library failure: a read that failed has no effect
            op.outcome, op.error = FAIL, f"{type(e).__name__}: {e}"
        comp, comp_s = h.mark()
        op.complete, op.complete_s = comp, round(comp_s, 4)
        h.add(op)

    # --- watchers ---------------------------------------------------------------

    def _note(self, name: str, kind: str, revision: int, error: str | None = None,
              ev: WatchEvent | None = None) -> None:
        h = self.spec.history
        pos, t = h.mark()
        h.add(OpRecord(client=name, kind=kind, key=ev.key if ev else self.prefix,
                       value=decode_value(ev.value) if ev else None, invoke=pos,
                       complete=pos, invoke_s=round(t, 4), complete_s=round(t, 4),
                       outcome=OK if error is None else FAIL, error=error,
                       revision=revision))

    def _watch(self, name: str, rng: random.Random) -> None:
        """Watch the prefix from the run's first revision until the writers
        stopped and this watcher caught up with the store, moving every few
        seconds to a node drawn at random (the client resumes there after
        the last change it delivered), as its node dies or not."""
        try:
            cl = self._client(name)
        except Exception as e:  # reported in the verdict, not a crash of the run
            self.errors.append(f"{name}: cannot make a client: {e}")
            return
        start = self._start_revision
        self._note(name, WATCH_START, start)
        stopping = self._watchers.stopping
        target: int | None = None
        at = start - 1
        nodes = sorted(cl.nodes)
        try:
            while target is None or at < target:
                w = cl.watch(self.prefix, prefix=True, start_revision=at + 1, progress=True,
                             node=rng.choice(nodes))
                move_at = time.monotonic() + WATCH_RECONNECT_S * (0.5 + rng.random())
                try:
                    for ev in w:
                        if ev.type != "progress":
                            self._note(name, WATCH_EVENT, ev.revision, ev=ev)
                        at = w.revision
                        if stopping.is_set() and target is None:
                            target = self._target(cl)
                        if target is None and stopping.is_set():
                            break  # the store cannot be read: the end notes it
                        if target is not None and at >= target:
                            break
                        if time.monotonic() >= move_at:
                            # A node cut off from the others serves a watch
                            # that stands still, as it should: move on.
                            w.reconnect(rng.choice(nodes))
                            move_at = time.monotonic() + WATCH_RECONNECT_S * (0.5 + rng.random())
                except ClientError as e:
                    self._note(name, WATCH_END, w.revision, error=e.code)
                    if e.code == "compacted":
                        return
                finally:
                    at = w.revision
                    w.close()
                if stopping.is_set() and target is None:
                    break
        finally:
            self._note(name, WATCH_END, at, error=None if target is not None and at >= target
                       else "stopped before catching up")
            cl.close()

    def _target(self, cl: RevClient) -> int | None:
        """The store's revision now, read linearizably: what a watcher must reach."""
        deadline = time.monotonic() + WATCH_CATCH_UP_S
        while time.monotonic() < deadline:
            try:
                return cl.range(self.prefix, prefix=True, count_only=True).revision
            except ClientError:
                continue
        return None


def txn_prefix(keys: list[str]) -> str:
    """The prefix every txn key starts with (`run/t0`, `run/t1` -> `run/t`)."""
    first = keys[0]
    return first[: len(first.rstrip("0123456789"))]
