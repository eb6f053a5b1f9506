"""Watches a live cluster during a nemesis run: polls every node's status
(and now and then its state digest) on a thread, feeds both to the Raft
invariants as they come, logs each leader change, and tells the schedule
who leads and who would lead next. It only reads; it never injects.
"""

from __future__ import annotations

import threading
from typing import Any

from chaos.invariants import RaftInvariants, Violation
from chaos.nemesis import ClusterLike, EventLog
from chaos.record import DigestSample, NodeSample, StatusSample, observe_sample
from chaos.schedule import View

# How the nodes are watched during a run.
CHAOS_STATUS_POLL_MS = 250  # every node's status is sampled this often
CHAOS_STATUS_TIMEOUT_MS = 300  # a node that has not answered a status request by then is "?"
CHAOS_DIGEST_EVERY_POLLS = 2  # state-machine digests are taken every this many status polls


def node_sample(process: str, st: dict[str, Any] | None) -> NodeSample:
    """A node's status reply as a sample (`st` None: it did not answer)."""
    if st is None:
        return NodeSample(process=process)
    return NodeSample(process=process, role=str(st.get("role")), term=int(st["term"]),
                      applied=int(st["applied"]), commit=int(st["commit"]),
                      commit_term=st.get("commit_term"), last_index=st.get("log_last"),
                      pid=st.get("pid"))


def successor(st: dict[str, Any] | None) -> str | None:
    """From a leader's status: the active follower with the highest match
    index, the one a transfer or an election would most likely pick."""
    if not st or not st.get("peers"):
        return None
    peers = [(int(p.get("match", 0)), name) for name, p in st["peers"].items()
             if p.get("active", True)]
    return max(peers)[1] if peers else None


class Monitor:
    """Samples the cluster every `interval_s` until stopped."""

    def __init__(self, cluster: ClusterLike, log: EventLog,
                 interval_s: float = CHAOS_STATUS_POLL_MS / 1000.0) -> None:
        self.cluster = cluster
        self.log = log
        self.interval_s = interval_s
        self.samples: list[StatusSample] = []
        self.digests: list[DigestSample] = []
        self.invariants = RaftInvariants()
        self.violations: list[Violation] = []
        self.durable = True
        self._view = View()
        self._shown: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self._polls = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def view(self) -> View:
        """Who led at the last poll, and the follower most likely next."""
        return self._view

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as e:  # a monitor hiccup must not end the run; it is logged
                self.log.add("monitor", f"status poll failed: {type(e).__name__}: {e}")
            self._stop.wait(self.interval_s)  # the polling cadence

    def poll(self, with_digests: bool | None = None) -> StatusSample:
        """One sample of every node; with_digests None: every few polls."""
        with self._lock:
            return self._poll(with_digests)

    def _poll(self, with_digests: bool | None) -> StatusSample:
        states = self.cluster.status(timeout_s=CHAOS_STATUS_TIMEOUT_MS / 1000.0)
        t = round(self.log.clock(), 3)
        nodes: dict[str, NodeSample] = {}
        lead_status: dict[str, dict[str, Any]] = {}
        for s in states:
            nodes[s.id] = node_sample(s.process, s.status)
            if s.status is not None:
                self.durable = s.status.get("fsync", "always") == "always"
                if s.status.get("role") == "leader":
                    lead_status[s.id] = s.status
        sample = StatusSample(t=t, nodes=nodes)
        self.samples.append(sample)
        self._check(observe_sample(self.invariants, sample, self.durable))
        self._note_leader(nodes, lead_status)
        self._polls += 1
        if with_digests or (with_digests is None and self._polls % CHAOS_DIGEST_EVERY_POLLS == 0):
            for n, ns in nodes.items():
                if ns.role is not None:
                    self.digest(n)
        return sample

    def digest(self, node: str) -> DigestSample | None:
        d = self.cluster.digest(node)
        if d is None:
            return None
        ds = DigestSample(t=round(self.log.clock(), 3), node=node, applied=int(d["applied"]),
                          digest=str(d["digest"]))
        self.digests.append(ds)
        self._check(self.invariants.observe_digest(ds.t, ds.node, ds.applied, ds.digest))
        return ds

    def _check(self, found: list[Violation]) -> None:
        for v in found:
            self.violations.append(v)
            self.log.add("invariant", f"{v.check}: {v.detail}")

    def _note_leader(self, nodes: dict[str, NodeSample],
                     lead_status: dict[str, dict[str, Any]]) -> None:
        leaders = sorted(((ns.term or 0, n) for n, ns in nodes.items() if ns.role == "leader"),
                         reverse=True)
        top = (leaders[0][1], leaders[0][0]) if leaders else None
        self._view = View(leader=top[0], successor=successor(lead_status.get(top[0]))) \
            if top else View()
        if top == self._shown:
            return
        self._shown = top
        if top is None:
            self.log.add("leader", "no leader")
            return
        stale = ", ".join(f"{n} (term {t})" for t, n in leaders[1:])
        detail = f"{top[0]} leads (term {top[1]})" + (f"; {stale} still thinks it leads"
                                                       if stale else "")
        self.log.add("leader", detail, [top[0]])

