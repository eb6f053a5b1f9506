"""Membership change (thesis ch. 4): proposing a change, acting on a new
configuration the moment its entry is appended, leaving the joint
configuration once C_old,new commits, and a leader that is not in C_new
stepping down once C_new commits. A mixin of `RaftCore`."""

from __future__ import annotations

from node.errors import ConfChangeRefused, NotLeader
from node.raft.base import CoreState, Role
from node.raft.confchange import ConfChangeError, apply_change, encode_change
from node.raft.membership import ConfPoint
from node.raft.messages import ConfChange, ConfChangeType, Entry, EntryKind, SnapshotMeta
from node.raft.progress import Progress
from node.raft.quorum import JointConfig


class Reconfiguration(CoreState):
    """The rules above, as methods of `RaftCore` (core.py)."""

    def snapshot_point(self, index: int) -> SnapshotMeta:
        """What a snapshot of the state machine at `index` (applied) records:
        the entry it ends with and the configuration in force there."""
        term = self.log.term(index)
        if term is None:
            raise IndexError(f"entry {index} is not in the log (first {self.log.first_index()})")
        return SnapshotMeta(index, term, self._membership.at(index))

    def _propose_conf_change(self, cc: ConfChange) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if not cc.changes:
            raise ConfChangeRefused("invalid_change", "a change must add, promote or remove "
                                    "at least one member")
        if self.lead_transferee is not None:
            raise ConfChangeRefused("change_in_progress",
                                    f"leadership is moving to {self.lead_transferee}; retry "
                                    "once it has moved")
        if self.conf.is_joint() or self._membership.index > self.log.commit:
            # One change at a time (thesis §4.1): the last one must have
            # committed, C_new included.
            raise ConfChangeRefused("change_in_progress", "another membership change is in "
                                    "progress; retry once it has committed")
        if self.log.term(self.log.commit) != self.term:
            # Until an entry of its term commits, a new leader cannot know
            # that a change of an earlier leader is not still to commit.
            raise ConfChangeRefused("change_in_progress", f"{self.id} was just elected and has "
                                    "not yet committed an entry of its term; retry in a moment")
        for c in cc.changes:
            if c.type is ConfChangeType.ADD_VOTER and c.node in self.progress:
                self._check_caught_up(c.node)
        try:
            apply_change(self.conf, cc)
        except ConfChangeError as e:
            raise ConfChangeRefused("invalid_change", str(e)) from None
        self._append_entries([Entry(self.term, self.log.last_index() + 1,
                                    EntryKind.CONF_CHANGE, encode_change(cc))])

    def _check_caught_up(self, node: str) -> None:
        """Thesis §4.2.1: a new server votes only once it has caught up, or
        the cluster waits for it to commit anything."""
        pr = self.progress[node]
        behind = self.log.last_index() - pr.match
        limit = self.config.promote_max_lag_entries
        if behind > limit:
            raise ConfChangeRefused(
                "not_caught_up", f"{node} is {behind} entries behind the leader (it holds "
                f"{pr.match} of {self.log.last_index()}); a learner is promoted once it is "
                f"within {limit} entries")

    def conf_history(self) -> list[ConfPoint]:
        """The configurations of the log, oldest first (the last is in force)."""
        return self._membership.points()

    def _may_campaign(self) -> bool:
        """Thesis §4.2.2: a voter of its latest configuration; or, while that
        configuration's entry is not committed, a voter of the one before:
        it may still be needed to commit it (its own vote counts only as
        the configuration in force says)."""
        if self.conf.is_voter(self.id):
            return True
        if self._membership.index <= self.log.commit:
            return False
        points = self._membership.points()
        return len(points) > 1 and points[-2].conf.is_voter(self.id)

    def _conf_changed(self, announce: bool = True) -> None:
        """The configuration in force changed (appended, truncated or from a
        snapshot): who the peers are and who decides follow it at once."""
        conf = self._membership.conf
        self.conf = conf
        self._joint = JointConfig.of(conf)
        self.peers = sorted(conf.members() - {self.id})
        if announce:
            self._event("membership_changed", index=self._membership.index,
                        voters=",".join(conf.voters), learners=",".join(conf.learners),
                        outgoing=",".join(conf.voters_outgoing))
        if self.role is not Role.LEADER:
            return
        for p in self.peers:
            if p not in self.progress:
                # Probed from the end of the log like any follower of a new leader.
                self.progress[p] = Progress(self.log.last_index() + 1,
                                            self.config.max_inflight_appends)
        for p in [p for p in self.progress if p not in conf.members()]:
            del self.progress[p]
        if self.lead_transferee is not None and self.lead_transferee not in conf.voters:
            self._event("transfer_aborted", to=self.lead_transferee)
            self.lead_transferee = None

    def _after_commit(self) -> None:
        """The leader's part once the configuration in force has committed:
        leave the joint configuration, or, not in C_new, step down."""
        if self.role is not Role.LEADER or self._membership.index > self.log.commit:
            return
        if self.conf.is_joint():
            # Thesis §4.3: C_old,new committed, so C_new may follow at once.
            self._append_entries([Entry(self.term, self.log.last_index() + 1,
                                        EntryKind.CONF_CHANGE, encode_change(ConfChange()))])
        elif not self.conf.is_voter(self.id):
            # Thesis §4.2.2: a leader that is not in C_new manages the cluster
            # until C_new commits, then steps down. An up-to-date voter takes
            # over at once instead of after an election timeout.
            best = max((p for p in self.conf.voters if p in self.progress),
                       key=lambda p: self.progress[p].match, default=None)
            if best is not None and self.progress[best].match == self.log.last_index():
                self._send_timeout_now(best)
            self._become_follower(self.term, None, reason="removed")
