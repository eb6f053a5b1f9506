"""Computing a new configuration from a change (thesis §4.3, after etcd's
confchange/): every change enters the joint configuration C_old,new, and
an empty one leaves it for C_new. Pure and table-tested: it refuses a change
the configuration cannot take, with a sentence saying why, and never
touches the log, the progress of followers or anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from node.raft.messages import ConfChange, ConfChangeSingle, ConfChangeType, ConfState


class ConfChangeError(ValueError):
    """The change cannot be made to this configuration."""


def initial(voters: Iterable[str], addrs: Mapping[str, str] | None = None) -> ConfState:
    """A configuration of `voters` only (a cluster as it was created)."""
    vs = tuple(sorted(set(voters)))
    return ConfState(voters=vs, addrs=_addrs(vs, dict(addrs or {})))


def apply_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after `cc`: C_old,new for a change, C_new for the
    empty change that leaves the joint configuration."""
    return enter_joint(conf, cc.changes) if cc.changes else leave_joint(conf)


def enter_joint(conf: ConfState, changes: Iterable[ConfChangeSingle]) -> ConfState:
    """C_old,new: the voters of `conf` become the outgoing half, and the
    incoming half and the learners are `conf`'s with `changes` made."""
    if conf.is_joint():
        raise ConfChangeError("a membership change is still in progress (the configuration is "
                              "joint); wait until it is done")
    changes = list(changes)
    if not changes:
        raise ConfChangeError("a change must add, promote or remove at least one member")
    named = [c.node for c in changes]
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice:
        raise ConfChangeError(f"{', '.join(twice)} named more than once in one change")
    voters = set(conf.voters)
    learners = set(conf.learners)
    addrs = dict(conf.addrs)
    for c in changes:
        _check(c, voters, learners)
        if c.type is ConfChangeType.ADD_LEARNER:
            learners.add(c.node)
            addrs[c.node] = c.addr
        elif c.type is ConfChangeType.ADD_VOTER:
            learners.discard(c.node)
            voters.add(c.node)
        else:
            voters.discard(c.node)
            learners.discard(c.node)
    if not voters:
        raise ConfChangeError("the change would remove every voter; a cluster needs at least one")
    new_voters = tuple(sorted(voters))
    new_learners = tuple(sorted(learners))
    # Both halves keep their addresses: the outgoing voters still take part.
    kept = (*new_voters, *new_learners, *conf.voters)
    return ConfState(voters=new_voters, learners=new_learners, voters_outgoing=conf.voters,
                     addrs=_addrs(kept, addrs))


def leave_joint(conf: ConfState) -> ConfState:
    """C_new: the outgoing half goes, and with it the addresses of the
    voters it alone held."""
    if not conf.is_joint():
        raise ConfChangeError("the configuration is not joint, so there is nothing to leave")
    return ConfState(voters=conf.voters, learners=conf.learners,
                     addrs=_addrs((*conf.voters, *conf.learners), dict(conf.addrs)))


def _check(c: ConfChangeSingle, voters: set[str], learners: set[str]) -> None:
    n = c.node
    if c.type is ConfChangeType.ADD_LEARNER:
        if n in voters:
            raise ConfChangeError(f"{n} is already a voter")
        if n in learners:
            raise ConfChangeError(f"{n} is already a learner")
    elif c.type is ConfChangeType.ADD_VOTER:
        if n in voters:
            raise ConfChangeError(f"{n} is already a voter")
        if n not in learners:
            raise ConfChangeError(f"{n} is not a member; a new member joins as a learner "
                                  "first and is promoted once it has caught up")
    elif n not in voters and n not in learners:
        raise ConfChangeError(f"{n} is not a member")


def _addrs(nodes: Iterable[str], addrs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((n, addrs[n]) for n in sorted(set(nodes)) if addrs.get(n))


# --- the entry ------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ConfChange)


def encode_change(cc: ConfChange) -> bytes:
    """The data of a CONF_CHANGE entry."""
    return _encoder.encode(cc)


def decode_change(data: bytes) -> ConfChange:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ConfChangeError(f"not a configuration change: {e}") from None


_VERBS = {ConfChangeType.ADD_LEARNER: "add learner", ConfChangeType.ADD_VOTER: "promote",
          ConfChangeType.REMOVE: "remove"}


def describe_change(cc: ConfChange) -> str:
    """`add learner n4, remove n2`, or `leave joint`."""
    if not cc.changes:
        return "leave joint"
    return ", ".join(f"{_VERBS[c.type]} {c.node}" for c in cc.changes)


def describe_conf(conf: ConfState) -> str:
    """`voters n1,n2,n3 learners n4`, with `outgoing ...` while joint."""
    parts = [f"voters {','.join(conf.voters)}"]
    if conf.learners:
        parts.append(f"learners {','.join(conf.learners)}")
    if conf.voters_outgoing:
        parts.append(f"outgoing {','.join(conf.voters_outgoing)}")
    return " ".join(parts)
