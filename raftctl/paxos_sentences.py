"""What the log events of a Paxos node mean, as sentences, for `raftctl
explain` (raftctl/sentences.py has Raft's and the common ones). Pure.

References: "PMS §2.2" is Paxos Made Simple (Lamport), "PMMC" Paxos Made
Moderately Complex (van Renesse and Altinbuken).
"""

from __future__ import annotations

from typing import Any

from raftctl.sentences import Said, Sayer, Track, names


def _value(ev: dict[str, Any]) -> str:
    return repr(str(ev.get("value", "")))


def _pre_prepare_sent(ev: dict[str, Any], t: Track) -> Said:
    n = ev["node"]
    return Said(f"{n} asked whether a majority would promise ballot {ev.get('ballot')}",
                "it heard no leader's heartbeat for its randomized timeout",
                "nothing is promised or stored yet: only if a majority hears no leader either "
                "does it run phase 1, so a node cut off alone raises no ballot that would "
                "preempt a leader the others still hear", "thesis §9.6 (Raft's PreVote)",
                "pre_prepare")


def _prepare_sent(ev: dict[str, Any], t: Track) -> Said:
    n, ballot = ev["node"], ev.get("ballot")
    why = {"timeout": "it heard no leader's heartbeat for its randomized timeout",
           "transfer": "the leader asked it to take over",
           "decree": "the operator asked it for a decree"}.get(str(ev.get("reason")), "")
    return Said(f"{n} started phase 1 with ballot {ballot} for every slot from "
                f"{ev.get('from_slot')}", why,
                "it asks every acceptor to promise to accept no lower ballot and to report "
                "what it accepted; a ballot is a round and a node, so no two proposers share "
                "one", "PMS §2.2, §2.5", "prepare")


def _promised(ev: dict[str, Any], t: Track) -> Said:
    n, p = ev["node"], ev.get("proposer", "?")
    return Said(f"{n} promised {p} ballot {ev.get('ballot')}",
                f"it reported {ev.get('accepted')} value(s) it accepted from slot "
                f"{ev.get('from_slot')} on, and knows every slot up to {ev.get('commit')} chosen",
                "it will accept no lower ballot, and the promise is on its disk before the "
                "answer leaves", "PMS §2.2, §2.5", "promise")


def _preempted(ev: dict[str, Any], t: Track) -> Said:
    n = ev["node"]
    return Said(f"{n}'s ballot {ev.get('ballot')} was preempted by ballot {ev.get('by')}",
                f"{ev.get('source', '?')} told it",
                "an acceptor promised a higher ballot, so this one can get nothing accepted; "
                "it stops, and waits a random time that grows with each try, so that duelling "
                "proposers settle", "PMS §2.4, PMMC", "preempted")


def _campaign_abandoned(ev: dict[str, Any], t: Track) -> Said:
    n, a = ev["node"], ev.get("acceptor", "?")
    return Said(f"{n} gave up ballot {ev.get('ballot')}",
                f"{a} holds the chosen slots before {ev.get('first_slot')} only in a snapshot, "
                f"and {n} does not know them",
                "a leader must know every chosen value; a node that has them will lead, and "
                f"send {n} the snapshot", "PMS §3")


def _accept_sent(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} proposed {_value(ev)} for slot {ev.get('slot')} in ballot "
                f"{ev.get('ballot')}", "phase 2a, to every acceptor",
                "a majority promised this ballot and none of them reported a value in this "
                "slot, so the proposer may propose its own", "PMS §2.2", "accept")


def _accepted(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} accepted {_value(ev)} for slot {ev.get('slot')} in ballot "
                f"{ev.get('ballot')}", f"from {ev.get('proposer', '?')}",
                "it had promised no higher ballot; the value is on its disk before it "
                "answers", "PMS §2.2", "accepted")


def _chosen(ev: dict[str, Any], t: Track) -> Said:
    return Said(f"{ev['node']} learned that {_value(ev)} is chosen for slot {ev.get('slot')}",
                f"ballot {ev.get('ballot')}",
                "a majority accepted it in one ballot, so no other value can ever be chosen "
                "there", "PMS §2.3", "chosen")


def became_leader(ev: dict[str, Any], t: Track) -> Said:
    n, votes = ev["node"], ev.get("votes")
    who = f" ({names(votes)})" if isinstance(votes, list) else ""
    return Said(f"{n} became leader with ballot {ev.get('ballot')}",
                f"a majority promised it{who}; it re-proposed {ev.get('reproposed')} open "
                f"slot(s) and filled {ev.get('noops')} gap(s) with no-ops, up to slot "
                f"{ev.get('last_index')}",
                "phase 1 ran once for every open slot: each new value now needs phase 2 only",
                "PMS §3")


def became_follower(ev: dict[str, Any], t: Track) -> Said:
    n, lead = ev["node"], ev.get("leader", "?")
    return Said(f"{n} follows {lead}, leader of ballot {ev.get('ballot')}",
                f"{lead}'s messages carry a ballot no lower than {n} promised")


def stepped_down(ev: dict[str, Any], t: Track) -> Said:
    n, reason = ev["node"], ev.get("reason")
    gist = f"{n} stopped leading ballot {ev.get('ballot')}"
    if reason == "check_quorum":
        return Said(gist, "it heard from no majority for a whole election timeout",
                    "a leader that cannot reach a majority gets nothing chosen", "",
                    "check_quorum")
    if reason == "decree":
        return Said(gist, "it runs phase 1 again, with a higher ballot, for a decree")
    return Said(gist, "a higher ballot exists", "", "PMS §2.4")


SAYERS: dict[str, Sayer] = {
    "pre_prepare_sent": _pre_prepare_sent, "prepare_sent": _prepare_sent,
    "promised": _promised, "preempted": _preempted,
    "campaign_abandoned": _campaign_abandoned, "accept_sent": _accept_sent,
    "accepted": _accepted, "chosen": _chosen,
}
