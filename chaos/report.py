"""The verdict on a recorded run, and its timeline as rows of data: pure
functions of a `RunRecord`, so a saved run is judged again exactly as it was
(`raftctl chaos report`). Nothing here runs, signals or talks to a node.
"""

from __future__ import annotations

import math
from collections import Counter

import msgspec

from chaos import checks
from chaos.checks import ACKED_WRITES, LINEARIZABLE
from chaos.invariants import (
    ACKNOWLEDGED_DURABLE,
    APPLIED_STATE,
    COMMIT_MONOTONIC,
    ELECTION_SAFETY,
    LEADER_COMPLETENESS,
    STATE_MACHINE_SAFETY,
    TERM_MONOTONIC,
    RaftInvariants,
    Violation,
)
from chaos.linearizability import OK, UNKNOWN, WRITE
from chaos.lock_checks import LOCK_FENCING, ONE_LEADER, LockStats, lock_checks
from chaos.record import (
    DATA_LOST,
    FINAL_CLIENT,
    RECOVERY_CLIENT,
    NodeSample,
    RunRecord,
    observe_sample,
)
from chaos.revision_checks import TXN_ORDER, WATCH_DELIVERY, RevStats, revision_checks
from chaos.schedule import POWER_LOSS
from chaos.set_checks import (
    DUPLICATED_ELEMENTS,
    LOST_ELEMENTS,
    STALE_SET_READ,
    UNEXPECTED_ELEMENTS,
    SetStats,
    set_checks,
)
from chaos.workload import APPEND, CAS, CAS_FAILED, OpRecord
from node.recipes.lock import LOCK_PREFIX

MISMATCH = "mismatch"

REPLICAS = "replicas converge"
RECOVERY = "recovery"
RUN = "run"
# A node that did not come back from its own disk after a power cut.
POWER_LOSS_ROW = "power loss"
# The verdict's rows, in order, and the checks each one covers.
ROWS: dict[str, tuple[str, ...]] = {
    LINEARIZABLE: (LINEARIZABLE, STALE_SET_READ),
    ACKED_WRITES: (ACKED_WRITES, ACKNOWLEDGED_DURABLE),
    LOST_ELEMENTS: (LOST_ELEMENTS,),
    DUPLICATED_ELEMENTS: (DUPLICATED_ELEMENTS,),
    UNEXPECTED_ELEMENTS: (UNEXPECTED_ELEMENTS,),
    TXN_ORDER: (TXN_ORDER,),
    WATCH_DELIVERY: (WATCH_DELIVERY,),
    LOCK_FENCING: (LOCK_FENCING,),
    ONE_LEADER: (ONE_LEADER,),
    POWER_LOSS_ROW: (POWER_LOSS_ROW,),
    ELECTION_SAFETY: (ELECTION_SAFETY,),
    TERM_MONOTONIC: (TERM_MONOTONIC, COMMIT_MONOTONIC),
    STATE_MACHINE_SAFETY: (STATE_MACHINE_SAFETY, LEADER_COMPLETENESS),
    APPLIED_STATE: (APPLIED_STATE,),
    REPLICAS: (REPLICAS,),
    RECOVERY: (RECOVERY,),
    RUN: (RUN,),
}
# What each row promises, for the text and the page.
MEANS: dict[str, str] = {
    LINEARIZABLE: "every key's history has a linearization (one register per key), and no "
                  "read of a set misses an element known to be in it",
    ACKED_WRITES: "every acknowledged write is in the final state",
    LOST_ELEMENTS: "every acknowledged append's element is in the final read of its set",
    DUPLICATED_ELEMENTS: "no element is in a set twice (each append applied at most once)",
    UNEXPECTED_ELEMENTS: "a set holds only elements appended to it, none whose append was "
                         "refused",
    TXN_ORDER: "transactions and range reads: the revisions answered are a linearization "
               "(real-time order, distinct revisions, each range read one whole revision)",
    WATCH_DELIVERY: "every watcher got every change of its prefix exactly once, in revision "
                    "order, with its value, across reconnects and node deaths",
    LOCK_FENCING: "the lock's guarded writes: tokens never go back in revision order, and "
                  "each write carried the token of the lock's owner at its revision",
    ONE_LEADER: "at most one leader per election at any revision: the terms campaigners "
                "believed they had never overlap, and each began when the store said so",
    POWER_LOSS_ROW: "a node whose power was cut comes back from what its disk kept",
    ELECTION_SAFETY: "at most one leader per term (§5.2)",
    TERM_MONOTONIC: "terms and commit indexes never go back; a term led survives restarts",
    STATE_MACHINE_SAFETY: "committed prefixes agree, and leaders hold them (§5.4)",
    APPLIED_STATE: "replicas at one applied index hold one state (digests)",
    REPLICAS: "after healing every node reaches the same applied index",
    RECOVERY: "after healing a write is acknowledged within the bound",
    RUN: "the run did everything it had to",
}


class Verdict(msgspec.Struct, kw_only=True):
    ok: bool
    checks: dict[str, str]  # row -> "ok: ..." or "FAILED: ..." summary
    violations: list[Violation]


def raft_invariants(rec: RunRecord) -> list[Violation]:
    """The simulator's Raft invariants on the run's status samples and
    digests, in the order they were taken, and on the acknowledged indexes
    against where the replicas settled."""
    inv = RaftInvariants()
    found: list[Violation] = []
    timed = sorted([(s.t, 0, k) for k, s in enumerate(rec.samples)]
                   + [(d.t, 1, k) for k, d in enumerate(rec.digests)])
    for _, what, k in timed:
        if what == 0:
            found += observe_sample(inv, rec.samples[k], rec.durable)
        else:
            d = rec.digests[k]
            found += inv.observe_digest(d.t, d.node, d.applied, d.digest)
    for o in rec.ops:
        if o.outcome == OK and o.index is not None and o.kind in (WRITE, CAS, APPEND):
            inv.acknowledged(o.index, f"{o.kind} {o.key}={o.value!r} by {o.client}")
    if rec.converged and rec.final_digests:
        t = max(d.t for d in rec.final_digests.values())
        found += inv.converged(t, {n: d.applied for n, d in rec.final_digests.items()})
    return [msgspec.structs.replace(v, ops=checks.time_slice(rec.ops, v.t_s))
            if v.t_s is not None and not v.ops else v for v in found]


def judge(rec: RunRecord) -> Verdict:
    """Every promise of the run, each as a row: linearizable, no
    acknowledged write lost, the Raft invariants on live status, replicas
    converging, and the cluster serving again within the bound."""
    v: list[Violation] = []
    v += checks.linearizability(rec.ops, rec.keys + rec.txn_keys)
    v += checks.cas_preconditions(rec.ops)
    v += checks.lost_writes(rec.ops, rec.keys)
    found, sets = set_checks(rec.ops, rec.set_keys)
    v += found
    found, revs = revision_checks(rec.ops) if rec.txn_keys else ([], RevStats(0, 0, 0, 0))
    v += found
    found, locks = (lock_checks(rec.ops, f"{LOCK_PREFIX}{rec.lock_name}/") if rec.lock_name
                    else ([], LockStats(0, 0, 0, 0)))
    v += found
    v += [Violation(check=POWER_LOSS_ROW, t_s=e.t, detail=e.detail,
                    ops=checks.time_slice(rec.ops, e.t))
          for e in rec.events if e.kind == DATA_LOST]
    v += raft_invariants(rec)
    final = list(rec.final_digests.values())
    if not rec.converged:
        at = ", ".join(f"{d.node}@{d.applied}" for d in final) or "no digests"
        v.append(Violation(check=REPLICAS, t_s=rec.healed_s, detail=(
            f"the nodes did not reach the same applied index within {rec.recovery_bound_s:g}s "
            f"after healing ({at})")))
    elif len(final) < len(rec.nodes):
        v.append(Violation(check=REPLICAS, t_s=rec.healed_s, detail=(
            f"only {len(final)} of {len(rec.nodes)} nodes reported a final digest")))
    if rec.recovery_s is None:
        v.append(Violation(check=RECOVERY, t_s=rec.healed_s, detail=(
            f"no write was acknowledged within {rec.recovery_bound_s:g}s after healing")))
    elif rec.recovery_s > rec.recovery_bound_s:
        v.append(Violation(check=RECOVERY, t_s=rec.healed_s, detail=(
            f"the first write after healing was acknowledged after {rec.recovery_s:.2f}s, "
            f"over the bound of {rec.recovery_bound_s:g}s")))
    v += [Violation(check=RUN, detail=m) for m in rec.problems]
    return Verdict(ok=not v, checks=_rows(rec, v, sets, revs, locks), violations=v)


def _rows(rec: RunRecord, v: list[Violation], sets: SetStats,
          revs: RevStats, locks: LockStats) -> dict[str, str]:
    by = Counter(x.check for x in v)
    client_ops = [o for o in rec.ops if o.client not in (RECOVERY_CLIENT, FINAL_CLIENT)]
    acked = sum(1 for o in client_ops if o.kind in (WRITE, CAS) and o.outcome == OK)
    final = list(rec.final_digests.values())
    idx = final[0].applied if final else 0
    cuts = sum(len(w.targets) for w in rec.faults if w.kind == POWER_LOSS and not w.error)
    no_sets = "no set in this run"
    ok = {
        LINEARIZABLE: f"{sum(1 for o in rec.ops if o.key in rec.keys)} operations on "
                      f"{len(rec.keys)} keys"
                      + (f", {revs.txns + revs.ranges} transactions and range reads on "
                         f"{len(rec.txn_keys)} keys" if rec.txn_keys else "")
                      + (f", {sets.reads} reads of {sets.keys} sets" if sets.keys else ""),
        ACKED_WRITES: f"{acked} acknowledged writes, final values of {len(rec.keys)} keys "
                      "explained",
        LOST_ELEMENTS: f"all {sets.acknowledged} acknowledged elements of {sets.keys} sets "
                       "present" if sets.keys else no_sets,
        DUPLICATED_ELEMENTS: f"{sets.present} elements present, each once "
                             f"({sets.unknown} appends of unknown outcome)"
                             if sets.keys else no_sets,
        UNEXPECTED_ELEMENTS: f"every one of the {sets.present} elements was appended"
                             if sets.keys else no_sets,
        TXN_ORDER: f"{revs.txns} transactions and {revs.ranges} range reads on "
                   f"{len(rec.txn_keys)} keys" if rec.txn_keys else "no transaction in this run",
        WATCH_DELIVERY: f"{revs.events} events to {revs.watchers} watchers"
                        if rec.txn_keys else "no watch in this run",
        LOCK_FENCING: f"{locks.acquired} acquisitions, {locks.accepted} guarded writes "
                      f"accepted, {locks.fenced} fenced off" if rec.lock_name
                      else "no lock in this run",
        ONE_LEADER: f"{locks.terms} terms of leadership, none overlapping" if rec.lock_name
                    else "no election in this run",
        POWER_LOSS_ROW: f"{cuts} power cuts, every node came back from its disk" if cuts
                        else "no power cut in this run",
        ELECTION_SAFETY: f"{_terms_led(rec)} terms with a leader, one each",
        TERM_MONOTONIC: f"{len(rec.samples)} status samples of {len(rec.nodes)} nodes",
        STATE_MACHINE_SAFETY: f"{_commit_marks(rec)} committed (index, term) marks agree",
        APPLIED_STATE: f"{len(rec.digests)} digests agree wherever indexes met",
        REPLICAS: f"all {len(final)} nodes at index {idx} with equal state",
        RECOVERY: (f"a write acknowledged {rec.recovery_s:.2f}s after healing "
                   f"(bound {rec.recovery_bound_s:g}s)" if rec.recovery_s is not None else ""),
        RUN: f"{len(rec.faults)} faults, {sum(1 for e in rec.events if not e.error)} "
             f"nemesis actions",
    }
    out: dict[str, str] = {}
    for row, names in ROWS.items():
        n = sum(by[c] for c in names)
        if n:
            which = ", ".join(f"{c} x{by[c]}" for c in names if by[c])
            out[row] = f"FAILED: {n} problem(s) ({which})"
        else:
            out[row] = "ok: " + ok[row]
    return out


def _terms_led(rec: RunRecord) -> int:
    return len({ns.term for s in rec.samples for ns in s.nodes.values()
                if ns.role == "leader"})


def _commit_marks(rec: RunRecord) -> int:
    return len({(ns.commit, ns.commit_term) for s in rec.samples for ns in s.nodes.values()
                if ns.commit_term is not None})


# --- counts -------------------------------------------------------------------------


def bucket(o: OpRecord) -> str:
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
        c[bucket(o)] += 1
    return out


def fault_counts(rec: RunRecord) -> dict[str, dict[str, int]]:
    """Per fault kind: how many were injected, how many hit the leader, and
    how many failed to be carried out."""
    out: dict[str, dict[str, int]] = {}
    for w in rec.faults:
        c = out.setdefault(w.kind, {"injected": 0, "hit_leader": 0, "failed": 0})
        c["injected"] += 1
        c["hit_leader"] += int(w.hit_leader)
        c["failed"] += int(w.error is not None)
    return dict(sorted(out.items()))


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


# What a timeline cell and column mean (printed under the text timeline).
LEGEND = (
    ("L7", "leader of term 7"), ("F7", "follower in term 7"), ("C8", "candidate in term 8"),
    ("P7", "pre-candidate (PreVote) in term 7"), ("?", "running, but did not answer"),
    ("paused", "stopped by SIGSTOP"), ("down", "not running"),
    ("ok", "operations answered in that second (a cas that found another value too)"),
    ("fail", "refused or unanswered: certainly no effect"),
    ("unkn", "outcome unknown: a write that may or may not have taken effect"),
)


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
    end = rec.end_s()
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
        b = bucket(o)
        if b in (OK, MISMATCH):
            row.ok += 1
        elif b == UNKNOWN:
            row.unknown += 1
        else:
            row.fail += 1
    return rows


def summary(rec: RunRecord, verdict: Verdict) -> dict[str, object]:
    """The report without the raw history and samples (for `--json`)."""
    return {
        "seed": rec.seed, "duration_s": rec.duration_s, "interval_s": rec.interval_s,
        "nemesis": rec.nemesis, "workload": rec.workload, "clients": rec.clients,
        "shares": rec.shares, "rate": rec.rate, "value_sizes": rec.value_sizes,
        "pipeline": rec.depth, "keys": rec.keys, "set_keys": rec.set_keys, "nodes": rec.nodes,
        "notes": rec.notes,
        "healed_s": rec.healed_s, "recovery_s": rec.recovery_s,
        "recovery_bound_s": rec.recovery_bound_s,
        "operations": outcome_counts(rec),
        "faults": fault_counts(rec),
        "leader_targeted": sum(1 for w in rec.faults if w.hit_leader),
        "fault_windows": msgspec.to_builtins(rec.faults),
        "events": msgspec.to_builtins(rec.events),
        "timeline": msgspec.to_builtins(timeline(rec)),
        "verdict": msgspec.to_builtins(verdict),
    }
