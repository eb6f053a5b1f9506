"""What the core refuses a caller with, and what the client library raises
(`ClientError`, re-exported by node/client.py). Apart from `node.raft.core`
so that the client side (`node.api`, `node.client`) need not import the
whole core."""

from __future__ import annotations


class NotLeader(Exception):
    """The request needs the leader; `leader` is the one this node knows of."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader cannot take proposals now: a leadership transfer is
    running, or too many of its proposals wait for their commit."""


class ConfChangeRefused(Exception):
    """The leader will not start this membership change now. `code` says
    why for machines: `change_in_progress` (retry once it has committed),
    `not_caught_up` (a learner too far behind to vote), `invalid_change`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ClientError(Exception):
    """The request failed; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
