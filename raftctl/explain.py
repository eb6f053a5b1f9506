"""The nodes' merged log told as sentences, term by term: when each is told,
which are counted instead of repeated, how a term without a leader ends, and
where the logs leave off. Pure: log events in, `Sentence`s out; reading files
and printing belong to `raftctl/explain_cmd.py`, what each event means to
`raftctl/sentences.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from node.paxos.ballot import rank_of, round_of
from raftctl.sentences import Track, clock, learn, names, say

# Kinds of sentence. TERM opens a term; EVENT tells one log line; AGAIN
# counts the lines of a term that said the same as an earlier one; NO_LEADER
# closes a term in which nobody won; NOW says where the logs leave off.
TERM = "term"
EVENT = "event"
AGAIN = "again"
NO_LEADER = "no_leader"
NOW = "now"
KINDS = (TERM, EVENT, AGAIN, NO_LEADER, NOW)


@dataclass(frozen=True, slots=True)
class Sentence:
    """One narrated record. `term` is the term of the node that logged it
    (for TERM, NO_LEADER and NOW: the cluster's); `until` and `repeats` are
    set for AGAIN only."""

    ts: str
    term: int
    node: str | None
    kind: str
    event: str | None
    text: str
    ref: str | None = None
    lesson: str | None = None
    repeats: int = 0
    until: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.ts, "term": self.term, "node": self.node, "kind": self.kind,
                "event": self.event, "text": self.text, "ref": self.ref,
                "lesson": self.lesson, "repeats": self.repeats, "until": self.until}


def parse_terms(text: str) -> tuple[int, int | None]:
    """`--term`: "4" is term 4 alone, "3..5" terms 3 to 5, "3.." term 3 on;
    returns (first, last or None)."""
    lo, sep, hi = text.strip().partition("..")
    try:
        first = int(lo)
        last = (int(hi) if hi else None) if sep else first
    except ValueError:
        raise ValueError(f"{text!r} is not a term like 4, a range like 3..5, or 3..") from None
    if first < 0 or (last is not None and last < first):
        raise ValueError(f"{text!r} is not a range of terms from low to high")
    return first, last


# --- the narrator ---------------------------------------------------------------------


Keep = Callable[[Sentence], bool]


class Narrator:
    """Turns merged log events, in time order, into sentences. Every event
    is read, so a sentence may use what other nodes logged before it (the
    votes of a new leader); `keep` only chooses which sentences come out.
    A rule is taught the first time it is at work, then only cited. A line
    that says what an earlier line of the same term and node said is
    counted, not told again: the count comes out as one AGAIN sentence when
    the term ends."""

    def __init__(self, nodes: Sequence[str], keep: Keep | None = None) -> None:
        self.track = Track(sorted(nodes))
        self._keep: Keep = keep or (lambda _s: True)
        self._term = -1
        self._header: Sentence | None = None  # the term's opening, until something shows
        self._taught: set[str] = set()
        self._told: set[tuple[str, int, str]] = set()
        # (node, term, gist) -> [repeats, first ts, last ts, first sentence]
        self._again: dict[tuple[str, int, str], list[Any]] = {}
        self._last_ts = ""
        # A Paxos node logs its ballot as its term: told as "ballot 2.n3"
        # (round 2 of n3) once a line shows the logs are Paxos's.
        self._paxos = False

    def _name(self, term: int) -> str:
        if not self._paxos:
            return f"term {term}"
        nodes, rank = self.track.nodes, rank_of(term)
        who = nodes[rank - 1] if 0 < rank <= len(nodes) else f"rank {rank}"
        return f"ballot {round_of(term)}.{who}"

    def feed(self, ev: dict[str, Any]) -> list[Sentence]:
        """The sentences that `ev` brings out (possibly none)."""
        if "node" not in ev:
            return []
        out: list[Sentence] = []
        ts, term = str(ev.get("ts", "")), int(ev.get("term", 0))
        self._last_ts = max(self._last_ts, ts)
        self._paxos = self._paxos or "ballot" in ev
        if term > self._term:
            out += self._close_term(ts)
            self._term = term
            self._header = Sentence(ts, term, None, TERM, None, self._name(term) if term else
                                    "term 0: before any election")
        said = say(ev, self.track)
        learn(ev, self.track)
        node, event = str(ev["node"]), str(ev.get("event"))
        topic = said.topic or event
        text = said.text(with_lesson=topic not in self._taught)
        if term < self._term:
            text += f" [{node} is still in {self._name(term)}]"
        s = Sentence(ts, term, node, EVENT, event, text, said.ref, said.lesson or None)
        if not self._keep(s):
            return out
        key = (node, term, said.gist)
        if key in self._told:
            rep = self._again.setdefault(key, [0, ts, ts, said.gist])
            rep[0] += 1
            rep[2] = ts
            return out
        self._told.add(key)
        self._taught.add(topic)
        return out + self._show(s)

    def finish(self) -> list[Sentence]:
        """What is left to say once the last line was read."""
        out = self._flush_again()
        if not self._last_ts:
            return out
        t = self.track
        lead = t.leader_of.get(self._term)
        if lead is not None and t.leading.get(lead) == self._term:
            end, now = clock(self._last_ts), self._name(self._term)
            text = f"the logs end at {end} with {lead} leading {now}"
        elif all(ev.get("event") == "node_stopped" for ev in t.last.values()):
            text = f"the logs end at {clock(self._last_ts)}: every node stopped"
        else:
            end, now = clock(self._last_ts), self._name(self._term)
            text = f"the logs end at {end} with no leader in {now}"
            seeking = [n for n, ev in sorted(t.last.items())
                       if ev.get("role") in ("pre_candidate", "candidate")
                       and ev.get("event") != "node_stopped"]
            if seeking:
                text += (f": {names(seeking)} kept asking for votes, and none reached a "
                         f"majority of {t.majority()}")
        return out + self._show(Sentence(self._last_ts, self._term, None, NOW, None, text))

    def _show(self, s: Sentence) -> list[Sentence]:
        if not self._keep(s):
            return []
        out: list[Sentence] = []
        if self._header is not None and s.kind != NOW:
            if self._keep(self._header):
                out.append(self._header)
            self._header = None
        out.append(s)
        return out

    def _flush_again(self) -> list[Sentence]:
        out: list[Sentence] = []
        for (node, term, _), (n, first, last, gist) in self._again.items():
            times = "once more" if n == 1 else f"{n} more times"
            s = Sentence(first, term, node, AGAIN, None,
                         f"{gist}, again {times} until {clock(last)}", repeats=n, until=last)
            out += self._show(s)
        self._again.clear()
        self._told.clear()
        return out

    def _close_term(self, ts: str) -> list[Sentence]:
        out = self._flush_again()
        t, old = self.track, self._term
        stood = t.stood.get(old, [])
        if old <= 0 or old in t.leader_of or not stood:
            return out
        if len(stood) > 1:
            text = (f"term {old} had no leader: {names(stood)} stood at nearly the same time "
                    "and split the votes, each voting for itself, and a node votes once a term; "
                    "randomized election timeouts make another such tie unlikely")
        else:
            got = 1 + len(t.votes.get((stood[0], old), []))
            text = (f"term {old} had no leader: {stood[0]} stood but got {got} of "
                    f"{len(t.nodes)} votes, short of a majority of {t.majority()}")
        return out + self._show(Sentence(ts, old, None, NO_LEADER, None, text, "§5.2"))
