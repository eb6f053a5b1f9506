"""The lock workload of `chaos run`: holders that take the lock (node/
recipes/lock.py), write their fencing token to one key with the guarded
write and release; campaigners that win and give up an election; and a
recorder per prefix that watches the lock's and the election's keys from
the run's first revision, for chaos/lock_checks.py. Besides the nemesis's
faults of the nodes, holders and leaders pause themselves past their
lease's TTL now and then: the case fencing exists for.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import threading
import time
from collections.abc import Callable

from chaos.linearizability import FAIL, OK, UNKNOWN
from chaos.lock_checks import (
    FENCED,
    LEADER,
    LOCK_ACQUIRE,
    LOCK_WRITE,
    RECIPE_EVENT,
    RECIPE_WATCH_END,
)
from chaos.workload import OpRecord, Threads, WorkloadSpec
from node.api_range import TxnPut
from node.client import Client, ClientError, LeaseNotFound, OutcomeUnknown
from node.recipes.election import ELECTION_PREFIX, Election
from node.recipes.lock import LOCK_PREFIX, Lock
from node.recipes.turns import enqueue

# The leases of holders and campaigners, short so that a pause outlives one.
LOCK_TTL_S = 2.0
# A holder or leader pauses this often, for this many TTLs.
PAUSE_SHARE = 0.25
PAUSE_TTLS = 1.5
# How long a holder waits in the queue before it gives its place up.
ACQUIRE_TIMEOUT_S = 5.0
CAMPAIGNERS = 2
# After the holders stop, a recorder gets this long to reach the store's revision.
RECORD_CATCH_UP_S = 10.0
# Test-only bugs put into the workload, comma-separated, so a test can see
# the checks flag a run: `unfenced` holders write with a plain put (a paused
# holder's late write lands); `eager_leader` campaigners claim leadership as
# soon as their key is made, without waiting for the ones ahead.
UNSAFE_LOCK_ENV = "RAFTCTL_TEST_UNSAFE_LOCK"
UNFENCED = "unfenced"
EAGER_LEADER = "eager_leader"


class PausableLease:
    """A lease kept alive from a thread of its own, as node.client.KeptLease
    does, which can be paused: a holder's whole process stopped (a GC pause,
    a stopped VM) stops its keep-alives too, and that is what it simulates."""

    def __init__(self, spec: WorkloadSpec, client: Client, ttl_s: float) -> None:
        self.id = client.lease_grant(ttl_s).id
        self.lost = threading.Event()
        self._ttl_s = ttl_s
        self._spec = spec
        self._paused = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="chaos-lease", daemon=True)
        self._thread.start()

    def pause(self, seconds: float) -> None:
        """Stop keeping the lease alive and block the caller for `seconds`."""
        self._paused.set()
        time.sleep(seconds)  # the fault itself: the holder's process stands still
        self._paused.clear()

    def close(self, client: Client) -> None:
        self._done.set()
        self._thread.join()
        # Gone already, or the TTL removes it a moment later.
        with contextlib.suppress(ClientError):
            client.lease_revoke(self.id)

    def _keep(self) -> None:
        cl = self._spec.factory()
        assert isinstance(cl, Client)
        last_ok = time.monotonic()
        try:
            while not self._done.wait(self._ttl_s / 3):
                if self._paused.is_set():
                    continue
                try:
                    cl.lease_keepalive(self.id)
                    last_ok = time.monotonic()
                except LeaseNotFound:
                    self.lost.set()
                    return
                except ClientError:
                    if time.monotonic() - last_ok >= self._ttl_s:
                        self.lost.set()
                        return
        finally:
            cl.close()


class LockWorkload:
    """`spec.clients` holders of lock `spec.lock_name`, CAMPAIGNERS
    candidates in election `spec.lock_name`, and the two recorders."""

    def __init__(self, spec: WorkloadSpec) -> None:
        if spec.clients < 1 or not spec.lock_name:
            raise ValueError("the lock workload needs at least one client and a lock name")
        self.spec = spec
        self.lock_prefix = f"{LOCK_PREFIX}{spec.lock_name}/"
        self.election_prefix = f"{ELECTION_PREFIX}{spec.lock_name}/"
        self.guarded_key = f"{spec.lock_name}/fenced"
        unsafe = os.environ.get(UNSAFE_LOCK_ENV, "").split(",")
        self.unfenced = UNFENCED in unsafe
        self.eager_leader = EAGER_LEADER in unsafe
        actors: list[tuple[str, Callable[[], None]]] = [
            (f"chaos-lock-{i + 1}", functools.partial(
                self._hold, f"l{i + 1}", random.Random(spec.seed * 7907 + i)))
            for i in range(spec.clients)]
        actors += [(f"chaos-elect-{i + 1}", functools.partial(
            self._campaign, f"e{i + 1}", random.Random(spec.seed * 6007 + i)))
            for i in range(CAMPAIGNERS)]
        self._actors = Threads(actors)
        self._recorders = Threads([
            (f"chaos-record-{p}", functools.partial(self._record, p))
            for p in (self.lock_prefix, self.election_prefix)])
        self._start_revision = 0
        self.errors: list[str] = []

    def start(self) -> None:
        cl = self._client("start")
        if cl is None:
            return
        try:
            self._start_revision = cl.range(self.lock_prefix, count_only=True).revision + 1
        except ClientError as e:
            self.errors.append(f"lock workload: cannot read the start revision: {e}")
            return
        finally:
            cl.close()
        self._recorders.start()
        self._actors.start()

    def stop(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s + RECORD_CATCH_UP_S
        # A paused actor wakes only after its pause.
        ok = self._actors.stop(timeout_s + LOCK_TTL_S * PAUSE_TTLS)
        return self._recorders.stop(max(0.0, deadline - time.monotonic())) and ok

    def _client(self, name: str) -> Client | None:
        try:
            cl = self.spec.factory()
        except Exception as e:  # reported in the verdict, not a crash of the run
            self.errors.append(f"{name}: cannot make a client: {e}")
            return None
        if not isinstance(cl, Client):
            self.errors.append(f"{name}: the lock workload needs node.client.Client")
            cl.close()
            return None
        return cl

    def _op(self, client: str, kind: str, key: str, value: str | None) -> OpRecord:
        inv, inv_s = self.spec.history.mark()
        return OpRecord(client=client, kind=kind, key=key, value=value, invoke=inv,
                        complete=inv, invoke_s=round(inv_s, 4), complete_s=round(inv_s, 4),
                        outcome=OK)

    def _done(self, op: OpRecord) -> None:
        comp, comp_s = self.spec.history.mark()
        op.complete, op.complete_s = comp, round(comp_s, 4)
        self.spec.history.add(op)

    # --- holders ----------------------------------------------------------------

    def _hold(self, name: str, rng: random.Random) -> None:
        cl = self._client(name)
        if cl is None:
            return
        stop = self._actors.stopping
        try:
            while self.spec.pacer.wait(stop):
                try:
                    self._hold_once(cl, name, rng)
                except ClientError:
                    continue  # the cluster is down or the lease went: try again
                except Exception as e:  # a bug of the recipe: in the verdict, not a crash
                    self.errors.append(f"{name}: {type(e).__name__}: {e}")
                    return
        finally:
            cl.close()

    def _hold_once(self, cl: Client, name: str, rng: random.Random) -> None:
        lease = PausableLease(self.spec, cl, LOCK_TTL_S)
        try:
            lock = Lock(cl, self.spec.lock_name, lease)
            token = lock.acquire(ACQUIRE_TIMEOUT_S)
            got = self._op(name, LOCK_ACQUIRE, lock.key, str(token))
            got.revision = lock.granted_revision
            self._done(got)
            if rng.random() < PAUSE_SHARE:
                lease.pause(LOCK_TTL_S * PAUSE_TTLS)
            self._write(cl, name, lock, token)
            lock.release()
        finally:
            lease.close(cl)

    def _write(self, cl: Client, name: str, lock: Lock, token: int) -> None:
        op = self._op(name, LOCK_WRITE, self.guarded_key, str(token))
        try:
            if self.unfenced:
                op.revision = cl.txn([], [TxnPut(self.guarded_key, str(token).encode())]).revision
            else:
                fw = lock.guarded_put(self.guarded_key, str(token).encode())
                op.revision = fw.revision
                if not fw.accepted:
                    op.outcome, op.error = FAIL, FENCED
        except OutcomeUnknown as e:
            op.outcome, op.error = UNKNOWN, e.code
        except ClientError as e:
            op.outcome, op.error = FAIL, e.code
        self._done(op)

    # --- campaigners ---------------------------------------------------------------

    def _campaign(self, name: str, rng: random.Random) -> None:
        cl = self._client(name)
        if cl is None:
            return
        stop = self._actors.stopping
        try:
            while not stop.is_set():
                lease: PausableLease | None = None
                try:
                    lease = PausableLease(self.spec, cl, LOCK_TTL_S)
                    e = Election(cl, self.spec.lock_name, lease)
                    became = (enqueue(cl, e.key, name.encode(), lease)[0] if self.eager_leader
                              else e.campaign(name.encode(), ACQUIRE_TIMEOUT_S))
                    op = self._op(name, LEADER, e.key, self.spec.lock_name)
                    op.revision = became
                    self._done(op)
                    if rng.random() < PAUSE_SHARE:
                        lease.pause(LOCK_TTL_S * PAUSE_TTLS)
                    else:
                        stop.wait(rng.uniform(0.1, 0.5))  # a term's length, not a sync
                    if self.eager_leader:
                        cl.delete(e.key)  # it never campaigned, so it cannot resign
                    else:
                        e.resign()
                except ClientError:
                    continue
                except Exception as e:  # a bug of the recipe: in the verdict, not a crash
                    self.errors.append(f"{name}: {type(e).__name__}: {e}")
                    return
                finally:
                    if lease is not None:
                        lease.close(cl)
        finally:
            cl.close()

    # --- recorders -----------------------------------------------------------------

    def _record(self, prefix: str) -> None:
        """Every change under `prefix` from the run's first revision until
        the actors stopped and the store's revision then is reached."""
        cl = self._client(f"recorder {prefix}")
        if cl is None:
            return
        at, target = self._start_revision - 1, None
        stopping = self._recorders.stopping
        try:
            while target is None or at < target:
                try:
                    w = cl.watch(prefix, prefix=True, start_revision=at + 1, progress=True)
                    for ev in w:
                        if ev.type != "progress":
                            op = self._op("recorder", RECIPE_EVENT, ev.key, ev.type)
                            op.revision = ev.revision
                            self._done(op)
                        at = w.revision
                        if stopping.is_set() and target is None:
                            target = cl.range(prefix, prefix=True, count_only=True).revision
                        if target is not None and at >= target:
                            break
                except ClientError as e:
                    if e.code == "compacted" or (stopping.is_set() and target is None):
                        break
        finally:
            end = self._op("recorder", RECIPE_WATCH_END, prefix, None)
            end.revision = at
            if target is None or at < target:
                end.outcome, end.error = FAIL, "stopped before catching up"
            self._done(end)
            cl.close()
