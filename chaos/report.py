"""What a nemesis run recorded (faults, status samples, digests, the client
history), the verdict on it, and the timeline as rows of data. Pure functions
of the record: nothing here runs, signals or talks to a node.
"""

from __future__ import annotations

import math
from collections import defaultdict

import msgspec

from chaos.linearizability import OK, READ, UNKNOWN, WRITE, check_history
from chaos.workload import CAS, CAS_FAILED, OpRecord, checker_ops

MISMATCH = "mismatch"

# The client names the run itself uses after the fault phase.
RECOVERY_CLIENT = "recovery"
FINAL_CLIENT = "final"

# Verdict check names, in the order they are reported.
ACKED_WRITES = "acknowledged writes"
REPLICAS = "replicas agree"
LINEARIZABLE = "linearizable"
RECOVERY = "recovery"
RUN = "run"
CHECKS = (ACKED_WRITES, REPLICAS, LINEARIZABLE, RECOVERY, RUN)


class FaultEvent(msgspec.Struct, kw_only=True):
    """Something the run did or saw: a fault, its repair, a leader change."""

    t: float
    kind: str
    detail: str
    targets: list[str] = []
    error: str | None = None


class NodeSample(msgspec.Struct, kw_only=True, omit_defaults=True):
    process: str  # running | paused | down
    role: str | None = None  # None: running but did not answer
    term: int | None = None
    applied: int | None = None
    commit: int | None = None


class StatusSample(msgspec.Struct, kw_only=True):
    t: float
    nodes: dict[str, NodeSample]


class DigestSample(msgspec.Struct, kw_only=True):
    t: float
    node: str
    applied: int
    digest: str


class RunRecord(msgspec.Struct, kw_only=True):
    """Everything a run recorded; `judge` decides on it alone."""

    seed: int
    duration_s: float
    interval_s: float
    nemeses: list[str]
    clients: int
    keys: list[str]
    nodes: list[str]
    recovery_bound_s: float
    events: list[FaultEvent] = []
    samples: list[StatusSample] = []
    digests: list[DigestSample] = []
    final_digests: dict[str, DigestSample] = {}
    ops: list[OpRecord] = []
    healed_s: float | None = None
    recovery_s: float | None = None  # heal -> a leader acknowledged a write
    converged: bool = False
    problems: list[str] = []  # the run itself could not do something it must


class Violation(msgspec.Struct, kw_only=True):
    check: str
    message: str


class Verdict(msgspec.Struct, kw_only=True):
    ok: bool
    checks: dict[str, str]  # check -> "ok: ..." or "FAILED: ..." summary
    violations: list[Violation]


# --- the verdict -----------------------------------------------------------------


def _writes(ops: list[OpRecord], key: str) -> list[OpRecord]:
    return [o for o in ops if o.key == key and o.kind in (WRITE, CAS) and o.outcome != "fail"]


def lost_writes(ops: list[OpRecord], keys: list[str]) -> list[str]:
    """Acknowledged writes that the final linearizable read of their key
    cannot be reconciled with. With unique values the final value names the
    write that produced it (W); an acknowledged write invoked after W had
    completed was ordered after W, so it must have replaced W's value: if W's
    value is still there, that write is lost. A final value of nothing, while
    some write was acknowledged, loses them all."""
    out: list[str] = []
    finals = {o.key: o for o in ops if o.client == FINAL_CLIENT and o.kind == READ}
    for key in keys:
        fin = finals.get(key)
        if fin is None or fin.outcome != OK:
            out.append(f"{key}: the final read did not succeed, so no acknowledged write "
                       "of it can be shown present")
            continue
        writes = _writes(ops, key)
        acked = [w for w in writes if w.outcome == OK]
        if fin.value is None:
            out.extend(f"{key}: acknowledged {_desc(w)} is lost (the key is absent)"
                       for w in acked)
            continue
        by = [w for w in writes if w.value == fin.value]
        if not by:
            out.append(f"{key}: final value {fin.value!r} was written by no operation")
            continue
        w0 = by[0]
        if w0.outcome != OK:
            continue  # an unknown write may have taken effect as late as the end
        out.extend(f"{key}: acknowledged {_desc(w)} is lost: it began after {_desc(w0)} had "
                   f"completed, yet the final value is {fin.value!r}"
                   for w in acked if w.invoke > w0.complete)
    return out


def cas_preconditions(ops: list[OpRecord]) -> list[str]:
    """The parts of a compare-and-set's contract the register model leaves
    out. With unique values and no deletes, a key holds a value at most once,
    so two successful cas from the same expected value cannot both be right;
    and a cas that succeeded expecting the key absent must not follow a write
    that had already completed."""
    out: list[str] = []
    from_value: dict[tuple[str, str | None], OpRecord] = {}
    for op in sorted((o for o in ops if o.kind == CAS and o.outcome == OK),
                     key=lambda o: o.invoke):
        prev = from_value.get((op.key, op.expected))
        if prev is not None:
            out.append(f"{op.key}: {_desc(prev)} and {_desc(op)} both succeeded from "
                       f"{op.expected!r}")
        from_value[(op.key, op.expected)] = op
        if op.expected is None:
            earlier = [w for w in ops if w.key == op.key and w.kind in (WRITE, CAS)
                       and w.outcome == OK and w.complete < op.invoke]
            if earlier:
                out.append(f"{op.key}: {_desc(op)} found the key absent after "
                           f"{_desc(earlier[0])} had completed")
    return out


def divergent_digests(digests: list[DigestSample]) -> list[str]:
    """State machines that differ at the same applied index: the digest of a
    replica at index i is a function of the first i log entries, which Raft
    makes the same on every node (State Machine Safety, §5.4.3)."""
    at: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for d in digests:
        nodes = at[d.applied][d.digest]
        if d.node not in nodes:
            nodes.append(d.node)
    out = []
    for applied in sorted(at):
        seen = at[applied]
        if len(seen) > 1:
            parts = "; ".join(f"{','.join(sorted(ns))}: {dg[:12]}" for dg, ns in seen.items())
            out.append(f"at applied index {applied} the state machines differ ({parts})")
    return out


def _desc(o: OpRecord) -> str:
    what = f"{o.kind} {o.key}={o.value!r}"
    if o.kind == CAS:
        what = f"cas {o.key} {o.expected!r}->{o.value!r}"
    end = f"{o.complete_s:.3f}s" if o.outcome != UNKNOWN else "?"
    return f"{what} by {o.client} [{o.outcome}, {o.invoke_s:.3f}s..{end}]"


def judge(rec: RunRecord) -> Verdict:
    """The four promises: every acknowledged write is present, replicas agree
    at equal applied indexes, the history is linearizable per key, and the
    cluster serves again within the bound after healing."""
    v: list[Violation] = []
    checks: dict[str, str] = {}

    lost = lost_writes(rec.ops, rec.keys)
    v += [Violation(check=ACKED_WRITES, message=m) for m in lost]
    acked = sum(1 for o in rec.ops if o.kind in (WRITE, CAS) and o.outcome == OK
                and o.client not in (RECOVERY_CLIENT, FINAL_CLIENT))
    checks[ACKED_WRITES] = (f"FAILED: {len(lost)} problem(s)" if lost else
                            f"ok: {acked} acknowledged writes, final values of "
                            f"{len(rec.keys)} keys explained")

    final = list(rec.final_digests.values())
    div = divergent_digests([*rec.digests, *final])
    rep: list[str] = list(div)
    if not rec.converged:
        at = ", ".join(f"{d.node}@{d.applied}" for d in final) or "no digests"
        rep.append(f"the nodes did not reach the same applied index within "
                   f"{rec.recovery_bound_s:g}s after healing ({at})")
    elif len(final) < len(rec.nodes):
        rep.append(f"only {len(final)} of {len(rec.nodes)} nodes reported a final digest")
    v += [Violation(check=REPLICAS, message=m) for m in rep]
    idx = final[0].applied if final else 0
    checks[REPLICAS] = (f"FAILED: {len(rep)} problem(s)" if rep else
                        f"ok: {len(rec.digests)} digest samples agree; all {len(final)} nodes "
                        f"at index {idx} with equal state")

    cops = checker_ops(rec.ops)
    lin = [f"{f.key}: {f.detail}" for f in check_history(cops)]
    lin += cas_preconditions(rec.ops)
    v += [Violation(check=LINEARIZABLE, message=m) for m in lin]
    checks[LINEARIZABLE] = (f"FAILED: {len(lin)} problem(s)" if lin else
                            f"ok: {len(cops)} operations on {len(rec.keys)} keys")

    if rec.recovery_s is None:
        msg = f"no write was acknowledged within {rec.recovery_bound_s:g}s after healing"
        v.append(Violation(check=RECOVERY, message=msg))
        checks[RECOVERY] = "FAILED: " + msg
    elif rec.recovery_s > rec.recovery_bound_s:
        msg = (f"the first write after healing was acknowledged after {rec.recovery_s:.2f}s, "
               f"over the bound of {rec.recovery_bound_s:g}s")
        v.append(Violation(check=RECOVERY, message=msg))
        checks[RECOVERY] = "FAILED: " + msg
    else:
        checks[RECOVERY] = (f"ok: a write acknowledged {rec.recovery_s:.2f}s after healing "
                            f"(bound {rec.recovery_bound_s:g}s)")

    v += [Violation(check=RUN, message=m) for m in rec.problems]
    checks[RUN] = (f"FAILED: {len(rec.problems)} problem(s)" if rec.problems else
                   f"ok: {sum(1 for e in rec.events if not e.error)} nemesis actions, "
                   f"{len(rec.samples)} status samples")
    return Verdict(ok=not v, checks=checks, violations=v)


# --- the timeline -----------------------------------------------------------------


class TimelineRow(msgspec.Struct, kw_only=True):
    """One second of the run: what happened, each node's role and term at
    the last sample of that second, and the client operations that completed
    in it: `ok` answered (a cas that found another value counts: the cluster
    served it), `fail` refused or unanswered, `unknown` outcome unknown."""

    second: int
    events: list[str]
    nodes: dict[str, str]
    ok: int = 0
    fail: int = 0
    unknown: int = 0


def node_cell(s: NodeSample | None) -> str:
    """`L7` leader of term 7, `F7`, `C8` candidate, `P7` pre-candidate,
    `paused`, `down`, `?` (running but no answer)."""
    if s is None:
        return ""
    if s.process != "running":
        return s.process
    if s.role is None:
        return "?"
    letter = {"leader": "L", "follower": "F", "candidate": "C", "pre_candidate": "P"}.get(
        s.role, s.role[:1].upper())
    return f"{letter}{s.term}"


def timeline(rec: RunRecord) -> list[TimelineRow]:
    end = max([0.0, *(e.t for e in rec.events), *(s.t for s in rec.samples),
               *(o.complete_s for o in rec.ops)])
    rows = [TimelineRow(second=i, events=[], nodes={}) for i in range(math.floor(end) + 1)]
    for e in rec.events:
        text = e.detail if e.error is None else f"{e.detail} (failed: {e.error})"
        rows[int(e.t)].events.append(text)
    last: dict[str, NodeSample] = {}
    samples = sorted(rec.samples, key=lambda s: s.t)
    i = 0
    for row in rows:
        while i < len(samples) and samples[i].t < row.second + 1:
            last.update(samples[i].nodes)
            i += 1
        row.nodes = {n: node_cell(last.get(n)) for n in rec.nodes}
    for o in rec.ops:
        row = rows[int(o.complete_s)]
        b = _bucket(o)
        if b in (OK, MISMATCH):
            row.ok += 1
        elif b == UNKNOWN:
            row.unknown += 1
        else:
            row.fail += 1
    return rows


def _bucket(o: OpRecord) -> str:
    """ok, mismatch (a cas the cluster answered: the value differed), fail
    (no answer or refused: certainly no effect) or unknown."""
    if o.kind == CAS and o.error == CAS_FAILED:
        return MISMATCH
    return o.outcome


def outcome_counts(rec: RunRecord) -> dict[str, dict[str, int]]:
    """Per operation kind, how many ended ok, mismatch, fail and unknown."""
    out: dict[str, dict[str, int]] = {}
    for o in rec.ops:
        c = out.setdefault(o.kind, {OK: 0, MISMATCH: 0, "fail": 0, UNKNOWN: 0})
        c[_bucket(o)] += 1
    return out


def summary(rec: RunRecord, verdict: Verdict) -> dict[str, object]:
    """The report without the raw history and samples (for `--json`)."""
    return {
        "seed": rec.seed, "duration_s": rec.duration_s, "interval_s": rec.interval_s,
        "nemeses": rec.nemeses, "clients": rec.clients, "keys": rec.keys, "nodes": rec.nodes,
        "healed_s": rec.healed_s, "recovery_s": rec.recovery_s,
        "recovery_bound_s": rec.recovery_bound_s,
        "operations": outcome_counts(rec),
        "events": msgspec.to_builtins(rec.events),
        "timeline": msgspec.to_builtins(timeline(rec)),
        "verdict": msgspec.to_builtins(verdict),
    }
