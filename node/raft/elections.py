"""Elections (§5.2, §5.4.1): the election timer, PreVote (thesis §9.6),
campaigns, votes and their tally under the configuration in force (a
majority of each half while joint, thesis §4.3). A mixin of `RaftCore`; no
state of its own."""

from __future__ import annotations

from node.raft.base import CoreState, Role
from node.raft.messages import (
    AppendEntries,
    Heartbeat,
    Hup,
    InstallSnapshot,
    PeerMessage,
    RequestVote,
    RequestVoteResponse,
)
from node.raft.quorum import VoteResult


class Elections(CoreState):
    """The rules above, as methods of `RaftCore` (core.py)."""

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self._boot_quiet = False
        # Only a node that may campaign restarts its timer: one that may not
        # (a learner) must let it run, or it would take a leader long gone
        # for one it just heard and ignore the votes of its successors
        # (thesis §4.2.3's lease).
        if self.election_elapsed >= self.randomized_timeout and self._may_campaign():
            self.election_elapsed = 0
            self.step(Hup())

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER:
            return
        if not self._may_campaign():
            # A learner, a member not yet told it joined, or one removed for
            # good: it is in no majority, so it leads nobody.
            return
        if self.config.prevote and not transfer:
            self._campaign(prevote=True, transfer=False)
        else:
            self._campaign(prevote=False, transfer=transfer)

    def _campaign(self, prevote: bool, transfer: bool) -> None:
        if prevote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally(prevote):
            return
        for p in sorted(self._joint.voters() - {self.id}):
            self._send(
                RequestVote(
                    term=term,
                    src=self.id,
                    dst=p,
                    last_index=self.log.last_index(),
                    last_term=self.log.last_term(),
                    prevote=prevote,
                    transfer=transfer,
                )
            )

    def _tally(self, prevote: bool) -> bool:
        """Count votes; act on a decided election. True if decided."""
        result = self._joint.vote_result(self.votes)
        if result is VoteResult.WON:
            if prevote:
                self._campaign(prevote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if result is VoteResult.LOST:
            self._become_follower(self.term, None)
            return True
        return False

    def _handle_vote(self, m: RequestVote) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (m.prevote and m.term > self.term)
        )
        up_to_date = self.log.is_up_to_date(m.last_index, m.last_term)
        if can_vote and up_to_date:
            self._send(RequestVoteResponse(
                term=m.term if m.prevote else self.term, src=self.id, dst=m.src,
                granted=True, prevote=m.prevote))
            if not m.prevote:
                self.election_elapsed = 0
                self.vote = m.src
            self._event("vote_granted", candidate=m.src, prevote=m.prevote,
                        **self._vote_positions(m))
        else:
            self._send(RequestVoteResponse(
                term=self.term, src=self.id, dst=m.src, granted=False, prevote=m.prevote))
            if can_vote:
                self._event("vote_rejected", candidate=m.src, prevote=m.prevote,
                            reason="log_behind", **self._vote_positions(m))
            else:
                self._event("vote_rejected", candidate=m.src, prevote=m.prevote,
                            reason="already_voted", voted_for=self.vote or self.leader,
                            **self._vote_positions(m))

    def _vote_positions(self, m: RequestVote) -> dict[str, int]:
        """Both logs' last positions and the term asked for: what a reader
        of the log needs to see why a vote went as it did (§5.4.1)."""
        return {"requested_term": m.term, "last_index": self.log.last_index(),
                "last_term": self.log.last_term(), "candidate_last_index": m.last_index,
                "candidate_last_term": m.last_term}

    def _step_candidate(self, m: PeerMessage) -> None:
        prevote = self.role is Role.PRE_CANDIDATE
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            # A leader of our term exists: we lost (§5.2).
            self._become_follower(m.term, m.src)
            self._step_follower(m)
        elif isinstance(m, RequestVoteResponse):
            if m.prevote != prevote:
                return
            if prevote and m.granted and m.term != self.term + 1:
                return
            self.votes[m.src] = m.granted
            self._tally(prevote)
