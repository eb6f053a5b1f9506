"""Membership changes of a local cluster, as the supervisor makes them
(docs/MEMBERSHIP.md): a new member gets ports and the cluster's keys, its
process starts, then the leader adds it as a learner; a learner is promoted
once it has caught up; a removed member's process stops once its removal
committed; a replacement does both through one joint change. It talks to
nodes through their control sockets only, and never prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from node.config import NodeSpec, node_dir
from node.control import ChangeMembersRequest, MemberChange
from node.membership_mark import was_member
from node.storage import FileStorage, StorageError
from raftctl.cluster import (
    Cluster,
    ClusterError,
    ClusterUnavailable,
    NodeState,
    UnknownNode,
    free_ports,
    leader_of,
)

# A change (C_old,new, then C_new) must commit within this.
MEMBER_CHANGE_TIMEOUT_S = 10.0
# `member replace`: the new member must catch up within this to be promoted.
CATCH_UP_TIMEOUT_S = 30.0
# A started member must answer on its control socket within this.
MEMBER_START_TIMEOUT_S = 5.0
_POLL_S = 0.05  # polling cadence while waiting for a condition


@dataclass
class Conf:
    """The configuration in force as the leader reports it."""

    leader: str
    voters: list[str]
    learners: list[str]
    outgoing: list[str]
    joint: bool
    index: int
    committed: bool
    last_index: int
    peers: dict[str, Any]

    def members(self) -> set[str]:
        return {*self.voters, *self.learners, *self.outgoing}

    def behind(self, node: str) -> int | None:
        """How many entries `node` lacks of the leader's log (None: unknown)."""
        if node == self.leader:
            return 0
        pr = self.peers.get(node)
        return None if pr is None else max(0, self.last_index - int(pr["match"]))


@dataclass
class Member:
    """One known node in `member list`."""

    node: str
    role: str  # voter | learner | leaving (old voter, while joint) | removed | none
    state: str  # leader | follower | ... | down | paused | unreachable
    pid: int | None
    behind: int | None


@dataclass
class Outcome:
    """What a `member` command did (its `--json`, docs/CLI.md)."""

    cluster: str
    action: str
    node: str
    index: int | None = None
    joined: str | None = None  # the member it brought in (add, replace)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    voters: list[str] = field(default_factory=list)
    learners: list[str] = field(default_factory=list)
    forced: bool = False


def conf_of(states: list[NodeState]) -> Conf:
    """The leader's configuration; raises if no node leads."""
    lead = leader_of(states)
    if lead is None:
        raise ClusterUnavailable("there is no leader right now, and membership changes go "
                                 "through the leader; try again in a moment")
    st = next(s.status for s in states if s.id == lead)
    assert st is not None
    conf = st["conf"]
    return Conf(lead, conf["voters"], conf["learners"], conf["outgoing"], conf["joint"],
                conf["index"], conf["committed"], st["log_last"], st.get("peers") or {})


def list_members(c: Cluster) -> tuple[Conf | None, list[Member]]:
    """Every node the supervisor knows, with its place in the configuration
    the leader reports (None and no roles when no node leads)."""
    states = c.status()
    try:
        conf: Conf | None = conf_of(states)
    except ClusterUnavailable:
        conf = None
    by_id = {s.id: s for s in states}
    out: list[Member] = []
    removed = set(c.removed_ids())
    for spec in c.config().nodes:
        n = spec.id
        s = by_id.get(n)
        state = ("down" if s is None or s.process == "down" else "paused"
                 if s.process == "paused" else "unreachable" if s.status is None
                 else str(s.status["role"]))
        out.append(Member(n, _role(conf, n, n in removed), state, s.pid if s else None,
                          conf.behind(n) if conf is not None else None))
    return conf, out


def _role(conf: Conf | None, node: str, removed: bool) -> str:
    if removed:
        return "removed"
    if conf is None:
        return "unknown"
    if node in conf.voters:
        return "voter"
    if node in conf.learners:
        return "learner"
    return "leaving" if node in conf.outgoing else "none"


# --- the changes ----------------------------------------------------------------------


def add(c: Cluster, name: str | None = None) -> Outcome:
    """Start a node and add it as a learner. With `name`, a node removed
    earlier whose data is intact may come back under its name."""
    _refuse_fixed_membership(c)
    _refuse_kernel_mode(c)
    conf = conf_of(c.status())
    spec, fresh = _new_member(c, name)
    node = spec.id
    if node in conf.members():
        raise ClusterError(f"{node} is already a member ({_role(conf, node, False)})")
    try:
        started = _start(c, node)
        index = _change(c, [MemberChange(type="add_learner", node=node, spec=spec)])
        conf = _settled(c, index, lambda cf: node in cf.learners, f"{node} added as a learner")
    except ClusterError as e:
        left = _undo_start(c, node, fresh)
        if left is not None:
            raise ClusterError(f"{e}; undoing it: {left}") from e
        raise
    return Outcome(c.name, "add", node, index, joined=node, started=started,
                   voters=conf.voters, learners=conf.learners)


def promote(c: Cluster, node: str, wait_s: float = 0.0) -> Outcome:
    """Make learner `node` a voter; refused (with how far behind it is)
    until it has caught up, or waited for up to `wait_s`."""
    _refuse_fixed_membership(c)
    conf = conf_of(c.status())
    _check_member(c, conf, node)
    if node in conf.voters:
        raise ClusterError(f"{node} is already a voter")
    if node not in conf.learners:
        raise ClusterError(f"{node} is not a learner (it is leaving the configuration)")
    index = _change(c, [MemberChange(type="promote", node=node)], wait_s)
    conf = _settled(c, index, lambda cf: node in cf.voters, f"{node} promoted")
    return Outcome(c.name, "promote", node, index, voters=conf.voters, learners=conf.learners)


def remove(c: Cluster, node: str, force: bool = False) -> Outcome:
    """Remove `node`, then stop its process. Refused if it is the last
    voter, or, unless `force`, if the voters left could not form a quorum
    of running nodes."""
    _refuse_fixed_membership(c)
    states = c.status()
    conf = conf_of(states)
    _check_member(c, conf, node)
    if node in conf.voters:
        if len(conf.voters) == 1:
            raise ClusterError(f"{node} is the cluster's last voter; a cluster needs at least "
                               "one (add and promote another member first)")
        forced = _check_quorum(states, conf, node, None, force)
    else:
        forced = False
    index = _change(c, [MemberChange(type="remove", node=node)])
    conf = _settled(c, index, lambda cf: node not in cf.members(), f"{node} removed")
    stopped = _retire(c, node)
    return Outcome(c.name, "remove", node, index, stopped=stopped, voters=conf.voters,
                   learners=conf.learners, forced=forced)


def replace(c: Cluster, node: str, force: bool = False, by: str | None = None) -> Outcome:
    """Replace voter `node` by a new member (the way back for a node whose
    data is lost): the new one joins as a learner, catches up, then one
    joint change removes `node` and promotes it; `node` is then stopped.
    `by` names the new member (a removed node with its data may be one)."""
    _refuse_fixed_membership(c)
    _refuse_kernel_mode(c)
    states = c.status()
    conf = conf_of(states)
    _check_member(c, conf, node)
    if node not in conf.voters:
        raise ClusterError(f"{node} is not a voter; `raftctl member remove {node}` and "
                           "`raftctl member add` do for a learner")
    spec, fresh = _new_member(c, by)
    new = spec.id
    try:
        forced = _check_quorum(states, conf, node, new, force)
        started = _start(c, new)
        _settled(c, _change(c, [MemberChange(type="add_learner", node=new, spec=spec)]),
                 lambda cf: new in cf.learners, f"{new} added as a learner")
    except ClusterError as e:
        left = _undo_start(c, new, fresh)
        if left is not None:
            raise ClusterError(f"{e}; undoing it: {left}") from e
        raise
    index = _change(c, [MemberChange(type="remove", node=node),
                        MemberChange(type="promote", node=new)], CATCH_UP_TIMEOUT_S)
    conf = _settled(c, index, lambda cf: new in cf.voters and node not in cf.members(),
                    f"{node} replaced by {new}")
    stopped = _retire(c, node)
    return Outcome(c.name, "replace", node, index, joined=new, started=started,
                   stopped=stopped, voters=conf.voters, learners=conf.learners, forced=forced)


# --- helpers ----------------------------------------------------------------------------


def _refuse_fixed_membership(c: Cluster) -> None:
    if c.config().algorithm == "paxos":
        raise ClusterError(f"cluster {c.name} runs Paxos, whose membership is fixed when the "
                           "cluster is created; membership changes are Raft's "
                           "(docs/MEMBERSHIP.md)")


def _refuse_kernel_mode(c: Cluster) -> None:
    if c.config().kernel_mode():
        raise ClusterError("membership changes need a node's network set up as it joins, which "
                           "kernel mode (--netns) does not do yet; use a cluster without --netns")


def _check_member(c: Cluster, conf: Conf, node: str) -> None:
    if node not in conf.members():
        known = ", ".join(sorted(conf.members()))
        raise UnknownNode(f"{node} is not a member of cluster {c.name} (members: {known})")


def _check_quorum(states: list[NodeState], conf: Conf, gone: str, joining: str | None,
                  force: bool) -> bool:
    """Unless `force`, refuse a change that leaves the voters (old or new:
    while joint both decide) without a majority of running nodes. True if
    the check failed and `force` overrode it."""
    live = {s.id for s in states if s.status is not None}
    if joining is not None:
        live.add(joining)
    old = set(conf.voters)
    new = (old - {gone}) | ({joining} if joining else set())
    for half in (old, new):
        up = sorted(half & live)
        need = len(half) // 2 + 1
        if len(up) >= need:
            continue
        if force:
            return True
        down = sorted(half - live)
        raise ClusterError(
            f"removing {gone} would leave voters {','.join(sorted(half))} of which only "
            f"{','.join(up) or 'none'} run: {need} of {len(half)} are needed to commit "
            f"anything, so the cluster would stall; start {', '.join(down)} first, or give "
            "--force to do it anyway")
    return False


def _new_member(c: Cluster, name: str | None) -> tuple[NodeSpec, bool]:
    """The spec of a member to add, recorded in cluster.json, and whether it
    is new (else a removed node coming back with its data)."""
    with c.edit() as cf:
        cfg = cf.config
        known = {n.id for n in cfg.nodes}
        if name is not None and name in known:
            if name not in cf.removed:
                raise ClusterError(f"{name} is already a node of cluster {c.name}")
            data = node_dir(c.run_dir, name) / "data"
            if was_member(c.run_dir, name) and not _holds_state(data):
                raise ClusterError(
                    f"{name} was a member and its data is gone; a new member needs a new "
                    f"name (`raftctl member add` picks one): a message of the old {name} "
                    "still on its way would be taken for the new one's")
            cf.removed.remove(name)
            return cfg.node(name), False
        node = name or _free_name(known)
        used = {p for n in cfg.nodes for p in (n.peer_port, n.client_port, n.control_port)}
        ports = [p for p in free_ports(3 + len(used)) if p not in used][:3]
        if len(ports) < 3:
            raise ClusterError("could not find 3 free ports for the new member")
        spec = NodeSpec(id=node, peer_port=ports[0], client_port=ports[1],
                        control_port=ports[2])
        new_cfg = msgspec.structs.replace(cfg, nodes=[*cfg.nodes, spec],
                                          initial_members=cfg.initial_ids())
        problems = new_cfg.problems()
        if problems:
            raise ClusterError(f"cannot add {node}: " + "; ".join(problems))
        cf.config = new_cfg
        return spec, True


def _holds_state(data: Path) -> bool:
    """Whether a stopped node's data directory holds a term, a vote, entries
    or a snapshot (as the node itself judges at start)."""
    if not data.is_dir():
        return False
    try:
        st = FileStorage(data, fsync="never")
    except (OSError, StorageError):
        return False
    try:
        init = st.initial_state()
        return init.hard_state.term > 0 or init.snapshot.index > 0 or bool(init.entries)
    finally:
        st.close()


def _free_name(known: set[str]) -> str:
    k = 1
    while f"n{k}" in known:
        k += 1
    return f"n{k}"


def _start(c: Cluster, node: str) -> list[str]:
    """Start `node` unless it runs; the nodes started."""
    if c.process_state(node)[1] != "down":
        return []
    pid = c.start(node)
    deadline = time.monotonic() + MEMBER_START_TIMEOUT_S
    while c.node_status(node, timeout_s=0.5).status is None:
        if c.process_state(node)[1] == "down":
            log = node_dir(c.run_dir, node) / "stdout.log"
            raise ClusterError(f"node {node} exited right after starting; see {log}")
        if time.monotonic() > deadline:
            raise ClusterError(f"node {node} (pid {pid}) started but does not answer; "
                               f"see `raftctl logs {node}`")
    return [node]


def _undo_start(c: Cluster, node: str, fresh: bool) -> str | None:
    """A change that failed leaves nothing behind: the node stopped, and
    forgotten (new) or removed again (come back). Returns what could not be
    undone (a node that would not stop), for the failure's message."""
    stuck: ClusterError | None = None
    if c.process_state(node)[1] != "down":
        try:
            c.stop(node)
        except ClusterError as e:  # forgotten or removed all the same
            stuck = e
    with c.edit() as cf:
        if fresh:
            cf.config = msgspec.structs.replace(
                cf.config, nodes=[n for n in cf.config.nodes if n.id != node])
            cf.processes.pop(node, None)
        elif node not in cf.removed:
            cf.removed.append(node)
    return None if stuck is None else str(stuck)


def _retire(c: Cluster, node: str) -> list[str]:
    """Mark a removed node so (its messages are dropped, its name is no
    node of the cluster any more), then stop its process."""
    with c.edit() as cf:
        if node not in cf.removed:
            cf.removed.append(node)
    if c.process_state(node)[1] == "down":
        return []
    c.stop(node)
    return [node]


def _change(c: Cluster, changes: list[MemberChange], catch_up_s: float = 0.0) -> int:
    """Have the leader start the change; its index. A learner not yet
    caught up is waited for up to `catch_up_s`, a leader that just changed
    is found again."""
    deadline = time.monotonic() + max(catch_up_s, MEMBER_CHANGE_TIMEOUT_S)
    catch_up_until = time.monotonic() + catch_up_s
    while True:
        lead = conf_of(c.status()).leader
        r = c.control(lead, ChangeMembersRequest(changes=changes))
        if r is not None and r.ok and r.data is not None:
            return int(r.data["index"])
        code = None if r is None else r.error
        now = time.monotonic()
        if code == "not_caught_up" and now < catch_up_until:
            time.sleep(10 * _POLL_S)  # the learner catches up meanwhile
            continue
        if code in (None, "not_leader") and now < deadline:
            time.sleep(_POLL_S)  # a new leader is being elected
            continue
        if r is None:
            raise ClusterUnavailable(f"leader {lead} did not answer; try again in a moment")
        raise ClusterError(r.message or r.error or "the leader refused the change")


def _settled(c: Cluster, index: int, done: Callable[[Conf], bool], what: str) -> Conf:
    """Wait until a leader reports C_new of the change at `index` committed."""
    deadline = time.monotonic() + MEMBER_CHANGE_TIMEOUT_S
    last: Conf | None = None
    while True:
        try:
            last = conf_of(c.status(timeout_s=0.5))
        except ClusterUnavailable:
            last = None
        if last is not None and not last.joint and last.committed and last.index > index \
                and done(last):
            return last
        if time.monotonic() > deadline:
            where = "no leader" if last is None else (
                f"{last.leader} leads with voters {','.join(last.voters)}"
                + (f" and {','.join(last.outgoing)} (joint)" if last.joint else ""))
            raise ClusterError(f"{what} did not commit within {MEMBER_CHANGE_TIMEOUT_S:g}s "
                               f"({where}); a majority of the old and of the new voters must "
                               "run: see `raftctl member list`")
        time.sleep(_POLL_S)


class ChaosMembers:
    """These changes as a nemesis makes them (chaos/nemesis.py, MembersLike):
    never forced, each returning the member it brought in."""

    def __init__(self, c: Cluster) -> None:
        self.c = c

    def add(self, name: str | None = None) -> str:
        return add(self.c, name).node

    def promote(self, node: str, wait_s: float) -> None:
        promote(self.c, node, wait_s)

    def remove(self, node: str) -> None:
        remove(self.c, node)

    def replace(self, node: str, by: str | None = None) -> str:
        joined = replace(self.c, node, by=by).joined
        assert joined is not None
        return joined
