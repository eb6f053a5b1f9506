"""The safety properties of Paxos (Paxos Made Simple §2.1-§2.3) checked on
plain data, as chaos/invariants.py checks Raft's: the simulator feeds it each
node's acceptor and learner state after every change. It works out from the
acceptors' own states which values are chosen (accepted by a majority in
one ballot), rather than believe any learner. It observes; it never drives
or repairs a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chaos.invariants import EntryLike, Violation, majority, ran_once

# Two different values chosen for one slot (§2.1's safety requirement).
AT_MOST_ONE_CHOSEN = "at_most_one_chosen"
# A learner knows a value chosen that is not the chosen one, or the value
# it knows chosen for a slot changed.
CHOSEN_NEVER_CHANGES = "chosen_never_changes"
# Two learners know different values chosen for one slot of their prefixes.
LEARNERS_AGREE = "learners_agree"
# An acceptor accepted a ballot below its promise (P1a), or its promise went
# back (lost on a crash: it was not on disk before the answer left).
PROMISE_KEPT = "promise_kept"
# Two values accepted for one slot in one ballot: a ballot's proposer
# proposes one value per slot (§2.2), so some acceptor made one up.
ONE_VALUE_PER_BALLOT = "one_value_per_ballot"
# Two nodes leading in one ballot.
ONE_LEADER_PER_BALLOT = "one_leader_per_ballot"

LEADER = "leader"


class SlotLike(EntryLike, Protocol):
    """A slot's entry (`node.raft.messages.Entry` fits): a no-op and an
    empty write hold the same bytes, so the kind counts too."""

    @property
    def kind(self) -> int: ...


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """One node as the checks see it: the ballot it promised, its role (and
    while it leads, its own ballot), the slots after its snapshot point
    (`entries`: index = slot, term = the ballot the value was accepted in, 0
    for a slot holding nothing), every slot up to `commit` known chosen."""

    node: str
    promised: int
    role: str
    ballot: int
    commit: int
    applied: int
    snapshot_index: int
    entries: Sequence[SlotLike]


@dataclass(slots=True)
class _Seen:
    promised: int
    commit: int
    snapshot_index: int
    entries: list[SlotLike]

    def at(self, slot: int) -> SlotLike | None:
        pos = slot - self.snapshot_index - 1
        return self.entries[pos] if 0 <= pos < len(self.entries) else None


def _value(e: SlotLike) -> tuple[int, bytes]:
    """What a slot holds, its ballot aside."""
    return (int(e.kind), e.data)


class PaxosInvariants:
    """Incremental checker over the fixed `members`: each `observe` costs
    about the number of slots that changed."""

    def __init__(self, members: Sequence[str]) -> None:
        self._quorum = majority(len(members))
        # The last look at each node (kept across its crashes: what it
        # accepted is on its disk) and the highest promise it was seen with.
        self._last: dict[str, _Seen] = {}
        self._promise: dict[str, int] = {}
        # Acceptances: (slot, ballot) -> the value and who accepted it.
        self._accepted: dict[tuple[int, int], tuple[tuple[int, bytes], set[str]]] = {}
        # Chosen, as the acceptors' states show: slot -> value, ballot.
        self._chosen: dict[int, tuple[tuple[int, bytes], int]] = {}
        # Known chosen by a learner: slot -> value, the first node to know it.
        self._learned: dict[int, tuple[tuple[int, bytes], str]] = {}
        self._leader_of: dict[int, str] = {}
        self._executed: dict[tuple[int, int], int] = {}
        self._tick = 0

    def _v(self, check: str, detail: str) -> Violation:
        return Violation(check=check, detail=detail, tick=self._tick)

    def executed(self, tick: int, node: str, session: int, seq: int,
                 index: int) -> list[Violation]:
        """`node` ran write `seq` of `session` from slot `index`."""
        return ran_once(self._executed, tick, node, session, seq, index)

    def node_down(self, node: str) -> None:
        """The node crashed; its last state stays, as its disk holds it."""

    def observe(self, tick: int, st: AcceptorState) -> list[Violation]:
        self._tick = tick
        out: list[Violation] = []
        prev = self._last.get(st.node)
        before = self._promise.get(st.node, 0)
        if st.promised < before:
            out.append(self._v(PROMISE_KEPT, f"{st.node}'s promise went back from ballot "
                               f"{before} to {st.promised}"))
        self._promise[st.node] = max(before, st.promised)
        if st.role == LEADER:
            holder = self._leader_of.setdefault(st.ballot, st.node)
            if holder != st.node:
                out.append(self._v(ONE_LEADER_PER_BALLOT,
                                   f"{st.node} and {holder} both lead ballot {st.ballot}"))
        first = st.snapshot_index + 1
        for k, e in enumerate(st.entries):
            slot = first + k
            old = prev.at(slot) if prev is not None else None
            if e.term == 0 or (old is not None and old.term == e.term and
                               _value(old) == _value(e)):
                continue
            if prev is not None and slot > st.commit:
                self._check_promise(st.node, slot, e.term, prev.promised, out)
            self._accept(st.node, slot, e.term, _value(e), out)
        lo = first if prev is None else max(first, prev.commit + 1)
        for slot in range(lo, min(st.commit, first + len(st.entries) - 1) + 1):
            self._learn(st.node, slot, _value(st.entries[slot - first]), out)
        if prev is not None:
            for slot in range(max(first, prev.snapshot_index + 1), min(prev.commit, st.commit) + 1):
                was, now = prev.at(slot), st.entries[slot - first]
                if was is not None and _value(was) != _value(now):
                    out.append(self._v(CHOSEN_NEVER_CHANGES, (
                        f"{st.node} knew slot {slot} chosen with {_show(was)}, and now holds "
                        f"{_show(now)} there")))
        self._last[st.node] = _Seen(st.promised, st.commit, st.snapshot_index, list(st.entries))
        return out

    def _check_promise(self, node: str, slot: int, ballot: int, promised: int,
                       out: list[Violation]) -> None:
        """P1a: a value newly accepted (a slot not known chosen, whose value
        changed) is of a ballot no lower than the promise the node had."""
        if ballot < promised:
            out.append(self._v(PROMISE_KEPT, (
                f"{node} accepted ballot {ballot} in slot {slot} after promising ballot "
                f"{promised}")))

    def _accept(self, node: str, slot: int, ballot: int, value: tuple[int, bytes],
                out: list[Violation]) -> None:
        got = self._accepted.get((slot, ballot))
        if got is None:
            got = self._accepted[(slot, ballot)] = (value, set())
        elif got[0] != value:
            out.append(self._v(ONE_VALUE_PER_BALLOT, (
                f"{node} accepted {_fmt(value)} in slot {slot}, ballot {ballot}, where "
                f"{','.join(sorted(got[1]))} accepted {_fmt(got[0])}")))
            return
        got[1].add(node)
        if len(got[1]) < self._quorum:
            return
        chosen = self._chosen.get(slot)
        if chosen is None:
            self._chosen[slot] = (value, ballot)
            learned = self._learned.get(slot)
            if learned is not None and learned[0] != value:
                out.append(self._v(CHOSEN_NEVER_CHANGES, (
                    f"{learned[1]} learned {_fmt(learned[0])} chosen in slot {slot}, but "
                    f"{','.join(sorted(got[1]))} chose {_fmt(value)} in ballot {ballot}")))
        elif chosen[0] != value:
            out.append(self._v(AT_MOST_ONE_CHOSEN, (
                f"slot {slot}: {_fmt(chosen[0])} was chosen in ballot {chosen[1]}, and "
                f"{','.join(sorted(got[1]))} chose {_fmt(value)} in ballot {ballot}")))

    def _learn(self, node: str, slot: int, value: tuple[int, bytes],
               out: list[Violation]) -> None:
        first = self._learned.setdefault(slot, (value, node))
        if first[0] != value:
            out.append(self._v(LEARNERS_AGREE, (
                f"{node} knows {_fmt(value)} chosen in slot {slot}, {first[1]} knows "
                f"{_fmt(first[0])}")))
            return
        chosen = self._chosen.get(slot)
        if chosen is not None and chosen[0] != value:
            out.append(self._v(CHOSEN_NEVER_CHANGES, (
                f"{node} knows {_fmt(value)} chosen in slot {slot}, but {_fmt(chosen[0])} "
                f"was chosen there in ballot {chosen[1]}")))


def _fmt(value: tuple[int, bytes]) -> str:
    kind, data = value
    return "a no-op" if kind == 1 and not data else repr(data[:40])


def _show(e: SlotLike) -> str:
    return f"{_fmt(_value(e))} of ballot {e.term}"
