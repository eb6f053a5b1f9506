"""The set workloads, after Jepsen's set test: clients append unique elements
to a few keys (the `append` op, which is not idempotent, so a write applied
twice shows as a duplicate) and read the sets back. `SetWorkload` runs
long-lived pipelined clients, several appends in flight on one session;
`ChurnWorkload` short-lived ones that open a session, append once or a few
times and close it, or vanish without closing, at a high rate. They talk to
the cluster only through `chaos.pipeline`.
"""

from __future__ import annotations

import functools
import random
import time

from chaos.linearizability import OK
from chaos.pipeline import Endpoint, Latency, PipelinedClient
from chaos.workload import OpRecord, Threads, WorkloadSpec

# Of a set client's operations, this share are reads of a whole set.
SET_READ_SHARE = 0.1
# Now and then (every this long on average) a set client stalls, as a
# garbage-collection pause would, for between these two times, without
# reading the answers that come meanwhile; when it wakes, its writes in flight
# are due and sent again before it reads them. The copies come long after
# the first ones were applied, with other sessions busy in between.
SET_STALL_EVERY_S = 3.0
SET_STALL_S = (0.1, 0.5)
# A short-lived client appends between one and this many elements.
CHURN_MAX_APPENDS = 3
# This share of short-lived clients vanish instead of closing their session,
# half of those with an append still in flight.
CHURN_VANISH_SHARE = 0.25
# A vanishing client leaves after its last append had at most this long.
_VANISH_WITHIN_S = 0.02
# How often a client looks at its sockets while nothing is due, and at
# whether the workload is stopping.
_IDLE_S = 0.05
_WAKE_S = 0.5


def _endpoint(spec: WorkloadSpec, what: str) -> Endpoint:
    if spec.endpoint is None:
        raise ValueError(f"the {what} workload needs the cluster's client addresses and keys")
    if not spec.set_keys:
        raise ValueError(f"the {what} workload needs at least one set key")
    return spec.endpoint


class SetWorkload:
    """`clients` long-lived clients, each one session with up to `depth`
    operations in flight: appends of unique elements (`s3.2-17`, the slot
    and a count) to random set keys, and now and then a read of a set."""

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        self.endpoint = _endpoint(spec, "set")
        self.latency = Latency()  # the cluster's, as all these clients see it
        self._threads = Threads([
            (f"chaos-set-{i + 1}",
             functools.partial(self._run, f"s{i + 1}", random.Random(spec.seed * 1000 + 500 + i)))
            for i in range(spec.clients)])
        self.errors: list[str] = []

    def start(self) -> None:
        self._threads.start()

    def stop(self, timeout_s: float) -> bool:
        return self._threads.stop(timeout_s)

    def _run(self, name: str, rng: random.Random) -> None:
        spec, stop = self.spec, self._threads.stopping
        cl = PipelinedClient(self.endpoint, spec.history, name, depth=spec.depth,
                             latency=self.latency, pacer=spec.pacer)
        n = 0
        turn: float | None = None  # a reserved turn of the pacer
        stall_at = time.monotonic() + rng.expovariate(1.0 / SET_STALL_EVERY_S)
        try:
            while not stop.is_set():
                if cl.busy() and time.monotonic() >= stall_at:
                    stop.wait(rng.uniform(*SET_STALL_S))  # the stall itself: a fault we inject
                    stall_at = time.monotonic() + rng.expovariate(1.0 / SET_STALL_EVERY_S)
                slot = cl.free_slot()
                if slot is not None and turn is None:
                    turn = spec.pacer.reserve()
                now = time.monotonic()
                if slot is not None and turn is not None and now >= turn:
                    turn = None
                    key = rng.choice(spec.set_keys)
                    if cl.session is None and not cl.opening:
                        cl.open_session(slot)
                    elif cl.session is None or rng.random() < SET_READ_SHARE:
                        cl.read_set(slot, key)
                    else:
                        n += 1
                        cl.append(slot, key, f"{slot}-{n}")
                    continue  # another slot may be free, and the next turn due
                if cl.busy():
                    # Until an answer, a timer of the operations or the next
                    # turn; now and then, to notice the stop.
                    cl.pump(min(turn if turn is not None else now + _WAKE_S, now + _WAKE_S))
                elif turn is not None:
                    stop.wait(turn - now)  # nothing in flight: the pacing, not a synchronisation
                cl.take_done()
            _finish(cl)
            if cl.session is not None:
                cl.close_session(cl.slots[0])
                _finish(cl)
        except Exception as e:  # reported in the verdict, not a crash of the run
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
        finally:
            cl.close()


class ChurnWorkload:
    """`clients` threads of short-lived clients: each life opens a session
    on new connections, appends one to CHURN_MAX_APPENDS unique elements
    (`u2-40`), and closes the session, or (CHURN_VANISH_SHARE of them) drops
    its connections without closing, some with an append in flight. Many
    sessions come and go: what once made the cluster evict live ones."""

    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        self.endpoint = _endpoint(spec, "churn")
        self.latency = Latency()  # shared: a short life learns nothing alone
        self._threads = Threads([
            (f"chaos-churn-{i + 1}",
             functools.partial(self._run, f"u{i + 1}", random.Random(spec.seed * 1000 + 700 + i)))
            for i in range(spec.clients)])
        self.errors: list[str] = []

    def start(self) -> None:
        self._threads.start()

    def stop(self, timeout_s: float) -> bool:
        return self._threads.stop(timeout_s)

    def _run(self, name: str, rng: random.Random) -> None:
        n = 0
        try:
            while not self._threads.stopping.is_set():
                n = self._life(name, rng, n)
        except Exception as e:  # reported in the verdict, not a crash of the run
            self.errors.append(f"{name}: {type(e).__name__}: {e}")

    def _life(self, name: str, rng: random.Random, n: int) -> int:
        """One client from its session's opening to its end; returns the
        count of elements used so far."""
        spec, stop = self.spec, self._threads.stopping
        cl = PipelinedClient(self.endpoint, spec.history, name, latency=self.latency,
                             pacer=spec.pacer)
        slot = cl.slots[0]
        try:
            if not spec.pacer.wait(stop):
                return n
            cl.open_session(slot)
            _finish(cl)
            for _ in range(rng.randint(1, CHURN_MAX_APPENDS)):
                if cl.session is None or not spec.pacer.wait(stop):
                    return n
                n += 1
                cl.append(slot, rng.choice(spec.set_keys), f"{name}-{n}")
                done = _finish(cl)
                if not done or done[-1].outcome != OK:
                    break  # refused or unanswered: this client gives up early
            if rng.random() < CHURN_VANISH_SHARE:
                if cl.session is not None and rng.random() < 0.5 and spec.pacer.wait(stop):
                    n += 1
                    cl.append(slot, rng.choice(spec.set_keys), f"{name}-{n}")
                    cl.pump(time.monotonic() + rng.uniform(0.0, _VANISH_WITHIN_S))
                cl.vanish()
            elif cl.session is not None:
                cl.close_session(slot)
                _finish(cl)
            return n
        finally:
            cl.close()


def _finish(cl: PipelinedClient) -> list[OpRecord]:
    """Pump until nothing is in flight (each operation ends by its
    deadline); what completed."""
    done: list[OpRecord] = []
    while cl.busy():
        cl.pump(time.monotonic() + _IDLE_S)
        done += cl.take_done()
    done += cl.take_done()
    return done

