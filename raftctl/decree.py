"""`raftctl paxos decree`: one instance of the Synod protocol (Paxos Made
Simple §2) on a running Paxos cluster, followed in the nodes' own logs
message by message: a node runs phase 1 with a fresh ballot, then proposes
the decree in the next free slot, and every learner reports it chosen.
It asks the node through its control socket and reads the log files; it
never prints (raftctl/paxos_cmd.py renders).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from node.control import DecreeRequest
from raftctl.cluster import Cluster, ClusterError, ClusterUnavailable
from raftctl.logview import Follower, complete_size

# The events of one Synod instance (docs/LOGS.md), and those that frame it,
# in the order of the protocol's steps. A node writes its line after its
# answer left (node/raft/ready.py, step 6), so a proposer may log a reply's
# effect before the acceptor logs having sent it: lines are shown step by
# step, in time order within a step (every order so made is one the
# messages allow).
_STEP = {"stepped_down": 0, "prepare_sent": 0, "preempted": 1, "promised": 1,
         "campaign_abandoned": 1, "became_leader": 2, "became_follower": 3, "accept_sent": 3,
         "accepted": 4, "chosen": 5}
DECREE_EVENTS = frozenset(_STEP)
# How often the log files are read while the instance runs.
DECREE_POLL_S = 0.02


@dataclass
class Decree:
    """What one decree did: who proposed it, in which ballot and slot, who
    learned it chosen, and the log lines of the instance in time order."""

    node: str
    ballot: str
    value: str
    slot: int | None = None
    chosen_by: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)


def run_decree(c: Cluster, value: str, node: str | None, wait_s: float) -> Decree:
    """Have `node` (default: the leader) propose `value` as a decree and wait
    up to `wait_s` for every running node to learn it chosen. Raises
    ClusterError if it was not chosen in that time."""
    cfg = c.config()
    if cfg.algorithm != "paxos":
        raise ClusterError(f"cluster {c.name} runs Raft; a decree is the Synod protocol of "
                           "Paxos: make a Paxos cluster with `raftctl up --algorithm paxos`")
    running = c.running_nodes()
    if node is not None:
        c.check_nodes([node])
    target = node or c.leader() or (sorted(running)[0] if running else None)
    if target is None or target not in running:
        raise ClusterUnavailable(f"{target or 'no node'} is not running; start it first "
                                 "(`raftctl start`)")
    paths = [c.log_path(n) for n in c.node_ids()]
    tail = Follower({p: complete_size(p) for p in paths})
    r = c.control(target, DecreeRequest(value=value))
    if r is None:
        raise ClusterUnavailable(f"{target} did not answer; is it paused? (`raftctl status`)")
    if not r.ok:
        raise ClusterError(r.message or r.error or "the decree was refused")
    d = Decree(target, str((r.data or {}).get("ballot")), value)
    learners = set(running)
    chosen: dict[int, list[str]] = {}
    deadline = time.monotonic() + wait_s
    while True:
        for ev, _ in tail.poll():
            _note(d, ev, chosen)
        d.chosen_by = sorted(chosen.get(d.slot, [])) if d.slot is not None else []
        if d.slot is not None and learners <= set(d.chosen_by):
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(DECREE_POLL_S)  # the cadence of reading the logs; the condition is above
    d.lines.sort(key=lambda ev: (_step(ev), str(ev.get("ts", ""))))
    d.waiting_for = sorted(learners - set(d.chosen_by))
    if not d.chosen_by:
        raise ClusterError(f"the decree {value!r} was not chosen within {wait_s:g}s (its "
                           f"ballot {d.ballot} may have been preempted by another proposer); "
                           "`raftctl logs --since 1m` shows what happened")
    return d


def _step(ev: dict[str, Any]) -> int:
    if ev.get("event") == "stepped_down" and ev.get("reason") != "decree":
        return 1  # the old leader, preempted by the decree's ballot
    return _STEP.get(str(ev.get("event")), 0)


def _note(d: Decree, ev: dict[str, Any], chosen: dict[int, list[str]]) -> None:
    """Keep a line of the instance; learn its slot from the proposer's
    phase 2a, and who reported which slot chosen."""
    name = ev.get("event")
    if name not in DECREE_EVENTS:
        return
    d.lines.append(ev)
    slot = ev.get("slot")
    if name == "accept_sent" and ev.get("node") == d.node and ev.get("value") == d.value:
        d.slot = int(slot) if isinstance(slot, int) else None
    elif name == "chosen" and isinstance(slot, int):
        chosen.setdefault(slot, []).append(str(ev.get("node")))
