"""Helpers of the paper tests (tests/test_paper_*.py): lone cores fed by
hand, and messages built in one line."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from node.raft.core import RaftCore, Role
from node.raft.messages import (
    AppendEntries,
    Entry,
    Hup,
    PeerMessage,
    RequestVote,
    RequestVoteResponse,
)
from node.raft.ready import Ready
from node.storage import MemoryStorage
from tests.harness import Network, small_config

E = 10  # election_ticks of small_config()




def new_core(
    nid: str = "n1",
    peers: Sequence[str] = ("n2", "n3"),
    storage: MemoryStorage | None = None,
    seed: int = 1,
    prevote: bool = False,
    check_quorum: bool = False,
    **cfg: int,
) -> RaftCore:
    """A lone core; PreVote and CheckQuorum are off unless a test is about them."""
    config = small_config(prevote=prevote, check_quorum=check_quorum, **cfg)
    return RaftCore(nid, list(peers), storage or MemoryStorage(), config, random.Random(seed))


def drain(c: RaftCore) -> Ready:
    rd = c.ready()
    c.advance(rd)
    return rd


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i) for i, t in enumerate(terms)]


def ae(src: str, dst: str, term: int, prev: tuple[int, int] = (0, 0),
       entries: Sequence[Entry] = (), commit: int = 0) -> AppendEntries:
    return AppendEntries(term=term, src=src, dst=dst, prev_index=prev[0], prev_term=prev[1],
                         entries=list(entries), commit=commit)


def rv(src: str, dst: str, term: int, last: tuple[int, int] = (0, 0),
       prevote: bool = False, transfer: bool = False) -> RequestVote:
    return RequestVote(term=term, src=src, dst=dst, last_index=last[0], last_term=last[1],
                       prevote=prevote, transfer=transfer)


def vote_reply(src: str, dst: str, term: int, granted: bool = True,
               prevote: bool = False) -> RequestVoteResponse:
    return RequestVoteResponse(term=term, src=src, dst=dst, granted=granted, prevote=prevote)


def make_leader(c: RaftCore) -> Ready:
    """Run `c` through an election that every peer grants; returns the last Ready."""
    c.step(Hup())
    for _ in range(2):  # a pre-vote round, then the real one
        if c.role is Role.LEADER:
            break
        prevote = c.role is Role.PRE_CANDIDATE
        term = c.term + 1 if prevote else c.term
        for p in c.peers:
            c.step(vote_reply(p, c.id, term, prevote=prevote))
    assert c.role is Role.LEADER
    return drain(c)


T = TypeVar("T")


def of_type(msgs: Sequence[PeerMessage], typ: type[T]) -> list[T]:
    return [m for m in msgs if isinstance(m, typ)]


def terms_of(c: RaftCore) -> list[int]:
    return [e.term for e in c.log.entries]


def elected(net: Network, nid: str = "n1") -> Network:
    net.elect(nid)
    return net
