"""The proposer's phase 1, once for every open slot (Paxos Made Simple §3;
Paxos Made Moderately Complex's scout): detect a silent leader by missed
heartbeats, ask whether a majority would promise (the pre-prepare, Raft's
PreVote), pick a ballot above every one heard of, gather promises from a
majority, learn what they show chosen, and start phase 2 by proposing in
every open slot the value of the highest ballot it was accepted in, or a
no-op where none was (filling the gap). A preempted proposer backs off for
a random time that grows with each try, so duelling proposers settle.
A mixin of `PaxosCore`; no state of its own.
"""

from __future__ import annotations

from node.paxos.ballot import make_ballot, round_of
from node.paxos.base import PaxosState, Phase1
from node.paxos.messages import (
    PaxosMessage,
    Preempted,
    Prepare,
    PrePrepare,
    PrePromise,
    Promise,
)
from node.paxos.slots import is_hole
from node.raft.base import Role
from node.raft.messages import Entry, EntryKind
from node.raft.progress import Progress
from node.raft.quorum import majority

# The back-off's random part doubles with each campaign that did not end in
# a leader, up to this many doublings.
MAX_BACKOFF_DOUBLINGS = 3


class Proposer(PaxosState):
    """The rules above, as methods of `PaxosCore` (core.py)."""

    def _reset_timer(self) -> None:
        """A fresh randomized timeout: the election timeout plus a random
        part, doubled for each campaign since this node last followed or led."""
        jitter = self.config.election_jitter_ticks
        if jitter is None:
            jitter = self.config.election_ticks
        spread = jitter << min(self._attempts, MAX_BACKOFF_DOUBLINGS)
        self.election_elapsed = 0
        self.randomized_timeout = self.config.election_ticks + (
            self._rng.randrange(spread) if spread else 0)

    def _tick_election(self) -> None:
        # Missed heartbeats: the leader (or the campaign) is presumed dead.
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout:
            if self.config.prevote:
                self._pre_campaign()
            else:
                self._campaign("timeout")

    # --- before phase 1 ------------------------------------------------------------

    def _pre_campaign(self) -> None:
        """Ask whether a majority would promise a new ballot before raising
        one (Raft's PreVote, thesis §9.6): a node cut off from the leader
        alone, or restarted before its heartbeats reach it, raises nothing
        that would preempt a leader the others still hear."""
        if self.role is Role.LEADER:
            return
        rnd = max(round_of(self.promised), self._max_round) + 1
        self._pre_ballot = make_ballot(rnd, self.ranks.rank(self.id))
        self.role = Role.PRE_CANDIDATE
        self.ballot = 0
        self._p1 = None
        self.leader, self.leader_ballot = None, 0
        self._tick_fn = self._tick_election
        self._step_fn = self._step_pre_candidate
        self._reset_timer()
        self._attempts += 1
        self._pre_grants = {self.id}
        self._event("pre_prepare_sent", ballot=self.describe(self._pre_ballot),
                    timeout_ticks=self.randomized_timeout)
        if len(self._pre_grants) >= majority(len(self.conf.voters)):
            self._campaign("timeout")
            return
        for p in self.peers:
            self._send(PrePrepare(term=self._pre_ballot, src=self.id, dst=p))

    def _step_pre_candidate(self, m: PaxosMessage) -> None:
        if isinstance(m, PrePromise) and m.term == self._pre_ballot:
            # A refusal for a ballot's sake teaches the round to beat.
            self._max_round = max(self._max_round, round_of(m.promised))
            if m.granted:
                self._pre_grants.add(m.src)
                if len(self._pre_grants) >= majority(len(self.conf.voters)):
                    self._campaign("timeout")
        elif isinstance(m, Preempted):
            self._max_round = max(self._max_round, round_of(m.term))

    # --- phase 1 ---------------------------------------------------------------

    def _campaign(self, reason: str) -> None:
        """Start phase 1 with a ballot above every one heard of."""
        if self.role is Role.LEADER:
            self._become_follower(None, 0, reason=reason)
        rnd = max(round_of(self.promised), self._max_round) + 1
        self._max_round = rnd
        self.ballot = make_ballot(rnd, self.ranks.rank(self.id))
        # Our own acceptor promises first; the Ready persists the promise
        # before any Prepare leaves, so no restart can reuse this ballot.
        self.promised = self.ballot
        self.role = Role.CANDIDATE
        self.leader, self.leader_ballot = None, 0
        self._tick_fn = self._tick_election
        self._step_fn = self._step_candidate
        self._reset_timer()
        self._attempts += 1
        p1 = Phase1(self.log.commit + 1, reason)
        self._p1 = p1
        self._event("prepare_sent", ballot=self.describe(self.ballot), from_slot=p1.from_slot,
                    reason=reason, timeout_ticks=self.randomized_timeout)
        mine = [e for e in self.log.between(p1.from_slot, self.log.last_index() + 1)
                if not is_hole(e)]
        self._take_promise(self.id, mine, self.log.commit, self.log.last_index(), True)
        if self.role is Role.CANDIDATE:
            for p in self.peers:
                self._send(Prepare(term=self.ballot, src=self.id, dst=p,
                                   from_slot=p1.from_slot))

    def _step_candidate(self, m: PaxosMessage) -> None:
        if isinstance(m, Promise):
            self._on_promise(m)
        elif isinstance(m, Preempted):
            self._on_preempted(m)

    def _on_promise(self, m: Promise) -> None:
        p1 = self._p1
        if p1 is None or m.term != self.ballot or m.src in p1.done:
            return
        known = self.log.commit
        while known + 1 in p1.chosen:
            known += 1
        if m.first_slot > m.from_slot and m.first_slot - 1 > known:
            # Chosen slots this node does not hold were compacted into that
            # acceptor's snapshot: it cannot lead without them. A node that
            # holds them will time out and win; its leader sends a snapshot.
            self._event("campaign_abandoned", ballot=self.describe(self.ballot),
                        reason="behind", acceptor=m.src, first_slot=m.first_slot)
            self._become_follower(None, 0)
            return
        self._take_promise(m.src, m.entries, m.commit, m.upto, m.complete)
        if not m.complete and self.role is Role.CANDIDATE:
            # A long answer comes in pieces: while they come, the campaign
            # lives, and its timeout starts again.
            self.election_elapsed = 0
            self._send(Prepare(term=self.ballot, src=self.id, dst=m.src, from_slot=m.upto + 1))

    def _take_promise(self, src: str, entries: list[Entry], commit: int, upto: int,
                      complete: bool) -> None:
        """One acceptor's answer (or a piece of it): note what it shows; with
        a majority of whole answers, phase 1 is won."""
        p1 = self._p1
        assert p1 is not None, "only a candidate takes promises"
        p1.commits[src] = max(p1.commits.get(src, 0), commit)
        for e in entries:
            if e.index <= self.log.commit:
                continue
            if e.index <= commit:
                # Known chosen there: its value is the chosen one.
                p1.chosen.setdefault(e.index, e)
            else:
                best = p1.best.get(e.index)
                if best is None or e.term > best.term:
                    p1.best[e.index] = e
        if complete:
            p1.done.add(src)
            if len(p1.done) >= majority(len(self.conf.voters)):
                self._become_leader()

    def _on_preempted(self, m: Preempted) -> None:
        self._heard_ballot(m.term, m.src)

    def _heard_ballot(self, ballot: int, source: str) -> None:
        """Ballot `ballot` exists: a later one of ours must be above it, and
        ours, if lower, lost (Paxos Made Moderately Complex's preemption)."""
        self._max_round = max(self._max_round, round_of(ballot))
        if self.ballot and ballot > self.ballot:
            self._event("preempted", ballot=self.describe(self.ballot),
                        by=self.describe(ballot), source=source)
            self._become_follower(None, 0)

    # --- the roles ---------------------------------------------------------------

    def _become_follower(self, leader: str | None, ballot: int,
                         reason: str = "preempted") -> None:
        was_leader = self.role is Role.LEADER
        led = self.ballot
        self.role = Role.FOLLOWER
        self.ballot = 0
        self._p1 = None
        self.leader, self.leader_ballot = leader, ballot
        self.progress = {}
        self.lead_transferee = None
        self.uncommitted_bytes = 0
        self._tick_fn = self._tick_election
        self._step_fn = self._step_follower
        self._drop_reads()
        if leader is not None:
            # Another node leads: this node's campaigns, and the decree it
            # was to propose, are over.
            self._attempts = 0
            self._decree = None
        self._reset_timer()
        if was_leader:
            self._event("stepped_down", reason=reason, ballot=self.describe(led))
        if leader is not None:
            self._event("became_follower", leader=leader, ballot=self.describe(ballot))

    def _step_follower(self, m: PaxosMessage) -> None:
        """Answers to a ballot this node no longer holds: only a refusal
        teaches something, the round a later ballot must be above."""
        if isinstance(m, Preempted):
            self._max_round = max(self._max_round, round_of(m.term))

    def _become_leader(self) -> None:
        p1 = self._p1
        assert p1 is not None, "only a candidate becomes leader"
        # Learn what the promises show chosen, in slot order.
        s = self.log.commit + 1
        while (e := p1.chosen.get(s)) is not None:
            self.log.put(e)
            s += 1
        if s - 1 > self.log.commit:
            self._chosen_to(s - 1)
        base = self.log.commit
        top = max([self.log.last_index(), *p1.best, *p1.chosen])
        # Phase 2 for every open slot: the value of the highest ballot it was
        # accepted in, or a no-op where no acceptor of the majority has one.
        reproposed = noops = 0
        for slot in range(base + 1, top + 1):
            v = p1.chosen.get(slot) or p1.best.get(slot)
            if v is None:
                noops += 1
                self.log.put(Entry(self.ballot, slot, EntryKind.NOOP))
            else:
                reproposed += 1
                self.log.put(Entry(self.ballot, slot, v.kind, v.data))
                if v.kind is EntryKind.NOOP and v.data:
                    self._decree_slots.add(slot)
        self._recovered_to = top
        self.role = Role.LEADER
        self.leader, self.leader_ballot = self.id, self.ballot
        self._attempts = 0
        self._tick_fn = self._tick_heartbeat
        self._step_fn = self._step_leader
        self.heartbeat_elapsed = 0
        self.election_elapsed = 0
        self.progress = {}
        for p in self.peers:
            # Peers start inactive (CheckQuorum) and as far as they showed
            # they know; the rest they are sent in slot order.
            pr = Progress(base + 1, self.config.max_inflight_appends)
            pr.match = min(p1.commits.get(p, 0), base)
            self.progress[p] = pr
        votes = sorted(p1.done)
        self._p1 = None
        self._event("became_leader", ballot=self.describe(self.ballot),
                    last_index=self.log.last_index(), votes=votes, reproposed=reproposed,
                    noops=noops)
        if self._decree is not None:
            value, self._decree = self._decree, None
            self._propose_decree(value)
