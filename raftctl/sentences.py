"""What each log event means, as a sentence: one function per event of
docs/LOGS.md, given what earlier lines established (`Track`). Pure, and
silent: `raftctl/explain.py` decides when and how a sentence is told.

References: "§5.4.1" and "Figure 8" are the Raft paper (Ongaro and
Ousterhout, extended version); "thesis §9.6" is Ongaro's PhD thesis. A
Paxos node's events are told by raftctl/paxos_sentences.py; the events both
algorithms log tell a Paxos line (one with a `ballot`) there too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Said:
    """What one log line means. `gist` is what happened (a repeat is
    recognised by it), `facts` the particulars of this line, `lesson` the
    rule at work, told the first time its `topic` comes up, and `ref` where
    the rule is stated."""

    gist: str
    facts: str = ""
    lesson: str = ""
    ref: str | None = None
    topic: str = ""

    def text(self, with_lesson: bool) -> str:
        parts = [p for p in (self.facts, self.lesson if with_lesson else "") if p]
        out = f"{self.gist}: {'; '.join(parts)}" if parts else self.gist
        return f"{out} ({self.ref})" if self.ref else out


def clock(ts: str) -> str:
    """The time of day of a log timestamp, to the millisecond (UTC, as logs)."""
    return ts[11:23] if len(ts) >= 23 else ts


def names(nodes: Sequence[str]) -> str:
    """n1, n2 and n3."""
    if len(nodes) <= 1:
        return "".join(nodes)
    return ", ".join(nodes[:-1]) + " and " + nodes[-1]


@dataclass
class Track:
    """What the lines read so far established, for the sentences to use."""

    nodes: list[str]
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # each node's previous line
    proposed: dict[str, int] = field(default_factory=dict)  # term of its latest pre-vote
    prevotes: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    votes: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # (cand, term)
    voted_for: dict[tuple[str, int], str] = field(default_factory=dict)  # (voter, term)
    stood: dict[int, list[str]] = field(default_factory=dict)  # term -> candidates
    leader_of: dict[int, str] = field(default_factory=dict)
    leading: dict[str, int] = field(default_factory=dict)  # node -> the term it leads

    def majority(self) -> int:
        return len(self.nodes) // 2 + 1

    def last_event(self, node: str) -> str | None:
        prev = self.last.get(node)
        return None if prev is None else str(prev.get("event"))


# --- one sentence per event of docs/LOGS.md ---------------------------------------

Sayer = Callable[[dict[str, Any], Track], Said]


def _plural(n: Any, one: str, many: str) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {many}"


def _node_started(ev: dict[str, Any], t: Track) -> Said:
    n = ev["node"]
    last, commit, snap = (ev.get("last_index") or 0, ev.get("commit") or 0,
                          ev.get("snapshot_index") or 0)
    log = ("an empty log" if not last else
           f"its log up to index {last} (commit {commit}"
           + (f", snapshot at {snap}" if snap else "") + ")")
    facts = f"it recovered {log} from its disk; peers over {ev.get('transport', '?')}, " \
            f"fsync {ev.get('fsync', '?')}"
    prev = t.last.get(n)
    if prev is None:
        return Said(f"{n} started", facts)
    if prev.get("event") == "node_stopped":
        return Said(f"{n} started again", facts)
    return Said(f"{n} started again",
                f"its previous run ended without a clean stop after its last line at "
                f"{clock(str(prev.get('ts', '')))} (killed, crashed or power lost); {facts}",
                "a node's term, vote and log are on its disk before it answers anyone, so it "
                "comes back as the node it was", "Figure 2", "restart")


def _durability_off(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} runs with fsync = never",
                "it acknowledges writes before they are on its disk",
                "a crash can lose them: Raft assumes stable storage", "Figure 2")


def _wal_tail_truncated(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']}'s recovery cut {ev.get('bytes')} bytes off the end of its "
                "write-ahead log", "",
                "a record half written when the process died; only records that reached the "
                "disk whole count")


def _wal_reservation_off(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']}'s filesystem refused to reserve log blocks ahead",
                f"{ev.get('error')}", "writes go on, each sync a little slower")


def _prevote_started(ev: dict[str, Any], t: Track) -> Said:
    n, term = ev["node"], ev.get("proposed_term")
    after = " after it stopped leading" if t.last_event(n) == "stepped_down" else ""
    return Said(f"{n}'s election timer fired{after}; it asked for pre-votes for term {term}", "",
                "it heard from no leader for an election timeout (randomized, so that nodes "
                "rarely time out together), and first asks whether a majority would vote for "
                "it, so that a node that was only cut off cannot disrupt the others when it "
                "returns", "§5.2, thesis §9.6")


def _election_started(ev: dict[str, Any], t: Track) -> Said:
    n, term = ev["node"], int(ev.get("term", 0))
    gist = f"{n} stood for election in term {term}"
    lesson = "it raised its term, voted for itself and asked the others for their votes"
    if t.last_event(n) == "timeout_now_received":
        return Said(gist, "at once, as the leader asked, without a pre-vote", lesson,
                    "thesis §3.10", "election")
    if t.proposed.get(n) == term:
        granted = [n, *t.prevotes.get((n, term), [])]
        return Said(gist, f"its pre-vote won ({names(granted)} would vote for it; a "
                    f"majority is {t.majority()})", lesson, "§5.2", "election")
    return Said(gist, "its election timer fired", lesson, "§5.2", "election")


def _positions(ev: dict[str, Any], voter: str, cand: str) -> str:
    """The two logs' last entries, if the line carries them."""
    keys = ("candidate_last_term", "candidate_last_index", "last_term", "last_index")
    if not all(k in ev for k in keys):
        return ""
    return (f"{cand}'s log ends at term {ev['candidate_last_term']} index "
            f"{ev['candidate_last_index']}, {voter}'s at term {ev['last_term']} index "
            f"{ev['last_index']}")


def _vote_granted(ev: dict[str, Any], t: Track) -> Said:
    v, c, term = ev["node"], ev.get("candidate", "?"), int(ev.get("term", 0))
    where = _positions(ev, v, c)
    if ev.get("prevote"):
        asked = t.proposed.get(c, term + 1)
        return Said(f"{v} granted {c} a pre-vote for term {asked}", where,
                    f"it heard from no leader lately and {c}'s log is at least as up to date "
                    f"as its own, so it would vote for {c}; its own term and vote stay as "
                    "they are", "thesis §9.6", "prevote_granted")
    return Said(f"{v} voted for {c} in term {term}", where,
                f"its only vote of term {term}, given because {c}'s log is at least as up to "
                "date as its own", "§5.2, §5.4.1", "vote_granted")


def _vote_rejected(ev: dict[str, Any], t: Track) -> Said:
    v, c, term = ev["node"], ev.get("candidate", "?"), int(ev.get("term", 0))
    pre = bool(ev.get("prevote"))
    asked = t.proposed.get(c, term + 1) if pre else term
    gist = f"{v} refused {c} " + (f"a pre-vote for term {asked}" if pre else
                                  f"its vote in term {term}")
    if ev.get("reason") == "log_behind":
        where = _positions(ev, v, c) or (f"{c}'s last entry is of an older term than {v}'s, "
                                          "or of the same term at a lower index")
        return Said(gist, f"{c}'s log is behind {v}'s ({where})",
                    "a candidate whose log is behind a voter's may lack a committed entry, so "
                    "it must not lead: this is the election restriction", "§5.4.1",
                    "log_behind")
    if pre:
        return Said(gist, f"{v} is in term {term} already", "there it has voted or follows a "
                    "leader", "thesis §9.6", "prevote_already")
    other = t.voted_for.get((v, term))
    whom = "itself" if other == v else (other or "another candidate")
    return Said(gist, f"it already voted for {whom} in term {term}", "a node votes once a "
                "term, so two leaders can never win the same term", "§5.2", "already_voted")


def _vote_ignored(ev: dict[str, Any], t: Track) -> Said:
    v, c = ev["node"], ev.get("candidate", "?")
    kind = "a pre-vote" if ev.get("prevote") else "a vote"
    return Said(f"{v} ignored {c}'s request for {kind}", _suppressed(ev),
                f"{v} heard from a leader less than an election timeout ago, so it does not "
                "believe the leader is gone: a node cut off and back cannot disrupt a working "
                "cluster", "thesis §4.2.3")


def _became_follower(ev: dict[str, Any], t: Track) -> Said:
    if "ballot" in ev:
        return paxos_sentences.became_follower(ev, t)
    n, term, lead = ev["node"], int(ev.get("term", 0)), ev.get("leader")
    prev = t.last.get(n) or {}
    if lead:
        return Said(f"{n} follows {lead} in term {term}",
                    f"{lead}'s messages say it leads term {term}", "", "§5.2")
    if prev.get("term") == term and prev.get("role") == "candidate":
        return Said(f"{n} lost its election in term {term}", "a majority refused it",
                    "it waits as a follower for a leader or for its timer", "§5.2")
    if prev.get("term") == term and prev.get("role") == "pre_candidate":
        return Said(f"{n} gave up its pre-vote for term {term + 1}", "a majority refused it",
                    "it waits as a follower; its term never moved", "thesis §9.6")
    if prev.get("term") == term:
        return Said(f"{n} is a follower in term {term}", "with no leader known")
    return Said(f"{n} moved to term {term} as a follower", "it saw a message of a higher term",
                "a node that sees a higher term takes it and follows; it learns who leads, "
                "if anyone, from the leader's next message", "§5.1")


def _became_leader(ev: dict[str, Any], t: Track) -> Said:
    if "ballot" in ev:
        return paxos_sentences.became_leader(ev, t)
    n, term = ev["node"], int(ev.get("term", 0))
    votes = [n, *t.votes.get((n, term), [])]
    return Said(f"{n} became leader of term {term}",
                f"with {len(votes)} of {len(t.nodes)} votes ({names(votes)}; a majority is "
                f"{t.majority()}); it appended a no-op entry of term {term} at index "
                f"{ev.get('last_index')}",
                "only an entry of the leader's own term is committed by counting replicas, "
                "and committing it commits all before it", "§5.2, §5.4.2")


def _stepped_down(ev: dict[str, Any], t: Track) -> Said:
    if "ballot" in ev:
        return paxos_sentences.stepped_down(ev, t)
    n, term = ev["node"], int(ev.get("term", 0))
    gist = f"{n} stopped leading term {t.leading.get(n, term)}"
    if ev.get("reason") == "check_quorum":
        return Said(gist, "it heard from no majority for a whole election timeout",
                    "a leader that cannot reach a majority can commit nothing, and another "
                    "leader may exist without it (CheckQuorum)", "thesis §6.2", "check_quorum")
    return Said(gist, f"it saw term {term}, higher than its own", "a newer election happened",
                "§5.1", "higher_term")


def _append_rejected(ev: dict[str, Any], t: Track) -> Said:
    n, lead = ev["node"], ev.get("leader", "?")
    pi, pt, li, ct = (ev.get("prev_index"), ev.get("prev_term"), ev.get("last_index"),
                      ev.get("conflict_term"))
    gist = f"{n} refused {lead}'s entries after index {pi}"
    lesson = ("a follower takes new entries only after one that matches the leader's (same "
              "index and term), so the logs agree on everything before; the leader backs up")
    if not ct:
        return Said(gist, f"its log ends at index {li}, before {pi}" + _suppressed(ev), lesson,
                    "§5.3")
    return Said(gist, f"its entry at index {pi} is of term {ct}, not {pt}: the logs diverge "
                f"there, and {lead} overwrites {n}'s entries from where they agree"
                + _suppressed(ev), lesson, "§5.3")


def _follower_lost_data(ev: dict[str, Any], t: Track) -> Said:
    n, f = ev["node"], ev.get("follower", "?")
    return Said(f"{n} found that {f} lost entries it had acknowledged",
                f"{f} acknowledged index {ev.get('match')} but now has {ev.get('last_index')}",
                f"its disk lost them, which Raft assumes cannot happen; {n} replicates to it "
                "afresh", "Figure 2")


def _rejoined_without_data(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} rejoined with an empty log (--force-rejoin)", "",
                "it was a member, so it may vote a second time in a term it already voted in: "
                "Raft's safety assumes votes survive on disk", "Figure 2")


def _snapshot_sent(ev: dict[str, Any], t: Track) -> Said:
    n, to = ev["node"], ev.get("to", "?")
    return Said(f"{n} sent {to} a snapshot up to index {ev.get('index')}",
                f"{ev.get('bytes')} bytes",
                f"{to} is behind the start of {n}'s log, so it gets the state instead of the "
                "entries", "§7")


def _snapshot_installed(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} installed {ev.get('leader', '?')}'s snapshot up to index "
                f"{ev.get('index')}", f"term {ev.get('snapshot_term')}, {ev.get('bytes')} bytes",
                "it replaces the log up to there", "§7")


def _snapshot_created(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} took a snapshot at index {ev.get('index')}",
                f"term {ev.get('snapshot_term')}",
                "the state up to there is on disk, so the log before it can go", "§7")


def _lease_expiry_proposed(ev: dict[str, Any], t: Track) -> Said:
    ids = ev.get("leases")
    count = ev.get("count") or (len(ids) if isinstance(ids, list) else 1)
    named = ", ".join(map(str, ids)) if isinstance(ids, list) else str(ids)
    more = f" and {count - len(ids)} more" if isinstance(ids, list) and count > len(ids) else ""
    return Said(f"{ev['node']} proposed the expiry of {_plural(count, 'lease', 'leases')}",
                f"{named}{more}: no keep-alive reached it within their TTL",
                "only the leader decides expiry, through the log, so every replica deletes "
                "the leases' keys at the same index")


def _snapshot_failed(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} failed to write a snapshot at index {ev.get('index')}",
                f"{ev.get('error')}", "it keeps its log")


def _transfer_started(ev: dict[str, Any], t: Track) -> Said:
    to = ev.get("to", "?")
    return Said(f"{ev['node']} began handing leadership to {to}", "",
                "first it brings the new leader's log up to date with its own", "thesis §3.10")


def _leadership_transferred(ev: dict[str, Any], t: Track) -> Said:
    n, to = ev["node"], ev.get("to", "?")
    return Said(f"{n} told {to} to stand for election now (TimeoutNow)",
                f"{to}'s log matches {n}'s", "a node with the leader's whole log can win at "
                "once, with no timer to wait for", "thesis §3.10")


def _transfer_aborted(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']}'s hand-over to {ev.get('to', '?')} did not finish",
                "not within an election timeout", "it goes on leading", "thesis §3.10")


def _timeout_now_received(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} was asked by {ev.get('leader', '?')} to take over", "",
                "it stands for election at once, skipping its timer and the pre-vote",
                "thesis §3.10")


def _commit_progress(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']}'s commit index reached {ev.get('commit')}",
                f"{_plural(ev.get('committed_since'), 'entry', 'entries')} committed since "
                f"its last such line, applied up to {ev.get('applied')}",
                "an entry is committed once the leader has stored it on a majority", "§5.3")


def _link(peer: str, rule: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if rule.get("block_out") and rule.get("block_in"):
        out.append(f"cut from {peer}")
    elif rule.get("block_out"):
        out.append(f"sends nothing to {peer}")
    elif rule.get("block_in"):
        out.append(f"hears nothing from {peer}")
    for key, what in (("loss", "loss"), ("duplicate", "duplicates"), ("reorder", "reordering")):
        if rule.get(key):
            out.append(f"{rule[key] * 100:g}% {what} with {peer}")
    if rule.get("delay_ms"):
        jitter = f" ± {rule['jitter_ms']:g}" if rule.get("jitter_ms") else ""
        out.append(f"{rule['delay_ms']:g}{jitter} ms delay to {peer}")
    return out


def _link_faults_set(ev: dict[str, Any], t: Track) -> Said:
    n = ev["node"]
    rules = ev.get("rules") or {}
    parts = [p for peer, rule in sorted(rules.items()) if isinstance(rule, dict)
             for p in _link(peer, rule)]
    if not parts:
        return Said(f"{n}'s links were healed", "by the operator")
    return Said(f"{n}'s links changed", f"{'; '.join(parts)}, by the operator")


def _bad_message(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} dropped a bad message from {ev.get('source', '?')}",
                f"{ev.get('reason')}{_suppressed(ev)}")


def _bad_request(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} refused a malformed request", f"{ev.get('reason')}"
                f"{_suppressed(ev)}")


def _bad_datagram(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} dropped a UDP datagram ({ev.get('reason')})",
                f"{ev.get('detail')}{_suppressed(ev)}")


def _message_oversize(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} did not send a {ev.get('bytes')}-byte message to "
                f"{ev.get('to', '?')}", f"it exceeds the cluster's {ev.get('limit')}-byte "
                "datagram limit", "a message is never sent cut short")


def _auth_rejected(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} refused a connection from {ev.get('address', '?')}",
                f"it did not hold the cluster's key{_suppressed(ev)}")


def _node_stopping(ev: dict[str, Any], t: Track) -> Said:
    n, to = ev["node"], ev.get("handing_to")
    if to:
        return Said(f"{n} was asked to stop", f"as leader it first hands leadership to {to}",
                    "", "thesis §3.10")
    return Said(f"{n} was asked to stop")


def _node_stopped(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} stopped cleanly",
                f"its storage is flushed and closed (commit {ev.get('commit')}, applied "
                f"{ev.get('applied')})")


def _bytes(n: Any) -> str:
    """A byte count as an operator reads it: 31.5 MiB."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return f"{n} bytes"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return _plural(int(n), "byte", "bytes")


def _members(v: Any) -> list[str]:
    """A comma-separated member list as logged ("n1,n2"), as names."""
    return [m for m in str(v).split(",") if m] if v not in (None, "") else []


def _disk_low(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} stopped taking writes: its disk is nearly full",
                f"{_bytes(ev.get('free_bytes'))} free ({ev.get('error')})",
                "it answers no_space rather than risk a write it cannot make durable; "
                "heartbeats, votes and reads go on", "docs/STORAGE.md")


def _disk_full(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} could not write for want of space: its log is frozen",
                f"{_bytes(ev.get('free_bytes'))} free ({ev.get('error')})",
                "it neither steps nor ticks until the write goes through, so it never "
                "answers from state it has not stored", "Figure 2")


def _disk_space_recovered(ev: dict[str, Any], t: Track) -> Said:
    dropped = ev.get("log_lines_dropped") or 0
    lost = f"; {_plural(dropped, 'log line', 'log lines')} could not be written meanwhile" \
        if dropped else ""
    return Said(f"{ev['node']} has room on its disk again",
                f"{_bytes(ev.get('free_bytes'))} free after it was {ev.get('was')}{lost}",
                "writes resume")


def _membership_changed(ev: dict[str, Any], t: Track) -> Said:
    n, voters = ev["node"], _members(ev.get("voters"))
    old, learners = _members(ev.get("outgoing")), _members(ev.get("learners"))
    facts = f"voters {names(voters) or 'none'}"
    if learners:
        facts += f", learners {names(learners)} (they copy the log but do not vote)"
    if old:
        return Said(f"{n} is in a joint configuration from index {ev.get('index')}",
                    f"old voters {names(old)}, new {facts}",
                    "while joint, an election or a commit needs a majority of the old voters "
                    "and one of the new", "§6", "joint")
    return Said(f"{n}'s configuration changed at index {ev.get('index')}", facts,
                "a node uses the newest configuration in its log, committed or not", "§6",
                "membership")


def _peer_added(ev: dict[str, Any], t: Track) -> Said:
    how = ("its address came with the configuration change" if ev.get("source")
           == "configuration" else "a sender it did not know, found in cluster.json")
    return Said(f"{ev['node']} can now reach {ev.get('peer')}", how)


def _peer_removed(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} stopped talking to {ev.get('peer')}",
                "it left the configuration; its messages are dropped")


def _peer_unknown(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} cannot reach {ev.get('peer')}",
                "it is a member, but nobody gave its address")


def _bug_names(v: Any) -> str:
    return names([str(b) for b in v]) if isinstance(v, list) else str(v)


def _unsafe_bugs_enabled(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} runs with known bugs put back on purpose",
                f"{_bug_names(ev.get('bugs'))}: {ev.get('detail')}",
                "a test switch to prove the chaos runner finds them; its results are not "
                "to be trusted", "docs/CHAOS.md")


def _suppressed(ev: dict[str, Any]) -> str:
    n = ev.get("suppressed")
    if not n:
        return ""
    return f" ({_plural(n, 'more line', 'more lines')} like it left out since its previous one)"


_HEAD = frozenset({"ts", "level", "node", "term", "role", "event"})


def _unknown(ev: dict[str, Any], t: Track) -> Said:
    rest = ", ".join(f"{k}={v}" for k, v in ev.items() if k not in _HEAD)
    return Said(f"{ev['node']} logged {ev.get('event')}", rest)


SAYERS: dict[str, Sayer] = {
    "node_started": _node_started, "durability_off": _durability_off,
    "wal_tail_truncated": _wal_tail_truncated, "wal_reservation_off": _wal_reservation_off,
    "prevote_started": _prevote_started, "election_started": _election_started,
    "vote_granted": _vote_granted, "vote_rejected": _vote_rejected,
    "vote_ignored": _vote_ignored, "became_follower": _became_follower,
    "became_leader": _became_leader, "stepped_down": _stepped_down,
    "append_rejected": _append_rejected, "follower_lost_data": _follower_lost_data,
    "rejoined_without_data": _rejoined_without_data, "snapshot_sent": _snapshot_sent,
    "snapshot_installed": _snapshot_installed, "snapshot_created": _snapshot_created,
    "snapshot_failed": _snapshot_failed, "transfer_started": _transfer_started,
    "leadership_transferred": _leadership_transferred, "transfer_aborted": _transfer_aborted,
    "timeout_now_received": _timeout_now_received, "commit_progress": _commit_progress,
    "link_faults_set": _link_faults_set, "bad_message": _bad_message,
    "bad_request": _bad_request, "bad_datagram": _bad_datagram,
    "message_oversize": _message_oversize, "auth_rejected": _auth_rejected,
    "node_stopping": _node_stopping, "node_stopped": _node_stopped,
    "disk_low": _disk_low, "disk_full": _disk_full,
    "disk_space_recovered": _disk_space_recovered,
    "membership_changed": _membership_changed, "peer_added": _peer_added,
    "peer_removed": _peer_removed, "peer_unknown": _peer_unknown,
    "unsafe_bugs_enabled": _unsafe_bugs_enabled,
    "lease_expiry_proposed": _lease_expiry_proposed,
}

# Paxos's own events. Imported only here, below what it builds on (Said,
# Track, names): paxos_sentences imports this module.
from raftctl import paxos_sentences  # noqa: E402 - see above

SAYERS.update(paxos_sentences.SAYERS)


def say(ev: dict[str, Any], t: Track) -> Said:
    """The sentence for one log line, given what came before it."""
    return SAYERS.get(str(ev.get("event")), _unknown)(ev, t)


def learn(ev: dict[str, Any], t: Track) -> None:
    """Update what is known after `ev` was told."""
    n, name, term = str(ev["node"]), ev.get("event"), int(ev.get("term", 0))
    cand = str(ev.get("candidate", ""))
    if name == "prevote_started":
        t.proposed[n] = int(ev.get("proposed_term", term + 1))
        t.prevotes[(n, t.proposed[n])] = []
    elif name == "vote_granted" and ev.get("prevote"):
        t.prevotes.setdefault((cand, t.proposed.get(cand, term + 1)), []).append(n)
    elif name == "vote_granted":
        t.votes.setdefault((cand, term), []).append(n)
        t.voted_for[(n, term)] = cand
    elif name == "election_started":
        t.stood.setdefault(term, []).append(n)
        t.voted_for[(n, term)] = n
    elif name == "became_leader":
        t.leader_of[term] = n
        t.leading[n] = term
    elif name in ("stepped_down", "node_started", "node_stopped"):
        t.leading.pop(n, None)
    elif name == "membership_changed" and not ev.get("outgoing"):
        # Majorities are counted over the voters in force from now on.
        t.nodes = _members(ev.get("voters")) or t.nodes
    t.last[n] = ev
