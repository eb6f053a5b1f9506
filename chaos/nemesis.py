"""Carries out a nemesis schedule on a real cluster: injects each step's
fault, heals it, and records the fault's window. Handed a cluster-like
object; it never imports the CLI or the supervisor, and it decides nothing
(chaos.schedule does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from chaos.faults import FaultState
from chaos.power_fault import PowerLoss, describe_dropped
from chaos.record import DATA_LOST, FaultEvent, FaultWindow
from chaos.schedule import CLOCK, POWER_LOSS, Step


class NodeStateLike(Protocol):
    """One node as the supervisor sees it (raftctl's NodeState fits)."""

    @property
    def id(self) -> str: ...
    @property
    def process(self) -> str: ...  # running | paused | down
    @property
    def status(self) -> dict[str, Any] | None: ...


class ClusterLike(Protocol):
    """What a nemesis run needs of a cluster (raftctl's Cluster fits). A
    `kill` or `stop` that raises an exception whose `still_exiting` is true
    sent its signal, but the node (its `node`) is not gone yet: a process
    inside a request to a stalled disk exits only when the request ends."""

    def node_ids(self) -> list[str]: ...
    def kill(self, node_id: str) -> int: ...
    def stop(self, node_id: str) -> int: ...
    def start(self, node_id: str) -> int: ...
    def pause(self, node_id: str) -> int: ...
    def resume(self, node_id: str) -> int: ...
    def compact(self, node_id: str) -> dict[str, Any]: ...
    def transfer(self, to: str) -> str: ...
    def apply_faults(self, state: FaultState) -> list[str]: ...
    def status(self, timeout_s: float = ...) -> Sequence[NodeStateLike]: ...
    def digest(self, node_id: str) -> dict[str, Any] | None: ...


@runtime_checkable
class ClockLike(Protocol):
    """A cluster whose nodes' host clocks can be set apart (the `clock`
    kind): raftctl's HostCluster, on hosts with kernels of their own."""

    def clock_unavailable(self) -> str | None: ...
    def skew_clock(self, node_id: str, offset_s: float) -> None: ...


class MembersLike(Protocol):
    """Membership changes as the supervisor makes them (raftctl's
    ChaosMembers fits): each waits until its change committed and raises
    if it was refused or did not commit."""

    def add(self, name: str | None = None) -> str:
        """Add a member as a learner (`name`: a removed one, with its data);
        returns its name."""
        ...

    def promote(self, node: str, wait_s: float) -> None: ...
    def remove(self, node: str) -> None: ...

    def replace(self, node: str, by: str | None = None) -> str:
        """Replace voter `node` by a new member (or `by`); returns its name."""
        ...


# A member added back at a heal must catch up within this to be promoted.
CHAOS_CATCH_UP_S = 30.0


def _still_exiting(e: BaseException) -> str | None:
    """The node a failed kill or stop signalled but that is not gone yet
    (see ClusterLike), or None."""
    node = getattr(e, "node", None)
    return node if getattr(e, "still_exiting", False) and isinstance(node, str) else None


class ChaosError(Exception):
    """The run cannot start or go on; the message says why."""


class EventLog:
    """Fault events and observations on the run's clock, from any thread."""

    def __init__(self, clock: Callable[[], float],
                 on_event: Callable[[FaultEvent], None] | None = None) -> None:
        self.clock = clock
        self.events: list[FaultEvent] = []
        self._lock = threading.Lock()
        self._on_event = on_event

    def add(self, kind: str, detail: str, targets: Sequence[str] = (),
            error: str | None = None) -> FaultEvent:
        ev = FaultEvent(t=round(self.clock(), 3), kind=kind, detail=detail,
                        targets=list(targets), error=error)
        with self._lock:
            self.events.append(ev)
        if self._on_event is not None:
            self._on_event(ev)
        return ev


# What takes a node down, and what brings it back.
_DOWN_BY = {"kill": "kill", "stop": "stop", "snapshot-kill": "kill", "kill-all": "kill",
            "pause": "pause"}


class Nemesis:
    """Injects one step at a time and heals it. It remembers which nodes it
    took down and how, so that `heal_all` brings back every one of them."""

    def __init__(self, cluster: ClusterLike, log: EventLog,
                 power: PowerLoss | None = None,
                 members: MembersLike | None = None) -> None:
        self.cluster = cluster
        self.log = log
        self.power = power  # None: no power-loss mounts, so no power-loss fault
        self.members = members
        self.windows: list[FaultWindow] = []
        self._down: dict[str, str] = {}  # node -> kill | stop | pause | power
        self._links = False
        # Membership changes to undo at the heal, in order: (how, node, by).
        self._undo: list[tuple[str, str, str]] = []

    def inject(self, step: Step) -> FaultWindow:
        w = FaultWindow(kind=step.kind, label=step.label, targets=list(step.targets),
                        spec=step.spec, start_s=round(self.log.clock(), 3), leader=step.leader,
                        hit_leader=step.hits_leader)
        self.windows.append(w)
        errors: list[str] = []
        if step.kind in _DOWN_BY:
            for n in step.targets:
                err = self._take_down(step.kind, n)
                if err:
                    errors.append(err)
        elif step.kind == POWER_LOSS:
            errors += self._cut_power(step)
        elif step.kind == "membership":
            errors += self._change_members(step)
        elif step.kind == CLOCK:
            errors += self._skew(step, step.offset_s, step.label)
        elif step.kind == "transfer":
            if len(step.targets) == 2:
                errors += self._do("transfer", step.label, list(step.targets),
                                   lambda: self.cluster.transfer(step.targets[1]))
            else:
                self.log.add("skip", step.label)
        else:
            state = (FaultState(netem={f"{a}>{b}": step.rates for a, b in step.links},
                                description=[step.label]) if step.rates is not None else
                     FaultState(blocked=list(step.links), description=[step.label]))
            self._links = True
            errors += self._do(step.kind, step.label, list(step.targets),
                               lambda: self.cluster.apply_faults(state))
        if errors:
            w.error = "; ".join(errors)
        return w

    def _take_down(self, kind: str, node: str) -> str | None:
        how = _DOWN_BY[kind]
        c = self.cluster
        actions: dict[str, tuple[str, Callable[[], object]]] = {
            "kill": (f"{node} killed (SIGKILL)", lambda: c.kill(node)),
            "stop": (f"{node} stopped (SIGTERM)", lambda: c.stop(node)),
            "pause": (f"{node} paused (SIGSTOP)", lambda: c.pause(node)),
        }
        if kind == "snapshot-kill":
            # The compaction is written on a thread of the node; the kill
            # lands while it is (or just after it was) on its way to disk.
            snap = self._do("compact", f"{node} asked to compact its log", [node],
                            lambda: c.compact(node))
            if snap:
                return snap[0]
        detail, action = actions[how]

        def noting_exit() -> object:
            try:
                return action()
            except Exception as e:
                if _still_exiting(e) == node:
                    # Signalled: it goes once its I/O ends, and the heal
                    # starts it again (or retries until it can).
                    self._down[node] = how
                raise

        errs = self._do(kind, detail, [node], noting_exit)
        if errs:
            return errs[0]
        self._down[node] = how
        return None

    def _change_members(self, step: Step) -> list[str]:
        """Remove, replace or grow (chaos/schedule.py); what could not be done."""
        m = self.members
        if m is None:
            return self._do("membership", step.label, list(step.targets), lambda: _no_members())
        if step.change == "grow":
            added: list[str] = []

            def grow() -> None:
                added.append(m.add())
                self._undo.append(("remove", added[0], ""))
                m.promote(added[0], CHAOS_CATCH_UP_S)

            return self._do("membership", step.label, [], grow)
        node = step.targets[0]
        if step.change == "remove":
            def out() -> None:
                m.remove(node)
                self._undo.append(("readd", node, ""))

            return self._do("membership", step.label, [node], out)

        def swap() -> None:
            by = m.replace(node)
            self._undo.append(("replace", by, node))

        return self._do("membership", step.label, [node], swap)

    def _undo_members(self) -> list[str]:
        """Undo the membership changes of the faults healed, newest first."""
        failed: list[str] = []
        while self._undo and self.members is not None:
            failed += self._undo_one(self.members, *self._undo.pop())
        return failed

    def _undo_one(self, m: MembersLike, how: str, node: str, by: str) -> list[str]:
        if how == "remove":
            return self._do("membership", f"{node} removed again", [node],
                            lambda: m.remove(node))
        if how == "readd":
            def readd() -> None:
                m.add(node)
                m.promote(node, CHAOS_CATCH_UP_S)

            return self._do("membership", f"{node} added back", [node], readd)
        return self._do("membership", f"{node} replaced by {by} again", [node, by],
                        lambda: m.replace(node, by=by))

    def _cut_power(self, step: Step) -> list[str]:
        power = self.power
        if power is None:
            err = "no power-loss mounts (the schedule should not have offered power-loss)"
            self.log.add(POWER_LOSS, step.label, list(step.targets), error=err)
            return [f"{step.label}: {err}"]
        try:
            dropped = power.cut(step.targets)
        except Exception as e:  # recorded as a failed action; the run goes on
            err = f"{type(e).__name__}: {e}"
            self.log.add(POWER_LOSS, step.label, list(step.targets), error=err)
            # Whatever was killed before the failure must come back.
            up = {s.id for s in self.cluster.status(timeout_s=0.3) if s.process != "down"}
            up.discard(_still_exiting(e) or "")  # killed, not gone yet
            self._down.update({n: "power" for n in step.targets if n not in up})
            return [f"{step.label}: {err}"]
        self._down.update({n: "power" for n in step.targets})
        self.log.add(POWER_LOSS, f"{step.label}; dropped {describe_dropped(dropped)}",
                     list(step.targets))
        return []

    def heal(self, step: Step, window: FaultWindow) -> list[str]:
        """Undo `step`; returns what could not be undone."""
        failed: list[str] = []
        if step.kind == "membership":
            failed += self._undo_members()
        if step.kind == CLOCK:
            failed += self._skew(step, -step.offset_s, f"{step.targets[0]}'s host clock set back")
        elif step.kind == POWER_LOSS:
            failed += self._restore_power(list(step.targets))
        elif step.kind in _DOWN_BY:
            for n in step.targets:
                failed += self._bring_back(n)
        elif self._links:
            failed += self._do("heal", f"healed: {step.label}", [],
                               lambda: self.cluster.apply_faults(FaultState()))
            if not failed:
                self._links = False
        window.end_s = round(self.log.clock(), 3)
        return failed

    def _bring_back(self, node: str) -> list[str]:
        how = self._down.get(node)
        if how is None:
            return []
        if how == "pause":
            errs = self._do("resume", f"{node} resumed (SIGCONT)", [node],
                            lambda: self.cluster.resume(node))
        elif how == "power":
            return self._restore_power([node])
        else:
            errs = self._do("start", f"{node} restarted", [node],
                            lambda: self.cluster.start(node))
        if not errs:
            del self._down[node]
        return errs

    def _restore_power(self, nodes: list[str]) -> list[str]:
        """Start the nodes whose power was cut, all at once; note each one
        that did not come back from its own disk."""
        nodes = [n for n in nodes if self._down.get(n) == "power"]
        if not nodes or self.power is None:
            return []
        power = self.power
        came: dict[str, str | None] = {}
        errs = self._do("start", f"{','.join(nodes)} restarted after the power cut", nodes,
                        lambda: came.update(power.restore(nodes)))
        for n, lost in came.items():
            if lost is not None:
                self.log.add(DATA_LOST, lost, [n])
        if not errs:
            for n in nodes:
                del self._down[n]
        return errs

    def heal_all(self) -> list[str]:
        """Undo every fault: links first (a node started later loads them),
        then start or resume every node taken down. Returns what failed."""
        failed = self._do("heal", "healed every link", [],
                          lambda: self.cluster.apply_faults(FaultState()))
        failed += self._restore_power(list(self._down))
        for n in list(self._down):
            failed += self._bring_back(n)
        failed += self._undo_members()
        now = round(self.log.clock(), 3)
        for w in self.windows:
            if w.end_s is None:
                w.end_s = now
        return failed

    def _skew(self, step: Step, offset_s: float, detail: str) -> list[str]:
        clock = self.cluster
        if not isinstance(clock, ClockLike):
            err = "this cluster's clocks cannot be set (the run should have refused)"
            self.log.add(CLOCK, detail, list(step.targets), error=err)
            return [f"{detail}: {err}"]
        node = step.targets[0]
        return self._do(CLOCK, detail, [node], lambda: clock.skew_clock(node, offset_s))

    def _do(self, kind: str, detail: str, targets: list[str],
            action: Callable[[], object]) -> list[str]:
        try:
            action()
        except Exception as e:  # recorded as a failed action; the run goes on
            err = f"{type(e).__name__}: {e}"
            self.log.add(kind, detail, targets, error=err)
            return [f"{detail}: {err}"]
        self.log.add(kind, detail, targets)
        return []


def _no_members() -> None:
    raise ChaosError("membership faults need the supervisor's membership changes; "
                     "`raftctl chaos run` provides them")
