"""`raftctl bench failover`: kill the leader while clients write; how long
until a new leader, and until the next acknowledged write. Returns a report;
never prints."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from raftctl.bench.loadgen import (
    LoadGen,
    LoadResult,
    LoadSpec,
)
from raftctl.bench.runs import (
    BENCH_FAILOVER_ATTEMPT_TIMEOUT_MS,
    BENCH_FAILOVER_BACKOFF_MS,
    BENCH_FAILOVER_POLL_MS,
    BENCH_TRIAL_TIMEOUT_MS,
    LEADER_WAIT_S,
    FailoverReport,
    FailoverTrial,
    StatusPoller,
    ms,
    running_cluster,
    summarize,
)
from raftctl.cluster import Cluster, ClusterError

# --- -----------------------------------------------------------------------

# Virtual clients writing through a failover: several, so that the first
# write after recovery is not held up by one client's retry timer.
_FAILOVER_WRITERS = 4


class _Writer(threading.Thread):
    """A few virtual clients writing without pause, with short attempt
    timeouts; every acknowledgement is logged as (time, answering node)."""

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.acks: list[tuple[float, str | None]] = []
        self._gen = LoadGen(spec, on_ack=lambda t, n: self.acks.append((t, n)))
        self.connected = threading.Event()
        self.result: LoadResult | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self._gen.connect()
            self.connected.set()
            self.result = self._gen.run()
        except Exception as e:  # handed to the caller
            self.error = e
        finally:
            self.connected.set()
            self._gen.close()

    def first_ack(self, after: float, not_from: str | None = None,
                  start: int = 0) -> float | None:
        acks = self.acks
        for i in range(start, len(acks)):
            t, node = acks[i]
            if t > after and (not_from is None or node != not_from):
                return t
        return None

    def stop(self) -> None:
        self._gen.stop()
        self.join()


def deadline_wait(cond: Callable[[], Any], timeout_s: float, interval_s: float) -> Any:
    """Poll `cond` until it returns something other than None or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got is not None or time.monotonic() >= deadline:
            return got
        time.sleep(interval_s)  # the polling cadence of the measurement


def bench_failover(c: Cluster, *, trials: int,
                   on_trial: Callable[[FailoverTrial], None] | None = None) -> FailoverReport:
    """`trials` times: SIGKILL the leader, time a new leader and the next
    acknowledged write, restart the victim and wait for it to catch up."""
    if trials < 1:
        raise ClusterError("--trials must be at least 1")
    ids = c.node_ids()
    if len(ids) < 3:
        raise ClusterError("failover needs a cluster of at least 3 nodes "
                           "(a majority must survive the leader)")
    down = [n for n in ids if c.process_state(n)[1] != "running"]
    if down:
        raise ClusterError(f"{', '.join(down)} not running; `raftctl start` "
                           "them first so that every trial starts from a whole cluster")
    running_cluster(c)
    writer = _Writer(LoadSpec(
        nodes=c.client_addrs(), keys=c.keys(), clients=_FAILOVER_WRITERS,
        duration_s=math.inf, key_space=1000,
        attempt_timeout_s=BENCH_FAILOVER_ATTEMPT_TIMEOUT_MS / 1000,
        backoff_s=BENCH_FAILOVER_BACKOFF_MS / 1000,
        op_timeout_s=BENCH_TRIAL_TIMEOUT_MS / 1000))
    poller = StatusPoller(c)
    results: list[FailoverTrial] = []
    victim_down: str | None = None
    writer.start()
    try:
        writer.connected.wait()
        if writer.error is not None:
            raise ClusterError(f"the failover writer failed: {writer.error}")
        for trial in range(1, trials + 1):
            victim = deadline_wait(lambda: _leader(poller.status()), LEADER_WAIT_S,
                                    BENCH_FAILOVER_POLL_MS / 1000)
            if victim is None:
                raise ClusterError(f"no leader within {LEADER_WAIT_S:.0f}s; "
                                   "see `raftctl status` and `raftctl logs`")
            victim_down = victim
            r = _one_failover(c, poller, writer, trial, victim)
            r = _restart_and_catch_up(c, poller, r)
            victim_down = None
            results.append(r)
            if on_trial is not None:
                on_trial(r)
    finally:
        if victim_down is not None and c.process_state(victim_down)[1] == "down":
            with contextlib.suppress(ClusterError):
                c.start(victim_down)  # leave the operator's cluster whole
        writer.stop()
        poller.close()
    res = writer.result or LoadResult()
    done = [r for r in results if r.leader_ms is not None and r.write_ms is not None]
    return FailoverReport(
        cluster=c.name, nodes=len(ids), trials=trials, completed=len(done),
        leader_ms=summarize([r.leader_ms for r in results]),
        write_ms=summarize([r.write_ms for r in results]),
        writes=res.writes, unknown=res.unknown, errors=sum(res.errors.values()),
        results=results)


def _leader(statuses: dict[str, dict[str, Any]]) -> str | None:
    """The node that reports itself leader in the highest term."""
    leaders = [(int(st["term"]), n) for n, st in statuses.items() if st.get("role") == "leader"]
    return max(leaders)[1] if leaders else None


def _one_failover(c: Cluster, poller: StatusPoller, writer: _Writer, trial: int,
                  victim: str) -> FailoverTrial:
    timeout_s = BENCH_TRIAL_TIMEOUT_MS / 1000
    interval_s = BENCH_FAILOVER_POLL_MS / 1000
    st = poller.status([victim]).get(victim)
    if st is None or st.get("role") != "leader":
        raise ClusterError(f"{victim} stopped leading before the kill; is the cluster stable?")
    old_term = int(st["term"])
    # Writes must flow through this leader before it dies, or the first
    # write after the kill would measure the writer's own start-up.
    now = time.monotonic()
    if deadline_wait(lambda: writer.first_ack(now), timeout_s, interval_s) is None:
        raise ClusterError(f"no write was acknowledged within {timeout_s:.0f}s before the kill")
    mark = len(writer.acks)
    survivors = [n for n in c.node_ids() if n != victim]
    t_kill = time.monotonic()
    c.kill(victim)
    new_leader: str | None = None
    new_term: int | None = None
    t_leader: float | None = None
    t_write: float | None = None
    deadline = t_kill + timeout_s
    while time.monotonic() < deadline and (t_leader is None or t_write is None):
        if t_leader is None:
            for n, s in poller.status(survivors, timeout_s=interval_s * 10).items():
                if s.get("role") == "leader" and int(s["term"]) > old_term:
                    t_leader, new_leader, new_term = time.monotonic(), n, int(s["term"])
                    break
        if t_write is None:
            t_write = writer.first_ack(t_kill, not_from=victim, start=mark)
        if t_leader is None or t_write is None:
            time.sleep(interval_s)  # the polling cadence of the measurement
    return FailoverTrial(
        trial=trial, victim=victim, old_term=old_term, new_leader=new_leader,
        new_term=new_term,
        leader_ms=None if t_leader is None else ms(t_leader - t_kill),
        write_ms=None if t_write is None else ms(t_write - t_kill),
        catch_up_ms=None)


def _restart_and_catch_up(c: Cluster, poller: StatusPoller, r: FailoverTrial) -> FailoverTrial:
    timeout_s = BENCH_TRIAL_TIMEOUT_MS / 1000
    t0 = time.monotonic()
    c.start(r.victim)
    # Caught up: its applied index reached the commit index the leader had
    # when asked (the writer keeps the leader's commit moving).
    target: int | None = None

    def caught_up() -> bool | None:
        nonlocal target
        if target is None:
            statuses = poller.status([n for n in c.node_ids() if n != r.victim])
            lead = _leader(statuses)
            if lead is None:
                return None
            target = int(statuses[lead]["commit"])
        st = poller.status([r.victim]).get(r.victim)
        return True if st is not None and int(st["applied"]) >= target else None

    if deadline_wait(caught_up, timeout_s, BENCH_FAILOVER_POLL_MS / 1000) is None:
        raise ClusterError(f"{r.victim} did not catch up within {timeout_s:.0f}s of its restart; "
                           "see `raftctl logs`")
    return msgspec.structs.replace(r, catch_up_ms=ms(time.monotonic() - t0))


